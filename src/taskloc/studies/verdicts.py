"""Verdict rules: objects that both decide a claim and describe how they decide.

A study measures *estimates* (a point value with an interval, e.g. a mean over tasks and its 95%
interval, or a paired difference against a control) and hands them, by name, to the rule it
declared for the claim. The rule returns a verdict and the reason; its ``describe()`` text is what
the report prints beside the verdict, so the prose can never drift from the code that decided.

    rule = AllOf(Above("kept", 0.8, "share of the gain kept"), Above("vs_random", 0.0, "LT-SFT minus random"))
    decision = rule.decide({"kept": Estimate(0.9, (0.85, 0.95)), "vs_random": Estimate(0.3, (0.1, 0.5))})
    decision.verdict == "supported"; rule.describe() -> "supported when ..."

Preconditions (e.g. "the base model is competent") are decided by ``Threshold`` rules and turn
claims that depend on them into "inconclusive" through ``downgrade``.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal, Protocol

Verdict = Literal["supported", "not supported", "inconclusive"]
Check = Literal["pass", "fail"]

SUPPORTED: Verdict = "supported"
NOT_SUPPORTED: Verdict = "not supported"
INCONCLUSIVE: Verdict = "inconclusive"


@dataclass(frozen=True)
class Estimate:
    """A measured figure: point value and an interval at the stated coverage ``level``."""

    value: float
    interval: tuple[float, float]
    level: float = 0.95

    @property
    def known(self) -> bool:
        """False when there is no interval to reason with (too few tasks, or a NaN)."""
        return all(math.isfinite(x) for x in (self.value, *self.interval))


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str  # which estimates drove the verdict, with their numbers


class Rule(Protocol):
    def decide(self, estimates: Mapping[str, Estimate]) -> Decision: ...

    def describe(self) -> str:
        """The condition under which the rule says 'supported', in words."""
        ...

    def against(self) -> str:
        """The condition under which it says 'not supported'."""
        ...

    def names(self) -> list[str]: ...


def explain(rule: Rule) -> str:
    """The full rule text shown beside a verdict."""
    if isinstance(rule, FirstOf):
        return rule.describe()
    return f"supported when {rule.describe()}; not supported when {rule.against()}; otherwise inconclusive"


def _level(e: Estimate) -> str:
    return f"{e.level:.0%}"


def _get(estimates: Mapping[str, Estimate], name: str) -> Estimate | None:
    e = estimates.get(name)
    return e if e is not None and e.known else None


@dataclass(frozen=True)
class _Bound:
    """An interval against a threshold on one side: supported when the whole interval lies beyond
    ``threshold``; not supported when it lies wholly at or on the other side; inconclusive when it
    straddles the threshold."""

    name: str
    threshold: float
    label: str = ""
    above: ClassVar[bool]

    def _label(self) -> str:
        return self.label or self.name

    def decide(self, estimates: Mapping[str, Estimate]) -> Decision:
        e = _get(estimates, self.name)
        if e is None:
            return Decision(INCONCLUSIVE, f"{self._label()}: no interval")
        lo, hi = e.interval
        text = f"{self._label()} {e.value:.3g} [{lo:.3g}, {hi:.3g}]"
        beyond, behind = (lo, hi) if self.above else (-hi, -lo)  # mirror 'below' onto 'above'
        t = self.threshold if self.above else -self.threshold
        yes, no = (">", "<=") if self.above else ("<", ">=")
        if beyond > t:
            return Decision(SUPPORTED, f"{text} {yes} {self.threshold:g}")
        if behind <= t:
            return Decision(NOT_SUPPORTED, f"{text} {no} {self.threshold:g}")
        return Decision(INCONCLUSIVE, f"{text} straddles {self.threshold:g}")

    def describe(self) -> str:
        return f"the interval of {self._label()} lies {'above' if self.above else 'below'} {self.threshold:g}"

    def against(self) -> str:
        return f"the interval of {self._label()} lies at or {'below' if self.above else 'above'} {self.threshold:g}"

    def names(self) -> list[str]:
        return [self.name]


class Above(_Bound):
    """Supported when the whole interval of ``name`` lies above ``threshold``."""

    above = True


class Below(_Bound):
    """Supported when the whole interval of ``name`` lies below ``threshold``."""

    above = False


@dataclass(frozen=True)
class _Combination:
    """Parts joined by a quantifier. ``all``: supported when every part is, not supported when any
    part is not. ``any``: supported when any part is, not supported when every part is not.
    Otherwise inconclusive."""

    parts: tuple[Rule, ...]
    quantifier: ClassVar[Literal["all", "any"]]

    def __init__(self, *parts: Rule) -> None:
        object.__setattr__(self, "parts", tuple(parts))

    def decide(self, estimates: Mapping[str, Estimate]) -> Decision:
        decisions = [p.decide(estimates) for p in self.parts]
        reason = "; ".join(d.reason for d in decisions)
        wins, loses = (SUPPORTED, NOT_SUPPORTED) if self.quantifier == "all" else (NOT_SUPPORTED, SUPPORTED)
        # under "all" one 'not supported' decides; under "any" one 'supported' does (the dual)
        if any(d.verdict == loses for d in decisions):
            return Decision(loses, reason)
        if all(d.verdict == wins for d in decisions):
            return Decision(wins, reason)
        return Decision(INCONCLUSIVE, reason)

    def describe(self) -> str:
        return (" and " if self.quantifier == "all" else " or ").join(p.describe() for p in self.parts)

    def against(self) -> str:
        return (" or " if self.quantifier == "all" else " and ").join(p.against() for p in self.parts)

    def names(self) -> list[str]:
        return [n for p in self.parts for n in p.names()]


class AllOf(_Combination):
    """Supported when every part is; not supported when any part is not; else inconclusive."""

    quantifier = "all"


class AnyOf(_Combination):
    """Supported when any part is; not supported when every part is not; else inconclusive."""

    quantifier = "any"


@dataclass(frozen=True)
class FirstOf:
    """Ordered cases (label, verdict, rule): the first case whose rule is supported gives its
    verdict and label (e.g. C0's shapes: localised -> supported; redundant or dense -> not
    supported); when no case holds, the verdict is inconclusive."""

    cases: tuple[tuple[str, Verdict, Rule], ...]

    def __init__(self, *cases: tuple[str, Verdict, Rule]) -> None:
        object.__setattr__(self, "cases", tuple(cases))

    def _first(self, estimates: Mapping[str, Estimate]) -> tuple[str, Verdict, Decision] | None:
        for label, verdict, rule in self.cases:
            d = rule.decide(estimates)
            if d.verdict == SUPPORTED:
                return label, verdict, d
        return None

    def label(self, estimates: Mapping[str, Estimate]) -> str | None:
        hit = self._first(estimates)
        return hit[0] if hit else None

    def decide(self, estimates: Mapping[str, Estimate]) -> Decision:
        hit = self._first(estimates)
        if hit is not None:
            label, verdict, d = hit
            return Decision(verdict, f"{label}: {d.reason}")
        reasons = "; ".join(f"not {label} ({rule.decide(estimates).reason})" for label, _, rule in self.cases)
        return Decision(INCONCLUSIVE, reasons)

    def describe(self) -> str:
        return "; ".join(f"{verdict} ({label}) when {rule.describe()}" for label, verdict, rule in self.cases) + \
            "; otherwise inconclusive"

    def against(self) -> str:
        return " or ".join(rule.describe() for _, verdict, rule in self.cases if verdict == NOT_SUPPORTED)

    def names(self) -> list[str]:
        return [n for _, _, rule in self.cases for n in rule.names()]


@dataclass(frozen=True)
class KOfN:
    """For rules applied per unit (task, seed): supported when at least ``k`` units are supported
    and none is not; not supported when fewer than ``k`` can still be (too many units went
    against). With few units this is the honest summary: e.g. 3 of 3 tasks agreeing in sign has a
    one-sided sign-test p of 0.125, which the report states next to it."""

    k: int
    rule: Rule
    units: tuple[str, ...] = field(default=())

    def decide_units(self, per_unit: Mapping[str, Mapping[str, Estimate]]) -> Decision:
        decisions = {u: self.rule.decide(e) for u, e in per_unit.items()}
        yes = [u for u, d in decisions.items() if d.verdict == SUPPORTED]
        no = [u for u, d in decisions.items() if d.verdict == NOT_SUPPORTED]
        reason = f"{len(yes)} of {len(decisions)} supported ({', '.join(yes) or '-'}), {len(no)} not ({', '.join(no) or '-'})"
        if len(decisions) - len(no) < self.k:
            return Decision(NOT_SUPPORTED, reason)
        if len(yes) >= self.k and not no:
            return Decision(SUPPORTED, reason)
        return Decision(INCONCLUSIVE, reason)

    def decide(self, estimates: Mapping[str, Estimate]) -> Decision:
        """Estimates named ``unit/name`` are grouped by unit."""
        per_unit: dict[str, dict[str, Estimate]] = {}
        for key, e in estimates.items():
            unit, _, name = key.partition("/")
            if name:
                per_unit.setdefault(unit, {})[name] = e
        return self.decide_units(per_unit)

    def describe(self) -> str:
        return f"for at least {self.k} units (tasks), {self.rule.describe()}, and for none {self.rule.against()}"

    def against(self) -> str:
        return f"for fewer than {self.k} units can it still hold ({self.rule.against()} too often)"

    def names(self) -> list[str]:
        return self.rule.names()


@dataclass(frozen=True)
class Threshold:
    """A precondition check on a point value: pass when ``value >= bar`` (or ``<=`` with
    ``at_most``). Preconditions gate other verdicts; they are not claims."""

    bar: float
    label: str
    at_most: bool = False

    def check(self, value: float) -> Check:
        if not math.isfinite(value):
            return "fail"
        ok = value <= self.bar if self.at_most else value >= self.bar
        return "pass" if ok else "fail"

    def describe(self) -> str:
        return f"pass when {self.label} {'<=' if self.at_most else '>='} {self.bar:g}"


@dataclass(frozen=True)
class IntervalCheck:
    """A precondition on an interval: pass when the interval lies above ``bar``."""

    bar: float
    label: str

    def check(self, estimate: Estimate) -> Check | Literal["inconclusive"]:
        if not estimate.known:
            return "inconclusive"
        return "pass" if estimate.interval[0] > self.bar else "fail"

    def describe(self) -> str:
        return f"pass when the interval of {self.label} lies above {self.bar:g}"


def downgrade(verdict: Verdict, failed: Sequence[str]) -> tuple[Verdict, str]:
    """A claim whose preconditions failed cannot be decided either way: its verdict becomes
    inconclusive, and the returned note says which preconditions failed."""
    if not failed:
        return verdict, ""
    return INCONCLUSIVE, f"downgraded from {verdict!r} to inconclusive: precondition(s) {', '.join(failed)} failed"
