import itertools
import json
import re

import numpy as np
import pytest
import torch

from cli_runner import cli
from taskloc.activations.lasttoken import last_token_metrics, profile_fn
from taskloc.cli import main
from taskloc.metrics import metric_profile
from taskloc.studies.activation_difficulty import EXPLOIT_RULE, TaskData, _effect, auroc, auroc_bootstrap, c1_rule, direction
from taskloc.studies.verdicts import Estimate
from taskloc.tasks import get_task
from taskloc.tasks.paired import FAMILIES, build_families
from taskloc.tasks.scoring import exact_match

LEVELS = [1, 2, 3, 4, 5]


def _shape(text: str) -> str:
    return re.sub(r"[a-z]", "a", re.sub(r"[0-9]", "0", text))


def _hop_path(prompt: str) -> str:
    facts, start = prompt[2:].split("|")
    step = dict(pair for pair in facts.split(","))
    path, at = "", start
    while at in step and len(path) < 10:
        at = step[at]
        path += at
    return path


def _solve(task: str, prompt: str) -> str:
    """An independent solver for each task's prompt format."""
    body = prompt[2:]
    if task in ("arith", "trace"):
        expr = body[:-1]
        value, out = int(expr[0]), []
        for op, d in re.findall(r"([+-])(\d)", expr):
            new = (value + int(d)) % 10 if op == "+" else (value - int(d)) % 10
            out.append(f"{value}{op}{d}={new}" if task == "trace" else str(new))
            value = new
        return ",".join(out)
    if task == "reverse":
        return body[:-1][::-1]
    if task == "sort":
        return "".join(sorted(body[:-1]))
    if task == "copy":
        return body[body.index("[") + 1 : body.index("]")]
    if task == "add":
        a, b = body[:-1].split("+")
        return str(int(a) + int(b))[::-1]
    if task == "hop":
        return _hop_path(prompt)
    raise AssertionError(task)


def _core(task: str, prompt: str):
    """What must grow by extension from one level to the next: the item's shared part."""
    body = prompt[2:]
    if task in ("arith", "trace"):
        return [body[:-1]]  # the chain: a prefix of the next level's
    if task in ("reverse", "sort"):
        return [body[:-1]]
    if task == "copy":
        left, rest = body.split("[")
        segment, right = rest.split("]")
        return [left, segment, right[:-1]]  # each side of the noise and the segment grow as prefixes
    if task == "add":
        return body[:-1].split("+")
    raise AssertionError(task)


@pytest.mark.parametrize("name", sorted(FAMILIES.names()))
def test_paired_families_are_one_item_extended_across_levels(name):
    task = get_task(name)
    fams = build_families(task, LEVELS, 40, seed=3)
    shapes = {lv: {_shape(e.prompt) for e in task.sample(400, np.random.default_rng(lv), lv)} for lv in LEVELS}
    assert len({fam.examples[5].prompt for fam in fams}) > 30  # distinct items, not one repeated
    for fam in fams:
        assert sorted(fam.examples) == LEVELS
        for lv in LEVELS:
            ex = fam.examples[lv]
            assert ex.level == lv
            assert _shape(ex.prompt) in shapes[lv], (ex.prompt, lv)  # the task's own format at that level
            assert ex.target == _solve(name, ex.prompt)  # and the right answer
        for lo, hi in itertools.pairwise(LEVELS):
            a, b = fam.examples[lo].prompt, fam.examples[hi].prompt
            assert a != b
            if name == "hop":  # same chain one hop further: the path extends, the earlier pairs keep their order
                pa, pb = a[2:].split("|")[0].split(","), b[2:].split("|")[0].split(",")
                assert set(pa) < set(pb) and [p for p in pb if p in pa] == pa and a[-1] == b[-1]
                assert fam.examples[hi].target.startswith(fam.examples[lo].target)
            else:
                for part_a, part_b in zip(_core(name, a), _core(name, b)):
                    assert part_b.startswith(part_a), (a, b)


def test_families_are_seeded_and_reject_unknown_levels():
    task = get_task("copy")
    assert build_families(task, [1, 2], 5, 1) == build_families(task, [1, 2], 5, 1)
    assert build_families(task, [1, 2], 5, 1) != build_families(task, [1, 2], 5, 2)
    from taskloc.errors import ConfigError

    with pytest.raises(ConfigError, match="no level 9"):
        build_families(task, [1, 9], 3, 0)


def test_auroc_rank_formula_matches_pair_counting():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(2, 40))
        scores = rng.integers(0, 6, size=n).astype(float)  # many ties
        labels = rng.random(n) < 0.4
        if labels.all() or not labels.any():
            assert np.isnan(auroc(scores, labels))
            continue
        pos, neg = scores[labels], scores[~labels]
        brute = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg) / (pos.size * neg.size)
        assert auroc(scores, labels) == pytest.approx(brute, abs=1e-12)
    assert auroc(np.array([3.0, 2.0, 1.0, 0.0]), np.array([True, True, False, False])) == 1.0
    assert auroc(np.array([3.0, 2.0, 1.0, 0.0]), np.array([False, False, True, True])) == 0.0


def test_auroc_bootstrap_brackets_the_estimate_and_is_seeded():
    rng = np.random.default_rng(1)
    labels = rng.random(300) < 0.3
    scores = labels * 0.8 + rng.normal(size=300)
    clusters = np.repeat(np.arange(100), 3)
    lo, hi = auroc_bootstrap(scores, labels, clusters, 200, 0.95, seed=4)
    assert lo < auroc(scores, labels) < hi and lo > 0.5
    assert (lo, hi) == auroc_bootstrap(scores, labels, clusters, 200, 0.95, seed=4)


def test_directions():
    assert direction("top5_energy") == direction("paper_top1_l1") == direction("hoyer") == direction("gini") == 1
    assert direction("l0") == direction("paper_l0") == direction("eff_rank_norm") == direction("paper_eff_rank") == -1
    assert direction("l1_norm") is None and direction("above_zero") is None


def _planted(effect: float, seed: int = 0) -> dict[str, TaskData]:
    """Three tasks whose top5_energy grows by ``effect`` (share of its value) per level, on item
    spreads 20x larger than the effect, plus per-level noise."""
    rng = np.random.default_rng(seed)
    out = {}
    for t in ("a", "b", "c"):
        item = rng.uniform(0.1, 0.5, size=(2, 30, 1))  # (S, I, 1): big spread between items
        lv = np.arange(4)[None, None, :]
        v = item * (1 + effect * lv) + rng.normal(0, 0.0005, size=(2, 30, 4))
        out[t] = TaskData(t, [1, 2, 3, 4], {"s": {"top5_energy": v, "l0": -v}}, np.ones((2, 30, 4), bool),
                          np.ones((2, 30, 4)), np.ones((2, 30, 4)))
    return out


def test_paired_effect_recovers_a_planted_sparsification_and_the_control_does_not():
    data = _planted(0.01)
    e, *_ = _effect(data, "s", "top5_energy", 0.95)
    assert 0.007 < e.value < 0.013 and e.interval[0] > 0.0025  # ~1% per step recovered despite the item spread
    flipped, *_ = _effect(data, "s", "l0", 0.95)  # l0 counts the other way: the same data reads the same effect
    assert flipped.value == pytest.approx(e.value)
    diff, *_ = _effect(data, "s", "top5_energy", 0.95, shuffle_seed=1)
    assert abs(diff.value - e.value) < 0.004  # the shuffled labels carry no effect of their own
    null, *_ = _effect(_planted(0.0), "s", "top5_energy", 0.95)
    assert abs(null.value) < 0.002 and null.interval[0] < 0.0025  # no planted effect: not above the smallest effect
    verdict = c1_rule(0.0025).decide({"sparsify": null, "vs_shuffled": Estimate(0.0, (-0.01, 0.01))}).verdict
    assert verdict in ("not supported", "inconclusive")


def test_rules_decide_crafted_estimates():
    rule = c1_rule(0.0025)
    sup = {"sparsify": Estimate(0.01, (0.005, 0.015)), "vs_shuffled": Estimate(0.01, (0.004, 0.016))}
    assert rule.decide(sup).verdict == "supported"
    absent = {"sparsify": Estimate(0.0, (-0.002, 0.002)), "vs_shuffled": Estimate(0.0, (-0.003, 0.003))}
    assert rule.decide(absent).verdict == "not supported"  # the whole interval below the smallest effect that counts
    denser = {"sparsify": Estimate(-0.01, (-0.02, -0.005)), "vs_shuffled": Estimate(-0.01, (-0.02, -0.004))}
    assert rule.decide(denser).verdict == "not supported"
    unsure = {"sparsify": Estimate(0.004, (-0.001, 0.009)), "vs_shuffled": Estimate(0.004, (0.001, 0.008))}
    assert rule.decide(unsure).verdict == "inconclusive"
    good = {"auroc": Estimate(0.7, (0.62, 0.78)), "auroc_minus_length": Estimate(0.1, (0.02, 0.18)),
            "auroc_minus_msp": Estimate(0.05, (0.01, 0.09))}
    assert EXPLOIT_RULE.decide(good).verdict == "supported"
    worse = {**good, "auroc_minus_msp": Estimate(-0.2, (-0.3, -0.1))}
    assert EXPLOIT_RULE.decide(worse).verdict == "not supported"  # the cheap baseline does better
    assert EXPLOIT_RULE.decide({}).verdict == "inconclusive"


def test_last_token_metrics_match_one_prompt_at_a_time(tiny_model):
    from taskloc.hooks import capture

    task = get_task("copy")
    examples = [e for lv in (1, 3) for e in task.sample(5, np.random.default_rng(lv), lv)]  # mixed lengths: padding
    run = last_token_metrics(tiny_model, [(e.prompt, e.target) for e in examples], ["blocks.*.hook_resid_post"], batch_size=4)
    assert run.sites == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    assert run.correct.tolist() == exact_match(tiny_model, examples).tolist()
    from taskloc.tasks import encode

    for i, e in enumerate(examples):
        ids = torch.tensor([encode(e.prompt)])
        with capture(tiny_model, run.sites) as acts, torch.no_grad():
            logits = tiny_model(ids)
        assert run.prompt_len[i] == ids.shape[1]
        assert run.max_prob[i] == pytest.approx(float(torch.softmax(logits[0, -1].double(), -1).max()), abs=1e-5)
        for site in run.sites:
            direct = metric_profile(acts[site][0, -1], "paper")
            assert run.metrics[site]["paper_top5_energy"][i] == pytest.approx(float(direct["top5_energy"]), abs=1e-5)
            assert run.metrics[site]["hoyer"][i] == pytest.approx(float(metric_profile(acts[site][0, -1])["hoyer"]), abs=1e-5)
    assert set(profile_fn()(torch.randn(3, 8))) >= {"top5_energy", "paper_top5_energy", "eff_rank_norm", "paper_eff_rank"}


@pytest.mark.parametrize("setting, key", [
    ("studies.activation-difficulty.metric=l1_norm", "studies.activation-difficulty.metric"),
    ("studies.activation-difficulty.metric=top5_energi", "studies.activation-difficulty.metric"),
    ('studies.activation-difficulty.tasks=["add", "jsonl:x.jsonl"]', "studies.activation-difficulty.tasks"),
    ("studies.activation-difficulty.headline_site=blocks.9.hook_resid_post", "studies.activation-difficulty.headline_site"),
    ("studies.activation-difficulty.items=2", "studies.activation-difficulty.items"),
    ("studies.activation-difficulty.min_effect=1.5", "studies.activation-difficulty.min_effect"),
])
def test_bad_settings_end_with_one_line_naming_the_key(tmp_path, capsys, setting, key):
    out = tmp_path / "run"
    code, _, err = cli(["run", "activation-difficulty", "--preset", "quick", "--out", out, "--set", setting], capsys)
    assert code == 2 and key in err
    assert not out.exists()  # nothing written before the settings are checked


def test_activation_difficulty_end_to_end_quick(tmp_path):
    out = tmp_path / "ad"
    main(["run", "activation-difficulty", "--preset", "quick", "--out", str(out), "--set", "pretrain.steps=20"])
    doc = json.loads((out / "results.json").read_text())
    claims = [c for c in doc["claims"] if c["study"] == "activation-difficulty"]
    assert [c["id"] for c in claims] == ["C1", "C1"]
    assert all(c["verdict"] == "inconclusive" and "downgraded" in c["reason"] for c in claims)  # quick base is not competent
    study = doc["studies"]["activation-difficulty"]
    m = study["metrics"]
    assert m["sites"] == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post", "ln_final.hook_normalized"]
    assert set(m["by_site"]) == set(m["sites"]) and m["largest_site"] in m["sites"]
    assert m["effect"]["achieved_level"] == pytest.approx(0.95)
    assert np.isfinite(m["effect"]["value"]) and m["effect"]["interval"][0] <= m["effect"]["value"] <= m["effect"]["interval"][1]
    assert {f["name"] for f in study["figures"]} >= {"layer-effect", "accuracy-by-level", "sparsity-by-level"}
    assert set(m["accuracy"]) == {"add", "sort", "reverse", "hop", "copy", "trace", "arith"}
    assert all(set(v) == {"1", "2", "3"} for v in m["accuracy"].values())
    assert "init" in next(iter(m["by_site"].values()))  # the random-init control ran
