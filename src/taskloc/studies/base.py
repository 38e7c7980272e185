"""What a study is: a name, a Config, the claims it tests, and run(ctx) -> StudyResult.

A StudyResult holds only JSON data. Figures are *specs* (the numbers to plot, not pictures), so
``taskloc report RUN_DIR`` can redraw the whole report from results.json without recomputing.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal

from ..config import Config
from ..registry import Registry
from ..report.figures import bars_figure, heatmap_figure, lines_figure  # noqa: F401 (studies import them from here)

Verdict = Literal["supported", "not supported", "inconclusive", "pass", "fail"]


@dataclass
class Claim:
    """One row of the verdict table. ``id`` is C0..C6 for a published claim (REFERENCE.md) or a
    short name for a precondition check that makes the other rows meaningful."""

    id: str
    statement: str
    verdict: Verdict
    measure: str  # what was measured, in words
    value: float
    interval: tuple[float, float]  # 95% interval of value
    control: str  # the control, in words, with its measured value
    rule: str  # how value/interval/control turn into the verdict
    study: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["interval"] = [float(self.interval[0]), float(self.interval[1])]
        return d


@dataclass
class StudyResult:
    metrics: dict[str, Any] = field(default_factory=dict)
    claims: list[Claim] = field(default_factory=list)
    figures: list[dict[str, Any]] = field(default_factory=list)
    tables: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"metrics": self.metrics, "claims": [c.to_dict() for c in self.claims],
                "figures": self.figures, "tables": self.tables, "notes": self.notes}


class Study:
    name: ClassVar[str]
    summary: ClassVar[str]
    claims: ClassVar[tuple[str, ...]] = ()
    Config: ClassVar[type[Config]] = Config

    def check(self, cfg: Config, run_cfg: Config) -> None:
        """Validate settings against the whole run's config (tasks, levels) before any work
        starts; raise ConfigError naming the setting and the fix."""

    def run(self, ctx: RunContext, cfg: Config) -> StudyResult:  # noqa: F821
        raise NotImplementedError


STUDIES: Registry[type[Study]] = Registry("study")

