"""sparse-frontier: the quick preset end to end (a table row per size, mode and pattern setting,
FLOPs that shrink with density, a C6 verdict from held-out numbers), the long-context tasks, and
bad settings as one line with exit code 2."""
import json

import numpy as np
import pytest

from cli_runner import cli
from taskloc.attention.longctx_tasks import QUESTION, long_context_tasks


def test_tasks_have_fixed_length_prompts_and_answers_in_the_text():
    for task in long_context_tasks(["needle", "vartrack", "multihop"], 61):
        for ex in task.sample(20, np.random.default_rng(0), 1):
            assert len(ex.prompt) == 61 + QUESTION and ex.target.isdigit() and len(ex.target) == 1
            key = ex.prompt[-2]
            assert f"|{key}" in ex.prompt[:-QUESTION]  # the asked key is a fact in the text


def test_quick_run_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = cli(["run", "sparse-frontier", "--preset", "quick", "--out", out], capsys)
    assert code == 0, err
    doc = json.loads((out / "results.json").read_text())
    study = doc["studies"]["sparse-frontier"]
    rows = study["tables"][0]["rows"]
    # 2 widths x 2 modes x (dense + 3 patterns at 0.25)
    assert len(rows) == 2 * 2 * 4
    for r in rows:
        assert 0 <= r[7] <= 1 and (r[8] <= r[7] <= r[9] or np.isnan(r[8]))
        if r[2] != "dense":  # the sparse rows attend fewer pairs than dense, and cost less attention
            dense = next(d for d in rows if d[0] == r[0] and d[1] == r[1] and d[2] == "dense")
            assert r[4] < 1 and r[5] < dense[5]
    assert {f["name"] for f in study["figures"]} == {"sparse-accuracy-prefill", "sparse-accuracy-decode",
                                                     "isoflop-prefill", "isoflop-decode",
                                                     "isoflop-total-prefill", "isoflop-total-decode"}
    for r in rows:  # the total view adds the same matmuls to every setting of one width
        assert r[6] > r[5]
    notes = " ".join(study["notes"])
    for mode in ("prefill", "decode"):  # both bases reported, the verdict's (attention) one in the verdict
        assert f"{mode}, attention FLOPs:" in notes and f"(not in the verdict) {mode}, total FLOPs:" in notes
    (claim,) = [c for c in doc["claims"] if c["study"] == "sparse-frontier"]
    assert claim["id"] == "C6" and claim["verdict"] in ("supported", "not supported", "inconclusive")


@pytest.mark.parametrize("setting, message", [
    ("studies.sparse-frontier.densities=[1.0, 1.5]", r"density=1\.5 for 'sliding-window' must lie in \(0, 1\]"),
    ("studies.sparse-frontier.densities=[1.0, 0.0]", r"density=0\.0 .* must lie in \(0, 1\]"),
    ('studies.sparse-frontier.patterns=["quets"]', r"unknown attention pattern 'quets'\. Did you mean 'quest'"),
    ("studies.sparse-frontier.block=7", r"block=7 does not divide the prompt length 32"),
])
def test_bad_settings_are_one_line_exit_2(tmp_path, capsys, setting, message):
    code, _, err = cli(["run", "sparse-frontier", "--preset", "quick", "--out", tmp_path / "x", "--set", setting], capsys)
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and __import__("re").search(message, lines[0]), err
