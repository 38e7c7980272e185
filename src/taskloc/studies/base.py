"""What a study is: a name, a Config, the claims it tests, the preconditions it provides or
requires, and run(ctx) -> StudyResult; and the claim/precondition records a run reports."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from ..config import Config
from ..registry import Registry
from ..report.figures import bars_figure, heatmap_figure, lines_figure  # noqa: F401 (studies import them from here)
from .verdicts import Estimate, Rule, Verdict, downgrade, explain

if TYPE_CHECKING:
    from ..runconfig import RunConfig
    from .context import StudyContext


@dataclass
class Claim:
    """One row of the verdict table: a published claim (C0..C6, docs/claims.md) tested by a study.
    ``verdict`` and ``reason`` come from ``rule``; ``rule_text`` is that rule's own description."""

    id: str
    statement: str
    verdict: Verdict
    measure: str  # what was measured, in words
    value: float
    interval: tuple[float, float]
    level: float  # coverage the interval is built for (0.95 where honest at the study's size)
    control: str  # the control, in words, with its measured value
    rule: str  # how the estimates turn into the verdict (the deciding rule's describe())
    reason: str = ""  # the numbers that decided it
    study: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["interval"] = [float(self.interval[0]), float(self.interval[1])]
        return d


def decide_claim(id: str, statement: str, rule: Rule, estimates: Mapping[str, Estimate], headline: str, *,
                 measure: str, control: str) -> Claim:
    """The claim ``rule`` decides from ``estimates``; ``headline`` names the estimate shown as the
    measured figure and interval."""
    decision = rule.decide(estimates)
    shown = estimates.get(headline) or Estimate(float("nan"), (float("nan"), float("nan")))
    return Claim(id=id, statement=statement, verdict=decision.verdict, measure=measure, value=shown.value,
                 interval=shown.interval, level=shown.level, control=control, rule=explain(rule), reason=decision.reason)


@dataclass
class Precondition:
    """A check that makes claims meaningful (e.g. the base model is competent). Claims of a study
    that ``requires`` a failed precondition are downgraded to inconclusive by the runner."""

    id: str
    statement: str
    check: Literal["pass", "fail", "inconclusive"]
    measure: str
    value: float
    interval: tuple[float, float]
    control: str
    rule: str
    study: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["interval"] = [float(self.interval[0]), float(self.interval[1])]
        return d


@dataclass
class StudyResult:
    """Only JSON data. Figures are specs (the numbers to plot), so ``taskloc report`` can redraw
    the report from results.json without recomputing."""

    metrics: dict[str, Any] = field(default_factory=dict)
    claims: list[Claim] = field(default_factory=list)
    preconditions: list[Precondition] = field(default_factory=list)
    figures: list[dict[str, Any]] = field(default_factory=list)
    tables: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"metrics": self.metrics, "claims": [c.to_dict() for c in self.claims],
                "preconditions": [p.to_dict() for p in self.preconditions],
                "figures": self.figures, "tables": self.tables, "notes": self.notes}


def apply_preconditions(result: dict[str, Any], required: tuple[str, ...], checks: Mapping[str, dict[str, Any]]) -> None:
    """Downgrade ``result``'s claims (a StudyResult dict) when a precondition it requires did not
    pass; say so in the claim and in the study's notes."""
    failed = [p for p in required if checks.get(p, {}).get("check") != "pass"]
    if not failed:
        return
    for claim in result["claims"]:
        claim["verdict"], note = downgrade(claim["verdict"], failed)
        claim["reason"] = f"{note}; {claim['reason']}" if claim.get("reason") else note
    why = "; ".join(f"{p}: {checks[p]['measure']} = {checks[p]['value']:.3f} ({checks[p]['rule']})" if p in checks else f"{p}: not measured"
                    for p in failed)
    result["notes"].append(f"Verdicts downgraded to inconclusive because a precondition failed ({why}): measurements on a "
                           "model that has not learned its tasks say little about the claims.")


class Study:
    """A study: a name, a Config, the claims it tests, the preconditions it provides and those it
    requires (the runner runs the provider first and downgrades claims when one fails)."""

    name: ClassVar[str]
    summary: ClassVar[str]
    claims: ClassVar[tuple[str, ...]] = ()
    provides: ClassVar[tuple[str, ...]] = ()  # precondition ids this study measures
    requires: ClassVar[tuple[str, ...]] = ()  # precondition ids this study's claims depend on
    Config: ClassVar[type[Config]] = Config

    def check(self, cfg: Config, run_cfg: RunConfig) -> None:
        """Validate settings against the whole run's config (tasks, levels) before any work
        starts; raise ConfigError naming the setting and the fix."""

    @classmethod
    def rules(cls, cfg: Config) -> list[tuple[str, str, Rule]]:
        """(claim id, what is tested, deciding rule) at settings ``cfg``: docs/claims.md and
        `taskloc claims` print these, so the published rule text is the deciding code's own."""
        return []

    def run(self, ctx: StudyContext, cfg: Config) -> StudyResult:
        raise NotImplementedError


STUDIES: Registry[type[Study]] = Registry("study")

