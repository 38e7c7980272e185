"""base-model: pretrain TinyLM on the task mixture and report what it can do.

Every other study fine-tunes, probes or steers this model, so this one checks the precondition
that makes them meaningful: the base solves its trained levels and is clearly worse on the
out-of-distribution levels it never saw.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import Config, field
from ..errors import ConfigError
from ..stats import bootstrap_diff, wilson
from .base import STUDIES, Claim, Study, StudyResult, bars_figure, heatmap_figure, lines_figure


@dataclass
class BaseModelConfig(Config):
    competence: float = field(0.95, "exact-match accuracy every trained (task, level) cell must reach")

    def validate(self) -> None:
        if not 0 < self.competence <= 1:
            raise ConfigError(f"studies.base-model.competence={self.competence} must lie in (0, 1].")


def _rate(cell: list[int]) -> float:
    return cell[0] / cell[1] if cell[1] else float("nan")


@STUDIES.register("base-model")
class BaseModelStudy(Study):
    name = "base-model"
    summary = "pretrain TinyLM on the synthetic task mixture; accuracy per task and level, trained vs OOD"
    claims = ()
    Config = BaseModelConfig

    def run(self, ctx, cfg: BaseModelConfig) -> StudyResult:
        model, history = ctx.base_model()
        acc = history[-1]["accuracy"]  # evaluated on the final weights
        trained = [str(lv) for lv in ctx.cfg.data.train_levels]
        ood = [str(lv) for lv in ctx.cfg.data.ood_levels]
        tasks = list(acc)
        result = StudyResult(metrics={"accuracy": acc, "parameters": model.num_params(),
                                      "pretrain_steps": ctx.cfg.pretrain.steps})

        # Precondition 1: every trained cell at or above the competence bar.
        cells = [(t, lv) for t in tasks for lv in trained if lv in acc[t]]
        worst_task, worst_level = min(cells, key=lambda c: _rate(acc[c[0]][c[1]]))
        worst = acc[worst_task][worst_level]
        ood_hits = [acc[t][lv] for t in tasks for lv in ood if lv in acc[t]]
        ood_rate = sum(c[0] for c in ood_hits) / max(1, sum(c[1] for c in ood_hits))
        result.claims.append(Claim(
            id="base-competent", statement=f"the pretrained base reaches {cfg.competence:.0%} exact match on every trained (task, level)",
            verdict="pass" if _rate(worst) >= cfg.competence else "fail",
            measure=f"weakest trained cell ({worst_task}, level {worst_level}) accuracy", value=_rate(worst),
            interval=wilson(*worst), control=f"OOD levels {', '.join(ood)}: pooled accuracy {ood_rate:.3f}",
            rule=f"pass when the weakest trained cell >= {cfg.competence}"))

        # Precondition 2: OOD levels are clearly harder (per-example accuracy difference).
        per_ex_trained = np.concatenate([[1] * acc[t][lv][0] + [0] * (acc[t][lv][1] - acc[t][lv][0]) for t, lv in cells])
        per_ex_ood = np.concatenate([[1] * c[0] + [0] * (c[1] - c[0]) for c in ood_hits]) if ood_hits else np.zeros(0)
        if per_ex_ood.size:
            gap = float(per_ex_trained.mean() - per_ex_ood.mean())
            lo, hi = bootstrap_diff(per_ex_trained, per_ex_ood, seed=ctx.cfg.seed)
            result.claims.append(Claim(
                id="base-ood-gap", statement="accuracy on unseen (OOD) levels is clearly below accuracy on trained levels",
                verdict="pass" if lo > 0.2 else "fail", measure="trained minus OOD accuracy (pooled examples)", value=gap,
                interval=(lo, hi), control=f"trained-level accuracy {per_ex_trained.mean():.3f} is the reference",
                rule="pass when the 95% bootstrap interval's lower end > 0.2"))

        levels = trained + ood
        result.figures.append(heatmap_figure(
            "accuracy-grid", "Exact-match accuracy by task and level", tasks, [f"L{lv}" for lv in levels],
            [[_rate(acc[t][lv]) if lv in acc[t] else float("nan") for lv in levels] for t in tasks],
            col_groups={"trained": [f"L{lv}" for lv in trained], "OOD": [f"L{lv}" for lv in ood]},
            caption=f"{ctx.cfg.eval.examples} fixed examples per cell; greedy decoding, exact match."))
        steps = [h["step"] for h in history]
        series = []
        for t in tasks:
            series.append({"label": t, "x": steps, "y": [float(np.mean([_rate(h["accuracy"][t][lv]) for lv in trained])) for h in history]})
        result.figures.append(lines_figure(
            "learning-curves", "Pretraining: accuracy on trained levels", "step", "exact match",
            series, ylim=(-0.02, 1.02), caption="Mean over trained levels, evaluated every eval_every steps."))
        if ood:
            tr = [_mean_rate([h["accuracy"][t][lv] for t in tasks for lv in trained]) for h in history]
            od = [_mean_rate([h["accuracy"][t][lv] for t in tasks for lv in ood]) for h in history]
            result.figures.append(lines_figure(
                "trained-vs-ood", "Pretraining: trained vs OOD levels", "step", "exact match (pooled)",
                [{"label": "trained levels", "x": steps, "y": tr}, {"label": "OOD levels", "x": steps, "y": od, "style": "--"}],
                ylim=(-0.02, 1.02)))
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
        result.notes.append(f"TinyLM with {model.num_params():,} parameters, pretrained for {ctx.cfg.pretrain.steps} steps "
                            f"of {ctx.cfg.pretrain.batch_size} examples on levels {', '.join(trained)}; "
                            f"levels {', '.join(ood) or 'none'} are never trained on.")
        return result


def _mean_rate(cells: list[list[int]]) -> float:
    k, n = sum(c[0] for c in cells), sum(c[1] for c in cells)
    return k / n if n else float("nan")
