"""sparsity-emergence: is "dense for the familiar, sparse for the unfamiliar" learned during
pretraining? (claim C2, Jin et al. 2026, pretraining section)

The base model's pretraining keeps no snapshots (and must not change: it keys the cached base),
so this study runs its own pretraining runs from scratch, one per seed, on the run's task mixture
minus one held-out task family. At log-spaced steps, step 0 (the initialisation) included, it
measures the C1 sparsity metrics (``metrics.metric_profile``) of the last prompt token's hidden
state at every layer on three sets of prompts:

- familiar: the training distribution (the trained levels of the trained tasks);
- OOD: the same tasks at the run's OOD levels;
- held-out: the held-out family at the trained levels (a task the run never saw).

Each run's trajectory is cached as JSON under everything that determines it (seed, model,
schedule, data, evaluation sets and the code that trains and measures).

The gap is unfamiliar minus familiar in the metric's sparser direction, standardised by the
spread of the familiar prompts at that step (a scale-free effect size, so step 0 and the trained
model compare). C2 is decided per unfamiliar set from three estimates, each a t-interval over the
seeds (the independent units; exact for normal seed effects, wide with few seeds):
the gap at the last step is above 0, training increased it (last minus step 0, paired by seed),
and at step 0 it lies within +-``init_margin`` familiar SDs (absent at initialisation). The
control is the same standardised gap between two random halves of the familiar prompts. The U
curve (familiar prompts sparsify early, then densify) is decided from a peak step chosen on one
half of the familiar prompts and measured on the other half, so item noise cannot make a peak.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..activations.lasttoken import last_token_metrics
from ..config import Config, field
from ..errors import ConfigError
from ..hooks import resolve_sites
from ..metrics import metric_profile
from ..models import ModelConfig, TinyLM
from ..tasks import Example, get_task
from ..tasks.mixture import TaskMixture, eval_examples
from ..train import TrainConfig, checkpoint_step, train
from .base import STUDIES, Study, StudyResult, bars_figure, decide_claim, lines_figure
from .cache import CHECKPOINT, JSON
from .context import TRAINING_CODE, StudyContext
from .stats import binomial_tail, t_interval
from .task_selection import has_levels
from .verdicts import NOT_SUPPORTED, SUPPORTED, Above, AllOf, AnyOf, Below, Estimate, FirstOf, Rule

# What produces a trajectory: the training code, this module (the measurement) and what it calls.
MEASURING_CODE = TRAINING_CODE + ("taskloc.studies.sparsity_emergence", "taskloc.metrics", "taskloc.hooks",
                                  "taskloc.activations.reducers", "taskloc.activations.lasttoken")
SETS = ("familiar", "ood", "held-out")
UNFAMILIAR = ("ood", "held-out")
SET_NAMES = {"familiar": "familiar (trained tasks, trained levels)", "ood": "OOD levels of trained tasks",
             "held-out": "held-out task family"}


def sparser_sign(metric: str) -> int:
    """+1 when a larger value of ``metric`` means a sparser vector, -1 when a smaller one does, 0
    when the metric has no sparser direction (L1 norm, share above zero, the outlier count 'l0')."""
    if metric.startswith("top") or metric in ("gini", "hoyer", "near_zero"):
        return 1
    if metric in ("eff_rank", "eff_rank_norm"):
        return -1
    return 0


def directed_metrics(convention: str) -> list[str]:
    """metric_profile's keys under ``convention`` that have a sparser direction."""
    keys = metric_profile(torch.ones(1, 4), convention)
    return [k for k in keys if sparser_sign(k)]


def checkpoint_steps(total: int, count: int) -> list[int]:
    """0, then ``count`` log-spaced steps from 1 to ``total`` (rounded, duplicates dropped; the
    last is ``total``)."""
    spaced = np.unique(np.round(np.geomspace(1, total, count)).astype(int)) if count > 1 else np.array([total])
    return [0] + sorted({int(s) for s in spaced} | {total})


@dataclass
class SparsityEmergenceConfig(Config):
    section = "studies.sparsity-emergence."

    seeds: int = field(3, "pretraining runs from scratch (model and data seed); intervals run over them")
    tasks: list[str] = field([], "tasks the runs pretrain on (empty: the run's data.tasks minus held_out)")
    held_out: str = field("reverse", "task family left out of pretraining and probed as unfamiliar ('' for none)")
    model: dict[str, Any] = field({}, "overrides of the run's model.* settings for these runs, e.g. {d_model = 64}")
    pretrain: TrainConfig = field(TrainConfig(steps=1500, batch_size=64, lr=3e-3, warmup=50, ckpt_every=250),
                                  "schedule of each run (eval_every is unused: metrics are taken at log-spaced steps)")
    checkpoints: int = field(10, "log-spaced steps after step 0 at which metrics are taken (the last is the final step)")
    examples: int = field(48, "prompts per (task, level) cell at every checkpoint, drawn afresh for each seed")
    sites: list[str] = field(["blocks.*.hook_resid_post", "ln_final.hook_normalized"],
                             "hook sites (globs) whose last-prompt-token value is measured, one per layer (the last: the final norm's output, "
                             "the paper's last hidden state)")
    metric: str = field("top5_energy", "the metric the verdicts use; it must have a sparser direction (top-k shares, gini, hoyer, "
                                       "near_zero, effective rank)")
    layer: int = field(-1, "which of the resolved sites the verdicts use (-1: the last)")
    convention: Literal["taskloc", "paper"] = field("taskloc", "metric convention (metrics.py): ours or the authors' code")
    init_margin: float = field(0.2, "the gap counts as absent at step 0 when its interval lies within +- this many familiar SDs")
    level: float = field(0.95, "nominal level of the t-intervals over seeds")

    def validate(self) -> None:
        if self.seeds < 2:
            raise ConfigError(f"{self.key('seeds')}={self.seeds}: need at least 2 seeds (intervals run over seeds).")
        if self.checkpoints < 2:
            raise ConfigError(f"{self.key('checkpoints')}={self.checkpoints} must be at least 2 (a trajectory needs steps).")
        if self.examples < 2:
            raise ConfigError(f"{self.key('examples')}={self.examples} must be at least 2 (the familiar set is split in halves).")
        if not self.sites:
            raise ConfigError(f"{self.key('sites')} is empty; name at least one site, e.g. blocks.*.hook_resid_post.")
        if self.metric not in directed_metrics(self.convention):
            raise ConfigError(f"{self.key('metric')}={self.metric!r} is not a sparsity metric with a direction under convention "
                              f"{self.convention!r}; choose one of {', '.join(directed_metrics(self.convention))}.")
        if not self.init_margin > 0:
            raise ConfigError(f"{self.key('init_margin')}={self.init_margin} must be positive (in familiar-set SDs).")
        if not 0.5 <= self.level < 1:
            raise ConfigError(f"{self.key('level')}={self.level} must lie in [0.5, 1).")

    def model_config(self, run_model: ModelConfig) -> ModelConfig:
        """The run's model settings with this study's overrides; errors name the study's key."""
        if "vocab_size" in self.model:
            raise ConfigError(f"{self.key('model')}.vocab_size cannot be overridden: it is the task vocabulary's size.")
        return ModelConfig.from_dict({**run_model.to_dict(), **self.model}, self.key("model."))


# -- the rules that decide C2 ---------------------------------------------------------------------
def learned_rule(margin: float) -> FirstOf:
    """Learned, not intrinsic: a gap at the end, grown by training, absent at initialisation; or
    which way it fails (the labels name the case the estimates fit)."""
    init = ("init", "standardised gap at step 0")
    final = ("final", "standardised gap at the last step")
    return FirstOf(
        ("learned: absent at initialisation, grown by training", SUPPORTED,
         AllOf(Above(final[0], 0.0, final[1]), Above("learned", 0.0, "standardised gap, last step minus step 0 (paired by seed)"),
               Above(init[0], -margin, init[1]), Below(init[0], margin, init[1]))),
        ("intrinsic: already present at initialisation", NOT_SUPPORTED,
         AnyOf(Above(init[0], margin, init[1]), Below(init[0], -margin, init[1]))),
        ("reversed: familiar prompts sparser after training", NOT_SUPPORTED, Below(final[0], 0.0, final[1])),
        ("absent: no gap after training", NOT_SUPPORTED, AllOf(Above(final[0], -margin, final[1]), Below(final[0], margin, final[1]))))


U_RULE = AllOf(Above("rise", 0.0, "familiar sparsity, peak minus step 0"), Above("fall", 0.0, "familiar sparsity, peak minus last step"))


# -- measuring ------------------------------------------------------------------------------------
def init_model(model_cfg: ModelConfig, seed: int, device: torch.device | str = "cpu") -> TinyLM:
    """A freshly initialised TinyLM: what step 0 of the run with ``seed`` measures."""
    torch.manual_seed(seed)
    return TinyLM(model_cfg).to(device)


def summarise(values: dict[str, dict[str, np.ndarray]], half: np.ndarray) -> dict[str, dict[str, list[float]]]:
    """{site: {metric: [mean, sd, mean of half A, mean of half B]}}; ``half`` (N,) bool marks A."""
    return {site: {k: [float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, float(v[half].mean()), float(v[~half].mean())]
                   for k, v in per.items()} for site, per in values.items()}


@dataclass
class Plan:
    """What one run trains on and measures (shared by every seed)."""

    model: ModelConfig
    tasks: list[str]
    held_out: str
    train_levels: list[int]
    ood_levels: list[int]
    weights: dict[str, float]
    schedule: TrainConfig
    steps: list[int]
    examples: int
    eval_seed: int
    sites: list[str]
    convention: str

    def cells(self) -> dict[str, list[tuple[str, int]]]:
        out = {"familiar": [(t, lv) for t in self.tasks for lv in self.train_levels],
               "ood": [(t, lv) for t in self.tasks for lv in self.ood_levels],
               "held-out": [(self.held_out, lv) for lv in self.train_levels] if self.held_out else []}
        return {k: v for k, v in out.items() if v}

    def prompts(self, seed: int) -> dict[str, list[Example]]:
        """Each seed gets its own prompts, so the spread over seeds carries item sampling too."""
        return {name: [e for t, lv in cells for e in eval_examples(get_task(t), lv, self.examples, self.eval_seed + 7919 * (seed + 1))]
                for name, cells in self.cells().items()}

    def mixture(self, seed: int) -> TaskMixture:
        return TaskMixture([get_task(t) for t in self.tasks], self.train_levels, seed,
                           {k: v for k, v in self.weights.items() if k in self.tasks})


def trajectory(plan: Plan, seed: int, folder: Path | None = None, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Pretrain one model from scratch and measure it at ``plan.steps``: {"steps": [...],
    "records": [{"step", "sets": {set: {"accuracy", "n", "stats": summarise(...)}}}]}. Resumable
    through ``folder/checkpoint.safetensors`` (the measurements so far ride in its history)."""
    prompts = plan.prompts(seed)
    halves = {name: np.random.default_rng([seed, len(p), 4242]).permutation(len(p)) < len(p) // 2 for name, p in prompts.items()}
    wanted = set(plan.steps)

    profile = partial(metric_profile, convention=plan.convention)

    def measure(model: torch.nn.Module) -> dict[str, Any]:
        sets = {}
        for name, examples in prompts.items():
            run = last_token_metrics(model, [(e.prompt, e.target) for e in examples], plan.sites, profile)
            sets[name] = {"accuracy": float(run.correct.mean()), "n": len(examples), "stats": summarise(run.metrics, halves[name])}
        return {"sets": sets}

    model = init_model(plan.model, seed, device)
    records = [{"step": 0, **measure(model)}]  # the initialisation, measured again on a resume (same seed, same weights)
    checkpoint = folder / CHECKPOINT if folder is not None else None
    step = {"done": checkpoint_step(checkpoint) if checkpoint is not None and checkpoint.exists() else 0}

    def evaluate(m: torch.nn.Module) -> dict[str, Any]:
        step["done"] += 1  # eval_every = 1: called after every step
        return measure(m) if step["done"] in wanted else {}

    schedule = TrainConfig.from_dict({**plan.schedule.to_dict(), "eval_every": 1})
    history = train(model, schedule, plan.mixture(seed), checkpoint=checkpoint, evaluate=evaluate,
                    label=f"sparsity-emergence seed {seed}", meta={"kind": "sparsity-emergence", "seed": seed})
    records += [h for h in history if "sets" in h]
    return {"steps": [r["step"] for r in records], "records": records}


# -- analysis -------------------------------------------------------------------------------------
def series(runs: list[dict[str, Any]], set_name: str, site: str, metric: str, column: int = 0) -> np.ndarray:
    """(seeds, steps) of one summary column (0 mean, 1 sd, 2 half A, 3 half B)."""
    return np.asarray([[r["sets"][set_name]["stats"][site][metric][column] for r in run["records"]] for run in runs])


def standardised_gap(runs: list[dict[str, Any]], set_name: str, site: str, metric: str) -> np.ndarray:
    """(seeds, steps): sign * (mean of ``set_name`` - mean of familiar) / SD of familiar."""
    sign = sparser_sign(metric)
    fam, sd = series(runs, "familiar", site, metric), series(runs, "familiar", site, metric, 1)
    if set_name == "halves":  # the control: two random halves of the familiar prompts
        other, fam = series(runs, "familiar", site, metric, 2), series(runs, "familiar", site, metric, 3)
    else:
        other = series(runs, set_name, site, metric)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sign * (other - fam) / sd


def estimate(values: np.ndarray, level: float) -> Estimate:
    iv = t_interval(values.tolist(), level)
    return Estimate(iv.estimate, (iv.lo, iv.hi), iv.achieved)


def gap_estimates(gap: np.ndarray, level: float) -> dict[str, Estimate]:
    """gap (seeds, steps) -> the estimates learned_rule reads."""
    return {"final": estimate(gap[:, -1], level), "init": estimate(gap[:, 0], level), "learned": estimate(gap[:, -1] - gap[:, 0], level)}


def u_estimates(runs: list[dict[str, Any]], site: str, metric: str, level: float) -> tuple[dict[str, Estimate], list[int]]:
    """Rise and fall of familiar sparsity around a peak (in the metric's units, sparser direction).
    Each seed's peak is the interior step where half A of its familiar prompts is sparsest; rise
    and fall are read on half B, so the choice of the peak cannot lend itself item noise."""
    sign = sparser_sign(metric)
    a = sign * series(runs, "familiar", site, metric, 2)  # (seeds, steps)
    b = sign * series(runs, "familiar", site, metric, 3)
    if a.shape[1] < 3:
        nan = Estimate(float("nan"), (float("nan"), float("nan")))
        return {"rise": nan, "fall": nan}, []
    peaks = [1 + int(np.argmax(row[1:-1])) for row in a]
    rows = np.arange(len(peaks))
    rise = b[rows, peaks] - b[:, 0]
    fall = b[rows, peaks] - b[:, -1]
    return {"rise": estimate(rise, level), "fall": estimate(fall, level)}, peaks


def sign_agreement(values: np.ndarray) -> str:
    n, k = values.size, int((values > 0).sum())
    return f"{k} of {n} seeds > 0 (exact sign test p = {binomial_tail(n, k):.3g}; {0.5 ** n:.3g} is the smallest {n} seeds allow)"


def band(values: np.ndarray, level: float) -> tuple[list[float], list[float], list[float]]:
    """Mean over seeds and its t-interval at every step: (seeds, steps) -> 3 lists."""
    ivs = [t_interval(values[:, j].tolist(), level) for j in range(values.shape[1])]
    return [iv.estimate for iv in ivs], [iv.lo for iv in ivs], [iv.hi for iv in ivs]


@STUDIES.register("sparsity-emergence")
class SparsityEmergenceStudy(Study):
    name = "sparsity-emergence"
    summary = ("pretraining runs from scratch: last-token sparsity per layer at log-spaced steps (step 0 included) on familiar, "
               "OOD and held-out-task prompts; is the gap absent at initialisation and learned?")
    claims = ("C2",)
    Config = SparsityEmergenceConfig

    @classmethod
    def rules(cls, cfg: SparsityEmergenceConfig) -> list[tuple[str, str, Rule]]:
        return [("C2", f"per unfamiliar set (OOD levels, held-out task): the {cfg.metric} gap is absent at initialisation and learned",
                 learned_rule(cfg.init_margin)),
                ("C2", f"U curve: familiar prompts' {cfg.metric} rises from initialisation to a peak, then falls by the end", U_RULE)]

    def check(self, cfg: SparsityEmergenceConfig, run_cfg) -> None:
        self.plan(cfg, run_cfg)

    def plan(self, cfg: SparsityEmergenceConfig, run_cfg) -> Plan:
        """Everything a run needs, validated against the run's data and model (before any work)."""
        model_cfg = cfg.model_config(run_cfg.model)
        tasks = cfg.tasks or [t for t in run_cfg.data.tasks if t != cfg.held_out]
        if cfg.held_out and cfg.held_out in tasks:
            raise ConfigError(f"{cfg.key('held_out')}={cfg.held_out!r} is also in {cfg.key('tasks')}={tasks}; a held-out family "
                              "must be left out of pretraining.")
        if not cfg.held_out and not run_cfg.data.ood_levels:
            raise ConfigError(f"{cfg.key('held_out')} is empty and data.ood_levels is empty: there is nothing unfamiliar to "
                              "compare with; name a held-out task or give OOD levels.")
        # Its own pretraining: its tasks need not be the run's (only the run's levels, which it probes).
        usable = has_levels(run_cfg.data.train_levels + run_cfg.data.ood_levels)  # unknown name -> did-you-mean
        for key, name in [("tasks", t) for t in tasks] + ([("held_out", cfg.held_out)] if cfg.held_out else []):
            problem = usable(name)
            if problem:
                raise ConfigError(f"{cfg.key(key)}: {problem}.")
        sites = resolve_sites(TinyLM(model_cfg), cfg.sites)  # unknown site -> did-you-mean
        if not -len(sites) <= cfg.layer < len(sites):
            raise ConfigError(f"{cfg.key('layer')}={cfg.layer} is out of range for the {len(sites)} site(s) {sites}; "
                              f"pick -{len(sites)}..{len(sites) - 1}.")
        return Plan(model_cfg, tasks, cfg.held_out, list(run_cfg.data.train_levels), list(run_cfg.data.ood_levels),
                    dict(run_cfg.data.weights), cfg.pretrain, checkpoint_steps(cfg.pretrain.steps, cfg.checkpoints), cfg.examples,
                    run_cfg.eval.seed, sites, cfg.convention)

    def run(self, ctx: StudyContext, cfg: SparsityEmergenceConfig) -> StudyResult:
        plan = self.plan(cfg, ctx.cfg)
        requests = []
        for s in range(cfg.seeds):
            seed = 1000 * ctx.cfg.seed + s
            ingredients = {"seed": seed, "model": plan.model.to_dict(), "tasks": plan.tasks, "held_out": plan.held_out,
                           "train_levels": plan.train_levels, "ood_levels": plan.ood_levels, "weights": plan.weights,
                           "schedule": plan.schedule.to_dict(), "steps": plan.steps, "examples": plan.examples,
                           "eval_seed": plan.eval_seed, "sites": plan.sites, "convention": plan.convention,
                           "data": plan.mixture(seed).fingerprint()}
            # the seeds' pretraining runs are independent jobs (side by side under the ray executor)
            requests.append((ingredients, partial(_trajectory_job, plan=plan, seed=seed), f"sparsity-emergence seed {s}"))
        runs = ctx.build_many("sparsity-emergence", requests, JSON, MEASURING_CODE)
        return analyse(runs, plan, cfg, given_model=ctx.given is not None)


def _trajectory_job(folder: Path, *, plan: Plan, seed: int, device: str = "cpu") -> dict[str, Any]:
    return trajectory(plan, seed, folder, device)


def analyse(runs: list[dict[str, Any]], plan: Plan, cfg: SparsityEmergenceConfig, given_model: bool = False) -> StudyResult:
    """Figures, tables and the C2 verdicts from the runs' trajectories (one dict per seed)."""
    steps = runs[0]["steps"]
    x = [s + 1 for s in steps]  # log axis: step 0 sits at 1
    site = plan.sites[cfg.layer]
    sets = [s for s in SETS if s in runs[0]["records"][0]["sets"]]
    unfamiliar = [s for s in UNFAMILIAR if s in sets]
    level = cfg.level
    result = StudyResult(metrics={"steps": steps, "seeds": len(runs), "sites": plan.sites, "verdict_site": site, "metric": cfg.metric,
                                  "convention": cfg.convention, "tasks": plan.tasks, "held_out": plan.held_out,
                                  "prompts": {s: runs[0]["records"][0]["sets"][s]["n"] for s in sets}})

    # trajectories with bands, and accuracy
    traj = []
    for name in sets:
        mean, lo, hi = band(series(runs, name, site, cfg.metric), level)
        traj.append({"label": SET_NAMES[name], "x": x, "y": mean, "lo": lo, "hi": hi, "style": "-" if name == "familiar" else "--"})
        result.metrics.setdefault("trajectory", {})[name] = mean
    direction = "higher is sparser" if sparser_sign(cfg.metric) > 0 else "lower is sparser"
    result.figures.append(lines_figure(
        "trajectory", f"{cfg.metric} of the last prompt token at {site} over pretraining", "training step + 1", f"{cfg.metric} ({direction})",
        traj, logx=True, caption=f"Mean over {len(runs)} pretraining seeds; bands: {level:.0%} t-intervals over seeds (exact if seed "
                                 "means are normal). Step 0 is the initialisation."))
    acc = []
    for name in sets:
        values = np.asarray([[r["sets"][name]["accuracy"] for r in run["records"]] for run in runs])
        mean, lo, hi = band(values, level)
        acc.append({"label": SET_NAMES[name], "x": x, "y": mean, "lo": lo, "hi": hi})
        result.metrics.setdefault("accuracy", {})[name] = mean
    result.figures.append(lines_figure("accuracy", "Exact match over pretraining", "training step + 1", "exact match", acc, logx=True,
                                       ylim=(0, 1.02), caption=f"Bands: {level:.0%} t-intervals over seeds."))

    # the gap over steps, with the split-half control
    gaps, gap_series = {}, []
    for name in [*unfamiliar, "halves"]:
        gaps[name] = standardised_gap(runs, name, site, cfg.metric)
        mean, lo, hi = band(gaps[name], level)
        label = "control: two random halves of the familiar prompts" if name == "halves" else f"{SET_NAMES[name]} minus familiar"
        gap_series.append({"label": label, "x": x, "y": mean, "lo": lo, "hi": hi, "style": ":" if name == "halves" else "-"})
        result.metrics.setdefault("gap", {})[name] = mean
    result.figures.append(lines_figure(
        "gap", f"Unfamiliar minus familiar {cfg.metric} at {site}, in familiar SDs (positive: unfamiliar sparser)", "training step + 1",
        "standardised gap", gap_series, logx=True,
        caption=f"Bands: {level:.0%} t-intervals over {len(runs)} seeds. C2 expects ~0 at step 0 and a positive gap after training; "
                f"the dotted control should stay at 0. Margin for 'absent at step 0': +-{cfg.init_margin:g} SD."))

    # per layer: the final and initial gap at every site
    layer_series = []
    for name in unfamiliar:
        per_site = np.stack([standardised_gap(runs, name, s, cfg.metric) for s in plan.sites], axis=1)  # (seeds, sites, steps)
        for j, when in ((-1, "last step"), (0, "step 0")):
            mean, lo, hi = band(per_site[:, :, j], level)
            layer_series.append({"label": f"{SET_NAMES[name]}, {when}", "x": list(range(len(plan.sites))), "y": mean, "lo": lo, "hi": hi,
                                 "style": "-" if j == -1 else ":"})
    result.figures.append(lines_figure("layers", f"Standardised {cfg.metric} gap by layer", "layer (site index)", "standardised gap",
                                       layer_series, caption=f"Sites: {', '.join(plan.sites)}. Bands: {level:.0%} t-intervals over seeds."))

    # C2 verdicts, one per unfamiliar set
    rule = learned_rule(cfg.init_margin)
    control = gaps["halves"]
    for name in unfamiliar:
        est = gap_estimates(gaps[name], level)
        c_lo, c_hi = estimate(control[:, -1], level).interval
        result.claims.append(decide_claim(
            "C2", f"the familiar/unfamiliar sparsity gap ({SET_NAMES[name]} vs familiar) is absent at initialisation and learned "
                  "during pretraining, unfamiliar prompts ending sparser",
            rule, est, "learned",
            measure=f"standardised {cfg.metric} gap at {site}, last step minus step 0 (last step {est['final'].value:.3g}, "
                    f"step 0 {est['init'].value:.3g}); t over {len(runs)} seeds, {est['learned'].level:.0%} exact if normal",
            control=f"step 0 (the initialisation) {est['init'].value:.3g} [{est['init'].interval[0]:.3g}, {est['init'].interval[1]:.3g}]; "
                    f"two random halves of the familiar prompts at the last step {control[:, -1].mean():.3g} [{c_lo:.3g}, {c_hi:.3g}]; "
                    f"per seed: learned {sign_agreement(gaps[name][:, -1] - gaps[name][:, 0])}"))
        result.metrics.setdefault("estimates", {})[name] = {k: {"value": e.value, "interval": list(e.interval), "level": e.level}
                                                           for k, e in est.items()}

    # the U curve on familiar prompts
    u, peaks = u_estimates(runs, site, cfg.metric, level)
    ctrl = ""
    if "held-out" in sets:
        sign = sparser_sign(cfg.metric)
        held = sign * series(runs, "held-out", site, cfg.metric)
        ctrl = f"held-out prompts over the same steps: last minus step 0 {float((held[:, -1] - held[:, 0]).mean()):.3g}; "
    result.claims.append(decide_claim(
        "C2", f"on familiar prompts {cfg.metric} first sparsifies, then densifies (a U curve in density)", U_RULE, u, "fall",
        measure=f"familiar {cfg.metric} (sparser direction) at the peak minus the last step (rise from step 0 {u['rise'].value:.3g}); "
                f"peak steps per seed {[steps[p] for p in peaks]}",
        control=f"{ctrl}peak chosen on half of the prompts, measured on the other half"))
    result.metrics["u_curve"] = {"peaks": [steps[p] for p in peaks], **{k: {"value": e.value, "interval": list(e.interval)} for k, e in u.items()}}

    _robustness(runs, plan, cfg, site, unfamiliar, result)
    prompts = ", ".join(f"{n} {s}" for s, n in result.metrics["prompts"].items())
    result.notes.insert(0, (
        f"{len(runs)} pretraining runs from scratch (seeds), {plan.schedule.steps} steps of {plan.schedule.batch_size} on "
        f"{', '.join(plan.tasks)} at levels {plan.train_levels}; model {plan.model.n_layer} layers x {plan.model.d_model} wide. "
        f"Measured at steps {steps} on {prompts} prompts per seed (fresh "
        f"prompts for each seed), last prompt token, convention {cfg.convention!r}. The base model is not reused: its pretraining "
        "keeps no snapshots. Intervals: t over seeds, exact for normal seed effects; with few seeds they are wide, so 'inconclusive' "
        "is the honest verdict where they straddle a threshold."))
    if given_model:
        result.notes.append("--model was given, but this study pretrains TinyLM from scratch (it follows pretraining from step 0); "
                            "the given model is not used here.")
    return result


def _robustness(runs, plan: Plan, cfg: SparsityEmergenceConfig, site: str, unfamiliar: list[str], result: StudyResult) -> None:
    """The same three estimates for every directed metric at the verdict layer, and the verdict
    each would get: does the answer depend on the metric?"""
    rule = learned_rule(cfg.init_margin)
    rows, groups = [], {name: [] for name in unfamiliar}
    metrics = directed_metrics(cfg.convention)
    for metric in metrics:
        for name in unfamiliar:
            est = gap_estimates(standardised_gap(runs, name, site, metric), cfg.level)
            groups[name].append(est["learned"])
            rows.append([metric, name] + [f"{est[k].value:.2f} [{est[k].interval[0]:.2f}, {est[k].interval[1]:.2f}]"
                                          for k in ("init", "final", "learned")] + [rule.decide(est).verdict])
    result.tables.append({"title": f"Every sparsity metric at {site}: standardised gap (t-intervals over {len(runs)} seeds)",
                          "columns": ["metric", "unfamiliar set", "step 0", "last step", "learned (last - step 0)", "verdict by the C2 rule"],
                          "rows": rows})
    result.figures.append(bars_figure(
        "metrics", "Learned gap (last step minus step 0) by metric, in familiar SDs", metrics,
        [{"label": SET_NAMES[name], "values": [e.value for e in est], "lo": [e.interval[0] for e in est],
          "hi": [e.interval[1] for e in est]} for name, est in groups.items()],
        "standardised gap change", caption=f"Error bars: {cfg.level:.0%} t-intervals over seeds; sparser direction for every metric."))
