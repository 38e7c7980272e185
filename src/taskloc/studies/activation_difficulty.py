"""activation-difficulty: does the last prompt token's hidden state get sparser as the same item
gets harder, and does that sparsity flag the inputs the model gets wrong? (claim C1)

Design, on the base model (the embedded TinyLM, or --model):

1. Paired items (``tasks/paired.py``): each item family is one item seen at every level of the run
   (trained levels and the OOD levels above them). The effect is the paired step difference, level
   L+1 minus level L on the same family, signed so that positive means sparser (top-k mass, Gini,
   Hoyer, near-zero share up; l0 and effective rank down) and divided by the task's mean metric
   value: published effects are ~1% of the metric, smaller than the spread between items, which
   the pairing cancels.
2. Every site of ``sites`` (default: each block's residual output and the final norm, which equals
   HF's ``hidden_states[-1]``, the state the paper measures), every C1 metric under both
   conventions (``metrics.py``); one headline metric and site fixed in the settings beforehand.
3. Uncertainty: tasks are the independent units (t-interval on task means, exact for normal task
   effects); item sets ("seeds": independent redraws of the items, the same single pretrained
   model) nest inside a task. A sign-flip permutation test over items (this model and these tasks)
   beside it. Control: the same estimator with each family's level labels shuffled.
4. The exploit: AUROC of the (signed) sparsity for "the model gets this input wrong", per task,
   against prompt length and the first answer token's max softmax probability; bootstrap
   intervals over item families within a task, t over tasks for the mean.
5. For the embedded TinyLM, the same measurement on a randomly initialised model of the same
   architecture: what the paired prompts do to sparsity before any learning (length, position).
"""
from __future__ import annotations

import fnmatch
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..activations.lasttoken import PAPER_PREFIX, LastTokenRun, last_token_metrics, profile_fn
from ..config import Config, field
from ..errors import ConfigError
from ..metrics import metric_definitions
from ..tasks import get_task
from ..tasks.paired import FAMILIES, build_families
from .base import STUDIES, Study, StudyResult, bars_figure, decide_claim, lines_figure
from .context import StudyContext
from .stats import hierarchical_interval, paired_permutation_test, per_task_intervals, rank_average, task_agreement
from .task_selection import TaskSelection, select_tasks, skipped_result
from .verdicts import Above, AllOf, Estimate, Rule

# Sparser means a larger value (+1) or a smaller one (-1); l1_norm and above_zero have no direction.
_UP = ("top", "gini", "hoyer", "near_zero")
_DOWN = ("l0", "eff_rank")


def direction(metric: str) -> int | None:
    """+1 when a larger value of ``metric`` (a metric_profile key, ``paper_`` allowed) is sparser,
    -1 when a smaller one is, None when the metric says nothing about sparsity."""
    name = metric.removeprefix(PAPER_PREFIX)
    if name.startswith(_UP):
        return 1
    if name.startswith(_DOWN):
        return -1
    return None


def known_metrics() -> list[str]:
    return list(metric_definitions("taskloc")) + [PAPER_PREFIX + k for k in metric_definitions("paper")]


@dataclass
class ActivationDifficultyConfig(Config):
    section = "studies.activation-difficulty."

    tasks: list[str] = field(["add", "sort", "reverse", "hop", "copy", "trace", "arith"],
                             "tasks to probe (each needs a paired item family, tasks/paired.py); intervals run over tasks")
    items: int = field(100, "item families per task and item set (each family is one item at every level)")
    item_sets: int = field(3, "independent redraws of the items ('seeds' here: the base model is one pretraining seed)")
    sites: list[str] = field(["blocks.*.hook_resid_post", "ln_final.hook_normalized"], "hook sites (globs) read at the last prompt token")
    headline_site: str = field("ln_final.hook_normalized", "site that decides the verdicts (the final norm = HF hidden_states[-1], as the paper)")
    metric: str = field("top5_energy", "metric that decides the verdicts (a metrics.metric_profile key; paper_ prefix for the authors' convention)")
    robustness_metrics: list[str] = field(
        ["top1_l1", "top5_energy", "paper_top5_energy", "top10_l1", "l0", "paper_l0", "gini", "hoyer", "eff_rank_norm",
         "paper_eff_rank", "near_zero"], "metrics whose paired effect is reported beside the headline one")
    min_effect: float = field(0.0025, "smallest sparsification that counts, as a share of the metric's value "
                                      "(a quarter of the published ~1%, fixed before any run)")
    min_class: int = field(5, "a task's AUROC needs at least this many wrong and this many right answers")
    n_boot: int = field(500, "bootstrap resamples of item families for each task's AUROC interval")
    n_perm: int = field(2000, "sign-flip patterns of the permutation test (Monte Carlo beyond 16 items)")
    init_control: bool = field(True, "also measure a randomly initialised model of the same architecture (embedded TinyLM only)")
    batch_size: int = field(256, "prompts per forward pass")
    level: float = field(0.95, "nominal level of the intervals")

    def validate(self) -> None:
        if len(self.tasks) < 2:
            raise ConfigError(f"{self.key('tasks')}={self.tasks}: need at least 2 tasks (intervals run over tasks).")
        if len(set(self.tasks)) != len(self.tasks):
            raise ConfigError(f"{self.key('tasks')}={self.tasks} names a task twice; list each once.")
        if self.items < 4:
            raise ConfigError(f"{self.key('items')}={self.items}: need at least 4 item families per task.")
        for name in ("item_sets", "min_class", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{self.key(name)}={getattr(self, name)} must be at least 1.")
        if self.n_boot < 50 or self.n_perm < 100:
            raise ConfigError(f"{self.key('n_boot')} must be >= 50 and {self.key('n_perm')} >= 100 (got {self.n_boot}, {self.n_perm}).")
        if not 0 <= self.min_effect < 1:
            raise ConfigError(f"{self.key('min_effect')}={self.min_effect} must lie in [0, 1) (a share of the metric's value).")
        if not 0.5 <= self.level < 1:
            raise ConfigError(f"{self.key('level')}={self.level} must lie in [0.5, 1).")
        if not self.sites:
            raise ConfigError(f"{self.key('sites')} is empty; name at least one hook site, e.g. 'blocks.*.hook_resid_post'.")
        if not any(fnmatch.fnmatchcase(self.headline_site, p) for p in self.sites):
            raise ConfigError(f"{self.key('headline_site')}={self.headline_site!r} is not among {self.key('sites')}={self.sites}; "
                              "add it there or pick one of them.")
        known = known_metrics()
        for name, metric in [("metric", self.metric)] + [("robustness_metrics", m) for m in self.robustness_metrics]:
            if metric not in known:
                from ..registry import did_you_mean

                raise ConfigError(f"{self.key(name)}: {did_you_mean(metric, known, 'metric')}")
            if direction(metric) is None:
                raise ConfigError(f"{self.key(name)}={metric!r} does not measure sparsity (no sparser direction); "
                                  "pick a top-k mass, l0, gini, hoyer, effective rank or near_zero metric.")


def c1_rule(min_effect: float) -> AllOf:
    return AllOf(Above("sparsify", min_effect, "paired sparsification per level step (share of the metric's value)"),
                 Above("vs_shuffled", 0.0, "real minus shuffled-level-label control (paired)"))


EXPLOIT_RULE = AllOf(Above("auroc", 0.5, "AUROC of sparsity for a wrong answer"),
                     Above("auroc_minus_length", 0.0, "AUROC minus the prompt-length baseline's"),
                     Above("auroc_minus_msp", 0.0, "AUROC minus the max-softmax baseline's"))


# -- AUROC ---------------------------------------------------------------------------------------

def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counting one half: the Mann-Whitney
    rank formula (average ranks). nan when either class is empty."""
    s, y = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(positive, dtype=bool).ravel()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rank_average(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auroc_bootstrap(scores: np.ndarray, positive: np.ndarray, clusters: np.ndarray, n_boot: int, level: float,
                    seed: int) -> tuple[float, float]:
    """Percentile interval of the AUROC, resampling whole clusters (item families: a family's levels
    move together) with replacement. Resamples with one class empty are dropped."""
    ids, member = np.unique(clusters, return_inverse=True)
    rows = [np.flatnonzero(member == i) for i in range(ids.size)]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        pick = np.concatenate([rows[i] for i in rng.integers(0, ids.size, ids.size)])
        a = auroc(scores[pick], positive[pick])
        if np.isfinite(a):
            values.append(a)
    if len(values) < n_boot // 2:
        return (float("nan"), float("nan"))
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return (float(lo), float(hi))


# -- the measured data, per task ---------------------------------------------------------------

@dataclass
class TaskData:
    """One task's measurements, arrays indexed (item set, item, level)."""

    task: str
    levels: list[int]
    values: dict[str, dict[str, np.ndarray]]  # site -> metric -> (S, I, K)
    correct: np.ndarray  # (S, I, K) bool
    max_prob: np.ndarray  # (S, I, K)
    prompt_len: np.ndarray  # (S, I, K)

    def signed(self, site: str, metric: str) -> np.ndarray:
        """Sparsity signed so larger is sparser, divided by the task's mean |metric| at the site
        (S, I, K): differences then read as shares of the metric's value."""
        v = self.values[site][metric]
        scale = float(np.abs(v).mean()) or 1.0
        return direction(metric) * v / scale

    def steps(self, site: str, metric: str, shuffle: np.random.Generator | None = None) -> np.ndarray:
        """Paired step differences level k+1 minus level k, (S, I, K-1); with ``shuffle`` each
        family's level labels are permuted first (the control)."""
        z = self.signed(site, metric)
        if shuffle is not None:
            z = np.take_along_axis(z, shuffle.permuted(np.broadcast_to(np.arange(z.shape[-1]), z.shape), axis=-1), axis=-1)
        return np.diff(z, axis=-1)


def _measure(model, cfg: ActivationDifficultyConfig, tasks: list[str], levels_of: dict[str, list[int]], seed: int,
             item_sets: int) -> dict[str, TaskData]:
    pairs, shape = [], {}
    for t_index, name in enumerate(tasks):
        task = get_task(name)
        for s in range(item_sets):
            item_seed = int(np.random.SeedSequence([seed, s, t_index]).generate_state(1)[0])
            for fam in build_families(task, levels_of[name], cfg.items, item_seed):
                pairs.extend((fam.examples[lv].prompt, fam.examples[lv].target) for lv in levels_of[name])
        shape[name] = (item_sets, cfg.items, len(levels_of[name]))
    run: LastTokenRun = last_token_metrics(model, pairs, cfg.sites, profile_fn(), cfg.batch_size)
    out, start = {}, 0
    for name in tasks:
        n = int(np.prod(shape[name]))
        cut = slice(start, start + n)
        out[name] = TaskData(name, levels_of[name],
                             {s: {m: v[cut].reshape(shape[name]) for m, v in per.items()} for s, per in run.metrics.items()},
                             run.correct[cut].reshape(shape[name]), run.max_prob[cut].reshape(shape[name]),
                             run.prompt_len[cut].reshape(shape[name]))
        start += n
    return out


def _effect(data: dict[str, TaskData], site: str, metric: str, level: float, step: int | None = None,
            shuffle_seed: int | None = None, item_set: int | None = None) -> tuple[Estimate, list[float], list[str], list[int]]:
    """Mean over tasks of the per-item paired effect (mean over level steps, or one ``step``),
    t-interval over tasks; with ``shuffle_seed`` the real minus the shuffled-label control."""
    values, tasks, seeds = [], [], []
    for i, (name, d) in enumerate(data.items()):
        diff = d.steps(site, metric)
        if shuffle_seed is not None:  # the same permutations as _shuffled_only draws
            diff = diff - d.steps(site, metric, np.random.default_rng([shuffle_seed, i]))
        per_item = diff.mean(-1) if step is None else diff[..., step]  # (S, I)
        sets = range(per_item.shape[0]) if item_set is None else [item_set]
        for s in sets:
            values.extend(per_item[s].tolist())
            tasks.extend([name] * per_item.shape[1])
            seeds.extend([s] * per_item.shape[1])
    iv = hierarchical_interval(values, tasks, seeds, level=level, method="t")
    return Estimate(iv.estimate, (iv.lo, iv.hi), iv.achieved), values, tasks, seeds


def _fmt(e: Estimate, pct: bool = True) -> str:
    f = (lambda x: f"{100 * x:+.2f}%") if pct else (lambda x: f"{x:.3f}")
    return f"{f(e.value)} [{f(e.interval[0])}, {f(e.interval[1])}]"


@STUDIES.register("activation-difficulty")
class ActivationDifficultyStudy(Study):
    name = "activation-difficulty"
    summary = "last-token sparsity per layer on paired items across difficulty levels (C1), and sparsity as an error signal (AUROC)"
    claims = ("C1",)
    requires = ("base-competent",)
    Config = ActivationDifficultyConfig

    @classmethod
    def rules(cls, cfg: ActivationDifficultyConfig) -> list[tuple[str, str, Rule]]:
        return [("C1", f"paired sparsification of {cfg.metric} at {cfg.headline_site} per level step, against shuffled level labels",
                 c1_rule(cfg.min_effect)),
                ("C1", f"exploit: {cfg.metric} at {cfg.headline_site} flags wrong answers better than prompt length and max softmax",
                 EXPLOIT_RULE)]

    def check(self, cfg: ActivationDifficultyConfig, run_cfg) -> None:
        self.tasks_for(cfg, run_cfg)  # a task list the user set that names a task it cannot probe: one line
        if not run_cfg.model_path:  # the embedded TinyLM: its site names are known before any work
            self._check_sites(cfg, run_cfg)

    @staticmethod
    def _check_sites(cfg: ActivationDifficultyConfig, run_cfg) -> None:
        import torch

        from ..errors import HookError
        from ..hooks import resolve_sites
        from ..models import TinyLM

        with torch.device("meta"):  # names only: no memory, no initialisation
            model = TinyLM(run_cfg.model)
        try:
            names = resolve_sites(model, cfg.sites)
        except HookError as exc:
            raise ConfigError(f"{cfg.key('sites')}: {exc}") from None
        if cfg.headline_site not in names:
            from ..registry import did_you_mean

            raise ConfigError(f"{cfg.key('headline_site')}: {did_you_mean(cfg.headline_site, names, 'site')}")

    @classmethod
    def tasks_for(cls, cfg: ActivationDifficultyConfig, run_cfg) -> TaskSelection:
        """The tasks probed: trained ones (the base never saw the others) with a paired item
        family and at least two of the run's levels; intervals run over tasks, so two or more."""
        def usable(name: str) -> str | None:
            if name not in FAMILIES:
                return f"task {name!r} has no paired item family (tasks with one: {', '.join(FAMILIES.names())})"
            if len(cls.levels_of(get_task(name), run_cfg)) < 2:
                return (f"task {name!r} has fewer than 2 of the run's levels {run_cfg.data.train_levels + run_cfg.data.ood_levels} "
                        "(a paired step needs two)")
            return None

        return select_tasks(cfg, "tasks", run_cfg, at_least=2, usable=usable)

    @staticmethod
    def levels_of(task, run_cfg) -> list[int]:
        return sorted(lv for lv in set(run_cfg.data.train_levels) | set(run_cfg.data.ood_levels) if lv in task.levels)

    def run(self, ctx: StudyContext, cfg: ActivationDifficultyConfig) -> StudyResult:
        started = time.perf_counter()
        selection = self.tasks_for(cfg, ctx.cfg)
        if selection.skip:
            return skipped_result(self, cfg, selection)
        cfg = replace(cfg, tasks=selection.entries)
        model = ctx.base_model().model
        levels_of = {t: self.levels_of(get_task(t), ctx.cfg) for t in cfg.tasks}
        data = _measure(model, cfg, cfg.tasks, levels_of, ctx.cfg.seed, cfg.item_sets)
        sites = list(next(iter(data.values())).values)
        if cfg.headline_site not in sites:
            raise ConfigError(f"{cfg.key('headline_site')}={cfg.headline_site!r} matched no site of this model; its sites here: {sites}.")
        result = StudyResult(metrics={"sites": sites, "headline": {"site": cfg.headline_site, "metric": cfg.metric},
                                      "levels": levels_of, "train_levels": ctx.cfg.data.train_levels,
                                      "definitions": {**metric_definitions("taskloc"),
                                                      **{PAPER_PREFIX + k: v for k, v in metric_definitions("paper").items()}}})
        result.notes.extend(selection.notes())
        init = None
        if cfg.init_control and ctx.given is None:  # a random TinyLM of the base's architecture
            init = _measure(ctx.new_model(seed=ctx.cfg.seed + 1), cfg, cfg.tasks, levels_of, ctx.cfg.seed, 1)
        self._effects(cfg, data, init, sites, ctx.cfg.data.train_levels, result)
        self._levels_table(cfg, data, result)
        self._exploit(cfg, data, sites, ctx.cfg.seed, result)
        result.metrics["seconds"] = round(time.perf_counter() - started, 2)
        return result

    # -- C1: the paired effect ------------------------------------------------------------------
    def _effects(self, cfg, data: dict[str, TaskData], init, sites: list[str], train_levels: list[int], result: StudyResult) -> None:
        site, metric, seed = cfg.headline_site, cfg.metric, 7
        main, values, tasks, seeds = _effect(data, site, metric, cfg.level)
        control, *_ = _effect(data, site, metric, cfg.level, shuffle_seed=seed)
        shuffled_alone = self._shuffled_only(data, site, metric, cfg.level, seed)
        perm = paired_permutation_test(values, alternative="greater", n_perm=cfg.n_perm, seed=seed)
        agree = task_agreement(per_task_intervals(values, tasks, seeds, level=cfg.level), threshold=0.0)
        by_set = [_effect(data, site, metric, cfg.level, item_set=s)[0] for s in range(cfg.item_sets)]
        n_items = len(values)

        # per site, headline metric, real and control (and the random-init model)
        layer_rows = {s: _effect(data, s, metric, cfg.level)[0] for s in sites}
        control_rows = {s: self._shuffled_only(data, s, metric, cfg.level, seed) for s in sites}
        init_rows = {s: _effect(init, s, metric, cfg.level)[0] for s in sites} if init else {}
        largest = max(sites, key=lambda s: abs(layer_rows[s].value))
        x = list(range(len(sites)))
        series = [{"label": f"{metric} (trained base)", "x": x, "y": [layer_rows[s].value * 100 for s in sites],
                   "lo": [layer_rows[s].interval[0] * 100 for s in sites], "hi": [layer_rows[s].interval[1] * 100 for s in sites]},
                  {"label": "shuffled level labels (control)", "x": x, "y": [control_rows[s].value * 100 for s in sites],
                   "lo": [control_rows[s].interval[0] * 100 for s in sites], "hi": [control_rows[s].interval[1] * 100 for s in sites],
                   "style": "--"}]
        if init_rows:
            series.append({"label": "random-init model, same items", "x": x, "y": [init_rows[s].value * 100 for s in sites], "style": ":"})
        for other in [m for m in ("hoyer", "gini", "paper_l0") if m != metric]:
            series.append({"label": other, "x": x, "y": [_effect(data, s, other, cfg.level)[0].value * 100 for s in sites], "style": ":"})
        result.figures.append(lines_figure(
            "layer-effect", "Paired sparsification per level step, by site (positive = sparser when harder)",
            "site: " + ", ".join(f"{i} = {s}" for i, s in enumerate(sites)), "% of the metric's value", series,
            caption=f"Mean over {len(data)} tasks of the per-item paired difference (level L+1 minus L, same item), signed so "
                    f"that positive is sparser, as a share of the task's mean metric; bands: {cfg.level:.0%} t-intervals over tasks "
                    "(exact for normal task effects). Dotted metrics without bands are for direction only."))

        # across metrics and item sets, at the headline site
        rows, metric_effects = [], {}
        for m in dict.fromkeys([metric, *cfg.robustness_metrics]):
            e, v, t, sd = _effect(data, site, m, cfg.level)
            p = paired_permutation_test(v, alternative="greater", n_perm=cfg.n_perm, seed=seed).p_value
            sets = [_effect(data, site, m, cfg.level, item_set=s)[0] for s in range(cfg.item_sets)]
            layers = [s for s in sites if _effect(data, s, m, cfg.level)[0].interval[0] > 0]
            metric_effects[m] = {"value": e.value, "interval": list(e.interval), "p_greater": p,
                                 "item_sets_positive": sum(x.value > 0 for x in sets), "sites_above_zero": layers}
            rows.append([m, _fmt(e), f"{p:.3g}", f"{sum(x.value > 0 for x in sets)}/{cfg.item_sets}",
                         task_agreement(per_task_intervals(v, t, sd, level=cfg.level)).summary().split(" (")[0],
                         ", ".join(layers) or "none"])
        result.tables.append({"title": f"Paired sparsification at {site} across metrics (share of the metric's value, "
                                       f"{cfg.level:.0%} t over tasks)",
                              "columns": ["metric", "effect per level step", "permutation p (sparser)", "item sets > 0",
                                          "tasks > 0", "sites with interval > 0"], "rows": rows})

        # by kind of step: within the trained levels, across the boundary, beyond it
        step_rows = []
        for name, d in data.items():
            for k in range(len(d.levels) - 1):
                a, b = d.levels[k], d.levels[k + 1]
                kind = "ID->ID" if b in train_levels else ("ID->OOD" if a in train_levels else "OOD->OOD")
                step_rows.append((name, k, f"L{a}->L{b}", kind))
        kinds = {}
        for kind in ("ID->ID", "ID->OOD", "OOD->OOD"):
            vals, ts = [], []
            for name, k, _, kd in step_rows:
                if kd == kind:
                    diff = data[name].steps(site, metric)[..., k].ravel()
                    vals.extend(diff.tolist())
                    ts.extend([name] * diff.size)
            if vals:
                iv = hierarchical_interval(vals, ts, level=cfg.level)
                kinds[kind] = {"value": iv.estimate, "interval": [iv.lo, iv.hi], "tasks": iv.n_units}
        result.metrics["by_step_kind"] = kinds

        statement = (f"the last-token hidden state gets sparser as the same item gets harder: {metric} at {site}, paired level "
                     f"L+1 minus L, by more than {cfg.min_effect:.2%} of the metric's value, beyond shuffled level labels")
        estimates = {"sparsify": main, "vs_shuffled": control}
        init_text = (f"; random-init model: {_fmt(init_rows[site])}" if init_rows else "")
        result.claims.append(decide_claim(
            "C1", statement, c1_rule(cfg.min_effect), estimates, "sparsify",
            measure=f"paired sparsification of {metric} at {site} per level step, share of the metric's value, mean over "
                    f"{len(data)} tasks ({n_items} item families x steps; sign-flip permutation p = {perm.p_value:.3g}, one-sided)",
            control=f"shuffled level labels: {_fmt(shuffled_alone)}; real minus shuffled {_fmt(control)}{init_text}; "
                    f"per task: {agree.summary()}; item sets: {sum(e.value > 0 for e in by_set)} of {cfg.item_sets} positive"))
        result.metrics.update({
            "effect": {"value": main.value, "interval": list(main.interval), "achieved_level": main.level,
                       "interval_basis": f"t on {len(data)} task means ({len(data) - 1} df), exact for normal task effects",
                       "permutation": perm.to_dict(), "tasks": agree.to_dict(),
                       "item_sets": [{"value": e.value, "interval": list(e.interval)} for e in by_set]},
            "control_shuffled": {"value": shuffled_alone.value, "interval": list(shuffled_alone.interval),
                                 "real_minus_shuffled": {"value": control.value, "interval": list(control.interval)}},
            "by_site": {s: {"value": layer_rows[s].value, "interval": list(layer_rows[s].interval),
                            "shuffled": control_rows[s].value, **({"init": init_rows[s].value} if init_rows else {})} for s in sites},
            "largest_site": largest, "by_metric": metric_effects})
        rel = main.value
        result.notes.append(
            f"Headline ({metric} at {site}): {_fmt(main)} of the metric's value per level step; largest |effect| at {largest} "
            f"({100 * layer_rows[largest].value:+.2f}%). Intervals: t over {len(data)} task means, nominal = achieved "
            f"{main.level:.0%} if task effects are normal. Item sets are independent redraws of items on the one pretrained "
            "model, not pretraining seeds: they show robustness to which items were drawn, not to training.")
        if init_rows:
            result.notes.append(
                f"A randomly initialised model of the same architecture shows {_fmt(init_rows[site])} on the same paired items at "
                f"{site}: what longer prompts do to the metric with no learning at all (trained base: {100 * rel:+.2f}%).")
        result.notes.append("Kinds of level step (paired effect, share of the metric's value): " + "; ".join(
            f"{k}: {100 * v['value']:+.2f}% [{100 * v['interval'][0]:+.2f}, {100 * v['interval'][1]:+.2f}]" for k, v in kinds.items()))

    def _shuffled_only(self, data, site, metric, level, seed) -> Estimate:
        """The estimator on shuffled level labels alone (expected 0: the null it must beat)."""
        values, tasks = [], []
        for i, (name, d) in enumerate(data.items()):
            per_item = d.steps(site, metric, np.random.default_rng([seed, i])).mean(-1).ravel()
            values.extend(per_item.tolist())
            tasks.extend([name] * per_item.size)
        iv = hierarchical_interval(values, tasks, level=level)
        return Estimate(iv.estimate, (iv.lo, iv.hi), iv.achieved)

    # -- accuracy and the metric per level ----------------------------------------------------------
    def _levels_table(self, cfg, data: dict[str, TaskData], result: StudyResult) -> None:
        site, metric = cfg.headline_site, cfg.metric
        all_levels = sorted({lv for d in data.values() for lv in d.levels})
        rows, acc_series, met_series = [], [], []
        for name, d in data.items():
            acc = d.correct.mean(axis=(0, 1))  # (K,)
            raw = d.values[site][metric].mean(axis=(0, 1))
            z = d.signed(site, metric)
            cum = (z - z[..., :1]).mean(axis=(0, 1))  # paired change from the lowest level, share of the metric
            rows.append([name] + [f"{acc[d.levels.index(lv)]:.2f} / {raw[d.levels.index(lv)]:.4f}" if lv in d.levels else "-"
                                  for lv in all_levels])
            acc_series.append({"label": name, "x": d.levels, "y": acc.tolist()})
            met_series.append({"label": name, "x": d.levels, "y": (100 * cum).tolist()})
        result.tables.append({"title": f"Accuracy / mean {metric} at {site}, per task and level (paired items, all item sets)",
                              "columns": ["task"] + [f"L{lv}" for lv in all_levels], "rows": rows})
        # every site next to accuracy: the mean over tasks of each task's mean at that level
        by_level = [["exact match"] + [f"{np.mean([d.correct[..., d.levels.index(lv)].mean() for d in data.values() if lv in d.levels]):.2f}"
                                       for lv in all_levels]]
        for s in next(iter(data.values())).values:
            by_level.append([s] + [f"{np.mean([d.values[s][metric][..., d.levels.index(lv)].mean() for d in data.values() if lv in d.levels]):.4f}"
                                   for lv in all_levels])
        result.tables.append({"title": f"Mean {metric} at every site by level (mean over tasks), with exact match",
                              "columns": ["site"] + [f"L{lv}" for lv in all_levels], "rows": by_level})
        result.figures.append(lines_figure("accuracy-by-level", "Exact match on the paired items, by level", "level", "exact match",
                                           acc_series, ylim=(-0.02, 1.02)))
        result.figures.append(lines_figure(
            "sparsity-by-level", f"Paired change in {metric} at {site} from the lowest level (positive = sparser)", "level",
            "% of the metric's value", met_series,
            caption="Mean over item families of (level L minus the lowest level, same item), signed so positive is sparser."))
        result.metrics["accuracy"] = {name: dict(zip(map(str, d.levels), d.correct.mean(axis=(0, 1)).tolist())) for name, d in data.items()}

    # -- the exploit: AUROC for wrong answers -------------------------------------------------------
    def _exploit(self, cfg, data: dict[str, TaskData], sites: list[str], seed: int, result: StudyResult) -> None:
        site, metric = cfg.headline_site, cfg.metric
        per_task: dict[str, dict[str, Any]] = {}
        for i, (name, d) in enumerate(data.items()):
            wrong = ~d.correct.ravel()
            if min(int(wrong.sum()), int((~wrong).sum())) < cfg.min_class:
                continue
            clusters = np.broadcast_to(np.arange(d.correct.shape[0] * d.correct.shape[1]).reshape(d.correct.shape[:2])[..., None],
                                       d.correct.shape).ravel()  # one cluster per item family
            scores = {"sparsity": d.signed(site, metric).ravel(), "prompt length": d.prompt_len.ravel().astype(float),
                      "max softmax (lower = wrong)": -d.max_prob.ravel()}
            row = {}
            for j, (label, s) in enumerate(scores.items()):
                row[label] = (auroc(s, wrong), auroc_bootstrap(s, wrong, clusters, cfg.n_boot, cfg.level, seed + 31 * i + j))
            row["by_site"] = {s: auroc(d.signed(s, metric).ravel(), wrong) for s in sites}
            # within a level prompt length is constant for most tasks: sparsity and max softmax on equal footing
            within = [(auroc(d.signed(site, metric)[..., k].ravel(), ~d.correct[..., k].ravel()),
                       auroc(-d.max_prob[..., k].ravel(), ~d.correct[..., k].ravel())) for k in range(len(d.levels))]
            row["within_level"] = [w for w in within if np.isfinite(w[0])]
            per_task[name] = row
        result.metrics["auroc"] = {t: {k: ({"value": v[0], "interval": list(v[1])} if isinstance(v, tuple) else v)
                                       for k, v in row.items()} for t, row in per_task.items()}
        statement = (f"the exploit: last-token sparsity ({metric} at {site}, sparser = riskier) flags the inputs the base gets "
                     "wrong better than prompt length and the first answer token's max softmax probability")
        names = list(per_task)
        labels = ["sparsity", "prompt length", "max softmax (lower = wrong)"]
        if len(names) < 2:
            result.claims.append(decide_claim("C1", statement, EXPLOIT_RULE, {}, "auroc", measure="AUROC of sparsity for a wrong answer",
                                              control=f"needs >= 2 tasks with >= {cfg.min_class} wrong and right answers; "
                                                      f"had {len(names)}"))
            result.notes.append(f"AUROC: only {len(names)} task(s) had both {cfg.min_class}+ wrong and right answers; no verdict.")
            return
        a = [per_task[t]["sparsity"][0] for t in names]
        ln = [per_task[t]["prompt length"][0] for t in names]
        msp = [per_task[t]["max softmax (lower = wrong)"][0] for t in names]

        def est(v: list[float]) -> Estimate:
            iv = hierarchical_interval(v, names, level=cfg.level)
            return Estimate(iv.estimate, (iv.lo, iv.hi), iv.achieved)

        estimates = {"auroc": est(a), "auroc_minus_length": est([x - y for x, y in zip(a, ln)]),
                     "auroc_minus_msp": est([x - y for x, y in zip(a, msp)])}
        base_est = {"prompt length": est(ln), "max softmax (lower = wrong)": est(msp)}
        groups = []
        for label in labels:
            mean = estimates["auroc"] if label == "sparsity" else base_est[label]
            groups.append({"label": label, "values": [per_task[t][label][0] for t in names] + [mean.value],
                           "lo": [per_task[t][label][1][0] for t in names] + [mean.interval[0]],
                           "hi": [per_task[t][label][1][1] for t in names] + [mean.interval[1]]})
        result.figures.append(bars_figure(
            "auroc", "Does the input get a wrong answer? AUROC per task", names + ["mean over tasks"], groups, "AUROC",
            ylim=(0, 1.05), caption=f"Per task: {cfg.level:.0%} percentile bootstrap over item families (tasks fixed; coverage not "
                                    f"simulated); mean: t over tasks. Orientations fixed beforehand: sparser, longer and less "
                                    f"confident mean riskier. 0.5 = chance."))
        site_means = {s: est([per_task[t]["by_site"][s] for t in names]) for s in sites}
        result.figures.append(bars_figure(
            "auroc-by-site", f"AUROC of {metric} for a wrong answer, by site (mean over tasks)", sites,
            [{"label": metric, "values": [site_means[s].value for s in sites], "lo": [site_means[s].interval[0] for s in sites],
              "hi": [site_means[s].interval[1] for s in sites]}], "AUROC", ylim=(0, 1.05),
            caption=f"{cfg.level:.0%} t-intervals over tasks. The verdict uses {site}, fixed beforehand, not the best site."))
        within = [w for t in names for w in per_task[t]["within_level"]]
        result.tables.append({"title": "AUROC for a wrong answer (per task: bootstrap over item families; mean: t over tasks)",
                              "columns": ["task"] + labels, "rows": [[t] + [f"{per_task[t][lab][0]:.3f} [{per_task[t][lab][1][0]:.3f}, "
                                                                         f"{per_task[t][lab][1][1]:.3f}]" for lab in labels] for t in names]
                              + [["mean over tasks", _fmt(estimates["auroc"], False), _fmt(base_est["prompt length"], False),
                                  _fmt(base_est["max softmax (lower = wrong)"], False)]]})
        if within:
            result.notes.append(f"Within a single level (prompt length fixed), over {len(within)} task-level cells with both outcomes: "
                                f"mean AUROC of sparsity {np.mean([w[0] for w in within]):.3f}, of max softmax "
                                f"{np.nanmean([w[1] for w in within]):.3f}.")
        result.claims.append(decide_claim(
            "C1", statement, EXPLOIT_RULE, estimates, "auroc", measure=f"AUROC of {metric} at {site} for a wrong answer, mean over "
                                                                       f"{len(names)} tasks",
            control=f"prompt length AUROC {_fmt(base_est['prompt length'], False)}; max softmax AUROC "
                    f"{_fmt(base_est['max softmax (lower = wrong)'], False)}"))
