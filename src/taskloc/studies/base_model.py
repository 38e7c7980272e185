"""base-model: pretrain TinyLM on the task mixture (or take the --model model) and report what
it can do.

Every other study fine-tunes, probes or steers this model, so this one checks the precondition
that makes them meaningful: the base solves its trained levels and is clearly worse on the
out-of-distribution levels it never saw.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import Config, field
from ..errors import ConfigError
from .base import STUDIES, Precondition, Study, StudyResult, bars_figure, heatmap_figure, lines_figure
from .context import StudyContext
from .stats import t_interval, wilson
from .verdicts import Estimate, IntervalCheck, Threshold


@dataclass
class BaseModelConfig(Config):
    section = "studies.base-model."
    competence: float = field(0.95, "exact-match accuracy every trained (task, level) cell must reach")
    ood_gap: float = field(0.2, "how far OOD accuracy must fall below trained accuracy to count as 'clearly worse'")

    def validate(self) -> None:
        if not 0 < self.competence <= 1:
            raise ConfigError(f"{self.key('competence')}={self.competence} must lie in (0, 1].")
        if not 0 <= self.ood_gap < 1:
            raise ConfigError(f"{self.key('ood_gap')}={self.ood_gap} must lie in [0, 1).")


def _rate(cell: list[int]) -> float:
    return cell[0] / cell[1] if cell[1] else float("nan")


def weakest_trained_cell(accuracy: dict[str, dict[str, list[int]]], train_levels: list[int]) -> tuple[str, str, list[int]]:
    """(task, level, [correct, total]) of the trained cell with the lowest accuracy."""
    cells = [(t, str(lv), row[str(lv)]) for t, row in accuracy.items() for lv in train_levels if str(lv) in row]
    return min(cells, key=lambda c: _rate(c[2]))


@STUDIES.register("base-model")
class BaseModelStudy(Study):
    name = "base-model"
    summary = "pretrain TinyLM on the synthetic task mixture (or take --model); accuracy per task and level, trained vs OOD"
    claims = ()
    provides = ("base-competent", "base-ood-gap")
    Config = BaseModelConfig

    def run(self, ctx: StudyContext, cfg: BaseModelConfig) -> StudyResult:
        base = ctx.base_model()
        model, history = base.model, base.history
        acc = base.final_accuracy  # evaluated on the final weights
        trained = [str(lv) for lv in ctx.cfg.data.train_levels]
        ood = [str(lv) for lv in ctx.cfg.data.ood_levels]
        tasks = list(acc)
        pretrained = ctx.given is None  # else the --model model, evaluated as given
        result = StudyResult(metrics={"accuracy": acc, "parameters": model.num_params(),
                                      "pretrain_steps": ctx.cfg.pretrain.steps if pretrained else None,
                                      "model_fingerprint": ctx.given_fingerprint})

        # Precondition 1: every trained cell at or above the competence bar.
        worst_task, worst_level, worst = weakest_trained_cell(acc, ctx.cfg.data.train_levels)
        ood_rate = _mean_rate([acc[t][lv] for t in tasks for lv in ood if lv in acc[t]])
        competent = Threshold(cfg.competence, "the weakest trained cell's exact match (point estimate)")
        result.preconditions.append(Precondition(
            id="base-competent", statement=f"the base model reaches {cfg.competence:.0%} exact match on every trained (task, level)",
            check=competent.check(_rate(worst)), measure=f"weakest trained cell ({worst_task}, level {worst_level}) accuracy",
            value=_rate(worst), interval=wilson(*worst),
            control=f"for reference, OOD levels {', '.join(ood) or '-'}: pooled accuracy {ood_rate:.3f}", rule=competent.describe()))

        # Precondition 2: OOD levels are clearly harder, task by task (a per-task gap, so a task mix
        # that differs between trained and OOD cells cannot fake one), uncertainty over tasks.
        gaps = {t: _mean_rate([acc[t][lv] for lv in trained if lv in acc[t]]) - _mean_rate([acc[t][lv] for lv in ood if lv in acc[t]])
                for t in tasks if any(lv in acc[t] for lv in ood) and any(lv in acc[t] for lv in trained)}
        # t over the per-task gaps: its 95% is exact for normal task gaps at any task count, where
        # a percentile bootstrap over 7 tasks covers ~0.88 (studies/stats.py).
        spread = t_interval(list(gaps.values()))
        lo, hi = spread.lo, spread.hi
        gap = float(np.mean(list(gaps.values()))) if gaps else float("nan")
        harder = IntervalCheck(cfg.ood_gap, f"trained minus OOD accuracy (95% t interval over {len(gaps)} task gaps)")
        result.preconditions.append(Precondition(
            id="base-ood-gap", statement="accuracy on unseen (OOD) levels is clearly below accuracy on trained levels",
            check=harder.check(Estimate(gap, (lo, hi))), measure=f"trained minus OOD accuracy, mean over {len(gaps)} tasks",
            value=gap, interval=(lo, hi),
            control=f"smallest per-task gap {min(gaps.values()):.3f} ({min(gaps, key=gaps.get)})" if gaps else "no task has both trained and OOD levels",
            rule=harder.describe()))

        levels = trained + ood
        result.figures.append(heatmap_figure(
            "accuracy-grid", "Exact-match accuracy by task and level", tasks, [f"L{lv}" for lv in levels],
            [[_rate(acc[t][lv]) if lv in acc[t] else float("nan") for lv in levels] for t in tasks],
            col_groups={"trained": [f"L{lv}" for lv in trained], "OOD": [f"L{lv}" for lv in ood]},
            caption=f"{ctx.cfg.eval.examples} fixed examples per cell; greedy decoding, exact match."))
        if pretrained:
            result.figures.extend(_learning_curves(history, tasks, trained, ood))
        groups = []
        for label, lvls in (("trained", trained), ("OOD", ood)):
            vals, lo, hi = [], [], []
            for t in tasks:
                hits = [acc[t][lv] for lv in lvls if lv in acc[t]]
                k, n = sum(h[0] for h in hits), sum(h[1] for h in hits)
                vals.append(k / n if n else float("nan"))
                a, b = wilson(k, n)
                lo.append(a)
                hi.append(b)
            groups.append({"label": f"{label} levels", "values": vals, "lo": lo, "hi": hi})
        result.figures.append(bars_figure("per-task", "Per task: trained vs OOD (95% Wilson)", tasks, groups,
                                          "exact match", ylim=(0, 1.05)))
        result.tables.append({"title": "Accuracy per task and level (correct / total)",
                              "columns": ["task"] + [f"L{lv}{' (OOD)' if lv in ood else ''}" for lv in levels],
                              "rows": [[t] + [f"{acc[t][lv][0]}/{acc[t][lv][1]}" if lv in acc[t] else "-" for lv in levels] for t in tasks]})
        if any(name.startswith("jsonl:") for name in ctx.cfg.data.tasks):
            result.notes.append("Tasks read from JSONL files are evaluated on examples drawn from the same file they "
                                "are trained on: their accuracy measures fitting that file, not generalisation.")
        if pretrained:
            result.notes.append(f"TinyLM with {model.num_params():,} parameters, pretrained for {ctx.cfg.pretrain.steps} steps "
                                f"of {ctx.cfg.pretrain.batch_size} examples on levels {', '.join(trained)}; "
                                f"levels {', '.join(ood) or 'none'} are never trained on.")
            if base.origin:  # the shipped base (studies/embedded.py): same key, so the same config, data and code
                result.notes.append(f"This base was not pretrained in this run: it was {base.origin}. It was built under "
                                    "the same cache key (config, training data and training code), so this code trains it; "
                                    "its bytes are those of the machine that trained it.")
        else:
            result.notes.append(f"The {ctx.given.kind} model from {ctx.given.source} ({model.num_params():,} parameters), evaluated as given: "
                                f"'trained' levels {', '.join(trained)} are the levels the studies fine-tune on, which "
                                "this model may never have seen.")
        return result


def _learning_curves(history: list[dict], tasks: list[str], trained: list[str], ood: list[str]) -> list[dict]:
    """Pretraining curves: per task on trained levels, and pooled trained vs OOD."""
    steps = [h["step"] for h in history]
    series, figures = [], []
    for t in tasks:
        series.append({"label": t, "x": steps, "y": [_mean_rate([h["accuracy"][t][lv] for lv in trained if lv in h["accuracy"][t]])
                                                       for h in history]})
    figures.append(lines_figure(
        "learning-curves", "Pretraining: accuracy on trained levels", "step", "exact match",
        series, ylim=(-0.02, 1.02), caption="Mean over trained levels, evaluated every eval_every steps."))
    if ood:
        tr = [_mean_rate([h["accuracy"][t][lv] for t in tasks for lv in trained if lv in h["accuracy"][t]]) for h in history]
        od = [_mean_rate([h["accuracy"][t][lv] for t in tasks for lv in ood if lv in h["accuracy"][t]]) for h in history]
        figures.append(lines_figure(
            "trained-vs-ood", "Pretraining: trained vs OOD levels", "step", "exact match (pooled)",
            [{"label": "trained levels", "x": steps, "y": tr}, {"label": "OOD levels", "x": steps, "y": od, "style": "--"}],
            ylim=(-0.02, 1.02)))
    return figures


def _mean_rate(cells: list[list[int]]) -> float:
    k, n = sum(c[0] for c in cells), sum(c[1] for c in cells)
    return k / n if n else float("nan")
