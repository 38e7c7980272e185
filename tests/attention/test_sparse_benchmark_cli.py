"""benchmarks/sparse_attention.py: bad settings are refused up front as one line with exit code 2
(before any timing), and a tiny run prints a ratio per pattern and input kind."""
import importlib.util
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "sparse_attention.py"


def bench():
    spec = importlib.util.spec_from_file_location("sparse_attention_bench", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("argv, message", [
    (["--patterns", "block-sprase"], "Did you mean 'block-sparse'"),
    (["--density", "1.5"], r"density=1.5 for 'block-sparse' must lie in (0, 1]"),
    (["--density", "0"], r"density=0.0 for 'block-sparse' must lie in (0, 1]"),
    (["--lengths", "100"], "block=64 does not divide the sequence length 100"),
])
def test_bad_settings_one_line_exit_2(capsys, argv, message):
    assert bench().main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and message in err


def test_tiny_run_reports_each_ratio(capsys):
    assert bench().main(["--lengths", "128", "--heads", "2", "--head-dim", "8", "--block", "16", "--repeats", "1",
                         "--no-flex", "--inputs", "gaussian", "positional"]) == 0
    out = capsys.readouterr().out
    for kind in ("gaussian", "positional"):
        for pattern in ("block-sparse", "vertical-slash"):
            assert f"{kind} T=128 {pattern}" in out and "ratio" in out
