"""The ray executor gives the in-process executor's bytes, survives a killed worker, and a missing
Ray is one line naming the extra."""
import shutil
import sys

import pytest

from cli_runner import cli
from taskloc.studies import context

# weight-delta on the quick preset, shrunk: 10 fine-tunes (two batches) of 20 steps with a
# checkpoint at step 10; one thread per job, so a 2-CPU Ray runs two jobs at once
ARGS = ["run", "weight-delta", "--preset", "quick", "--set", "pretrain.steps=20", "--set", "run.threads=1",
        "--set", 'studies.weight-delta.selectors=["magnitude","dare"]', "--set", "studies.weight-delta.graft_fractions=[0.01,1.0]"]


@pytest.fixture(scope="module")
def inprocess(tmp_path_factory):
    out = tmp_path_factory.mktemp("inprocess") / "run"
    from taskloc.cli import main

    main([*ARGS, "--out", str(out)])
    return out


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")  # `make test` installs it (the ray extra)
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"TASKLOC_QUIET": "1"}})
    yield ray
    ray.shutdown()


def _resume_from_base(inprocess, out):
    """A run directory holding only the in-process run's config and pretrained base (the base is
    not a job; copying it keeps the test short)."""
    out.mkdir(parents=True)
    shutil.copy(inprocess / "config.json", out / "config.json")
    for base in (inprocess / "artefacts").glob("base-*"):
        shutil.copytree(base, out / "artefacts" / base.name)
    return out


def test_ray_gives_the_in_process_bytes(inprocess, local_ray, tmp_path, capsys):
    out = _resume_from_base(inprocess, tmp_path / "ray")
    code, _, err = cli([*ARGS, "--executor", "ray", "--out", out], capsys)
    assert code == 0, err
    assert (out / "results.json").read_bytes() == (inprocess / "results.json").read_bytes()
    assert "weight-delta: 10/10 jobs done (0 read from the cache)" in err
    fts = sorted(p.parent.name for p in (out / "artefacts").glob("ft-*/model.safetensors"))
    assert len(fts) == 10 and fts == sorted(p.parent.name for p in (inprocess / "artefacts").glob("ft-*/model.safetensors"))


def test_a_killed_worker_is_retried_and_the_results_are_the_same(inprocess, local_ray, tmp_path, monkeypatch, capsys):
    out = _resume_from_base(inprocess, tmp_path / "killed")
    marker = str(tmp_path / "killed-once")
    real = context._tune

    def dies_once(folder, **kw):
        # the first job to get here kills its own worker right after its first checkpoint
        import os

        import taskloc.train as train

        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return real(folder, **kw)
        save = train.save_checkpoint

        def save_then_die(*args, **kwargs):
            save(*args, **kwargs)
            os._exit(1)

        train.save_checkpoint = save_then_die
        return real(folder, **kw)

    monkeypatch.setattr(context, "_tune", dies_once)  # shipped to the workers by value (a closure)
    code, _, err = cli([*ARGS, "--executor", "ray", "--out", out], capsys)
    assert code == 0, err
    assert (tmp_path / "killed-once").exists()  # a worker did die
    assert (out / "results.json").read_bytes() == (inprocess / "results.json").read_bytes()
    assert not list((out / "artefacts").glob("*/checkpoint.safetensors"))


def test_resumed_run_reads_every_job_from_the_cache(inprocess, tmp_path, capsys):
    out = tmp_path / "again"
    shutil.copytree(inprocess, out)
    (out / "studies" / "weight-delta.json").unlink()  # the study runs again; its jobs are all built
    code, _, err = cli([*ARGS, "--out", out], capsys)
    assert code == 0, err
    assert "weight-delta: 10/10 jobs done (10 read from the cache)" in err
    assert (out / "results.json").read_bytes() == (inprocess / "results.json").read_bytes()


def test_missing_ray_is_one_line_naming_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    for how in (["--executor", "ray"], ["--set", "run.executor=ray"]):
        code, _, err = cli(["run", "weight-delta", "--preset", "quick", *how, "--out", tmp_path / "run"], capsys)
        assert code == 2
        assert "pip install 'taskloc[ray]'" in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "run").exists()  # nothing left behind


def test_unknown_executor_is_a_config_error(tmp_path, capsys):
    code, _, err = cli(["run", "--preset", "quick", "--executor", "dask", "--out", tmp_path / "run"], capsys)
    assert code == 2 and "run.executor" in err and not (tmp_path / "run").exists()


def test_more_threads_than_the_local_ray_has_is_refused(tmp_path, capsys):
    pytest.importorskip("ray")
    args = ["run", "--preset", "quick", "--executor", "ray", "--set", "run.workers=1", "--set", "run.threads=2", "--out", tmp_path / "run"]
    code, _, err = cli(args, capsys)
    assert code == 2 and "run.threads=2" in err and not (tmp_path / "run").exists()
