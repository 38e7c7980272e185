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
from .base import STUDIES, Claim, Study, StudyResult, bars_figure, heatmap_figure, lines_figure
from .stats import bootstrap_mean, wilson


@dataclass
class BaseModelConfig(Config):
    competence: float = field(0.95, "exact-match accuracy every trained (task, level) cell must reach")
    ood_gap: float = field(0.2, "how far OOD accuracy must fall below trained accuracy to count as 'clearly worse'")

    def validate(self) -> None:
        if not 0 < self.competence <= 1:
            raise ConfigError(f"studies.base-model.competence={self.competence} must lie in (0, 1].")
        if not 0 <= self.ood_gap < 1:
            raise ConfigError(f"studies.base-model.ood_gap={self.ood_gap} must lie in [0, 1).")


def _rate(cell: list[int]) -> float:
    return cell[0] / cell[1] if cell[1] else float("nan")


def weakest_trained_cell(accuracy: dict[str, dict[str, list[int]]], train_levels: list[int]) -> tuple[str, str, list[int]]:
    """(task, level, [correct, total]) of the trained cell with the lowest accuracy."""
    cells = [(t, str(lv), row[str(lv)]) for t, row in accuracy.items() for lv in train_levels if str(lv) in row]
    return min(cells, key=lambda c: _rate(c[2]))


def base_is_competent(ctx) -> tuple[bool, str]:
    """Whether the run's base model passes the base-model study's competence bar, and a line
    saying so; studies built on the base downgrade their verdicts when it does not."""
    _, history = ctx.base_model()
    bar = ctx.cfg.studies.get("base-model", {}).get("competence", BaseModelConfig().competence)
    task, level, cell = weakest_trained_cell(history[-1]["accuracy"], ctx.cfg.data.train_levels)
    ok = _rate(cell) >= bar
    return ok, f"the base model's weakest trained cell ({task}, level {level}) scores {_rate(cell):.3f} against the bar {bar}"


@STUDIES.register("base-model")
class BaseModelStudy(Study):
    name = "base-model"
    summary = "pretrain TinyLM on the synthetic task mixture (or take --model); accuracy per task and level, trained vs OOD"
    claims = ()
    Config = BaseModelConfig

    def run(self, ctx, cfg: BaseModelConfig) -> StudyResult:
        model, history = ctx.base_model()
        acc = history[-1]["accuracy"]  # evaluated on the final weights
        trained = [str(lv) for lv in ctx.cfg.data.train_levels]
        ood = [str(lv) for lv in ctx.cfg.data.ood_levels]
        tasks = list(acc)
        pretrained = ctx.source is None  # else the --model model, evaluated as given
        result = StudyResult(metrics={"accuracy": acc, "parameters": model.num_params(),
                                      "pretrain_steps": ctx.cfg.pretrain.steps if pretrained else None,
                                      "model_fingerprint": ctx.source_fingerprint})

        # Precondition 1: every trained cell at or above the competence bar.
        worst_task, worst_level, worst = weakest_trained_cell(acc, ctx.cfg.data.train_levels)
        ood_rate = _mean_rate([acc[t][lv] for t in tasks for lv in ood if lv in acc[t]])
        result.claims.append(Claim(
            id="base-competent", statement=f"the base model reaches {cfg.competence:.0%} exact match on every trained (task, level)",
            verdict="pass" if _rate(worst) >= cfg.competence else "fail",
            measure=f"weakest trained cell ({worst_task}, level {worst_level}) accuracy", value=_rate(worst),
            interval=wilson(*worst), control=f"for reference, OOD levels {', '.join(ood) or '-'}: pooled accuracy {ood_rate:.3f}",
            rule=f"pass when the weakest trained cell's accuracy (point estimate) >= {cfg.competence}"))

        # Precondition 2: OOD levels are clearly harder, task by task (a per-task gap, so a task mix
        # that differs between trained and OOD cells cannot fake one), uncertainty over tasks.
        gaps = {t: _mean_rate([acc[t][lv] for lv in trained if lv in acc[t]]) - _mean_rate([acc[t][lv] for lv in ood if lv in acc[t]])
                for t in tasks if any(lv in acc[t] for lv in ood) and any(lv in acc[t] for lv in trained)}
        lo, hi = bootstrap_mean(list(gaps.values()), seed=ctx.cfg.seed)
        gap = float(np.mean(list(gaps.values()))) if gaps else float("nan")
        verdict = "pass" if lo > cfg.ood_gap else ("fail" if np.isfinite(lo) else "inconclusive")
        result.claims.append(Claim(
            id="base-ood-gap", statement="accuracy on unseen (OOD) levels is clearly below accuracy on trained levels",
            verdict=verdict, measure=f"trained minus OOD accuracy, mean over {len(gaps)} tasks", value=gap, interval=(lo, hi),
            control=f"smallest per-task gap {min(gaps.values()):.3f} ({min(gaps, key=gaps.get)})" if gaps else "no task has both trained and OOD levels",
            rule=f"pass when the 95% bootstrap interval (over tasks) lies above {cfg.ood_gap}"))

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
        else:
            result.notes.append(f"The {ctx.source.kind} model from {ctx.source.source} ({model.num_params():,} parameters), evaluated as given: "
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
