"""steering-compression: its data, parsing, probe and verdict logic on planted numbers, and the
study end to end on the quick preset (an incompetent base: the verdict must not be asserted)."""
import json

import numpy as np
import pytest
import torch

from taskloc.cli import main
from taskloc.steering.vector import SteeringVector
from taskloc.studies.base import StudyResult
from taskloc.studies.steering_compression import (
    Outcome,
    SteeringCompressionConfig,
    SteeringCompressionStudy,
    StyleMixedArithmetic,
    concise_text,
    draw_problems,
    judge,
    probe_accuracy,
    random_like,
    verbose_text,
)


def test_style_mixed_task_has_no_style_signal_and_the_asked_mix():
    examples = StyleMixedArithmetic(0.8).sample(2000, np.random.default_rng(0), 2)
    assert {e.prompt[:2] for e in examples} == {"M:"}
    verbose = sum("=" in e.target for e in examples) / len(examples)
    assert 0.77 < verbose < 0.83
    assert all(e.prompt.count("+") + e.prompt.count("-") == 2 for e in examples)


def test_problems_exclude_the_pairs_and_answers_are_judged_in_either_style():
    pairs = draw_problems(np.random.default_rng(1), [1, 2], 40)
    held = draw_problems(np.random.default_rng(2), [1, 2], 100, {p.expr for p in pairs})
    assert not {p.expr for p in pairs} & {p.expr for p in held}
    p = held[1]
    steps = list(p.steps)
    assert judge(verbose_text(steps), 6, p) == Outcome(6, True, "verbose")
    assert judge(concise_text(steps), 4, p) == Outcome(4, True, "concise")
    assert not judge("0+0=0,x", 3, p).correct or p.answer == 0
    assert judge("==7", 4, p).style == "other"


def test_probe_separates_separable_states_and_not_noise():
    g = torch.Generator().manual_seed(0)
    pos, neg = torch.randn(40, 8, generator=g) + 3.0, torch.randn(40, 8, generator=g)
    correct, total = probe_accuracy(pos, neg)
    assert total == 80 and correct / total > 0.95
    noise_pos, noise_neg = torch.randn(40, 8, generator=g), torch.randn(40, 8, generator=g)
    assert probe_accuracy(noise_pos, noise_neg)[0] / 80 < 0.8


def test_random_direction_keeps_the_norm():
    vec = SteeringVector(torch.arange(16.0), 1, 5, "last", "fp")
    r = random_like(vec, 3)
    assert r.norm == pytest.approx(vec.norm, rel=1e-5) and abs(float(r.vector @ vec.vector)) < 0.9 * vec.norm ** 2


def _verdict(base, steer, rand, neg):
    cfg = SteeringCompressionConfig()
    result = StudyResult()
    SteeringCompressionStudy()._claim(cfg, base, steer, rand, neg, 1.0, True, result)
    return result.claims[0], result.notes


def test_verdict_follows_the_numbers_both_ways():
    rng = np.random.default_rng(0)
    base = [Outcome(12, bool(rng.random() < 0.9), "verbose") for _ in range(200)]
    short = [Outcome(4, b.correct, "concise") for b in base]
    claim, _ = _verdict(base, short, base, base)
    assert claim.verdict == "supported" and claim.value == pytest.approx(2 / 3)
    claim, _ = _verdict(base, base, base, base)  # steering changes nothing
    assert claim.verdict == "not supported"
    wrong = [Outcome(4, False, "concise") for _ in base]  # shorter but wrong
    claim, _ = _verdict(base, wrong, base, base)
    assert claim.verdict == "not supported" and "accuracy" in claim.reason
    claim, _ = _verdict(base, short, short, base)  # a random direction does as well
    assert claim.verdict == "not supported"
    claim, notes = _verdict(base, base, base, short)  # only the opposite sign compresses: said in a note
    assert claim.verdict == "not supported" and any("opposite sign" in n for n in notes)


def test_study_end_to_end_quick(tmp_path):
    out = tmp_path / "run"
    main(["run", "steering-compression", "--preset", "quick", "--out", str(out), "--set", "pretrain.steps=20",
          "--set", "studies.steering-compression.finetune.steps=5", "--set", "studies.steering-compression.pair_counts=[2, 4]",
          "--set", "studies.steering-compression.n_pairs=4", "--set", "studies.steering-compression.gamma_grid=[-1.0, 1.0]"])
    doc = json.loads((out / "results.json").read_text())
    study = doc["studies"]["steering-compression"]
    (claim,) = [c for c in doc["claims"] if c["study"] == "steering-compression"]
    assert claim["id"] == "C3" and claim["level"] == 0.95
    style = study["metrics"]["style"]
    pre = study["preconditions"][0]
    assert pre["id"] == "steering-style-mix" and pre["value"] == style["verbose_share"]
    if pre["check"] == "fail":  # the 20-step base writes no clean verbose trace: nothing to steer between
        assert claim["verdict"] == "inconclusive" and "downgraded" in claim["reason"]
    m = study["metrics"]
    assert [r["layer"] for r in m["layer_sweep"]] == [0, 1] and [r["n_pairs"] for r in m["pairs_sweep"]] == [2, 4]
    assert [r["gamma"] for r in m["gamma_sweep"]] == [-1.0, 1.0] and len(m["method_sign"]) == 6
    assert set(m["conditions"]) == {"unsteered", "steered (+gamma v)", "random direction", "negative (-gamma v)"}
    assert m["timing"]["tokens"]["unsteered"] > 0 and m["timing"]["wall_clock_speedup"] > 0
    assert {f["name"] for f in study["figures"]} == {"steer-length", "steer-accuracy", "steer-layers", "steer-pairs", "steer-gamma"}
    assert (out / "report.html").exists()


def test_bad_settings_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "steering-compression", "--preset", "quick", "--out", str(tmp_path / "r"),
              "--set", "studies.steering-compression.layer=7"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "layer=7 is out of range" in err and not (tmp_path / "r").exists()
