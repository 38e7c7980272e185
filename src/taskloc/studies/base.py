"""What a study is: a name, a Config, the claims it tests, and run(ctx) -> StudyResult.

A StudyResult holds only JSON data. Figures are *specs* (the numbers to plot, not pictures), so
``taskloc report RUN_DIR`` can redraw the whole report from results.json without recomputing.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal

from ..config import Config
from ..registry import Registry

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


def lines_figure(name: str, title: str, xlabel: str, ylabel: str, series: list[dict], *, logx: bool = False,
                 ylim: tuple[float, float] | None = None, caption: str = "") -> dict[str, Any]:
    """Spec for a line plot; each series: {label, x, y, optional lo/hi (band), optional style}."""
    return {"kind": "lines", "name": name, "title": title, "xlabel": xlabel, "ylabel": ylabel,
            "series": series, "logx": logx, "ylim": list(ylim) if ylim else None, "caption": caption}


def heatmap_figure(name: str, title: str, rows: list[str], cols: list[str], values: list[list[float]], *,
                   caption: str = "", col_groups: dict[str, list[str]] | None = None, fmt: str = ".2f") -> dict[str, Any]:
    return {"kind": "heatmap", "name": name, "title": title, "rows": rows, "cols": cols, "values": values,
            "caption": caption, "col_groups": col_groups, "fmt": fmt}


def bars_figure(name: str, title: str, categories: list[str], groups: list[dict], ylabel: str, *,
                caption: str = "", ylim: tuple[float, float] | None = None) -> dict[str, Any]:
    """Grouped bars; each group: {label, values, optional lo/hi (error bars)}."""
    return {"kind": "bars", "name": name, "title": title, "categories": categories, "groups": groups,
            "ylabel": ylabel, "caption": caption, "ylim": list(ylim) if ylim else None}
