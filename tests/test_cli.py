"""Bad input ends with one clear line on stderr, exit code 2, no traceback, and no run directory."""
import re

import pytest

from taskloc.cli import main


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    captured = capsys.readouterr()
    return exc.value.code, captured.err


@pytest.mark.parametrize("args, message", [
    (["base-modle", "--preset", "quick"], r"unknown study 'base-modle'\. Did you mean 'base-model'"),
    (["--preset", "quick", "--set", 'data.tasks=["add", "sortt"]'], r"unknown task 'sortt'\. Did you mean 'sort'"),
    (["--preset", "quick", "--set", "pretrain.steps=abc"], r"TrainConfig\.steps='abc' has the wrong type: expected int"),
    (["--preset", "quick", "--set", "pretrain.stepz=10"], r"unknown config key 'pretrain\.stepz'\. Did you mean 'pretrain\.steps'"),
    (["--preset", "quick", "--set", "model.d_model=31"], r"model\.d_model=31 is not divisible by model\.n_head=2"),
    (["--preset", "quik"], r"unknown preset 'quik'\. Did you mean 'quick'"),
    (["--preset", "quick", "--set", "studies.base-model.competence=2.0"], r"competence=2\.0 must lie in \(0, 1\]"),
    (["--preset", "quick", "--set", "studies.base-modle.competence=0.5"], r"unknown study 'base-modle'"),
])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    code, err = run_cli(["run", *args, "--out", str(out)], capsys)
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err
    assert re.search(message, lines[0]), lines[0]
    assert not out.exists()


def test_malformed_jsonl_task_file(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "target": "y"}\n{oops\n')
    out = tmp_path / "run"
    code, err = run_cli(["run", "--preset", "quick", "--out", str(out), "--set", f'data.tasks=["jsonl:{bad}"]'], capsys)
    assert code == 2 and f"{bad}:2 is not valid JSON" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_report_of_missing_run(tmp_path, capsys):
    code, err = run_cli(["report", str(tmp_path)], capsys)
    assert code == 2 and "has no results.json" in err


def test_studies_and_tasks_listings(capsys):
    main(["studies"])
    assert "base-model" in capsys.readouterr().err
    main(["tasks"])
    listing = capsys.readouterr().err
    assert all(name in listing for name in ("add", "sort", "reverse", "hop", "copy", "trace", "arith"))
