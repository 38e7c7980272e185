import json
import math

import pytest
import torch

from cli_runner import cli
from taskloc.errors import ConfigError
from taskloc.studies.base import Claim, StudyResult
from taskloc.studies.core_isolation import BEATS_MIXED, CoreIsolationConfig, CoreIsolationStudy
from taskloc.studies.core_isolation_plan import consolidation_stages, heuristic_order, overlap_summary, paired, related, trainable_outside, union

TASKS = ["add", "arith", "sort", "reverse"]


def test_relatedness_follows_the_families_and_overrides():
    assert related("add", "arith", {}) and related("sort", "reverse", {})
    assert not related("add", "sort", {}) and not related("add", "add", {})
    assert not related("add", "arith", {"arith": "own"})
    assert related("hop", "jsonl:x.jsonl", {"jsonl:x.jsonl": "lookup"})


def test_overlap_summary_sets_related_pairs_against_the_rest():
    # related pairs (add, arith) and (sort, reverse) overlap most
    jac = [[1, 0.4, 0.05, 0.02], [0.4, 1, 0.03, 0.01], [0.05, 0.03, 1, 0.3], [0.02, 0.01, 0.3, 1]]
    s = overlap_summary(TASKS, jac, {})
    assert [p[:3] for p in s.pairs][:2] == [("add", "arith", True), ("add", "sort", False)]
    assert s.related_mean == pytest.approx(0.35) and s.unrelated_mean == pytest.approx((0.05 + 0.02 + 0.03 + 0.01) / 4)
    assert s.rho > 0.8 and s.p_value == pytest.approx(1 / 15)  # the 2 related pairs on top: 1 of C(6, 2) placements
    flipped = overlap_summary(TASKS, [[1, 0.01, 0.4, 0.3], [0.01, 1, 0.3, 0.4], [0.4, 0.3, 1, 0.02], [0.3, 0.4, 0.02, 1]], {})
    assert flipped.difference < 0 and flipped.p_value > 0.5
    none = overlap_summary(TASKS, jac, {t: t for t in TASKS})  # every task its own family
    assert math.isnan(none.related_mean) and math.isnan(none.rho)


def test_heuristic_order_starts_isolated_and_chains_by_overlap():
    jac = [[1, 0.5, 0.1, 0.0], [0.5, 1, 0.2, 0.0], [0.1, 0.2, 1, 0.05], [0.0, 0.0, 0.05, 1]]
    # reverse overlaps least, then its best partner sort, then arith, then add
    assert heuristic_order(TASKS, jac) == ["reverse", "sort", "arith", "add"]
    assert heuristic_order(TASKS, [[0.0] * 4 for _ in range(4)]) == TASKS  # ties keep the input order


def test_consolidation_stages_freeze_earlier_groups_and_share_the_budget():
    stages = consolidation_stages(TASKS, [[0, 2], [1], [3]], 10)
    assert [s.tasks for s in stages] == [("add", "sort"), ("arith",), ("reverse",)]
    assert [s.frozen for s in stages] == [(), ("add", "sort"), ("add", "sort", "arith")]
    assert [s.steps for s in stages] == [5, 2, 3] and sum(s.steps for s in stages) == 10
    one = consolidation_stages(TASKS, [[0, 1, 2, 3]], 7)
    assert len(one) == 1 and one[0].frozen == () and one[0].steps == 7


def test_union_and_trainable_outside():
    like = {"w": torch.zeros(2, 2)}
    a, b = {"w": torch.tensor([[True, False], [False, False]])}, {"w": torch.tensor([[False, False], [False, True]])}
    u = union([a, b], like)
    assert u["w"].tolist() == [[True, False], [False, True]]
    assert trainable_outside(u)["w"].tolist() == [[False, True], [True, False]]
    assert not union([], like)["w"].any()


def test_paired_difference_runs_over_tasks_with_seeds_nested():
    tasks = [t for t in TASKS for _ in range(2)]
    seeds = [0, 1] * 4
    better = [0.10, 0.12, 0.20, 0.18, 0.05, 0.07, 0.15, 0.13]
    est, agreement = paired(better, tasks, seeds, 0.95)
    assert est.value == pytest.approx(sum(better) / 8) and est.interval[0] > 0 and est.level == 0.95
    assert "4 of 4 tasks > 0" in agreement
    assert BEATS_MIXED.decide({"ci_minus_mixed": est, "ci_minus_random": est}).verdict == "supported"
    mixed = [0.1, 0.1, -0.2, -0.2, 0.05, 0.05, -0.1, -0.1]
    est2, _ = paired(mixed, tasks, seeds, 0.95)
    assert est2.interval[0] < 0 < est2.interval[1]
    assert BEATS_MIXED.decide({"ci_minus_mixed": est2, "ci_minus_random": est}).verdict == "inconclusive"
    worse, _ = paired([-x for x in better], tasks, seeds, 0.95)
    assert BEATS_MIXED.decide({"ci_minus_mixed": worse, "ci_minus_random": est}).verdict == "not supported"
    # duplicating a task's seeds adds no unit: the interval still rests on 4 task means
    wide, _ = paired(better + better, tasks + tasks, seeds + [2, 3] * 4, 0.95)
    assert wide.value == pytest.approx(est.value)


def _claim(verdict):
    return Claim(id="C4", statement="s", verdict=verdict, measure="m", value=0.1, interval=(0.05, 0.2), level=0.95, control="c",
                 rule="r", reason="why")


def test_claims_are_downgraded_when_a_task_was_not_learned():
    cfg = CoreIsolationConfig(tasks=TASKS, min_gain=0.2)
    base = {t: 0.0 for t in TASKS}
    learned = {0: {"add": 0.5, "arith": 0.3, "sort": 0.9, "reverse": 0.25}, 1: {"add": 0.4, "arith": 0.2, "sort": 0.9, "reverse": 0.2}}
    result = StudyResult(claims=[_claim("supported")])
    CoreIsolationStudy()._tasks_learned(cfg, TASKS, base, learned, result)
    pre = result.preconditions[0]
    assert pre.check == "pass" and pre.value == pytest.approx(0.225) and pre.interval == (pytest.approx(0.2), pytest.approx(0.25))
    assert result.claims[0].verdict == "supported" and result.metrics["probe_gains"]["add"] == pytest.approx(0.45)
    # arith's fine-tune gains 0.15 over a base at 0.1: below the bar, so no verdict either way
    result = StudyResult(claims=[_claim("not supported"), _claim("supported")])
    CoreIsolationStudy()._tasks_learned(cfg, TASKS, {**base, "arith": 0.1}, learned, result)
    assert result.preconditions[0].check == "fail" and result.preconditions[0].value == pytest.approx(0.15)
    assert all(c.verdict == "inconclusive" and "core-isolation-tasks-learned" in c.reason for c in result.claims)
    assert "arith" in result.notes[-1]


@pytest.mark.parametrize("key, value", [("p", 0.0), ("p", 101.0), ("tau", 1.5), ("tau", -0.1), ("p_grid", [0.1, 0.0]),
                                        ("tau_grid", [2.0]), ("seeds", 0), ("forgetting_pairs", [["add", "hop"]]),
                                        ("finetune_on", "trained"), ("min_gain", 1.5)])
def test_bad_settings_name_the_key(key, value):
    with pytest.raises(ConfigError, match=f"studies.core-isolation.{key}"):
        CoreIsolationConfig.from_dict({key: value}, "studies.core-isolation.")


@pytest.mark.parametrize("setting, key", [("studies.core-isolation.p=0", "studies.core-isolation.p"),
                                          ("studies.core-isolation.tau=2", "studies.core-isolation.tau"),
                                          ('studies.core-isolation.tasks=["add", "sortt", "hop", "copy"]', "studies.core-isolation.tasks")])
def test_bad_settings_on_the_command_line_exit_2_and_leave_nothing(tmp_path, capsys, setting, key):
    out = tmp_path / "run"
    code, _, err = cli(["run", "core-isolation", "--preset", "quick", "--out", out, "--set", setting], capsys)
    assert code == 2 and key in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_core_isolation_study_end_to_end(tmp_path, capsys):
    out = tmp_path / "ci"
    code, _, err = cli(["run", "core-isolation", "--preset", "quick", "--out", out, "--set", "pretrain.steps=30"], capsys)
    assert code == 0, err
    doc = json.loads((out / "results.json").read_text())
    claims = [c for c in doc["claims"] if c["study"] == "core-isolation"]
    assert [c["id"] for c in claims] == ["C4", "C4"]
    # the quick base is not competent: verdicts are downgraded, never asserted
    assert all(c["verdict"] == "inconclusive" and "downgraded" in c["reason"] for c in claims)
    assert all(c["level"] == 0.95 and "control" in c["rule"] for c in claims)
    study = doc["studies"]["core-isolation"]
    assert {f["name"] for f in study["figures"]} >= {"methods", "methods-per-task", "forgetting", "core-overlap", "ablation-p"}
    m = study["metrics"]
    assert set(m["accuracy"]) >= {"multi-task mixed", "sequential (random order)", "sequential (overlap order)", "task arithmetic",
                                  "TIES", "DARE", "core isolation", "control: random cores", "control: no freezing"}
    assert all(set(by_seed) == {"0", "1"} for by_seed in m["accuracy"].values())
    assert len(m["forgetting"]) == 2 * 2  # one pair, both directions, 2 seeds
    assert set(m["ablation"]) == {"p=0.1%", "p=1%", "p=5%", "tau=0", "tau=1"}
    jac = m["overlap"]["jaccard"]
    assert all(jac[i][i] == pytest.approx(1.0) for i in range(4)) and all(0 <= v <= 1 for row in jac for v in row)
    assert m["budget"]["mixed_steps"] == 4 * m["budget"]["per_task_steps"] + m["budget"]["consolidation_steps"]
    assert sorted(m["orders"]["0"]["heuristic"]) == sorted(m["tasks"])
