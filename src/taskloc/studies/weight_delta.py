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
4. imposed vs natural: LT-SFT (keep the top k% entries of the full fine-tune's delta, reset to
   the base, retrain only those) against a random k% mask and full fine-tuning, at equal steps;
5. where the change lives: share of delta energy per layer and module kind vs parameter share.

Runs whose full fine-tuning gained less than ``min_gain`` are left out of every verdict (their
delta carries no skill to localise). Intervals are cluster-bootstrap intervals over tasks: seeds
of one task differ only in data order, so they are not independent evidence. Comparisons on the
same runs (top-k vs DARE, LT-SFT vs random, task vs its shuffled control) bootstrap the paired
differences.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..config import Config, field
from ..deltas import concentration_curve, gaussian_null_curve, global_topk_mask
from ..deltas.inmemory import random_mask, tensor_profile
from ..errors import ConfigError
from ..models import load_weights, weights_of
from ..progress import progress_bar
from ..tasks import get_task
from ..tasks.mixture import ShuffledTargets, TaskMixture, eval_examples
from ..tasks.scoring import exact_match
from ..train import TrainConfig
from .base import STUDIES, Claim, Study, StudyResult, bars_figure, decide_claim, lines_figure
from .context import StudyContext
from .stats import NAN_INTERVAL, bootstrap_mean
from .verdicts import Above, AllOf, Below, Estimate, FirstOf

StateDict = dict[str, torch.Tensor]


@dataclass
class WeightDeltaConfig(Config):
    section = "studies.weight-delta."
    tasks: list[str] = field(["add", "sort", "hop", "copy"], "tasks to fine-tune on, one delta per task and seed")
    seeds: int = field(3, "fine-tuning seeds per task (data order); intervals resample tasks, seeds within them")
    control_seeds: int = field(1, "seeds per task (<= seeds) for the shuffled-label control and the masked (LT-SFT / random) runs")
    target_level: int = field(0, "level whose accuracy is the skill gained (0: the first OOD level); must not be a trained level")
    finetune: TrainConfig = field(TrainConfig(steps=200, batch_size=64, lr=1e-3, warmup=20, eval_every=10**9,
                                              ckpt_every=50), "fine-tuning schedule (all regimes use it)")
    graft_fractions: list[float] = field([0.001, 0.01, 0.05, 0.1, 0.25, 1.0], "k values of the grafting curves (fractions)")
    support_fraction: float = field(0.01, "k of the top-k support used for Jaccard and the headline verdicts; must be in graft_fractions")
    mask_fraction: float = field(0.01, "k of the imposed masks (LT-SFT and random)")
    recovered: float = field(0.8, "share of the fine-tuning gain that counts as 'recovered'")
    min_gain: float = field(0.2, "runs whose full fine-tuning gains less accuracy than this are left out of every verdict")

    def validate(self) -> None:
        if self.seeds < 2:
            raise ConfigError(f"{self.key('seeds')}={self.seeds}: need at least 2 seeds per task.")
        if not 1 <= self.control_seeds <= self.seeds:
            raise ConfigError(f"{self.key('control_seeds')}={self.control_seeds} must lie between 1 and seeds={self.seeds}.")
        if len(self.tasks) < 2:
            raise ConfigError(f"{self.key('tasks')}={self.tasks}: need at least 2 tasks (intervals resample tasks).")
        for name in ("support_fraction", "mask_fraction", "recovered"):
            if not 0 < getattr(self, name) <= 1:
                raise ConfigError(f"{self.key(name)}={getattr(self, name)} must lie in (0, 1].")
        if not 0 <= self.min_gain < 1:
            raise ConfigError(f"{self.key('min_gain')}={self.min_gain} must lie in [0, 1).")
        if any(not 0 <= f <= 1 for f in self.graft_fractions):
            raise ConfigError(f"{self.key('graft_fractions')}={self.graft_fractions}: each must lie in [0, 1].")
        if self.support_fraction not in self.graft_fractions:
            raise ConfigError(f"{self.key('support_fraction')}={self.support_fraction} must be one of graft_fractions={self.graft_fractions}.")


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


DARE = "DARE (random, x1/k)"
GRAFT_METHODS = ("top-k", DARE, "random")


def gain(run: dict[str, Any]) -> float:
    return float(run["ft_acc"].mean() - run["base_acc"].mean())


def recovered_share(acc: float, run: dict[str, Any]) -> float:
    """How much of the full fine-tune's accuracy gain a variant keeps (1 = all of it)."""
    return (acc - float(run["base_acc"].mean())) / gain(run)


def jaccard_chance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], da: StateDict, db: StateDict) -> float:
    """Expected Jaccard of two uniform random supports of the same sizes drawn among the entries
    that moved in either run (entries no fine-tune touches, e.g. embeddings of unused tokens,
    can never be in a support, so they must not dilute the chance level)."""
    moved = sum(int(((da[k] != 0) | (db[k] != 0)).sum()) for k in da)
    size = sum(int(a[k].sum()) for k in a)
    if moved == 0:
        return float("nan")
    k = min(1.0, size / moved)
    return k / (2 - k)


def _claim_inconclusive(statement: str, measure: str, why: str) -> Claim:
    return Claim(id="C0", statement=statement, verdict="inconclusive", measure=measure, value=float("nan"),
                 interval=NAN_INTERVAL, level=0.95, control=why, rule=why, reason=why)


def _estimate(values, seed: int, clusters) -> Estimate:
    return Estimate(float(np.mean(values)), bootstrap_mean(values, seed=seed, clusters=clusters))


# The rules that decide C0, one per measurement; their describe() is the report's rule text.
CONCENTRATION_RULE = AllOf(Above("vs_null", 0.0, "task minus Gaussian null (paired)"),
                           Above("vs_shuffled", 0.0, "task minus shuffled-label control (paired)"))


def grafting_rule(recovered: float) -> FirstOf:
    """Localised, redundant or dense, in that order; the first shape whose rule holds decides."""
    return FirstOf(
        ("localised", "supported", AllOf(Above("topk", recovered, "top-k gain kept"), Above("topk_vs_dare", 0.0, "top-k minus DARE (paired)"))),
        ("redundant: random rescaled works as well", "not supported", Above("dare", recovered, "DARE gain kept")),
        ("dense: neither top-k nor random keeps the skill", "not supported",
         AllOf(Below("topk", recovered, "top-k gain kept"), Below("dare", recovered, "DARE gain kept"))))


def imposed_rule(recovered: float) -> AllOf:
    return AllOf(Above("lt_sft", recovered, "LT-SFT gain kept"), Above("lt_vs_random", 0.0, "LT-SFT minus random mask (paired)"))


@STUDIES.register("weight-delta")
class WeightDeltaStudy(Study):
    name = "weight-delta"
    summary = "full fine-tuning deltas: concentration vs null and shuffled control, grafting, support overlap, LT-SFT"
    claims = ("C0",)
    requires = ("base-competent",)
    Config = WeightDeltaConfig

    @classmethod
    def rules(cls, cfg: WeightDeltaConfig):
        k = f"{cfg.support_fraction:.0%}"
        return [("C0", f"concentration: share of delta energy in the top {k} vs a Gaussian null and a shuffled-label fine-tune",
                 CONCENTRATION_RULE),
                ("C0", f"grafting: share of the fine-tuning gain kept by base + top-{k} of the delta vs a random {k} (DARE)",
                 grafting_rule(cfg.recovered)),
                ("C0", f"imposed sparsity: LT-SFT on the top {cfg.mask_fraction:.0%} vs a random mask", imposed_rule(cfg.recovered))]

    def check(self, cfg: WeightDeltaConfig, run_cfg) -> None:
        level = self.target_level(cfg, run_cfg)
        if level in run_cfg.data.train_levels:
            raise ConfigError(f"{cfg.key('target_level')}={level} is a trained level {run_cfg.data.train_levels}; "
                              "pick a level the base never saw (0 = the first OOD level).")
        for name in cfg.tasks:
            task = get_task(name)
            if level not in task.levels:
                raise ConfigError(f"studies.weight-delta.tasks: task {name!r} has no level {level}; its levels are {list(task.levels)}.")

    @staticmethod
    def target_level(cfg: WeightDeltaConfig, run_cfg) -> int:
        if cfg.target_level:
            return cfg.target_level
        return run_cfg.data.ood_levels[0] if run_cfg.data.ood_levels else max(run_cfg.data.train_levels) + 1

    def run(self, ctx: StudyContext, cfg: WeightDeltaConfig) -> StudyResult:
        base_model = ctx.base_model().model
        # Every state dict in this study lives on the CPU; only the evaluation model is on ctx.device.
        base = weights_of(base_model)
        level = self.target_level(cfg, ctx.cfg)
        levels = sorted(set(ctx.cfg.data.train_levels) | {level})
        tasks = [get_task(t) for t in cfg.tasks]
        scorer = ctx.new_model()

        def accuracy(state: StateDict, task) -> np.ndarray:
            load_weights(scorer, state)
            return exact_match(scorer, eval_examples(task, level, ctx.cfg.eval.examples, ctx.cfg.eval.seed)).numpy()

        def ft(task, seed, regime, mixture=None, mask=None):
            mixture = mixture or TaskMixture([task], levels, seed=1000 + seed)
            return ctx.finetune(f"{regime} {task.name} s{seed}", {"task": task.name, "seed": seed, "regime": regime,
                                                                 "levels": levels}, base, mixture, cfg.finetune, mask=mask)

        runs: list[dict[str, Any]] = []  # one per (task, seed) full fine-tune
        controls: list[dict[str, Any]] = []  # one per (task, control seed)
        shapes = {k: v.shape for k, v in base.items()}
        with progress_bar("weight-delta fine-tunes", total=len(tasks) * (cfg.seeds + 3 * cfg.control_seeds)) as advance:
            for task in tasks:
                base_acc = accuracy(base, task)
                for seed in range(cfg.seeds):
                    tuned = ft(task, seed, "full")
                    runs.append({"task": task.name, "seed": seed, "tuned": tuned, "delta": deltas_of(tuned, base),
                                 "base_acc": base_acc, "ft_acc": accuracy(tuned, task)})
                    advance()
                for seed in range(cfg.control_seeds):
                    full = runs[-cfg.seeds + seed]
                    shuffled = ft(task, seed, "shuffled", mixture=ShuffledTargets(TaskMixture([task], levels, seed=1000 + seed)))
                    advance()
                    # LT-SFT (Ansell et al.): the top-k entries of the full fine-tune's delta, retrained from the base.
                    lt = ft(task, seed, "lt-sft", mask=global_topk_mask(full["delta"], float(cfg.mask_fraction)))
                    advance()
                    rnd = ft(task, seed, "random-mask", mask=random_mask(shapes, cfg.mask_fraction, seed=5000 + seed))
                    advance()
                    controls.append({"task": task.name, "seed": seed, "full": full, "shuffled_delta": deltas_of(shuffled, base),
                                     "lt_acc": accuracy(lt, task), "rnd_acc": accuracy(rnd, task)})
            graft_rows = self._grafting(cfg, base, runs, tasks, accuracy)

        valid = [r for r in runs if gain(r) >= max(cfg.min_gain, 1e-6)]
        result = StudyResult(metrics={"target_level": level, "finetune_levels": levels,
                                      "runs": [{"task": r["task"], "seed": r["seed"], "base_acc": float(r["base_acc"].mean()),
                                                "ft_acc": float(r["ft_acc"].mean()), "gain": gain(r)} for r in runs],
                                      "valid_runs": len(valid)})
        self._concentration(cfg, runs, valid, controls, result)
        self._grafting_report(cfg, valid, graft_rows, result)
        self._support(cfg, runs, result)
        self._imposed(cfg, controls, result)
        self._profile(runs, result)
        result.notes.insert(0, (
            f"{len(tasks)} tasks x {cfg.seeds} seeds of full fine-tuning ({cfg.finetune.steps} steps of {cfg.finetune.batch_size}) "
            f"on levels {levels}; the skill gained is accuracy at level {level}, which the base never trained on. "
            f"{len(valid)} of {len(runs)} runs gained at least {cfg.min_gain} and enter the verdicts. "
            "Intervals: 95% cluster bootstrap over tasks."))
        return result

    # -- 2. grafting -----------------------------------------------------------------------------
    def _grafting(self, cfg, base, runs, tasks, accuracy) -> list[dict[str, Any]]:
        by_name = {t.name: t for t in tasks}
        shapes = {k: v.shape for k, v in base.items()}
        rows = []
        for i, run in enumerate(runs):
            task = by_name[run["task"]]
            for frac in cfg.graft_fractions:
                top = global_topk_mask(run["delta"], float(frac))
                rnd = random_mask(shapes, frac, seed=7000 + i)
                rows.append({"run": id(run), "fraction": frac,
                             "top-k": accuracy(graft(base, run["tuned"], top), task).mean(),
                             "random": accuracy(graft(base, run["tuned"], rnd), task).mean(),
                             DARE: accuracy(graft(base, run["tuned"], rnd, scale=1 / frac if frac > 0 else 1.0), task).mean()})
        return rows

    def _grafting_report(self, cfg, valid, rows, result: StudyResult) -> None:
        by_id = {id(r): r for r in valid}
        # method -> fraction -> [(task, recovered share)]
        curves: dict[str, dict[float, list[tuple[str, float]]]] = {m: {} for m in GRAFT_METHODS}
        for row in rows:
            run = by_id.get(row["run"])
            if run is not None:
                for m in GRAFT_METHODS:
                    curves[m].setdefault(row["fraction"], []).append((run["task"], recovered_share(row[m], run)))
        result.metrics["grafting"] = {m: {str(f): float(np.mean([v for _, v in c])) for f, c in fc.items()} for m, fc in curves.items()}
        fracs = [f for f in cfg.graft_fractions if f > 0]
        series = []
        for m in GRAFT_METHODS:
            pts = [curves[m].get(f, []) for f in fracs]
            ci = [bootstrap_mean([v for _, v in p], seed=1, clusters=[t for t, _ in p]) for p in pts]
            series.append({"label": m, "x": [100 * f for f in fracs], "y": [float(np.mean([v for _, v in p])) if p else float("nan") for p in pts],
                           "lo": [c[0] for c in ci], "hi": [c[1] for c in ci]})
        result.figures.append(lines_figure(
            "grafting", "Grafting: share of the fine-tuning gain kept", "k (% of all weights kept from the delta)",
            "recovered gain (1 = full fine-tune)", series, logx=True,
            caption=f"base + k% of delta; bands: 95% cluster bootstrap over tasks ({len(valid)} runs with gain >= {cfg.min_gain})."))

        k = cfg.support_fraction
        statement = f"the top-{k:.0%} of a full fine-tuning delta by magnitude carries the skill (magnitude-localised, not redundant or dense)"
        measure = f"gain recovered by base + top-{k:.0%} graft"
        top, dare = curves["top-k"].get(k, []), curves[DARE].get(k, [])
        if len({t for t, _ in top}) < 2:
            result.claims.append(_claim_inconclusive(statement, measure, f"needs runs of >= 2 tasks whose fine-tuning gained >= {cfg.min_gain}"))
            return
        tasks = [t for t, _ in top]
        estimates = {"topk": _estimate([v for _, v in top], 2, tasks),
                     "topk_vs_dare": _estimate([a - b for (_, a), (_, b) in zip(top, dare)], 3, tasks),  # paired by run
                     "dare": _estimate([v for _, v in dare], 4, tasks)}
        rule = grafting_rule(cfg.recovered)
        shape = rule.label(estimates) or "intervals straddle the threshold"
        e_dare, e_diff = estimates["dare"], estimates["topk_vs_dare"]
        rnd = curves["random"].get(k, [])
        result.metrics["grafting_shape"] = shape
        result.claims.append(decide_claim(
            "C0", statement, rule, estimates, "topk", measure=f"{measure} ({shape})",
            control=f"random {k:.0%} rescaled (DARE) {e_dare.value:.2f} [{e_dare.interval[0]:.2f}, {e_dare.interval[1]:.2f}], "
                    f"unscaled {np.mean([v for _, v in rnd]):.2f}; top-k minus DARE (paired) [{e_diff.interval[0]:.2f}, {e_diff.interval[1]:.2f}]"))

    # -- 1. concentration ---------------------------------------------------------------------------
    def _concentration(self, cfg, runs, valid, controls, result: StudyResult) -> None:
        curve = {id(r): concentration_curve(r["delta"], CURVE_GRID)["energy"] for r in runs}
        ctrl_curves = [concentration_curve(c["shuffled_delta"], CURVE_GRID)["energy"] for c in controls]
        null = {id(r): gaussian_null_curve([v.numel() for v in r["delta"].values()],
                                           [float(v.pow(2).mean()) for v in r["delta"].values()], CURVE_GRID)["energy"] for r in runs}
        x = [100 * f for f in CURVE_GRID]
        series = []
        for label, curves, clusters, style in (
                ("task fine-tune", [curve[id(r)] for r in runs], [r["task"] for r in runs], "-"),
                ("shuffled-label control", ctrl_curves, [c["task"] for c in controls], "--"),
                ("dense Gaussian null", [null[id(r)] for r in runs], [r["task"] for r in runs], ":")):
            arr = np.asarray(curves)
            ci = [bootstrap_mean(arr[:, j], seed=j, clusters=clusters) for j in range(arr.shape[1])]
            series.append({"label": label, "x": x, "y": arr.mean(0).tolist(), "lo": [c[0] for c in ci], "hi": [c[1] for c in ci], "style": style})
        result.figures.append(lines_figure(
            "concentration", "Concentration of the fine-tuning delta", "top k% of entries by |delta|",
            "share of sum(delta^2)", series, logx=True, ylim=(0, 1.02),
            caption="Mean over all runs, 95% cluster-bootstrap bands. Null: iid Gaussian with each tensor's own delta variance."))

        k = cfg.support_fraction
        j = int(np.argmin([abs(g - k) for g in CURVE_GRID]))
        statement = (f"fine-tuning concentrates its update: the top {CURVE_GRID[j]:.0%} of entries hold more of the delta's energy "
                     "than a dense Gaussian null and than a no-signal (shuffled-label) fine-tune")
        measure = f"share of sum(delta^2) in the top {CURVE_GRID[j]:.0%}"
        # Pair each task's valid runs with that task's shuffled control(s).
        ctrl_by_task: dict[str, list[float]] = {}
        for c, cc in zip(controls, ctrl_curves):
            ctrl_by_task.setdefault(c["task"], []).append(cc[j])
        paired = [(r["task"], curve[id(r)][j], float(np.mean(ctrl_by_task[r["task"]])), null[id(r)][j]) for r in valid]
        result.metrics["top_energy"] = {"fraction": CURVE_GRID[j], "task": float(np.mean([curve[id(r)][j] for r in runs])),
                                        "shuffled": float(np.mean([c[j] for c in ctrl_curves])),
                                        "null": float(np.mean([null[id(r)][j] for r in runs]))}
        if len({p[0] for p in paired}) < 2:
            result.claims.append(_claim_inconclusive(statement, measure, f"needs runs of >= 2 tasks whose fine-tuning gained >= {cfg.min_gain}"))
            return
        tasks = [p[0] for p in paired]
        estimates = {"task": _estimate([p[1] for p in paired], 5, tasks),
                     "vs_shuffled": _estimate([p[1] - p[2] for p in paired], 6, tasks),
                     "vs_null": _estimate([p[1] - p[3] for p in paired], 7, tasks)}
        n_lo, n_hi = estimates["vs_null"].interval
        d_lo, d_hi = estimates["vs_shuffled"].interval
        result.claims.append(decide_claim(
            "C0", statement, CONCENTRATION_RULE, estimates, "task", measure=measure,
            control=f"Gaussian null {np.mean([p[3] for p in paired]):.3f} (task minus null [{n_lo:.3f}, {n_hi:.3f}]); "
                    f"shuffled-label fine-tune {np.mean([p[2] for p in paired]):.3f} (task minus control [{d_lo:.3f}, {d_hi:.3f}])"))

    # -- 3. support stability ---------------------------------------------------------------------
    def _support(self, cfg, runs, result: StudyResult) -> None:
        k = cfg.support_fraction
        masks = [global_topk_mask(r["delta"], float(k)) for r in runs]
        same, cross, chance = [], [], []
        for i, j in itertools.combinations(range(len(runs)), 2):
            a, b = runs[i]["task"], runs[j]["task"]
            value = jaccard(masks[i], masks[j])
            chance.append(jaccard_chance(masks[i], masks[j], runs[i]["delta"], runs[j]["delta"]))
            (same if a == b else cross).append((a if a == b else "|".join(sorted((a, b))), value))
        groups = []
        for label, pairs in (("same task, other seed", same), ("other task", cross)):
            vals = [v for _, v in pairs]
            lo, hi = bootstrap_mean(vals, seed=8, clusters=[c for c, _ in pairs])
            groups.append({"label": label, "values": [float(np.mean(vals)) if vals else float("nan")], "lo": [lo], "hi": [hi]})
        groups.append({"label": "chance (among moved entries)", "values": [float(np.nanmean(chance))] if chance else [float("nan")]})
        result.metrics["jaccard"] = {"same_task": float(np.mean([v for _, v in same])) if same else None,
                                     "cross_task": float(np.mean([v for _, v in cross])) if cross else None,
                                     "chance": float(np.nanmean(chance)) if chance else None}
        result.figures.append(bars_figure(
            "support", f"Overlap of top-{k:.0%} supports (Jaccard)", ["Jaccard"], groups, "Jaccard index",
            caption="Pairs of runs; 95% cluster bootstrap (same-task pairs by task, cross-task pairs by task pair). "
                    "Chance: two random supports of the same size among the entries either run changed."))

    # -- 4. imposed vs natural --------------------------------------------------------------------
    def _imposed(self, cfg, controls, result: StudyResult) -> None:
        k = cfg.mask_fraction
        labels = [f"{c['task']} s{c['seed']}" for c in controls]
        result.figures.append(bars_figure(
            "imposed", f"Imposed sparsity: training only {k:.0%} of weights", labels,
            [{"label": "full fine-tune", "values": [float(c["full"]["ft_acc"].mean()) for c in controls]},
             {"label": f"LT-SFT ({k:.0%} from full delta)", "values": [float(c["lt_acc"].mean()) for c in controls]},
             {"label": f"random mask ({k:.0%})", "values": [float(c["rnd_acc"].mean()) for c in controls]},
             {"label": "base", "values": [float(c["full"]["base_acc"].mean()) for c in controls]}],
            "accuracy at target level", ylim=(0, 1.05), caption="Equal steps for every regime."))
        statement = (f"imposed sparsity: retraining only the top-{k:.0%} entries of the full fine-tune's delta (LT-SFT) recovers "
                     f"its gain, and a random {k:.0%} mask does not")
        usable = [c for c in controls if gain(c["full"]) >= max(cfg.min_gain, 1e-6)]
        if len({c["task"] for c in usable}) < 2:
            result.claims.append(_claim_inconclusive(statement, "gain recovered by LT-SFT",
                                                     f"needs controls of >= 2 tasks whose fine-tuning gained >= {cfg.min_gain}"))
            return
        tasks = [c["task"] for c in usable]
        rec_lt = [recovered_share(float(c["lt_acc"].mean()), c["full"]) for c in usable]
        rec_rnd = [recovered_share(float(c["rnd_acc"].mean()), c["full"]) for c in usable]
        estimates = {"lt_sft": _estimate(rec_lt, 9, tasks), "lt_vs_random": _estimate([a - b for a, b in zip(rec_lt, rec_rnd)], 10, tasks)}
        d_lo, d_hi = estimates["lt_vs_random"].interval
        result.claims.append(decide_claim(
            "C0", statement, imposed_rule(cfg.recovered), estimates, "lt_sft", measure="gain recovered by LT-SFT",
            control=f"random {k:.0%} mask recovers {np.mean(rec_rnd):.2f} (LT-SFT minus random, paired [{d_lo:.2f}, {d_hi:.2f}])"))

    # -- 5. where the change lives ----------------------------------------------------------------
    def _profile(self, runs, result: StudyResult) -> None:
        profiles = [tensor_profile(r["delta"]) for r in runs]
        clusters = [r["task"] for r in runs]
        for axis, title in (("kind", "module kind"), ("layer", "layer")):
            cats = list(profiles[0][axis])
            energy = np.asarray([[p[axis][c]["energy_share"] for c in cats] for p in profiles])
            params = [profiles[0][axis][c]["param_share"] for c in cats]
            ci = [bootstrap_mean(energy[:, j], seed=11 + j, clusters=clusters) for j in range(len(cats))]
            result.figures.append(bars_figure(
                f"profile-{axis}", f"Where the change lives: by {title}", [str(c) for c in cats],
                [{"label": "share of delta energy", "values": energy.mean(0).tolist(), "lo": [c[0] for c in ci], "hi": [c[1] for c in ci]},
                 {"label": "share of parameters (isotropic null)", "values": params}],
                "share", caption="An update spread evenly over all weights would match the parameter share."))
            result.metrics[f"profile_{axis}"] = {str(c): {"energy_share": float(energy[:, j].mean()), "param_share": params[j]}
                                                 for j, c in enumerate(cats)}
