"""The base shipped with the package: used only under its exact key, and current with the code."""
from __future__ import annotations

import pytest
import torch

from taskloc.runconfig import resolve_config
from taskloc.studies import embedded
from taskloc.studies.cache import TENSORS, key_of
from taskloc.studies.context import StudyContext


def _default_base_folder(tmp_path) -> str:
    cfg = resolve_config("default")
    ctx = StudyContext(tmp_path / "run", cfg, torch.device("cpu"), cfg.data.load_tasks())
    from taskloc.tasks.mixture import TaskMixture

    mixture = TaskMixture(ctx.tasks, cfg.data.train_levels, cfg.seed, cfg.data.weights)
    return f"base-{key_of(ctx._base_ingredients(mixture))}"


def test_the_shipped_base_is_the_one_this_code_trains_for_the_default_preset(tmp_path):
    # Fails after an edit to the training code, the default preset's model/data/pretrain settings or
    # the tasks: `make run` would then pretrain (~18 min on 2 cores) instead of using the shipped
    # base. Refresh it from a finished default run: python -m taskloc.studies.embedded runs/default
    folder = _default_base_folder(tmp_path)
    shipped = sorted(p.name for p in embedded.EMBEDDED_ROOT.glob("base-*"))
    assert shipped == [folder], f"shipped {shipped}, the default preset's base key is {folder}"
    assert embedded.shipped_folder(folder) is not None


def _fake_shipped(root, name):
    src = root / name
    src.mkdir(parents=True)
    (src / TENSORS.filename).write_bytes(b"weights")
    (src / "history.json").write_text("[]")
    return src


def test_seeding_copies_only_under_the_exact_key_and_never_over_a_run_s_own(tmp_path, monkeypatch):
    monkeypatch.setattr(embedded, "EMBEDDED_ROOT", tmp_path / "shipped")
    _fake_shipped(tmp_path / "shipped", "base-aaaa")
    run = tmp_path / "run" / "artefacts"
    assert not embedded.seed_from_embedded(run / "base-bbbb")  # another key: nothing copied
    assert not (run / "base-bbbb" / TENSORS.filename).exists()
    assert embedded.seed_from_embedded(run / "base-aaaa")
    assert (run / "base-aaaa" / TENSORS.filename).read_bytes() == b"weights"
    assert "shipped with taskloc" in embedded.origin_of(run / "base-aaaa")
    (run / "base-aaaa" / TENSORS.filename).write_bytes(b"the run's own")
    assert not embedded.seed_from_embedded(run / "base-aaaa")  # a finished base is never overwritten
    assert (run / "base-aaaa" / TENSORS.filename).read_bytes() == b"the run's own"


def test_the_environment_switch_turns_seeding_off(tmp_path, monkeypatch):
    monkeypatch.setattr(embedded, "EMBEDDED_ROOT", tmp_path / "shipped")
    _fake_shipped(tmp_path / "shipped", "base-aaaa")
    monkeypatch.setenv("TASKLOC_EMBEDDED_BASE", "0")
    assert not embedded.seed_from_embedded(tmp_path / "run" / "base-aaaa")
    assert embedded.origin_of(tmp_path / "run" / "base-aaaa") is None


@pytest.mark.parametrize("count", [0, 2])
def test_refresh_needs_exactly_one_finished_base(tmp_path, monkeypatch, count):
    monkeypatch.setattr(embedded, "EMBEDDED_ROOT", tmp_path / "shipped")
    for i in range(count):
        _fake_shipped(tmp_path / "run" / "artefacts", f"base-{i}")
    with pytest.raises(SystemExit, match=f"holds {count} finished base models"):
        embedded.refresh(tmp_path / "run")
