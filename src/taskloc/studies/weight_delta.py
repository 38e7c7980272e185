"""weight-delta: do full fine-tuning updates land in a small subset of weights? (claim C0)

For each task and seed, fine-tune the pretrained base on the task including the first level it
has never seen (so there is a real skill to gain), then ask of the delta = tuned - base:

1. concentration: what share of sum(delta^2) sits in the top k% entries, against a dense
   Gaussian null of the same per-tensor size and against a shuffled-label fine-tune (same steps
   and prompts, permuted targets) that shows what optimisation noise alone looks like;
2. grafting: accuracy of base + top-k% of delta (by magnitude), against base + a random k%
   rescaled by 1/k (DARE) and a random k% unscaled, as a fraction of full fine-tuning's gain --
   this separates localised (top-k works, random does not) from redundant (random rescaled works
   too) from dense (neither works at small k);
3. support stability: Jaccard of top-1% sets across seeds of one task, across tasks, and chance;
4. imposed vs natural: training only a k% mask chosen from a short probe run (LT-SFT) against a
   random k% mask and full fine-tuning, at equal steps;
5. where the change lives: share of delta energy per layer and module kind vs parameter share.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..config import Config, field
from ..data import ShuffledTargets, TaskMixture, eval_examples
from ..deltas import concentration_curve, gaussian_null_curve, global_topk_mask
from ..deltas.inmemory import random_mask, tensor_profile
from ..errors import ConfigError
from ..evaluate import exact_match
from ..progress import progress_bar
from ..stats import bootstrap_diff, bootstrap_mean
from ..tasks import get_task
from ..train import TrainConfig
from .base import STUDIES, Claim, Study, StudyResult, bars_figure, lines_figure

StateDict = dict[str, torch.Tensor]


@dataclass
class WeightDeltaConfig(Config):
    tasks: list[str] = field(["add", "sort", "hop", "copy"], "tasks to fine-tune on, one delta per task and seed")
    seeds: int = field(3, "fine-tuning seeds per task (data order); uncertainty is across task x seed runs")
    control_seeds: int = field(1, "seeds per task for the shuffled-label control and the masked (LT-SFT / random) runs")
    target_level: int = field(0, "level whose accuracy is the skill gained (0: the first OOD level)")
    finetune: TrainConfig = field(TrainConfig(steps=200, batch_size=64, lr=1e-3, warmup=20, eval_every=10**9,
                                              ckpt_every=50), "fine-tuning schedule (all regimes use it)")
    graft_fractions: list[float] = field([0.001, 0.01, 0.05, 0.1, 0.25, 1.0], "k values of the grafting curves (fractions)")
    support_fraction: float = field(0.01, "k of the top-k support used for Jaccard and the headline figures")
    mask_fraction: float = field(0.01, "k of the imposed masks (LT-SFT and random)")
    probe_steps: int = field(40, "steps of the short probe run whose delta chooses the LT-SFT mask")
    recovered: float = field(0.8, "share of the fine-tuning gain that counts as 'recovered'")
    min_gain: float = field(0.2, "runs whose full fine-tuning gains less accuracy than this are excluded from ratios")

    def validate(self) -> None:
        if self.seeds < 2:
            raise ConfigError(f"studies.weight-delta.seeds={self.seeds}: need at least 2 seeds for a seed-level interval.")
        for name in ("support_fraction", "mask_fraction"):
            if not 0 < getattr(self, name) <= 1:
                raise ConfigError(f"studies.weight-delta.{name}={getattr(self, name)} must lie in (0, 1].")
        if any(not 0 <= f <= 1 for f in self.graft_fractions):
            raise ConfigError(f"studies.weight-delta.graft_fractions={self.graft_fractions}: each must lie in [0, 1].")


CURVE_GRID = [0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5]


def deltas_of(tuned: StateDict, base: StateDict) -> StateDict:
    return {k: tuned[k].float() - base[k].float() for k in base}


def graft(base: StateDict, tuned: StateDict, mask: dict[str, torch.Tensor], scale: float = 1.0) -> StateDict:
    """base + scale * mask * (tuned - base). With scale 1 the masked entries are copied from
    ``tuned`` (not recomputed), so a full mask reproduces the tuned model bit for bit."""
    if scale == 1.0:
        return {k: torch.where(mask[k], tuned[k], base[k]) for k in base}
    return {k: torch.where(mask[k], base[k] + scale * (tuned[k] - base[k]), base[k]) for k in base}


def jaccard(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    inter = sum(int((a[k] & b[k]).sum()) for k in a)
    union = sum(int((a[k] | b[k]).sum()) for k in a)
    return inter / union if union else float("nan")


@STUDIES.register("weight-delta")
class WeightDeltaStudy(Study):
    name = "weight-delta"
    summary = "full fine-tuning deltas: concentration vs null and shuffled control, grafting, support overlap, LT-SFT"
    claims = ("C0",)
    Config = WeightDeltaConfig

    def run(self, ctx, cfg: WeightDeltaConfig) -> StudyResult:
        base_model, _ = ctx.base_model()
        base = {k: v.detach().clone() for k, v in base_model.state_dict().items()}
        level = cfg.target_level or (ctx.cfg.data.ood_levels[0] if ctx.cfg.data.ood_levels else max(ctx.cfg.data.train_levels))
        levels = sorted(set(ctx.cfg.data.train_levels) | {level})
        tasks = [get_task(t) for t in cfg.tasks]
        probe_model = ctx.new_model()

        def accuracy(state: StateDict, task) -> np.ndarray:
            probe_model.load_state_dict(state)
            return exact_match(probe_model, eval_examples(task, level, ctx.cfg.eval.examples, ctx.cfg.eval.seed)).numpy()

        def ft(task, seed, regime, mixture=None, mask=None, train_cfg=None):
            mixture = mixture or TaskMixture([task], levels, seed=1000 + seed)
            return ctx.finetune(f"{regime} {task.name} s{seed}", {"task": task.name, "seed": seed, "regime": regime,
                                                                 "levels": levels}, base, mixture,
                                train_cfg or cfg.finetune, mask=mask)

        runs: list[dict[str, Any]] = []  # one per (task, seed) full fine-tune
        controls: list[dict[str, Any]] = []
        n_jobs = len(tasks) * (cfg.seeds + 3 * cfg.control_seeds)
        with progress_bar("weight-delta fine-tunes", total=n_jobs) as advance:
            for task in tasks:
                base_acc = accuracy(base, task)
                for seed in range(cfg.seeds):
                    tuned = ft(task, seed, "full")
                    runs.append({"task": task.name, "seed": seed, "tuned": tuned, "delta": deltas_of(tuned, base),
                                 "base_acc": base_acc, "ft_acc": accuracy(tuned, task)})
                    advance()
                for seed in range(cfg.control_seeds):
                    shuffled = ft(task, seed, "shuffled", mixture=ShuffledTargets(TaskMixture([task], levels, seed=1000 + seed)))
                    advance()
                    probe_cfg = TrainConfig(**{**cfg.finetune.to_dict(), "steps": cfg.probe_steps,
                                               "warmup": min(cfg.finetune.warmup, cfg.probe_steps)})
                    probe = ft(task, seed, "probe", train_cfg=probe_cfg)
                    lt_mask = global_topk_mask(deltas_of(probe, base), cfg.mask_fraction)
                    lt = ft(task, seed, "lt-sft", mask=lt_mask)
                    advance()
                    rnd_mask = random_mask({k: v.shape for k, v in base.items()}, cfg.mask_fraction, seed=5000 + seed)
                    rnd = ft(task, seed, "random-mask", mask=rnd_mask)
                    advance()
                    controls.append({"task": task.name, "seed": seed, "shuffled_delta": deltas_of(shuffled, base),
                                     "base_acc": base_acc, "lt_acc": accuracy(lt, task), "rnd_acc": accuracy(rnd, task)})

            graft_rows = self._grafting(ctx, cfg, base, runs, tasks, accuracy)

        result = StudyResult(metrics={"target_level": level, "finetune_levels": levels})
        self._concentration(ctx, cfg, base, runs, controls, result)
        self._grafting_report(cfg, runs, graft_rows, result)
        self._support(cfg, runs, result)
        self._imposed(cfg, runs, controls, result)
        self._profile(base, runs, result)
        result.notes.insert(0, (
            f"{len(tasks)} tasks x {cfg.seeds} seeds of full fine-tuning ({cfg.finetune.steps} steps of {cfg.finetune.batch_size}) "
            f"on levels {levels}; the skill gained is accuracy at level {level}, which the base never trained on. "
            f"Intervals are 95% bootstrap intervals over task x seed runs."))
        return result

    # -- 2. grafting -----------------------------------------------------------------------------
    def _grafting(self, ctx, cfg, base, runs, tasks, accuracy) -> list[dict[str, Any]]:
        by_name = {t.name: t for t in tasks}
        shapes = {k: v.shape for k, v in base.items()}
        rows = []
        for i, run in enumerate(runs):
            task = by_name[run["task"]]
            for frac in cfg.graft_fractions:
                top = global_topk_mask(run["delta"], frac)
                rnd = random_mask(shapes, frac, seed=7000 + i)
                row = {"run": i, "fraction": frac,
                       "top-k": accuracy(graft(base, run["tuned"], top), task).mean(),
                       "random": accuracy(graft(base, run["tuned"], rnd), task).mean(),
                       "DARE (random, x1/k)": accuracy(graft(base, run["tuned"], rnd, scale=1 / frac if frac > 0 else 1.0), task).mean()}
                rows.append(row)
        return rows

    def _grafting_report(self, cfg, runs, rows, result: StudyResult) -> None:
        methods = ["top-k", "DARE (random, x1/k)", "random"]
        # A ratio over a vanishing gain is noise, so runs that barely learned are left out.
        valid = [i for i, r in enumerate(runs) if r["ft_acc"].mean() - r["base_acc"].mean() >= max(cfg.min_gain, 1e-6)]
        result.metrics["runs"] = [{"task": r["task"], "seed": r["seed"], "base_acc": float(r["base_acc"].mean()),
                                   "ft_acc": float(r["ft_acc"].mean())} for r in runs]
        result.metrics["valid_runs"] = len(valid)

        def recovered(row, method):
            run = runs[row["run"]]
            gain = run["ft_acc"].mean() - run["base_acc"].mean()
            return (row[method] - run["base_acc"].mean()) / gain

        curves: dict[str, dict[float, list[float]]] = {m: {} for m in methods}
        for row in rows:
            if row["run"] in valid:
                for m in methods:
                    curves[m].setdefault(row["fraction"], []).append(recovered(row, m))
        result.metrics["grafting"] = {m: {str(f): float(np.mean(v)) for f, v in c.items()} for m, c in curves.items()}
        fracs = [f for f in cfg.graft_fractions if f > 0]
        series = []
        for m in methods:
            ys = [float(np.mean(curves[m].get(f, [np.nan]))) for f in fracs]
            ci = [bootstrap_mean(curves[m].get(f, []), seed=1) for f in fracs]
            series.append({"label": m, "x": [100 * f for f in fracs], "y": ys, "lo": [c[0] for c in ci], "hi": [c[1] for c in ci]})
        result.figures.append(lines_figure(
            "grafting", "Grafting: share of the fine-tuning gain kept", "k (% of all weights kept from the delta)",
            "recovered gain (1 = full fine-tune)", series, logx=True,
            caption=f"base + k% of delta; bands: 95% bootstrap over {len(valid)} runs with gain >= {cfg.min_gain}."))

        k = cfg.support_fraction
        if not valid or k not in curves["top-k"]:
            result.claims.append(Claim(
                id="C0", statement=f"the top-{k:.0%} of the fine-tuning delta by magnitude carries the skill (magnitude-localised)",
                verdict="inconclusive", measure="recovered gain of the top-k graft", value=float("nan"), interval=(float("nan"),) * 2,
                control="no run gained enough to measure", rule=f"needs runs whose fine-tuning gain >= {cfg.min_gain}"))
            return
        top, dare, rnd = curves["top-k"][k], curves["DARE (random, x1/k)"][k], curves["random"][k]
        lo, hi = bootstrap_mean(top, seed=2)
        dlo, dhi = bootstrap_diff(top, dare, seed=3)
        dare_lo, dare_hi = bootstrap_mean(dare, seed=4)
        if lo >= cfg.recovered and dlo > 0:
            verdict, shape = "supported", "localised"
        elif dare_lo >= cfg.recovered:
            verdict, shape = "not supported", "redundant (random rescaled works as well)"
        elif hi < cfg.recovered and dare_hi < cfg.recovered:
            verdict, shape = "not supported", "dense (neither top-k nor random keeps the skill)"
        else:
            verdict, shape = "inconclusive", "intervals straddle the threshold"
        result.metrics["grafting_shape"] = shape
        result.claims.append(Claim(
            id="C0", statement=f"the top-{k:.0%} of a full fine-tuning delta by magnitude carries the skill (magnitude-localised, not redundant or dense)",
            verdict=verdict, measure=f"gain recovered by base + top-{k:.0%} graft ({shape})", value=float(np.mean(top)),
            interval=(lo, hi), control=f"random {k:.0%} rescaled (DARE) {np.mean(dare):.2f}, unscaled {np.mean(rnd):.2f}; "
                                       f"top-k minus DARE [{dlo:.2f}, {dhi:.2f}]",
            rule=f"supported if lower bound >= {cfg.recovered} and top-k beats DARE; not supported if DARE also recovers or both stay below"))

    # -- 1. concentration ---------------------------------------------------------------------------
    def _concentration(self, ctx, cfg, base, runs, controls, result: StudyResult) -> None:
        k = cfg.support_fraction
        task_curves = [concentration_curve(r["delta"], CURVE_GRID)["energy"] for r in runs]
        ctrl_curves = [concentration_curve(c["shuffled_delta"], CURVE_GRID)["energy"] for c in controls]
        null_curves = []
        for r in runs:
            sizes = [v.numel() for v in r["delta"].values()]
            ms = [float(v.pow(2).mean()) for v in r["delta"].values()]
            null_curves.append(gaussian_null_curve(sizes, ms, CURVE_GRID)["energy"])
        x = [100 * f for f in CURVE_GRID]
        series = []
        for label, curves, style in (("task fine-tune", task_curves, "-"), ("shuffled-label control", ctrl_curves, "--"),
                                     ("dense Gaussian null", null_curves, ":")):
            arr = np.asarray(curves)
            ci = [bootstrap_mean(arr[:, j], seed=j) for j in range(arr.shape[1])]
            series.append({"label": label, "x": x, "y": arr.mean(0).tolist(), "lo": [c[0] for c in ci],
                           "hi": [c[1] for c in ci], "style": style})
        result.figures.append(lines_figure(
            "concentration", "Concentration of the fine-tuning delta", "top k% of entries by |delta|",
            "share of sum(delta^2)", series, logx=True, ylim=(0, 1.02),
            caption="Mean over runs with 95% bootstrap bands. Null: iid Gaussian with each tensor's own delta variance."))
        j = CURVE_GRID.index(k) if k in CURVE_GRID else int(np.argmin([abs(g - k) for g in CURVE_GRID]))
        t = [c[j] for c in task_curves]
        s = [c[j] for c in ctrl_curves]
        n = [c[j] for c in null_curves]
        lo, hi = bootstrap_mean(t, seed=5)
        dlo, dhi = bootstrap_diff(t, s, seed=6)
        result.metrics["top_energy"] = {"fraction": CURVE_GRID[j], "task": float(np.mean(t)), "shuffled": float(np.mean(s)),
                                        "null": float(np.mean(n))}
        above_null = lo > max(n)
        verdict = "supported" if above_null and dlo > 0 else ("not supported" if hi <= max(n) or dhi <= 0 else "inconclusive")
        result.claims.append(Claim(
            id="C0", statement=f"fine-tuning concentrates its update: the top {CURVE_GRID[j]:.0%} of entries hold more of the delta's energy than a dense null or a no-signal fine-tune",
            verdict=verdict, measure=f"share of sum(delta^2) in the top {CURVE_GRID[j]:.0%}", value=float(np.mean(t)), interval=(lo, hi),
            control=f"Gaussian null {np.mean(n):.3f}; shuffled-label fine-tune {np.mean(s):.3f} (task minus control [{dlo:.3f}, {dhi:.3f}])",
            rule="supported if the interval lies above the null and task minus shuffled control > 0"))

    # -- 3. support stability ---------------------------------------------------------------------
    def _support(self, cfg, runs, result: StudyResult) -> None:
        k = cfg.support_fraction
        masks = [global_topk_mask(r["delta"], k) for r in runs]
        same, cross = [], []
        for i, j in itertools.combinations(range(len(runs)), 2):
            (same if runs[i]["task"] == runs[j]["task"] else cross).append(jaccard(masks[i], masks[j]))
        chance = k / (2 - k)  # E|A∩B|/|A∪B| for two independent uniform k-subsets
        groups = []
        for label, vals in (("same task, other seed", same), ("other task", cross)):
            lo, hi = bootstrap_mean(vals, seed=8) if vals else (float("nan"), float("nan"))
            groups.append({"label": label, "values": [float(np.mean(vals)) if vals else float("nan")], "lo": [lo], "hi": [hi]})
        groups.append({"label": "chance", "values": [chance], "lo": [chance], "hi": [chance]})
        result.metrics["jaccard"] = {"same_task": float(np.mean(same)) if same else None,
                                     "cross_task": float(np.mean(cross)) if cross else None, "chance": chance}
        result.figures.append(bars_figure("support", f"Overlap of top-{k:.0%} supports (Jaccard)", ["Jaccard"], groups,
                                          "Jaccard index", caption="Pairs of runs; 95% bootstrap over pairs."))

    # -- 4. imposed vs natural --------------------------------------------------------------------
    def _imposed(self, cfg, runs, controls, result: StudyResult) -> None:
        full = {(r["task"], r["seed"]): r for r in runs}
        rec_lt, rec_rnd = [], []
        for c in controls:
            run = full.get((c["task"], c["seed"]))
            gain = run["ft_acc"].mean() - run["base_acc"].mean()
            if gain >= max(cfg.min_gain, 1e-6):
                rec_lt.append((c["lt_acc"].mean() - c["base_acc"].mean()) / gain)
                rec_rnd.append((c["rnd_acc"].mean() - c["base_acc"].mean()) / gain)
        k = cfg.mask_fraction
        tasks = [c["task"] for c in controls]
        result.figures.append(bars_figure(
            "imposed", f"Imposed sparsity: training only {k:.0%} of weights", tasks,
            [{"label": "full fine-tune", "values": [float(full[(c['task'], c['seed'])]['ft_acc'].mean()) for c in controls]},
             {"label": f"LT-SFT mask ({k:.0%}, from probe)", "values": [float(c["lt_acc"].mean()) for c in controls]},
             {"label": f"random mask ({k:.0%})", "values": [float(c["rnd_acc"].mean()) for c in controls]},
             {"label": "base", "values": [float(c["base_acc"].mean()) for c in controls]}],
            "accuracy at target level", ylim=(0, 1.05), caption="Equal steps for every regime."))
        if len(rec_lt) < 2:
            result.claims.append(Claim(
                id="C0", statement=f"training only the top-{k:.0%} weights chosen by a probe (LT-SFT) matches full fine-tuning; a random {k:.0%} does not",
                verdict="inconclusive", measure="recovered gain", value=float(np.mean(rec_lt)) if rec_lt else float("nan"),
                interval=(float("nan"), float("nan")), control="too few runs with a measurable gain",
                rule=f"needs >= 2 runs with gain >= {cfg.min_gain}; raise control_seeds"))
            return
        lo, hi = bootstrap_mean(rec_lt, seed=9)
        dlo, dhi = bootstrap_diff(rec_lt, rec_rnd, seed=10)
        verdict = "supported" if lo >= cfg.recovered and dlo > 0 else ("not supported" if hi < cfg.recovered or dhi <= 0 else "inconclusive")
        result.claims.append(Claim(
            id="C0", statement=f"imposed sparsity: training only the top-{k:.0%} weights chosen by a short probe (LT-SFT) recovers full fine-tuning's gain, a random {k:.0%} mask does not",
            verdict=verdict, measure="gain recovered by LT-SFT", value=float(np.mean(rec_lt)), interval=(lo, hi),
            control=f"random {k:.0%} mask recovers {np.mean(rec_rnd):.2f} (LT-SFT minus random [{dlo:.2f}, {dhi:.2f}])",
            rule=f"supported if lower bound >= {cfg.recovered} and LT-SFT beats random"))

    # -- 5. where the change lives ----------------------------------------------------------------
    def _profile(self, base, runs, result: StudyResult) -> None:
        profiles = [tensor_profile(r["delta"]) for r in runs]
        for axis, title in (("kind", "module kind"), ("layer", "layer")):
            cats = list(profiles[0][axis])
            energy = np.asarray([[p[axis][c]["energy_share"] for c in cats] for p in profiles])
            params = [profiles[0][axis][c]["param_share"] for c in cats]
            ci = [bootstrap_mean(energy[:, j], seed=11 + j) for j in range(len(cats))]
            result.figures.append(bars_figure(
                f"profile-{axis}", f"Where the change lives: by {title}", [str(c) for c in cats],
                [{"label": "share of delta energy", "values": energy.mean(0).tolist(), "lo": [c[0] for c in ci], "hi": [c[1] for c in ci]},
                 {"label": "share of parameters (isotropic null)", "values": params}],
                "share", caption="An update spread evenly over all weights would match the parameter share."))
            result.metrics[f"profile_{axis}"] = {str(c): {"energy_share": float(energy[:, j].mean()), "param_share": params[j]}
                                                 for j, c in enumerate(cats)}
