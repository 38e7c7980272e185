"""Every branch of the verdict rules, on synthetic estimates, and the rules the studies declare."""
import math

import pytest

from taskloc.studies.base import Claim, apply_preconditions, decide_claim
from taskloc.studies.verdicts import (
    Above,
    AllOf,
    AnyOf,
    Below,
    Estimate,
    FirstOf,
    IntervalCheck,
    KOfN,
    Threshold,
    downgrade,
    explain,
)
from taskloc.studies.weight_delta import CONCENTRATION_RULE, LEARNED_RULE, imposed_rule, shape_rule

NAN = float("nan")


def est(lo: float, hi: float) -> Estimate:
    return Estimate((lo + hi) / 2, (lo, hi))


@pytest.mark.parametrize("interval, verdict", [((0.2, 0.4), "supported"), ((-0.3, -0.1), "not supported"),
                                               ((-0.1, 0.0), "not supported"), ((-0.1, 0.2), "inconclusive"),
                                               ((0.0, 0.2), "inconclusive")])
def test_above(interval, verdict):
    assert Above("x", 0.0).decide({"x": est(*interval)}).verdict == verdict


@pytest.mark.parametrize("interval, verdict", [((0.2, 0.4), "not supported"), ((-0.3, -0.1), "supported"),
                                               ((0.0, 0.1), "not supported"), ((-0.1, 0.2), "inconclusive")])
def test_below(interval, verdict):
    assert Below("x", 0.0).decide({"x": est(*interval)}).verdict == verdict


@pytest.mark.parametrize("estimate", [None, Estimate(NAN, (NAN, NAN)), Estimate(0.5, (NAN, 1.0)), Estimate(NAN, (0.1, 0.2))])
def test_missing_or_nan_estimate_is_inconclusive(estimate):
    estimates = {} if estimate is None else {"x": estimate}
    for rule in (Above("x", 0.0), Below("x", 0.0)):
        decision = rule.decide(estimates)
        assert decision.verdict == "inconclusive" and "no interval" in decision.reason


def test_all_of_and_any_of_every_branch():
    yes, no, maybe = est(0.5, 0.9), est(-0.9, -0.5), est(-0.1, 0.1)
    both = AllOf(Above("a", 0.0), Above("b", 0.0))
    either = AnyOf(Above("a", 0.0), Above("b", 0.0))
    cases = [((yes, yes), "supported", "supported"), ((yes, no), "not supported", "supported"),
             ((yes, maybe), "inconclusive", "supported"), ((no, no), "not supported", "not supported"),
             ((no, maybe), "not supported", "inconclusive"), ((maybe, maybe), "inconclusive", "inconclusive")]
    for (a, b), all_verdict, any_verdict in cases:
        assert both.decide({"a": a, "b": b}).verdict == all_verdict, (a, b)
        assert either.decide({"a": a, "b": b}).verdict == any_verdict, (a, b)


def test_first_of_takes_the_first_case_that_holds():
    rule = FirstOf(("localised", "supported", Above("top", 0.8)), ("redundant", "not supported", Above("rand", 0.8)),
                   ("dense", "not supported", AllOf(Below("top", 0.8), Below("rand", 0.8))))
    assert rule.decide({"top": est(0.85, 0.95), "rand": est(0.85, 0.95)}).verdict == "supported"  # order decides
    assert rule.label({"top": est(0.85, 0.95), "rand": est(0.85, 0.95)}) == "localised"
    assert rule.decide({"top": est(0.1, 0.9), "rand": est(0.85, 0.95)}).verdict == "not supported"
    assert rule.label({"top": est(0.1, 0.9), "rand": est(0.85, 0.95)}) == "redundant"
    assert rule.label({"top": est(0.0, 0.1), "rand": est(0.0, 0.2)}) == "dense"
    straddle = rule.decide({"top": est(0.5, 0.9), "rand": est(0.0, 0.2)})
    assert straddle.verdict == "inconclusive" and rule.label({"top": est(0.5, 0.9), "rand": est(0.0, 0.2)}) is None


def test_k_of_n():
    rule = KOfN(2, Above("d", 0.0))
    per = {"add/d": est(0.1, 0.2), "sort/d": est(0.1, 0.3), "hop/d": est(-0.1, 0.2)}
    assert rule.decide(per).verdict == "supported"
    per["hop/d"] = est(-0.3, -0.1)  # one unit against: no longer 'none is not'
    assert rule.decide(per).verdict == "inconclusive"
    per["sort/d"] = est(-0.3, -0.1)  # two against: at most one can hold, fewer than k
    assert rule.decide(per).verdict == "not supported"


def test_preconditions_and_downgrade():
    assert Threshold(0.95, "acc").check(0.96) == "pass" and Threshold(0.95, "acc").check(0.94) == "fail"
    assert Threshold(0.95, "acc").check(NAN) == "fail"
    assert Threshold(0.1, "loss", at_most=True).check(0.05) == "pass"
    assert IntervalCheck(0.2, "gap").check(est(0.3, 0.5)) == "pass"
    assert IntervalCheck(0.2, "gap").check(est(0.1, 0.5)) == "fail"
    assert IntervalCheck(0.2, "gap").check(Estimate(NAN, (NAN, NAN))) == "inconclusive"
    assert downgrade("supported", []) == ("supported", "")
    verdict, note = downgrade("not supported", ["base-competent"])
    assert verdict == "inconclusive" and "base-competent" in note and "'not supported'" in note


def test_apply_preconditions_downgrades_only_on_failure():
    claim = decide_claim("C0", "s", Above("x", 0.0), {"x": est(0.1, 0.2)}, "x", measure="m", control="c")
    assert isinstance(claim, Claim) and claim.verdict == "supported" and claim.interval == (0.1, 0.2)
    checks = {"base-competent": {"check": "pass", "measure": "m", "value": 0.99, "rule": "r"}}
    result = {"claims": [claim.to_dict()], "notes": []}
    apply_preconditions(result, ("base-competent",), checks)
    assert result["claims"][0]["verdict"] == "supported" and result["notes"] == []
    checks["base-competent"]["check"] = "fail"
    apply_preconditions(result, ("base-competent",), checks)
    assert result["claims"][0]["verdict"] == "inconclusive" and "downgraded" in result["claims"][0]["reason"]
    assert "base-competent" in result["notes"][0]
    missing = {"claims": [claim.to_dict()], "notes": []}
    apply_preconditions(missing, ("base-competent",), {})  # not measured counts as not passed
    assert missing["claims"][0]["verdict"] == "inconclusive"


def test_the_rule_text_is_the_deciding_objects_own():
    rule = AllOf(Above("kept", 0.8, "share kept"), Above("diff", 0.0, "minus random"))
    text = explain(rule)
    assert text.startswith("supported when the interval of share kept lies above 0.8 and the interval of minus random")
    assert "not supported when the interval of share kept lies at or below 0.8 or" in text
    claim = decide_claim("C0", "s", rule, {"kept": est(0.9, 0.95), "diff": est(0.1, 0.2)}, "kept", measure="m", control="c")
    assert claim.rule == text and "share kept" in claim.reason


def test_weight_delta_rules_are_not_inverted():
    """A delta far more concentrated than both controls is supported; one less concentrated is not."""
    up = {"vs_null": est(0.1, 0.3), "vs_shuffled": est(0.05, 0.2)}
    down = {"vs_null": est(0.1, 0.3), "vs_shuffled": est(-0.2, -0.05)}
    assert CONCENTRATION_RULE.decide(up).verdict == "supported"
    assert CONCENTRATION_RULE.decide(down).verdict == "not supported"
    graft = shape_rule(0.8, [0.01, 0.05])
    low = {"magnitude@0.01": est(0.0, 0.1), "dare@0.01": est(0.0, 0.1), "magnitude-dare@0.01": est(-0.1, 0.1)}
    localised = {**low, "magnitude@0.05": est(0.85, 0.95), "magnitude-dare@0.05": est(0.3, 0.6), "dare@0.05": est(0.2, 0.5)}
    redundant = {**low, "magnitude@0.05": est(0.85, 0.95), "magnitude-dare@0.05": est(-0.05, 0.05), "dare@0.05": est(0.85, 0.95)}
    dense = {**low, "magnitude@0.05": est(0.0, 0.3), "magnitude-dare@0.05": est(-0.1, 0.1), "dare@0.05": est(0.0, 0.3)}
    assert (graft.decide(localised).verdict, graft.label(localised)) == ("supported", "localised")
    assert graft.decide(redundant).verdict == "not supported" and graft.label(redundant).startswith("redundant")
    assert graft.decide(dense).verdict == "not supported" and graft.label(dense).startswith("dense")
    assert graft.decide({**dense, "magnitude@0.05": est(0.5, 0.9)}).verdict == "inconclusive"
    fitted = {"learned_vs_shuffled": est(0.1, 0.4), "learned_vs_gaussian": est(0.3, 0.5)}
    assert LEARNED_RULE.decide(fitted).verdict == "supported"
    assert LEARNED_RULE.decide({**fitted, "learned_vs_shuffled": est(-0.2, -0.01)}).verdict == "not supported"
    imposed = imposed_rule(0.8)
    assert imposed.decide({"lt_sft": est(0.9, 1.0), "lt_vs_random": est(0.2, 0.4)}).verdict == "supported"
    assert imposed.decide({"lt_sft": est(0.1, 0.3), "lt_vs_random": est(0.2, 0.4)}).verdict == "not supported"
    assert math.isnan(decide_claim("C0", "s", imposed, {}, "lt_sft", measure="m", control="c").value)
