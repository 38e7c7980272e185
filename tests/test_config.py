"""Config errors name the full dotted path a user writes; `taskloc studies --verbose` shows help."""
import pytest

from taskloc.errors import ConfigError
from taskloc.runconfig import resolve_config
from taskloc.runner import resolve_studies


@pytest.mark.parametrize("override, message", [
    ("studies.weight-delta.finetune.warmup=-5", "studies.weight-delta.finetune.warmup=-5 must be >= 0"),
    ("pretrain.warmup=-5", "pretrain.warmup=-5 must be >= 0"),
    ("pretrain.lr=0", "pretrain.lr=0.0 must be positive"),
    ("model.n_layer=0", "model.n_layer=0 must be at least 1"),
    ("eval.examples=0", "eval.examples=0 must be at least 1"),
    ("studies.base-model.competence=2", "studies.base-model.competence=2.0 must lie in (0, 1]"),
    ('studies.weight-delta.finetune.steps="many"', "config value studies.weight-delta.finetune.steps='many' has the wrong type"),
])
def test_config_errors_name_the_full_path(override, message):
    with pytest.raises(ConfigError) as err:
        cfg = resolve_config("quick", overrides=(override,))
        resolve_studies([], cfg)
    assert message in str(err.value)


def test_a_study_brings_the_study_that_provides_its_preconditions():
    cfg = resolve_config("quick")
    assert [s.name for s, _ in resolve_studies(["weight-delta"], cfg)] == ["base-model", "weight-delta"]
    assert [s.name for s, _ in resolve_studies(["base-model"], cfg)] == ["base-model"]


def test_studies_verbose_lists_every_setting_with_help(capsys, monkeypatch):
    from taskloc.cli import main

    monkeypatch.setenv("COLUMNS", "250")  # no folding of long setting names
    main(["studies", "--verbose"])
    out = capsys.readouterr().out
    assert "studies.weight-delta.finetune.warmup" in out and "linear warm-up steps" in out
    assert "pretrain.steps" in out and "studies.base-model.competence" in out


def test_claims_doc_is_generated_from_the_code():
    from pathlib import Path

    from taskloc.claims import claims_markdown

    doc = Path(__file__).resolve().parents[1] / "docs" / "claims.md"
    assert doc.read_text() == claims_markdown() + "\n", "docs/claims.md is stale: regenerate it with `taskloc claims --markdown`"
