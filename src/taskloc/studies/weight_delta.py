"""weight-delta: do full fine-tuning updates land in a small subset of weights? (claim C0)

For each fine-tuning regime, task and seed, fine-tune the pretrained base on the task including
the first level it has never seen (so there is a skill to gain), then ask of delta = tuned - base:

1. concentration: the share of sum(delta^2) in the top k% entries, against a dense Gaussian null
   of the same per-tensor size and a shuffled-label fine-tune (same steps and prompts, permuted
   targets: what optimisation alone does);
2. grafting over the whole curve (k from 0.1% to 50%): base + the k% of the delta chosen by each
   selection rule — magnitude, random unscaled, random rescaled by 1/k (DARE), gradient saliency
   and a learned mask (Panigrahi et al. 2023, the localisation bound) — scored three ways (exact
   match, per-token accuracy, share of the loss gap) as a share of the full delta's gain. The
   curve's shape decides between localised (a small top-k keeps the skill and DARE does not),
   redundant (DARE keeps it too) and dense (neither keeps it at small k);
3. localisability against fitted controls: the learned (and saliency) mask is also fitted over the
   shuffled-label delta and a Gaussian delta, same data and budget; the claim is the difference;
4. support stability: Jaccard of top-1% supports across seeds and tasks, against chance;
5. imposed vs natural: LT-SFT (retrain only the top k% of the full delta) against a random mask;
6. where the change lives: delta energy per layer and module kind against the parameter share.

Intervals are t-intervals on task means (tasks are the independent units; seeds nest inside),
whose coverage is exact for normal task effects and checked by simulation in the tests; each
claim also says how many tasks agree (exact sign test), which is honest at any number of tasks.
Runs whose fine-tune gained less than ``min_gain`` on a measure carry no skill to localise on it
and are left out of that measure's figures and verdicts (exact match decides the verdicts).
"""
from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from ..config import Config, field
from ..deltas import concentration_curve, gaussian_null_curve, global_topk_mask
from ..deltas.inmemory import random_mask, tensor_profile
from ..deltas.learned import loss_gradient
from ..errors import ConfigError
from ..models import weights_of
from ..models.lora import LoraSpec, target_layers
from ..progress import progress_bar
from ..registry import Registry
from ..report.figures import PALETTE
from ..tasks import Example, get_task
from ..tasks.mixture import ShuffledTargets, TaskMixture, eval_examples
from ..train import TrainConfig
from .base import STUDIES, Claim, Study, StudyResult, bars_figure, decide_claim, lines_figure
from .context import Finetune, StudyContext
from .grafting import MEASURE_NAMES, MEASURES, Scorer, Scores, deltas_of, gaussian_like, graft, share_kept, update_size
from .stats import NAN_INTERVAL, hierarchical_interval, per_task_intervals, task_agreement
from .task_selection import TaskSelection, has_levels, select_tasks, skipped_result
from .verdicts import Above, AllOf, AnyOf, Below, Estimate, FirstOf, Rule

StateDict = dict[str, torch.Tensor]
Mask = dict[str, torch.Tensor]


@dataclass
class WeightDeltaConfig(Config):
    section = "studies.weight-delta."

    tasks: list[str] = field(["add", "sort", "hop", "copy"], "tasks to fine-tune on, one delta per task, seed and regime")
    seeds: int = field(3, "fine-tuning seeds per task (data order); intervals run over tasks, seeds nest inside")
    control_seeds: int = field(1, "seeds per task (<= seeds) for the shuffled-label control and the masked (LT-SFT / random) runs")
    regime_seeds: int = field(0, "seeds per task of the regimes after the first, which describe but do not decide (0: seeds); "
                                 "their intervals still run over tasks")
    target_level: int = field(0, "level whose accuracy is the skill gained (0: the first OOD level); must not be a trained level")
    finetune: TrainConfig = field(TrainConfig(steps=200, batch_size=64, lr=1e-3, warmup=20, eval_every=10**9, ckpt_every=50),
                                  "fine-tuning schedule of the 'adamw' regime (the other regimes derive from it)")
    regimes: list[str] = field(["adamw"], "fine-tuning regimes (see REGIMES: adamw, small, sgd-frozen, lora); the first decides the verdicts")
    small_lr_factor: float = field(0.25, "learning-rate factor of the 'small' regime (with a quarter of the steps: a small update)")
    sgd_lr: float = field(0.05, "learning rate of the 'sgd-frozen' regime (SGD with momentum, embeddings and head frozen)")
    lora_rank: int = field(8, "rank of the 'lora' regime's adapters (every attention and MLP matrix)")
    lora_alpha: float = field(16.0, "LoRA alpha: the adapters' update is scaled by alpha / rank")
    lora_lr_factor: float = field(2.0, "learning-rate factor of the 'lora' regime over the adamw schedule's (adapters start at zero)")
    selectors: list[str] = field(["magnitude", "random", "dare", "saliency", "learned"], "selection rules of the grafting curves")
    graft_fractions: list[float] = field([0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5], "k values of the grafting curves (fractions)")
    learned_fractions: list[float] = field([0.01], "k values at which masks are learned (costly: an optimisation each)")
    learned_steps: int = field(60, "optimisation steps of a learned mask")
    learned_init: str = field("saliency", "where a learned mask starts: the top k by saliency, or by magnitude (Panigrahi et al.'s "
                                          "start, which needs several times the steps here to leave magnitude's near-zero graft)")
    fit_examples: int = field(256, "training-split examples a learned or saliency mask is fitted on (never the evaluation set)")
    support_fraction: float = field(0.01, "k of the top-k support used for Jaccard and the concentration verdict")
    small_k: float = field(0.05, "the largest k that still counts as a small subset for the shape of the curve")
    mask_fraction: float = field(0.01, "k of the imposed masks (LT-SFT and random)")
    recovered: float = field(0.8, "share of the fine-tuning gain that counts as 'kept'")
    min_gain: float = field(0.2, "runs whose fine-tune gains less than this on a measure (exact match for the verdicts) are left out of it")
    level: float = field(0.95, "nominal level of the intervals")

    def validate(self) -> None:
        if self.seeds < 2:
            raise ConfigError(f"{self.key('seeds')}={self.seeds}: need at least 2 seeds per task.")
        if not 0 <= self.regime_seeds <= self.seeds:
            raise ConfigError(f"{self.key('regime_seeds')}={self.regime_seeds} must lie between 0 (= seeds) and seeds={self.seeds}.")
        if not 1 <= self.control_seeds <= min(self.seeds, self.regime_seeds or self.seeds):
            raise ConfigError(f"{self.key('control_seeds')}={self.control_seeds} must lie between 1 and seeds={self.seeds}"
                              + (f" and regime_seeds={self.regime_seeds}." if self.regime_seeds else "."))
        if len(self.tasks) < 2:
            raise ConfigError(f"{self.key('tasks')}={self.tasks}: need at least 2 tasks (intervals run over tasks).")
        for name in ("support_fraction", "mask_fraction", "recovered", "small_k", "small_lr_factor", "sgd_lr"):
            if not 0 < getattr(self, name) <= 1:
                raise ConfigError(f"{self.key(name)}={getattr(self, name)} must lie in (0, 1].")
        if self.lora_rank < 1 or not self.lora_alpha > 0 or not self.lora_lr_factor > 0:
            raise ConfigError(f"{self.key('lora_rank')}={self.lora_rank} must be >= 1, {self.key('lora_alpha')}={self.lora_alpha} and "
                              f"{self.key('lora_lr_factor')}={self.lora_lr_factor} positive.")
        if not 0 <= self.min_gain < 1:
            raise ConfigError(f"{self.key('min_gain')}={self.min_gain} must lie in [0, 1).")
        if not 0.5 <= self.level < 1:
            raise ConfigError(f"{self.key('level')}={self.level} must lie in [0.5, 1).")
        for name in ("graft_fractions", "learned_fractions"):
            if any(not 0 < f <= 1 for f in getattr(self, name)):
                raise ConfigError(f"{self.key(name)}={getattr(self, name)}: each must lie in (0, 1].")
        if self.support_fraction not in self.graft_fractions:
            raise ConfigError(f"{self.key('support_fraction')}={self.support_fraction} must be one of graft_fractions={self.graft_fractions}.")
        if not set(self.learned_fractions) <= set(self.graft_fractions):
            raise ConfigError(f"{self.key('learned_fractions')}={self.learned_fractions} must be among graft_fractions={self.graft_fractions}.")
        if not self.regimes:
            raise ConfigError(f"{self.key('regimes')} is empty; name at least one of {REGIMES.names()}.")
        for name in self.regimes:
            REGIMES.get(name)  # did-you-mean
        if len(set(self.regimes)) < len(self.regimes):
            raise ConfigError(f"{self.key('regimes')}={self.regimes} names a regime twice; name each once.")
        if self.regimes[0] == "lora":
            raise ConfigError(f"{self.key('regimes')}={self.regimes}: the first regime decides the verdicts about what fine-tuning "
                              "does on its own, and lora's delta is low rank by construction; put adamw, small or sgd-frozen first.")
        from ..deltas.masks import SELECTORS

        for name in self.selectors:
            SELECTORS.get(name)
        if self.learned_init not in ("saliency", "magnitude"):
            raise ConfigError(f"{self.key('learned_init')}={self.learned_init!r}: choose 'saliency' or 'magnitude'.")
        if self.learned_steps < 1 or self.fit_examples < 1:
            raise ConfigError(f"{self.key('learned_steps')} and {self.key('fit_examples')} must be at least 1.")


# -- fine-tuning regimes ------------------------------------------------------------------------
@dataclass(frozen=True)
class Recipe:
    """How a regime fine-tunes: its schedule, the entries it may move (None: all) and, for LoRA,
    the adapters it trains instead of the weights."""

    train: TrainConfig
    mask: Mask | None = None
    lora: LoraSpec | None = None


Regime = Callable[[WeightDeltaConfig, StateDict], Recipe]
REGIMES: Registry[Regime] = Registry("fine-tuning regime")


@REGIMES.register("adamw")
def _adamw(cfg: WeightDeltaConfig, base: StateDict) -> Recipe:
    """Full fine-tuning with AdamW at the study's schedule."""
    return Recipe(cfg.finetune)


@REGIMES.register("small")
def _small(cfg: WeightDeltaConfig, base: StateDict) -> Recipe:
    """A lower learning rate and a quarter of the steps (an early stop): a small update, closer to the
    LLM fine-tunes DARE reports than the full schedule's."""
    steps = max(1, cfg.finetune.steps // 4)
    return Recipe(TrainConfig.from_dict({**cfg.finetune.to_dict(), "lr": cfg.finetune.lr * cfg.small_lr_factor, "steps": steps,
                                         "warmup": min(cfg.finetune.warmup, steps // 2)}))


@REGIMES.register("sgd-frozen")
def _sgd_frozen(cfg: WeightDeltaConfig, base: StateDict) -> Recipe:
    """SGD with momentum, token embeddings and the output head frozen: the grafting paper's setting."""
    frozen = ("emb", "embed", "unembed", "lm_head", "wte", "wpe")
    mask = {n: torch.full(t.shape, not any(f in n for f in frozen), dtype=torch.bool) for n, t in base.items()}
    return Recipe(TrainConfig.from_dict({**cfg.finetune.to_dict(), "optimizer": "sgd", "lr": cfg.sgd_lr}), mask)


@REGIMES.register("lora")
def _lora(cfg: WeightDeltaConfig, base: StateDict) -> Recipe:
    """LoRA (imposed low rank): rank-r adapters on every attention and MLP matrix, the base frozen,
    AdamW at the study's schedule with the learning rate scaled by lora_lr_factor; the merged
    adapters are the delta (low rank by construction, biases and norms unchanged)."""
    return Recipe(TrainConfig.from_dict({**cfg.finetune.to_dict(), "lr": cfg.finetune.lr * cfg.lora_lr_factor}),
                  lora=LoraSpec(rank=cfg.lora_rank, alpha=cfg.lora_alpha))


# -- the rules that decide C0 ---------------------------------------------------------------------
CONCENTRATION_RULE = AllOf(Above("vs_null", 0.0, "task minus Gaussian null (paired)"),
                           Above("vs_shuffled", 0.0, "task minus shuffled-label control (paired)"))


def _pct(k: float) -> str:
    return f"{100 * k:g}%"


def shape_rule(recovered: float, small: list[float]) -> FirstOf:
    """Localised, redundant or dense over the small-k part of the grafting curve (exact match)."""
    localised = AnyOf(*(AllOf(Above(f"magnitude@{k}", recovered, f"magnitude top-{_pct(k)} share kept"),
                              Above(f"magnitude-dare@{k}", 0.0, f"magnitude minus DARE at {_pct(k)}")) for k in small))
    redundant = AnyOf(*(Above(f"dare@{k}", recovered, f"DARE {_pct(k)} share kept") for k in small))
    dense = AllOf(*(AllOf(Below(f"magnitude@{k}", recovered, f"magnitude {_pct(k)}"), Below(f"dare@{k}", recovered, f"DARE {_pct(k)}"))
                    for k in small))
    return FirstOf(("localised", "supported", localised), ("redundant: random rescaled keeps it too", "not supported", redundant),
                   ("dense: neither keeps it at small k", "not supported", dense))


LEARNED_RULE = AllOf(Above("learned_vs_shuffled", 0.0, "learned-mask share kept minus the same fit over the shuffled-label delta"),
                     Above("learned_vs_gaussian", 0.0, "learned-mask share kept minus the same fit over a Gaussian delta"))


def imposed_rule(recovered: float) -> AllOf:
    return AllOf(Above("lt_sft", recovered, "LT-SFT share kept"), Above("lt_vs_random", 0.0, "LT-SFT minus random mask (paired)"))


def jaccard(a: Mask, b: Mask) -> float:
    inter = sum(int((a[k] & b[k]).sum()) for k in a)
    union = sum(int((a[k] | b[k]).sum()) for k in a)
    return inter / union if union else float("nan")


def jaccard_chance(a: Mask, b: Mask, da: StateDict, db: StateDict) -> float:
    """Expected Jaccard of two uniform random supports of the same sizes drawn among the entries
    that moved in either run (entries no fine-tune touches, e.g. embeddings of unused tokens,
    can never be in a support, so they must not dilute the chance level)."""
    moved = sum(int(((da[k] != 0) | (db[k] != 0)).sum()) for k in da)
    size = sum(int(a[k].sum()) for k in a)
    if moved == 0:
        return float("nan")
    k = min(1.0, size / moved)
    return k / (2 - k)


@dataclass
class Run:
    """One fine-tune (regime, task, seed) and what was measured on it."""

    regime: str
    task: str
    seed: int
    delta: StateDict
    base: Scores
    tuned: Scores
    kept: dict[str, dict[float, dict[str, float]]]  # selector -> k -> measure -> share kept
    size: dict[str, float]

    @property
    def gain(self) -> float:
        """The exact-match gain: what the verdicts call the skill."""
        return self.tuned.exact - self.base.exact

    def learned_on(self, measure: str, min_gain: float) -> bool:
        """Whether the fine-tune gained enough on ``measure`` for shares of it to mean anything
        (the loss gap counts relative to the base's loss)."""
        if measure == "loss":
            return self.base.loss > 0 and (self.base.loss - self.tuned.loss) / self.base.loss >= max(min_gain, 1e-9)
        return self.tuned.get(measure) - self.base.get(measure) >= max(min_gain, 1e-9)


def _estimate(values: list[float], tasks: list[str], seeds: list[int], level: float) -> Estimate:
    iv = hierarchical_interval(values, tasks, seeds, level=level, method="t")
    return Estimate(iv.estimate, (iv.lo, iv.hi), iv.achieved)


def _agreement(values: list[float], tasks: list[str], seeds: list[int], threshold: float, level: float) -> str:
    per_task = per_task_intervals(values, tasks, seeds, level=level)
    return task_agreement(per_task, threshold).summary()


@STUDIES.register("weight-delta")
class WeightDeltaStudy(Study):
    name = "weight-delta"
    summary = "fine-tuning deltas: concentration, grafting curves by five selection rules x three skill measures, learned masks vs controls"
    claims = ("C0",)
    requires = ("base-competent",)
    Config = WeightDeltaConfig

    @classmethod
    def rules(cls, cfg: WeightDeltaConfig) -> list[tuple[str, str, Rule]]:
        small = [k for k in cfg.graft_fractions if k <= cfg.small_k]
        k = _pct(cfg.support_fraction)
        out: list[tuple[str, str, Rule]] = [
            ("C0", f"concentration: share of delta energy in the top {k} vs a Gaussian null and a shuffled-label fine-tune", CONCENTRATION_RULE),
            ("C0", f"shape of the grafting curve (exact match) at k <= {_pct(cfg.small_k)}: localised, redundant or dense",
             shape_rule(cfg.recovered, small))]
        if "learned" in cfg.selectors:
            out.append(("C0", f"localisable: a learned {_pct(cfg.learned_fractions[0])} mask keeps more of the real delta's skill "
                              "than the same fit over control deltas", LEARNED_RULE))
        out.append(("C0", f"imposed sparsity: LT-SFT on the top {_pct(cfg.mask_fraction)} vs a random mask", imposed_rule(cfg.recovered)))
        return out

    def check(self, cfg: WeightDeltaConfig, run_cfg) -> None:
        level = self.target_level(cfg, run_cfg)
        if level in run_cfg.data.train_levels:
            raise ConfigError(f"{cfg.key('target_level')}={level} is a trained level {run_cfg.data.train_levels}; "
                              "pick a level the base never saw (0 = the first OOD level).")
        self.tasks_for(cfg, run_cfg)  # a task list the user set that names a task it cannot use: one line

    @classmethod
    def tasks_for(cls, cfg: WeightDeltaConfig, run_cfg) -> TaskSelection:
        """Trained tasks (a delta learns a harder level of a skill the base has) that have the target level."""
        return select_tasks(cfg, "tasks", run_cfg, at_least=2, usable=has_levels([cls.target_level(cfg, run_cfg)]))

    @staticmethod
    def target_level(cfg: WeightDeltaConfig, run_cfg) -> int:
        if cfg.target_level:
            return cfg.target_level
        return run_cfg.data.ood_levels[0] if run_cfg.data.ood_levels else max(run_cfg.data.train_levels) + 1

    # -- measuring ---------------------------------------------------------------------------------
    def run(self, ctx: StudyContext, cfg: WeightDeltaConfig) -> StudyResult:
        selection = self.tasks_for(cfg, ctx.cfg)
        if selection.skip:
            return skipped_result(self, cfg, selection)
        cfg = replace(cfg, tasks=selection.entries)
        base_model = ctx.base_model().model
        base = weights_of(base_model)  # every state dict here lives on the CPU
        level = self.target_level(cfg, ctx.cfg)
        levels = sorted(set(ctx.cfg.data.train_levels) | {level})
        tasks = [get_task(t) for t in cfg.tasks]
        scorer = Scorer(ctx.new_model())
        fit_model = ctx.new_model()  # learned and saliency masks run the model functionally, weights untouched

        def fit_data(task, seed: int) -> list[Example]:
            # the training split (a mixture stream of its own seed), never the evaluation set
            mix = TaskMixture([task], levels, seed=3000 + seed)
            return [e for step in range(-(-cfg.fit_examples // 64)) for e in mix.batch(step, 64)][: cfg.fit_examples]

        def seeds_of(regime: str) -> range:
            return range(cfg.seeds if regime == cfg.regimes[0] or not cfg.regime_seeds else cfg.regime_seeds)

        def ft(task, seed: int, regime: str, mixture=None, mask=None, train_cfg=None) -> Finetune:
            # the imposed-sparsity runs (LT-SFT, random mask) bring their own schedule and mask
            recipe = REGIMES.get(regime)(cfg, base) if train_cfg is None else Recipe(train_cfg, mask)
            mixture = mixture or TaskMixture([task], levels, seed=1000 + seed)
            # a seed's real and shuffled-label LoRA runs start from the same adapters (paired); seeds differ
            lora = replace(recipe.lora, seed=7000 + seed) if recipe.lora is not None else None
            return Finetune(f"{regime} {task.name} s{seed}", {"task": task.name, "seed": seed, "regime": regime, "levels": levels},
                            base, mixture, recipe.train, recipe.mask, lora)

        if "lora" in cfg.regimes:  # a model LoRA cannot adapt is one line now, not after the other regimes' fine-tunes
            target_layers(fit_model, LoraSpec(rank=cfg.lora_rank, alpha=cfg.lora_alpha))

        # Every fine-tune is an independent job; they run as two batches (in parallel under the ray
        # executor): all that start from the base alone, then LT-SFT, whose mask needs its run's delta.
        asked: dict[tuple[str, str, int, str], Finetune] = {}
        for regime in cfg.regimes:
            for task in tasks:
                for seed in seeds_of(regime):
                    asked[regime, task.name, seed, "run"] = ft(task, seed, regime)
                for seed in range(cfg.control_seeds):
                    asked[regime, task.name, seed, "shuffled"] = ft(task, seed, regime, mixture=ShuffledTargets(TaskMixture([task], levels, seed=1000 + seed)))
                    if regime == cfg.regimes[0]:
                        shapes = {k: v.shape for k, v in base.items()}
                        asked[regime, task.name, seed, "random"] = ft(task, seed, "random-mask", train_cfg=cfg.finetune,
                                                                      mask=random_mask(shapes, cfg.mask_fraction, seed=5000 + seed))
        tuned_by = dict(zip(asked, ctx.finetune_many(list(asked.values()))))
        # LT-SFT (Ansell et al.): the top-k entries of the full fine-tune's delta, retrained from the base.
        lt_asked = {(task.name, seed): ft(task, seed, "lt-sft", train_cfg=cfg.finetune, mask=global_topk_mask(
                    deltas_of(tuned_by[cfg.regimes[0], task.name, seed, "run"], base), float(cfg.mask_fraction)))
                    for task in tasks for seed in range(cfg.control_seeds)}
        lt_by = dict(zip(lt_asked, ctx.finetune_many(list(lt_asked.values()))))

        def kept_curves(delta: StateDict, run_delta: StateDict, task, seed, evals, b: Scores, t: Scores,
                        selectors: list[str], fractions: dict[str, list[float]], salt: int) -> dict[str, dict[float, dict[str, float]]]:
            """Share kept by grafting ``delta`` (the run's own, or a control's) chosen by each selector."""
            out: dict[str, dict[float, dict[str, float]]] = {}
            data = fit_data(task, seed)
            for name in selectors:
                out[name] = {}
                for k in fractions[name]:
                    mask, scale = choose(name, base, delta, k, model=fit_model, data=data, seed=salt + seed, steps=cfg.learned_steps,
                                         init=cfg.learned_init,
                                         gradient=gradient_at_base(task, seed, data) if name in ("saliency", "learned") else None)
                    scores = scorer(graft(base, delta, mask, scale), evals)
                    out[name][k] = {m: share_kept(scores, b, t, m) for m in MEASURES}
            return out

        gradients: dict[tuple[str, int], StateDict] = {}

        def gradient_at_base(task, seed: int, data: list[Example]) -> StateDict:
            # saliency and the learned mask's start read the task loss's gradient at the base over the
            # fit data, which no delta changes: computed once per (task, seed), not once per mask
            if (task.name, seed) not in gradients:
                floating = {n: t for n, t in base.items() if t.dtype.is_floating_point}  # as select() ranks them
                gradients[task.name, seed] = loss_gradient(fit_model, floating, [(e.prompt, e.target) for e in data])
            return gradients[task.name, seed]

        all_k = {name: (cfg.learned_fractions if name == "learned" else cfg.graft_fractions) for name in cfg.selectors}
        fitted = [s for s in cfg.selectors if s in ("learned", "saliency", "magnitude")]
        n_jobs = sum(len(tasks) * (len(seeds_of(r)) + cfg.control_seeds) for r in cfg.regimes) + len(tasks) * 2 * cfg.control_seeds
        runs: list[Run] = []
        controls: list[dict[str, Any]] = []
        imposed: list[dict[str, Any]] = []
        with progress_bar("weight-delta fine-tunes and grafts", total=n_jobs) as advance:
            for regime in cfg.regimes:
                for task in tasks:
                    evals = eval_examples(task, level, ctx.cfg.eval.examples, ctx.cfg.eval.seed)
                    b = scorer(base, evals)
                    for seed in seeds_of(regime):
                        tuned = tuned_by[regime, task.name, seed, "run"]
                        delta = deltas_of(tuned, base)
                        t = scorer(tuned, evals)
                        runs.append(Run(regime, task.name, seed, delta, b, t,
                                        kept_curves(delta, delta, task, seed, evals, b, t, cfg.selectors, all_k, 7000),
                                        update_size(delta, base)))
                        advance()
                    for seed in range(cfg.control_seeds):
                        run = next(r for r in runs if (r.regime, r.task, r.seed) == (regime, task.name, seed))
                        shuffled = deltas_of(tuned_by[regime, task.name, seed, "shuffled"], base)
                        k_fit = {name: all_k[name] for name in fitted}
                        control = {"regime": regime, "task": task.name, "seed": seed, "run": run, "shuffled_delta": shuffled}
                        if regime == cfg.regimes[0]:  # the verdicts' controls: every fitted rule, shuffled and Gaussian
                            gauss = gaussian_like(run.delta, seed=9000 + seed)
                            control["shuffled"] = kept_curves(shuffled, run.delta, task, seed, evals, b, run.tuned, fitted, k_fit, 7000)
                            control["gaussian"] = kept_curves(gauss, run.delta, task, seed, evals, b, run.tuned, fitted, k_fit, 7000)
                        elif "learned" in fitted:  # the regimes table's column: the learned mask over the shuffled delta only
                            control["shuffled"] = kept_curves(shuffled, run.delta, task, seed, evals, b, run.tuned, ["learned"],
                                                              {"learned": all_k["learned"]}, 7000)
                        controls.append(control)
                        advance()
                    if regime != cfg.regimes[0]:
                        continue
                    for seed in range(cfg.control_seeds):
                        run = next(r for r in runs if (r.regime, r.task, r.seed) == (regime, task.name, seed))
                        lt = lt_by[task.name, seed]
                        advance()
                        rnd = tuned_by[regime, task.name, seed, "random"]
                        advance()
                        imposed.append({"task": task.name, "seed": seed, "run": run,
                                        "lt": scorer(lt, evals), "random": scorer(rnd, evals)})

        primary = [r for r in runs if r.regime == cfg.regimes[0]]
        valid = [r for r in primary if r.learned_on("exact", cfg.min_gain)]
        result = StudyResult(metrics={
            "target_level": level, "finetune_levels": levels, "regimes": cfg.regimes,
            "runs": [{"regime": r.regime, "task": r.task, "seed": r.seed, "base": r.base.__dict__, "tuned": r.tuned.__dict__,
                      "learned_on": [m for m in MEASURES if r.learned_on(m, cfg.min_gain)], "update": r.size} for r in runs],
            "valid_runs": len(valid)})
        self._concentration(cfg, primary, valid, [c for c in controls if c["regime"] == cfg.regimes[0]], result)
        self._grafting(cfg, runs, result)
        self._shape(cfg, valid, primary, result)
        self._learned(cfg, valid, [c for c in controls if c["regime"] == cfg.regimes[0]], result)
        self._support(cfg, primary, result)
        self._imposed(cfg, imposed, result)
        self._profile(primary, result)
        self._regimes(cfg, runs, controls, result)
        result.notes.insert(0, (
            f"{len(tasks)} tasks x {cfg.seeds} seeds x {len(cfg.regimes)} regime(s) ({', '.join(cfg.regimes)}; the first decides the "
            f"verdicts{f', the others run {cfg.regime_seeds} seed(s) per task' if cfg.regime_seeds and len(cfg.regimes) > 1 else ''}) "
            f"of fine-tuning for {cfg.finetune.steps} steps of {cfg.finetune.batch_size} on levels {levels}; the skill gained "
            f"is measured at level {level}, which the base never trained on. {len(valid)} of {len(primary)} runs of the first regime "
            f"gained at least {cfg.min_gain} exact match and enter the verdicts. Intervals: t-intervals on task means "
            f"(nominal {cfg.level:.0%}; the achieved level is shown beside each), with seeds nested in tasks."))
        result.notes[1:1] = selection.notes()
        return result

    # -- 1. concentration ----------------------------------------------------------------------------
    def _concentration(self, cfg, runs: list[Run], valid: list[Run], controls, result: StudyResult) -> None:
        grid = sorted(set(cfg.graft_fractions) | {0.0001, 0.0002, 0.0005, 0.002, 0.02, 0.2})
        curve = {id(r): concentration_curve(r.delta, grid)["energy"] for r in runs}
        ctrl = {(c["task"], c["seed"]): concentration_curve(c["shuffled_delta"], grid)["energy"] for c in controls}
        null = {id(r): gaussian_null_curve([v.numel() for v in r.delta.values()], [float(v.pow(2).mean()) for v in r.delta.values()],
                                           grid)["energy"] for r in runs}
        series = []
        for label, rows, style in (("task fine-tune", [(r.task, r.seed, curve[id(r)]) for r in runs], "-"),
                                   ("shuffled-label control", [(t, s, c) for (t, s), c in ctrl.items()], "--"),
                                   ("dense Gaussian null", [(r.task, r.seed, null[id(r)]) for r in runs], ":")):
            arr = np.asarray([c for _, _, c in rows])
            ivs = [hierarchical_interval(arr[:, j], [t for t, _, _ in rows], [s for _, s, _ in rows], level=cfg.level) for j in range(len(grid))]
            series.append({"label": label, "x": [100 * g for g in grid], "y": [iv.estimate for iv in ivs],
                           "lo": [iv.lo for iv in ivs], "hi": [iv.hi for iv in ivs], "style": style})
        result.figures.append(lines_figure(
            "concentration", "Concentration of the fine-tuning delta", "top k% of entries by |delta|", "share of sum(delta^2)", series,
            logx=True, ylim=(0, 1.02), caption=f"Mean of task means; bands: {cfg.level:.0%} t-intervals over tasks. Null: iid Gaussian "
                                               "with each tensor's own delta variance."))
        j = grid.index(cfg.support_fraction)
        statement = (f"fine-tuning concentrates its update: the top {_pct(cfg.support_fraction)} of entries hold more of the delta's "
                     "energy than a dense Gaussian null and than a no-signal (shuffled-label) fine-tune")
        measure = f"share of sum(delta^2) in the top {_pct(cfg.support_fraction)}"
        paired = [(r.task, r.seed, curve[id(r)][j], ctrl[(r.task, 0)][j], null[id(r)][j]) for r in valid if (r.task, 0) in ctrl]
        result.metrics["top_energy"] = {"fraction": cfg.support_fraction, "task": float(np.mean([curve[id(r)][j] for r in runs])),
                                        "shuffled": float(np.mean([c[j] for c in ctrl.values()])),
                                        "null": float(np.mean([null[id(r)][j] for r in runs]))}
        if len({p[0] for p in paired}) < 2:
            result.claims.append(_inconclusive(statement, measure, f"needs runs of >= 2 tasks that gained >= {cfg.min_gain}", cfg.level))
            return
        tasks, seeds = [p[0] for p in paired], [p[1] for p in paired]
        diff = [p[2] - p[3] for p in paired]
        estimates = {"task": _estimate([p[2] for p in paired], tasks, seeds, cfg.level),
                     "vs_shuffled": _estimate(diff, tasks, seeds, cfg.level),
                     "vs_null": _estimate([p[2] - p[4] for p in paired], tasks, seeds, cfg.level)}
        n_lo, n_hi = estimates["vs_null"].interval
        d_lo, d_hi = estimates["vs_shuffled"].interval
        result.claims.append(decide_claim(
            "C0", statement, CONCENTRATION_RULE, estimates, "task", measure=measure,
            control=f"Gaussian null {np.mean([p[4] for p in paired]):.3f} (task minus null [{n_lo:.3f}, {n_hi:.3f}]); shuffled-label "
                    f"fine-tune {np.mean([p[3] for p in paired]):.3f} (task minus control [{d_lo:.3f}, {d_hi:.3f}]); per task: "
                    f"{_agreement(diff, tasks, seeds, 0.0, cfg.level)}"))

    # -- 2. grafting curves: every selector x regime x k x measure -------------------------------------
    def _grafting(self, cfg, runs: list[Run], result: StudyResult) -> None:
        rows, table = [], []
        for regime in cfg.regimes:
            rr = [r for r in runs if r.regime == regime]
            for name in cfg.selectors:
                ks = sorted({k for r in rr for k in r.kept.get(name, {})})
                for k in ks:
                    cells = {}
                    for m in MEASURES:
                        vals = [(r.task, r.seed, r.kept[name][k][m]) for r in rr if r.learned_on(m, cfg.min_gain)]
                        iv = hierarchical_interval([v for _, _, v in vals], [t for t, _, _ in vals], [s for _, s, _ in vals], level=cfg.level)
                        cells[m] = {"mean": iv.estimate, "lo": iv.lo, "hi": iv.hi, "n_tasks": iv.n_units}
                    rows.append({"regime": regime, "selector": name, "k": k, **cells})
                    table.append([regime, name, _pct(k)] + [_cell(cells[m]) for m in MEASURES])
        result.metrics["grafting"] = rows
        result.tables.append({"title": f"Grafting: share of the fine-tune's gain kept (mean of task means [{cfg.level:.0%} t-interval])",
                              "columns": ["regime", "selector", "k"] + [MEASURE_NAMES[m] for m in MEASURES], "rows": table})
        primary = [r for r in rows if r["regime"] == cfg.regimes[0]]
        for m in MEASURES:
            series = []
            for name in cfg.selectors:
                pts = sorted((r for r in primary if r["selector"] == name), key=lambda r: r["k"])
                if pts:
                    series.append({"label": name, "x": [100 * p["k"] for p in pts], "y": [p[m]["mean"] for p in pts],
                                   "lo": [p[m]["lo"] for p in pts], "hi": [p[m]["hi"] for p in pts]})  # one k: a marker
            result.figures.append(lines_figure(
                f"grafting-{m}", f"Grafting ({cfg.regimes[0]}): {MEASURE_NAMES[m]} kept", "k (% of all weights taken from the delta)",
                "share of the fine-tune's gain kept", series, logx=True,
                caption=f"base + k% of the delta chosen by each rule; 1 = the full fine-tune. Bands: {cfg.level:.0%} t-intervals over tasks."))

        if len(cfg.regimes) > 1:
            # how the regime changes the curve: magnitude (solid) against DARE (dashed), one colour each
            series = []
            for i, regime in enumerate(cfg.regimes):
                for name, style in (("magnitude", "-"), ("dare", "--")):
                    pts = sorted((r for r in rows if r["regime"] == regime and r["selector"] == name), key=lambda r: r["k"])
                    if pts:
                        series.append({"label": f"{regime}: {name}", "x": [100 * p["k"] for p in pts], "style": style,
                                       "y": [p["exact"]["mean"] for p in pts], "color": PALETTE[i % len(PALETTE)]})
            result.figures.append(lines_figure(
                "grafting-regimes", "Grafting by fine-tuning regime: exact match kept", "k (% of all weights taken from the delta)",
                "share of the fine-tune's gain kept", series, logx=True,
                caption="Means of task means over runs that learned (intervals in the grafting table). Solid: magnitude top-k; "
                        "dashed: random k rescaled (DARE). A regime whose solid line rises early while its dashed one stays low "
                        "is magnitude-localised."))

    def _shape(self, cfg, valid: list[Run], primary_runs: list[Run], result: StudyResult) -> None:
        small = [k for k in cfg.graft_fractions if k <= cfg.small_k]
        statement = (f"the skill of a fine-tune is magnitude-localised: a top-k% of the delta with k <= {_pct(cfg.small_k)} keeps it "
                     "and a random k% rescaled (DARE) does not")
        measure = "share of the exact-match gain kept by the magnitude graft"
        if len({r.task for r in valid}) < 2 or not small or "magnitude" not in cfg.selectors or "dare" not in cfg.selectors:
            result.claims.append(_inconclusive(statement, measure, f"needs runs of >= 2 tasks that gained >= {cfg.min_gain}, "
                                                                   "and the magnitude and dare selectors", cfg.level))
            return
        tasks, seeds = [r.task for r in valid], [r.seed for r in valid]
        estimates = {}
        for k in small:
            mag = [r.kept["magnitude"][k]["exact"] for r in valid]
            dare = [r.kept["dare"][k]["exact"] for r in valid]
            estimates[f"magnitude@{k}"] = _estimate(mag, tasks, seeds, cfg.level)
            estimates[f"dare@{k}"] = _estimate(dare, tasks, seeds, cfg.level)
            estimates[f"magnitude-dare@{k}"] = _estimate([a - b for a, b in zip(mag, dare)], tasks, seeds, cfg.level)
        rule = shape_rule(cfg.recovered, small)
        shape = rule.label(estimates) or "undecided: intervals straddle the threshold"
        shapes = {m: _shape_label(cfg, [r for r in primary_runs if r.learned_on(m, cfg.min_gain)], small, m) for m in MEASURES}
        result.metrics["grafting_shape"] = {"exact": shape, **{m: s for m, s in shapes.items() if m != "exact"}}
        best = max(small, key=lambda k: estimates[f"magnitude@{k}"].value)
        claim = decide_claim("C0", statement, rule, estimates, f"magnitude@{best}", measure=f"{measure} at k = {_pct(best)} ({shape})",
                             control=f"DARE at {_pct(best)}: {estimates[f'dare@{best}'].value:.2f}; the same rule on per-token "
                                     f"accuracy: {shapes['token']}; on the loss gap: {shapes['loss']}")
        result.claims.append(claim)

    # -- 3. learned masks against fitted controls ----------------------------------------------------
    def _learned(self, cfg, valid: list[Run], controls, result: StudyResult) -> None:
        if "learned" not in cfg.selectors:
            return
        k = cfg.learned_fractions[0]
        statement = (f"the skill is localisable: a {_pct(k)} mask fitted to the task (Panigrahi et al.'s relaxed-mask objective, "
                     f"{cfg.learned_steps} steps from the {cfg.learned_init} top-{_pct(k)}) keeps more of the real delta's skill than the "
                     "same fit keeps from a shuffled-label or a Gaussian delta")
        valid_ids = {(r.task, r.seed) for r in valid}
        usable = [c for c in controls if (c["task"], c["seed"]) in valid_ids]
        by_measure = {}
        for m in MEASURES:
            by_measure[m] = {"real": [c["run"].kept["learned"][k][m] for c in usable],
                             "shuffled": [c["shuffled"]["learned"][k][m] for c in usable],
                             "gaussian": [c["gaussian"]["learned"][k][m] for c in usable]}
        result.metrics["learned_vs_controls"] = {m: {key: float(np.nanmean(v)) if v else None for key, v in d.items()}
                                                 for m, d in by_measure.items()}
        groups = [{"label": f"{sel} mask over {src} delta",
                   "values": [float(np.nanmean([c[src2][sel][k][m] if src2 != "run" else c["run"].kept[sel][k][m] for c in usable]))
                              if usable else float("nan") for m in MEASURES]}
                  for sel in ("learned", "magnitude") for src, src2 in (("the real", "run"), ("the shuffled-label", "shuffled"),
                                                                        ("a Gaussian", "gaussian"))]
        result.figures.append(bars_figure(
            "learned-vs-controls", f"A {_pct(k)} mask fitted to the task, over the real delta and over control deltas",
            [MEASURE_NAMES[m] for m in MEASURES], groups, "share of the fine-tune's gain kept",
            caption="Shares relative to the real fine-tune's gain. What a fit keeps over a control delta is what fitting alone buys "
                    "(format, not skill); the claim is the difference."))
        satisfied = [MEASURE_NAMES[m] for m in MEASURES if by_measure[m]["shuffled"] and np.nanmean(by_measure[m]["shuffled"]) >= cfg.recovered]
        if satisfied:
            result.notes.append(f"The shuffled-label control alone reaches {cfg.recovered:.0%} of the gain on: {', '.join(satisfied)} — "
                                "those measures track answer format, not the skill.")
        if len({c["task"] for c in usable}) < 2:
            result.claims.append(_inconclusive(statement, "learned-mask share kept minus control", f"needs controls of >= 2 tasks that gained "
                                                                                              f">= {cfg.min_gain}", cfg.level))
            return
        tasks, seeds = [c["task"] for c in usable], [c["seed"] for c in usable]
        exact = by_measure["exact"]
        vs_s = [a - b for a, b in zip(exact["real"], exact["shuffled"])]
        vs_g = [a - b for a, b in zip(exact["real"], exact["gaussian"])]
        estimates = {"learned": _estimate(exact["real"], tasks, seeds, cfg.level),
                     "learned_vs_shuffled": _estimate(vs_s, tasks, seeds, cfg.level),
                     "learned_vs_gaussian": _estimate(vs_g, tasks, seeds, cfg.level)}
        result.claims.append(decide_claim(
            "C0", statement, LEARNED_RULE, estimates, "learned_vs_shuffled",
            measure=f"exact-match share kept by a learned {_pct(k)} mask, real minus shuffled-label delta (real alone: "
                    f"{estimates['learned'].value:.2f})",
            control=f"over a Gaussian delta: difference {estimates['learned_vs_gaussian'].value:.2f}; magnitude top-{_pct(k)} over the real "
                    f"delta keeps {np.nanmean([c['run'].kept['magnitude'][k]['exact'] for c in usable]) if 'magnitude' in cfg.selectors else float('nan'):.2f}; "
                    f"per task: {_agreement(vs_s, tasks, seeds, 0.0, cfg.level)}"))

    # -- 4. support stability ---------------------------------------------------------------------
    def _support(self, cfg, runs: list[Run], result: StudyResult) -> None:
        k = cfg.support_fraction
        masks = [global_topk_mask(r.delta, float(k)) for r in runs]
        same, cross, chance = [], [], []
        for i, j in itertools.combinations(range(len(runs)), 2):
            a, b = runs[i].task, runs[j].task
            value = jaccard(masks[i], masks[j])
            chance.append(jaccard_chance(masks[i], masks[j], runs[i].delta, runs[j].delta))
            (same if a == b else cross).append((a if a == b else "|".join(sorted((a, b))), value))
        groups = []
        for label, pairs in (("same task, other seed", same), ("other task", cross)):
            vals = [v for _, v in pairs]
            groups.append({"label": label, "values": [float(np.mean(vals)) if vals else float("nan")],
                           "lo": [float(np.min(vals)) if vals else float("nan")], "hi": [float(np.max(vals)) if vals else float("nan")]})
        groups.append({"label": "chance (among moved entries)", "values": [float(np.nanmean(chance))] if chance else [float("nan")]})
        result.metrics["jaccard"] = {"same_task": float(np.mean([v for _, v in same])) if same else None,
                                     "cross_task": float(np.mean([v for _, v in cross])) if cross else None,
                                     "chance": float(np.nanmean(chance)) if chance else None}
        result.figures.append(bars_figure(
            "support", f"Overlap of top-{_pct(k)} supports (Jaccard)", ["Jaccard"], groups, "Jaccard index",
            caption="Mean over pairs of runs; bars span the lowest to the highest pair (pairs share runs, so no interval is claimed). "
                    "Chance: two random supports of the same size among the entries either run changed."))

    # -- 5. imposed vs natural --------------------------------------------------------------------
    def _imposed(self, cfg, imposed, result: StudyResult) -> None:
        k = cfg.mask_fraction
        labels = [f"{c['task']} s{c['seed']}" for c in imposed]
        result.figures.append(bars_figure(
            "imposed", f"Imposed sparsity: training only {_pct(k)} of weights", labels,
            [{"label": "full fine-tune", "values": [c["run"].tuned.exact for c in imposed]},
             {"label": f"LT-SFT ({_pct(k)} from full delta)", "values": [c["lt"].exact for c in imposed]},
             {"label": f"random mask ({_pct(k)})", "values": [c["random"].exact for c in imposed]},
             {"label": "base", "values": [c["run"].base.exact for c in imposed]}],
            "exact match at the target level", ylim=(0, 1.05), caption="Equal steps for every regime."))
        statement = (f"imposed sparsity: retraining only the top-{_pct(k)} entries of the full fine-tune's delta (LT-SFT) recovers "
                     f"its gain, and a random {_pct(k)} mask does not")
        usable = [c for c in imposed if c["run"].learned_on("exact", cfg.min_gain)]
        if len({c["task"] for c in usable}) < 2:
            result.claims.append(_inconclusive(statement, "exact-match gain kept by LT-SFT",
                                               f"needs controls of >= 2 tasks that gained >= {cfg.min_gain}", cfg.level))
            return
        tasks, seeds = [c["task"] for c in usable], [c["seed"] for c in usable]
        lt = [share_kept(c["lt"], c["run"].base, c["run"].tuned, "exact") for c in usable]
        rnd = [share_kept(c["random"], c["run"].base, c["run"].tuned, "exact") for c in usable]
        estimates = {"lt_sft": _estimate(lt, tasks, seeds, cfg.level),
                     "lt_vs_random": _estimate([a - b for a, b in zip(lt, rnd)], tasks, seeds, cfg.level)}
        d_lo, d_hi = estimates["lt_vs_random"].interval
        result.claims.append(decide_claim(
            "C0", statement, imposed_rule(cfg.recovered), estimates, "lt_sft", measure="exact-match gain kept by LT-SFT",
            control=f"random {_pct(k)} mask keeps {np.mean(rnd):.2f} (LT-SFT minus random, paired [{d_lo:.2f}, {d_hi:.2f}])"))

    # -- 6. where the change lives ----------------------------------------------------------------
    def _profile(self, runs: list[Run], result: StudyResult) -> None:
        profiles = [tensor_profile(r.delta) for r in runs]
        for axis, title in (("kind", "module kind"), ("layer", "layer")):
            cats = list(profiles[0][axis])
            energy = np.asarray([[p[axis][c]["energy_share"] for c in cats] for p in profiles])
            params = [profiles[0][axis][c]["param_share"] for c in cats]
            result.figures.append(bars_figure(
                f"profile-{axis}", f"Where the change lives: by {title}", [str(c) for c in cats],
                [{"label": "share of delta energy", "values": energy.mean(0).tolist(),
                  "lo": energy.min(0).tolist(), "hi": energy.max(0).tolist()},
                 {"label": "share of parameters (isotropic null)", "values": params}],
                "share", caption="Mean over runs, bars spanning the lowest and highest run. An update spread evenly over all "
                                 "weights would match the parameter share."))
            result.metrics[f"profile_{axis}"] = {str(c): {"energy_share": float(energy[:, j].mean()), "param_share": params[j]}
                                                 for j, c in enumerate(cats)}

    # -- regimes: update size and what each one's curve looks like ---------------------------------
    def _regimes(self, cfg, runs: list[Run], controls, result: StudyResult) -> None:
        small = [k for k in cfg.graft_fractions if k <= cfg.small_k]
        k_fit = cfg.learned_fractions[0]
        rows = []
        for regime in cfg.regimes:
            rr = [r for r in runs if r.regime == regime]
            valid = [r for r in rr if r.learned_on("exact", cfg.min_gain)]
            shape = (_shape_label(cfg, valid, small, "exact") if len({r.task for r in valid}) >= 2 and "magnitude" in cfg.selectors
                     and "dare" in cfg.selectors else "too few runs that learned")
            top = np.mean([concentration_curve(r.delta, [cfg.support_fraction])["energy"][0] for r in rr])
            # what a fitted mask keeps of this regime's delta beyond what it keeps of its shuffled-label twin
            fitted = [c["run"].kept["learned"][k_fit]["exact"] - c["shuffled"]["learned"][k_fit]["exact"]
                      for c in controls if c["regime"] == regime and c["run"] in valid] if "learned" in cfg.selectors else []
            rows.append([regime, f"{np.mean([r.size['relative_norm'] for r in rr]):.3f}", f"{np.mean([r.size['moved_share'] for r in rr]):.2f}",
                         f"{top:.3f}", f"{np.mean([r.gain for r in rr]):.2f}", f"{np.mean([r.tuned.token - r.base.token for r in rr]):.2f}",
                         f"{len(valid)}/{len(rr)}", shape, f"{np.mean(fitted):+.2f} (n={len(fitted)})" if fitted else "–"])
        result.tables.append({"title": "Fine-tuning regimes: update size, concentration, gain, the shape of the grafting curve and what a "
                                       "learned mask keeps beyond its shuffled-label control (exact match)",
                              "columns": ["regime", "||delta|| / ||base||", "share of entries moved > 1e-3 RMS",
                                          f"energy in top {_pct(cfg.support_fraction)}", "exact-match gain", "per-token gain",
                                          "runs that learned", "shape", f"learned {_pct(k_fit)}: real - shuffled"], "rows": rows})
        k_small = max(small) if small else None
        if k_small is not None and {"magnitude", "dare"} <= set(cfg.selectors):
            parts = []
            grafted = {(g["regime"], g["selector"]): g["exact"]["mean"] for g in result.metrics["grafting"] if g["k"] == k_small}
            for regime, row in zip(cfg.regimes, rows):
                # the grafting table's own estimates (mean of task means over runs that learned), not a second average
                kept = {s: grafted.get((regime, s), float("nan")) for s in ("magnitude", "dare")}
                parts.append(f"{regime}: update {row[1]} of the base's norm, top-{_pct(cfg.support_fraction)} energy {row[3]}, "
                             f"{_pct(k_small)} kept by magnitude {kept['magnitude']:.2f} / DARE {kept['dare']:.2f} "
                             f"({row[6]} runs learned; shape: {row[7]})")
            result.notes.append(f"Regimes compared (update size and top-{_pct(cfg.support_fraction)} energy: means over all runs; shares "
                                f"kept, exact match at the target level: means over runs that learned): {'; '.join(parts)}.")
        result.metrics["regime_summary"] = [dict(zip(["regime", "relative_norm", "moved_share", "top_energy", "exact_gain", "token_gain",
                                                      "learned", "shape", "learned_vs_shuffled"], r)) for r in rows]
        result.notes.append("Caveats measured here: the update size of each regime is in the regimes table (LLM fine-tunes that DARE "
                            "reports move far less of the weights); the verdicts use exact match at the target level, and the table "
                            "shows per-token accuracy and the loss gap beside it; the verdicts come from the first regime only"
                            + (" (lora's delta is low rank by construction: its concentration and grafting curves describe an "
                               "imposed structure, not what full fine-tuning does on its own)." if "lora" in cfg.regimes else "."))


def choose(name: str, base: StateDict, delta: StateDict, fraction: float, *, model, data: list[Example], seed: int,
           steps: int, init: str = "saliency", gradient: StateDict | None = None) -> tuple[Mask, float]:
    """The mask of ``round(fraction * n)`` entries that selection rule ``name`` picks from
    ``delta``, and the scale its entries are grafted at (n/k for DARE, else 1)."""
    from ..deltas.masks import rule_scale, select

    n = sum(d.numel() for d in delta.values())
    k = round(fraction * n)
    tuned = {name_: base[name_] + delta[name_] for name_ in base}
    mask = select(name, base, tuned, k, model=model, data=[(e.prompt, e.target) for e in data], seed=seed, gradient=gradient,
                  **({"steps": steps, "init": init} if name == "learned" else {}))
    return mask, rule_scale(name, k, n)


def _cell(c: dict[str, float]) -> str:
    if not np.isfinite(c["mean"]):
        return "–"
    if not np.isfinite(c["lo"]):
        return f"{c['mean']:.2f}"
    return f"{c['mean']:.2f} [{c['lo']:.2f}, {c['hi']:.2f}]"


def _shape_label(cfg, valid: list[Run], small: list[float], measure: str) -> str:
    if len({r.task for r in valid}) < 2:
        return "too few runs that learned"
    tasks, seeds = [r.task for r in valid], [r.seed for r in valid]
    estimates = {}
    for k in small:
        mag = [r.kept["magnitude"][k][measure] for r in valid]
        dare = [r.kept["dare"][k][measure] for r in valid]
        estimates[f"magnitude@{k}"] = _estimate(mag, tasks, seeds, cfg.level)
        estimates[f"dare@{k}"] = _estimate(dare, tasks, seeds, cfg.level)
        estimates[f"magnitude-dare@{k}"] = _estimate([a - b for a, b in zip(mag, dare)], tasks, seeds, cfg.level)
    return shape_rule(cfg.recovered, small).label(estimates) or "undecided"


def _inconclusive(statement: str, measure: str, why: str, level: float) -> Claim:
    return Claim(id="C0", statement=statement, verdict="inconclusive", measure=measure, value=float("nan"),
                 interval=NAN_INTERVAL, level=level, control=why, rule=why, reason=why)
