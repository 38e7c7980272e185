"""core-isolation: does isolating each task's core parameters beat multi-task fine-tuning? (C4)

CPI-FT (Wang, Liang, Peng 2025; REFERENCE.md C4) against every standard way of making one model of
several tasks, all from the same base, the same data and the same step budget:

- per task, a probe fine-tune from the base (S steps) on the task at the trained levels plus the
  first level the base never saw (the target level, where accuracy is scored), or at the target
  level alone (``finetune_on``); with the former, the same runs, keys and schedule as
  weight-delta's adamw regime, so when the two studies' schedules agree the cached fine-tunes are
  shared, not retrained. A precondition asks that each probe learned its target level (gain >=
  ``min_gain``): without a learned skill there is nothing to merge, and C4's verdicts say so;
- multi-task mixed fine-tuning (T x S + C steps: the probes' and the consolidation's budget);
- sequential fine-tuning, one task after another (S steps each), in a random order and in a
  heuristic order by core overlap (temporal scheduling alone, CPI-FT's multi-stage baseline);
- task arithmetic, TIES and DARE over the probes' task vectors (merge/ registry);
- core isolation: cores = global top p% of |probe - base|, groups = connected components of
  Jaccard >= tau, fusion (core values transplanted, the rest by SLERP), then a light consolidation
  (C steps) stage by stage over the groups with earlier groups' cores frozen;
- controls: the same procedure with random cores of the same sizes (does finding the core matter?)
  and without freezing (does the freezing matter?).

Forgetting: task X's probe then task Y for S steps (X -> Y, both directions of each configured pair),
full, with X's core frozen, and with a random region of the same size frozen. Core overlaps (Jaccard)
are set against task relatedness (families in core_isolation_plan.FAMILIES); p and tau are ablated.
Intervals: t-intervals on task means (tasks are the units; seeds nest inside), coverage exact for
normal task means, with the exact sign test of how many tasks agree beside them.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from ..config import Config, field
from ..deltas.inmemory import random_mask
from ..errors import ConfigError
from ..merge import core_masks, groups_of, merge_models
from ..merge.options import parse_percent, unit_interval
from ..models import weights_of
from ..progress import progress_bar
from ..registry import did_you_mean
from ..tasks import TASKS, get_task
from ..tasks.mixture import TaskMixture, eval_examples
from ..train import TrainConfig
from .base import STUDIES, Claim, Precondition, Study, StudyResult, bars_figure, decide_claim, heatmap_figure, lines_figure
from .context import Finetune, StudyContext
from .core_isolation_plan import consolidation_stages, family_of, heuristic_order, overlap_summary, paired, random_order, trainable_outside, union
from .grafting import Scorer
from .stats import NAN_INTERVAL, hierarchical_interval
from .task_selection import TaskSelection, has_levels, select_tasks, skipped_result
from .verdicts import Above, AllOf, Rule, Threshold, downgrade
from .weight_delta import WeightDeltaStudy, jaccard, jaccard_chance

StateDict = dict[str, torch.Tensor]
Mask = dict[str, torch.Tensor]


@dataclass
class CoreIsolationConfig(Config):
    section = "studies.core-isolation."

    tasks: list[str] = field(["add", "arith", "sort", "reverse"], "tasks to combine (at least 4 in a real run; related families and unrelated ones)")
    families: dict[str, str] = field({}, "task -> family overrides for relatedness (built-in: add/trace/arith arithmetic, sort/reverse list)")
    seeds: int = field(2, "seeds (data order of every fine-tune); intervals run over tasks, seeds nest inside")
    target_level: int = field(0, "level whose exact match is scored (0: the first OOD level); must not be a trained level")
    finetune_on: str = field("trained+target", "levels every fine-tune trains on: 'trained+target' (the base's trained levels and the "
                                               "target level: weight-delta's mixture, whose runs are then shared) or 'target' (the "
                                               "target level alone: three times its data per step)")
    min_gain: float = field(0.2, "precondition: each task's own fine-tune gains at least this exact match at the target level over "
                                 "the base (mean over seeds); otherwise C4's verdicts are inconclusive (nothing learned to merge)")
    finetune: TrainConfig = field(TrainConfig(steps=400, batch_size=64, lr=2e-3, warmup=30, eval_every=10**9, ckpt_every=100),
                                  "per-task schedule S (probes, sequential phases, forgetting); weight-delta's adamw schedule shares its runs")
    consolidation: TrainConfig = field(TrainConfig(steps=60, batch_size=64, lr=1e-3, warmup=5, eval_every=10**9, ckpt_every=100),
                                       "the light consolidation fine-tune C after fusion, shared among the group stages")
    p: float = field(1.0, "core size: top p% of |task - base| (percent in (0, 100])")
    tau: float = field(0.1, "Jaccard at which two tasks' cores link them into one group (in [0, 1])")
    p_grid: list[float] = field([0.1, 1.0, 5.0], "p values of the ablation (percent)")
    tau_grid: list[float] = field([0.0, 0.1, 1.0], "tau values of the ablation")
    ablation_seeds: int = field(1, "seeds (<= seeds) the p and tau ablations run on")
    forgetting_pairs: list[list[str]] = field([["add", "sort"]], "task pairs [X, Y] whose X -> Y and Y -> X sequences measure forgetting")
    task_arithmetic_lambda: float = field(0.5, "lambda of task arithmetic and DARE (fixed, not tuned on the evaluation data)")
    ties_k: float = field(20.0, "TIES: top k% of each task vector kept (the paper's default)")
    dare_drop: float = field(90.0, "DARE: drop rate in percent (the paper's default)")
    level: float = field(0.95, "nominal level of the intervals")

    def validate(self) -> None:
        parse_percent(self.key("p"), self.p)
        for p in self.p_grid:
            parse_percent(self.key("p_grid"), p)
        unit_interval(self.key("tau"), self.tau)
        if self.finetune_on not in FINETUNE_ON:
            raise ConfigError(f"{self.key('finetune_on')}={self.finetune_on!r}: " + did_you_mean(self.finetune_on, list(FINETUNE_ON), "choice"))
        unit_interval(self.key("min_gain"), self.min_gain)
        for t in self.tau_grid:
            unit_interval(self.key("tau_grid"), t)
        parse_percent(self.key("ties_k"), self.ties_k)
        parse_percent(self.key("dare_drop"), self.dare_drop, zero_ok=True, hundred_ok=False)
        if len(self.tasks) < 2 or len(set(self.tasks)) != len(self.tasks):
            raise ConfigError(f"{self.key('tasks')}={self.tasks}: need at least 2 distinct tasks (4 or more to test C4).")
        if self.seeds < 1 or not 0 <= self.ablation_seeds <= self.seeds:
            raise ConfigError(f"{self.key('seeds')}={self.seeds} must be >= 1 and {self.key('ablation_seeds')}="
                              f"{self.ablation_seeds} between 0 and seeds.")
        for name in self.tasks:  # before the settings that name tasks, so a typo is reported as itself
            if not name.startswith("jsonl:") and name not in TASKS:
                raise ConfigError(f"{self.key('tasks')}: " + did_you_mean(name, TASKS.names(), "task"))
        for pair in self.forgetting_pairs:
            if len(pair) != 2 or pair[0] == pair[1] or not set(pair) <= set(self.tasks):
                raise ConfigError(f"{self.key('forgetting_pairs')}: {pair} must be two different tasks among tasks={self.tasks}.")
        if not 0.5 <= self.level < 1:
            raise ConfigError(f"{self.key('level')}={self.level} must lie in [0.5, 1).")


FINETUNE_ON = ("trained+target", "target")

# -- the rules that decide C4 -------------------------------------------------------------------------
BEATS_MIXED = AllOf(Above("ci_minus_mixed", 0.0, "core isolation minus multi-task mixed fine-tuning (paired, target-level exact match)"),
                    Above("ci_minus_random", 0.0, "core isolation minus the same procedure with random cores (control)"))
LESS_FORGETTING = AllOf(Above("full_minus_core", 0.0, "forgetting without freezing minus with the core frozen"),
                        Above("random_minus_core", 0.0, "forgetting with a random region of the same size frozen minus with the core frozen (control)"))


@STUDIES.register("core-isolation")
class CoreIsolationStudy(Study):
    name = "core-isolation"
    summary = ("CPI-FT core isolation vs multi-task mixed, sequential (random / overlap order), task arithmetic, TIES, DARE; "
               "forgetting with and without core freezing; core overlap vs task relatedness; p and tau ablations")
    claims = ("C4",)
    requires = ("base-competent",)
    Config = CoreIsolationConfig

    @classmethod
    def rules(cls, cfg: CoreIsolationConfig) -> list[tuple[str, str, Rule]]:
        return [("C4", f"core isolation (p = {cfg.p:g}%, tau = {cfg.tau:g}) beats multi-task mixed fine-tuning at equal steps, "
                       "and random cores do not do as well", BEATS_MIXED),
                ("C4", "freezing the earlier task's core reduces its forgetting in X -> Y, more than freezing a random region", LESS_FORGETTING)]

    def check(self, cfg: CoreIsolationConfig, run_cfg) -> None:
        level = WeightDeltaStudy.target_level(cfg, run_cfg)
        if level in run_cfg.data.train_levels:
            raise ConfigError(f"{cfg.key('target_level')}={level} is a trained level {run_cfg.data.train_levels}; "
                              "pick a level the base never saw (0 = the first OOD level).")
        self.tasks_for(cfg, run_cfg)  # a task list or pair the user set that it cannot use: one line

    @staticmethod
    def tasks_for(cfg: CoreIsolationConfig, run_cfg) -> tuple[TaskSelection, list[list[str]]]:
        """Trained tasks with the target level (as weight-delta, whose fine-tunes these share), and
        the forgetting pairs among them: default pairs cut with the tasks (the first two tasks when
        none is left), a pair the user set that names a task left out is an error."""
        selection = select_tasks(cfg, "tasks", run_cfg, at_least=2, usable=has_levels([WeightDeltaStudy.target_level(cfg, run_cfg)]))
        pairs = [p for p in cfg.forgetting_pairs if set(p) <= set(selection.entries)]
        if pairs != cfg.forgetting_pairs and not selection.skip:
            if cfg.set_by_user("forgetting_pairs", run_cfg.preset):
                raise ConfigError(f"{cfg.key('forgetting_pairs')}={cfg.forgetting_pairs} names tasks outside the ones this run "
                                  f"fine-tunes ({cfg.key('tasks')}: {selection.entries}); pair only those.")
            pairs = pairs or [selection.entries[:2]]
        return selection, pairs

    # -- measuring ---------------------------------------------------------------------------------
    def run(self, ctx: StudyContext, cfg: CoreIsolationConfig) -> StudyResult:
        selection, pairs = self.tasks_for(cfg, ctx.cfg)
        if selection.skip:
            return skipped_result(self, cfg, selection)
        cut = selection.notes() + ([f"{cfg.key('forgetting_pairs')} (default) {cfg.forgetting_pairs} cut with the tasks: "
                                    f"forgetting measured on {pairs}."] if pairs != cfg.forgetting_pairs else [])
        cfg = replace(cfg, tasks=selection.entries, forgetting_pairs=pairs)
        base = weights_of(ctx.base_model().model)  # CPU state dicts throughout
        level = WeightDeltaStudy.target_level(cfg, ctx.cfg)
        levels = [level] if cfg.finetune_on == "target" else sorted(set(ctx.cfg.data.train_levels) | {level})
        tasks = {name: get_task(name) for name in cfg.tasks}
        names = list(cfg.tasks)
        scorer = Scorer(ctx.new_model())
        evals = {n: eval_examples(t, level, ctx.cfg.eval.examples, ctx.cfg.eval.seed) for n, t in tasks.items()}
        S, C = cfg.finetune, cfg.consolidation

        def score(state: StateDict) -> dict[str, float]:
            return {n: scorer(state, ex).exact for n, ex in evals.items()}  # target-level exact match per task

        def tune_request(task: str, seed: int, start: StateDict, mask: Mask | None = None) -> Finetune:
            # weight-delta's adamw key, mixture and schedule: from the base this is its fine-tune
            return Finetune(f"adamw {task} s{seed}", {"task": task, "seed": seed, "regime": "adamw", "levels": levels},
                            start, TaskMixture([tasks[task]], levels, seed=1000 + seed), S, mask)

        def chains(orders: list[list[str]], seed: int) -> list[StateDict]:
            """Sequential fine-tunes in each order; the chains advance together, one batch of
            independent jobs per position (in parallel under the ray executor)."""
            states = [base] * len(orders)
            for position in range(len(names)):
                states = ctx.finetune_many([tune_request(order[position], seed, state) for order, state in zip(orders, states)])
            return states

        def consolidate(fused: StateDict, groups: list[list[int]], cores: list[Mask], seed: int, freeze: bool) -> StateDict:
            state = fused
            for i, stage in enumerate(consolidation_stages(names, groups, C.steps)):
                frozen = union([cores[names.index(t)] for t in stage.frozen], base)
                mask = trainable_outside(frozen) if freeze and stage.frozen else None
                stage_cfg = TrainConfig.from_dict({**C.to_dict(), "steps": stage.steps, "warmup": min(C.warmup, stage.steps // 2)})
                state = ctx.finetune(f"consolidate {'+'.join(stage.tasks)} s{seed}",
                                     {"tasks": list(stage.tasks), "seed": seed, "regime": "consolidation", "stage": i, "levels": levels},
                                     state, TaskMixture([tasks[t] for t in stage.tasks], levels, seed=3000 + 10 * seed + i), stage_cfg, mask=mask)
            return state

        def isolate(probes: list[StateDict], cores: list[Mask], groups: list[list[int]], seed: int, freeze: bool = True):
            fused = merge_models(base, probes, method="core_isolation", options={"masks": cores}).state_dict
            return fused, consolidate(fused, groups, cores, seed, freeze)

        mixed_cfg = TrainConfig.from_dict({**S.to_dict(), "steps": len(names) * S.steps + C.steps})
        shapes = {k: v.shape for k, v in base.items()}
        base_scores = score(base)
        acc: dict[str, dict[int, dict[str, float]]] = {}  # method -> seed -> task -> exact
        jac_by_seed, chance_by_seed, groups_by_seed, orders = [], [], [], {}
        forgetting: list[dict[str, Any]] = []
        ablation: dict[str, dict[int, dict[str, float]]] = {}
        n_jobs = cfg.seeds * (3 + len(cfg.forgetting_pairs))
        with progress_bar("core-isolation fine-tunes and merges", total=n_jobs) as advance:
            for seed in range(cfg.seeds):
                def put(method: str, state: StateDict, seed: int = seed) -> None:
                    acc.setdefault(method, {})[seed] = score(state)

                mixed_request = Finetune(f"mixed s{seed}", {"tasks": names, "seed": seed, "regime": "mixed", "levels": levels},
                                         base, TaskMixture(list(tasks.values()), levels, seed=2000 + seed), mixed_cfg)
                *probes, mixed = ctx.finetune_many([*(tune_request(n, seed, base) for n in names), mixed_request])
                for n, sd in zip(names, probes):
                    acc.setdefault("probe (own task)", {}).setdefault(seed, {})[n] = scorer(sd, evals[n]).exact
                cores = core_masks(base, probes, cfg.p)
                jac = [[jaccard(a, b) for b in cores] for a in cores]
                deltas = [{k: sd[k].float() - base[k].float() for k in base} for sd in probes]
                chance_by_seed.append([[jaccard_chance(a, b, da, db) for b, db in zip(cores, deltas)] for a, da in zip(cores, deltas)])
                groups = groups_of(jac, cfg.tau)
                jac_by_seed.append(jac)
                groups_by_seed.append(groups)
                put("multi-task mixed", mixed)
                orders[seed] = {"random": random_order(names, seed), "heuristic": heuristic_order(names, jac)}
                by_random, by_overlap = chains([orders[seed]["random"], orders[seed]["heuristic"]], seed)
                put("sequential (random order)", by_random)
                put("sequential (overlap order)", by_overlap)
                advance()
                lam = cfg.task_arithmetic_lambda
                put("task arithmetic", merge_models(base, probes, method="task_arithmetic", options={"lambda_": lam}).state_dict)
                put("TIES", merge_models(base, probes, method="ties", options={"k": cfg.ties_k}).state_dict)
                put("DARE", merge_models(base, probes, method="dare_linear", options={"lambda_": lam, "drop": cfg.dare_drop,
                                                                                    "seed": seed}).state_dict)
                fused, ci = isolate(probes, cores, groups, seed)
                put("core isolation: fusion only", fused)
                put("core isolation", ci)
                put("control: no freezing", consolidate(fused, groups, cores, seed, freeze=False))
                size = cfg.p / 100
                rnd = [random_mask(shapes, size, seed=8000 + 100 * seed + i) for i in range(len(names))]
                put("control: random cores", isolate(probes, rnd, groups, seed)[1])
                advance()
                for x, y in cfg.forgetting_pairs:
                    for a, b in ((x, y), (y, x)):
                        i = names.index(a)
                        runs = dict(zip(("full", "core frozen", "random frozen"), ctx.finetune_many([
                            tune_request(b, seed, probes[i]), tune_request(b, seed, probes[i], trainable_outside(cores[i])),
                            tune_request(b, seed, probes[i], trainable_outside(rnd[i]))])))
                        before = scorer(probes[i], evals[a]).exact
                        forgetting.append({"seed": seed, "first": a, "second": b, "first_before": before,
                                           "second_alone": scorer(probes[names.index(b)], evals[b]).exact,
                                           **{k: {"first": scorer(sd, evals[a]).exact, "second": scorer(sd, evals[b]).exact,
                                                  "drop": before - scorer(sd, evals[a]).exact} for k, sd in runs.items()}})
                    advance()
                if seed < cfg.ablation_seeds:
                    for p in cfg.p_grid:
                        cores_p = cores if p == cfg.p else core_masks(base, probes, p)
                        groups_p = groups_of([[jaccard(a, b) for b in cores_p] for a in cores_p], cfg.tau)
                        ablation.setdefault(f"p={p:g}%", {})[seed] = score(isolate(probes, cores_p, groups_p, seed)[1])
                    for tau in cfg.tau_grid:  # same fusion; only the stages differ (identical stages hit the cache)
                        ablation.setdefault(f"tau={tau:g}", {})[seed] = score(consolidate(fused, groups_of(jac, tau), cores, seed, True))
                advance()

        result = StudyResult(metrics={"target_level": level, "finetune_levels": levels, "tasks": names, "base": base_scores,
                                      "accuracy": {m: {str(s): v for s, v in d.items()} for m, d in acc.items()},
                                      "orders": {str(s): o for s, o in orders.items()},
                                      "groups": [[[names[i] for i in g] for g in gs] for gs in groups_by_seed],
                                      "forgetting": forgetting,
                                      "ablation": {k: {str(s): v for s, v in d.items()} for k, d in ablation.items()},
                                      "budget": {"per_task_steps": S.steps, "consolidation_steps": C.steps, "mixed_steps": mixed_cfg.steps,
                                                 "sequential_steps": len(names) * S.steps, "batch_size": S.batch_size}})
        self._report(cfg, names, base_scores, acc, jac_by_seed, chance_by_seed, forgetting, ablation, result)
        self._tasks_learned(cfg, names, base_scores, acc["probe (own task)"], result)
        result.notes[1:1] = cut
        return result


    # -- reporting ---------------------------------------------------------------------------------
    def _report(self, cfg, names, base_scores, acc, jac_by_seed, chance_by_seed, forgetting, ablation, result: StudyResult) -> None:
        lvl = f"{cfg.level:.0%}"
        self._methods(cfg, names, base_scores, acc, result)
        self._beats_mixed(cfg, names, acc, result)
        self._forgetting(cfg, forgetting, result)
        self._overlap(cfg, names, jac_by_seed, chance_by_seed, result)
        self._ablation(cfg, names, acc, ablation, result)
        b = result.metrics["budget"]
        result.notes.insert(0, (
            f"{len(names)} tasks x {cfg.seeds} seed(s), fine-tuned on levels {result.metrics['finetune_levels']} and scored by exact "
            f"match at level {result.metrics['target_level']}, which the base never trained on. Budget in steps of {b['batch_size']}: "
            f"{b['per_task_steps']} per task (probes, sequential phases, forgetting), {b['consolidation_steps']} of consolidation, "
            f"{b['mixed_steps']} for the mixed baseline (probes plus consolidation; sequential runs get {b['sequential_steps']}). "
            f"Intervals: {lvl} t-intervals on task means (exact coverage for normal task means; {len(names)} tasks, "
            f"{len(names) - 1} df), with the exact sign test over tasks beside them."))

    def _tasks_learned(self, cfg, names, base_scores, probes: dict[int, dict[str, float]], result: StudyResult) -> None:
        """Precondition: every task's own fine-tune learned its target level. Merging, isolating or
        forgetting a skill no fine-tune acquired measures nothing, so C4's verdicts are downgraded
        to inconclusive when one task gains less than ``min_gain``."""
        gains = {n: [probes[s][n] - base_scores[n] for s in sorted(probes)] for n in names}
        worst = min(names, key=lambda n: (float(np.mean(gains[n])), names.index(n)))
        value = float(np.mean(gains[worst]))
        rule = Threshold(cfg.min_gain, "the smallest task gain")
        check = rule.check(value)
        result.metrics["probe_gains"] = {n: float(np.mean(g)) for n, g in gains.items()}
        result.preconditions.append(Precondition(
            id="core-isolation-tasks-learned", statement="each task's own fine-tune learns its target level (there is a skill to merge)",
            check=check, measure="smallest gain over tasks of a task's own fine-tune at the target level (exact match, mean over seeds)",
            value=value, interval=(float(min(gains[worst])), float(max(gains[worst]))),
            control=f"gain per task (mean over {len(probes)} seed(s); interval: the worst task's lowest and highest seed): "
                    + ", ".join(f"{n} {np.mean(g):.2f}" for n, g in gains.items()),
            rule=rule.describe(), study=self.name))
        if check == "pass":
            return
        for claim in result.claims:
            claim.verdict, note = downgrade(claim.verdict, ["core-isolation-tasks-learned"])
            claim.reason = f"{note}; {claim.reason}"
        result.notes.append(f"Verdicts are inconclusive: {worst}'s own fine-tune gained only {value:.2f} exact match at the target level "
                            f"(the bar is {cfg.min_gain:g}), so the methods were compared on a skill that was never learned.")

    def _methods(self, cfg, names, base_scores, acc, result: StudyResult) -> None:
        rows, mean_group = [], {"label": "mean over tasks", "values": [], "lo": [], "hi": []}
        per_task = []
        methods = list(acc)
        summary = {}
        for m in methods:
            vals, tk, sd = _flatten(acc[m], names)
            iv = hierarchical_interval(vals, tk, sd, level=cfg.level)
            summary[m] = {"mean": iv.estimate, "lo": iv.lo, "hi": iv.hi}
            mean_group["values"].append(iv.estimate)
            mean_group["lo"].append(iv.lo)
            mean_group["hi"].append(iv.hi)
            by_task = [[acc[m][s][n] for s in acc[m]] for n in names]
            per_task.append({"label": m, "values": [float(np.mean(v)) for v in by_task],
                             "lo": [float(np.min(v)) for v in by_task], "hi": [float(np.max(v)) for v in by_task]})
            rows.append([m] + [f"{np.mean(v):.2f}" for v in by_task] + [_cell(iv.estimate, iv.lo, iv.hi)])
        rows.insert(0, ["base"] + [f"{base_scores[n]:.2f}" for n in names] + [f"{np.mean(list(base_scores.values())):.2f}"])
        result.metrics["methods"] = summary
        result.tables.append({"title": f"Exact match at the target level per task (mean over seeds) and over tasks [{cfg.level:.0%} t-interval]",
                              "columns": ["method", *names, "mean over tasks"], "rows": rows})
        result.figures.append(bars_figure(
            "methods", "One model for all tasks: mean exact match at the target level", methods, [mean_group], "exact match",
            ylim=(0, 1.05), caption=f"Bars: mean of task means; whiskers: {cfg.level:.0%} t-interval over {len(names)} tasks (seeds nested). "
                                    "'probe (own task)' is each task's own fine-tune on its own task: the reference, not one model."))
        result.figures.append(bars_figure(
            "methods-per-task", "Exact match at the target level, per task", names, per_task, "exact match", ylim=(0, 1.05),
            caption="Mean over seeds; whiskers span the lowest to the highest seed (no interval is claimed per task)."))

    def _beats_mixed(self, cfg, names, acc, result: StudyResult) -> None:
        statement = (f"isolating each task's core (top {cfg.p:g}% of its update, groups at Jaccard >= {cfg.tau:g}) and fusing, then a light "
                     "consolidation with earlier groups' cores frozen, beats multi-task mixed fine-tuning at the same base, data and steps")
        ci, mixed, rnd = (_flatten(acc[m], names) for m in ("core isolation", "multi-task mixed", "control: random cores"))
        tasks, seeds = ci[1], ci[2]
        est_mixed, agree = paired([a - b for a, b in zip(ci[0], mixed[0])], tasks, seeds, cfg.level)
        est_rnd, agree_rnd = paired([a - b for a, b in zip(ci[0], rnd[0])], tasks, seeds, cfg.level)
        m = result.metrics["methods"]
        others = ", ".join(f"{k} {m[k]['mean']:.2f}" for k in m if k not in ("core isolation", "multi-task mixed"))
        result.metrics["paired"] = {"ci_minus_mixed": _est(est_mixed), "ci_minus_random": _est(est_rnd)}
        result.claims.append(decide_claim(
            "C4", statement, BEATS_MIXED, {"ci_minus_mixed": est_mixed, "ci_minus_random": est_rnd}, "ci_minus_mixed",
            measure=f"exact match at the target level, core isolation minus multi-task mixed (core isolation {m['core isolation']['mean']:.2f}, "
                    f"mixed {m['multi-task mixed']['mean']:.2f}); per task: {agree}",
            control=f"random cores of the same size through the same fusion and consolidation: core isolation minus it "
                    f"{est_rnd.value:.3f} [{est_rnd.interval[0]:.3f}, {est_rnd.interval[1]:.3f}] ({agree_rnd}); the other methods: {others}"))

    def _forgetting(self, cfg, forgetting, result: StudyResult) -> None:
        statement = "freezing the first task's core while fine-tuning on a second task reduces the first task's forgetting"
        if not forgetting:
            result.claims.append(_inconclusive(statement, "forgetting", "no forgetting pairs configured", cfg.level))
            return
        kinds = ("full", "core frozen", "random frozen")
        directions = list(dict.fromkeys(f"{f['first']} -> {f['second']}" for f in forgetting))
        groups, rows = [], []
        for k in kinds:
            drops = [[f[k]["drop"] for f in forgetting if f"{f['first']} -> {f['second']}" == d] for d in directions]
            groups.append({"label": k, "values": [float(np.mean(v)) for v in drops],
                           "lo": [float(np.min(v)) for v in drops], "hi": [float(np.max(v)) for v in drops]})
        for d in directions:
            fs = [f for f in forgetting if f"{f['first']} -> {f['second']}" == d]
            rows.append([d, f"{np.mean([f['first_before'] for f in fs]):.2f}"]
                        + [f"{np.mean([f[k]['drop'] for f in fs]):.2f} / {np.mean([f[k]['second'] for f in fs]):.2f}" for k in kinds]
                        + [f"{np.mean([f['second_alone'] for f in fs]):.2f}"])
        result.tables.append({"title": "Forgetting X -> Y: drop of X's exact match / Y's exact match after the second phase",
                              "columns": ["X -> Y", "X after its probe", *kinds, "Y's own probe"], "rows": rows})
        result.figures.append(bars_figure(
            "forgetting", "Forgetting: drop of the first task's exact match after fine-tuning on the second", directions, groups,
            "drop in exact match (first task)", caption="Mean over seeds; whiskers span the seeds. Frozen regions: the first task's "
                                                        f"top {cfg.p:g}% core, or a random region of the same size."))
        tasks, seeds = [f["first"] for f in forgetting], [f["seed"] for f in forgetting]
        full, agree = paired([f["full"]["drop"] - f["core frozen"]["drop"] for f in forgetting], tasks, seeds, cfg.level)
        rnd, agree_rnd = paired([f["random frozen"]["drop"] - f["core frozen"]["drop"] for f in forgetting], tasks, seeds, cfg.level)
        cost = np.mean([f["full"]["second"] - f["core frozen"]["second"] for f in forgetting])
        result.claims.append(decide_claim(
            "C4", statement, LESS_FORGETTING, {"full_minus_core": full, "random_minus_core": rnd}, "full_minus_core",
            measure=f"drop of the first task's exact match, full minus core-frozen (units: the {len(set(tasks))} first tasks); per task: {agree}",
            control=f"a random frozen region of the same size: its drop minus the core-frozen drop {rnd.value:.3f} "
                    f"[{rnd.interval[0]:.3f}, {rnd.interval[1]:.3f}] ({agree_rnd}); what freezing costs the second task: {cost:.3f}"))

    def _overlap(self, cfg, names, jac_by_seed, chance_by_seed, result: StudyResult) -> None:
        jac = np.mean(np.asarray(jac_by_seed, dtype=float), axis=0)
        chance = np.nanmean(np.asarray(chance_by_seed, dtype=float), axis=0)
        summary = overlap_summary(names, jac.tolist(), cfg.families)
        result.metrics["overlap"] = {"jaccard": jac.tolist(), "chance": chance.tolist(), **summary.to_dict()}
        fam = ", ".join(f"{n}: {family_of(n, cfg.families)}" for n in names)
        result.figures.append(heatmap_figure(
            "core-overlap", f"Core overlap (Jaccard of top-{cfg.p:g}% cores, mean over seeds)", names, names, jac.tolist(),
            caption=f"Families (related = same family): {fam}. Chance for two random cores of these sizes among the entries either "
                    f"fine-tune moved: {np.nanmean(chance[~np.eye(len(names), dtype=bool)]):.3f}."))
        result.tables.append({"title": "Core overlap against task relatedness",
                              "columns": ["task a", "task b", "related", "Jaccard", "chance"],
                              "rows": [[a, b, "yes" if r else "no", f"{v:.3f}", f"{chance[names.index(a)][names.index(b)]:.3f}"]
                                       for a, b, r, v in summary.pairs]})
        result.notes.append(
            f"Core overlap vs relatedness: related pairs {summary.related_mean:.3f}, unrelated {summary.unrelated_mean:.3f} "
            f"(difference {summary.difference:.3f}; Spearman rho {summary.rho:.2f}, one-sided permutation p = {summary.p_value:.3g} over "
            f"{len(summary.pairs)} pairs, which share tasks, so it describes rather than decides).")

    def _ablation(self, cfg, names, acc, ablation, result: StudyResult) -> None:
        if not ablation:
            return
        seeds = sorted({s for d in ablation.values() for s in d})
        ref = {s: acc["multi-task mixed"][s] for s in seeds}
        rows, points = [], {}
        for key, by_seed in [("multi-task mixed", ref), *ablation.items()]:
            vals, tk, sd = _flatten(by_seed, names)
            iv = hierarchical_interval(vals, tk, sd, level=cfg.level)
            rows.append([key, _cell(iv.estimate, iv.lo, iv.hi)])
            points[key] = iv
        result.tables.append({"title": f"Ablations of core isolation over p and tau (seeds {seeds}; mean exact match over tasks "
                                       f"[{cfg.level:.0%} t-interval])", "columns": ["setting", "exact match"], "rows": rows})
        result.metrics["ablation_summary"] = {k: {"mean": iv.estimate, "lo": iv.lo, "hi": iv.hi} for k, iv in points.items()}
        ps = [p for p in cfg.p_grid if f"p={p:g}%" in points]
        if ps:
            series = [{"label": "core isolation", "x": ps, "y": [points[f"p={p:g}%"].estimate for p in ps],
                       "lo": [points[f"p={p:g}%"].lo for p in ps], "hi": [points[f"p={p:g}%"].hi for p in ps]},
                      {"label": "multi-task mixed", "x": ps, "y": [points["multi-task mixed"].estimate] * len(ps), "style": "--"}]
            result.figures.append(lines_figure(
                "ablation-p", f"Core size p (tau = {cfg.tau:g})", "p (% of weights in each core)", "mean exact match", series, logx=True,
                ylim=(0, 1.05), caption=f"Seeds {seeds}; bands: {cfg.level:.0%} t-intervals over tasks."))
        dropped = [f"p={p:g}%" for p in (0.1, 1.0, 5.0) if p not in cfg.p_grid]
        result.notes.append(f"Ablations ran on {cfg.ablation_seeds} of {cfg.seeds} seeds with p in {cfg.p_grid} (tau = {cfg.tau:g}) and tau in "
                            f"{cfg.tau_grid} (p = {cfg.p:g}%); the main setting is the 'core isolation' row"
                            + (f"; the paper's p values not run here: {', '.join(dropped)}" if dropped else "") + ".")

def _flatten(by_seed: dict[int, dict[str, float]], names: list[str]) -> tuple[list[float], list[str], list[int]]:
    """(values, task labels, seed labels) of {seed: {task: value}}, in a fixed order."""
    rows = [(by_seed[s][n], n, s) for s in sorted(by_seed) for n in names]
    return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]


def _est(e) -> dict[str, float]:
    return {"value": e.value, "lo": e.interval[0], "hi": e.interval[1], "level": e.level}


def _cell(mean: float, lo: float, hi: float) -> str:
    return f"{mean:.2f}" if not np.isfinite(lo) else f"{mean:.2f} [{lo:.2f}, {hi:.2f}]"


def _inconclusive(statement: str, measure: str, why: str, level: float) -> Claim:
    return Claim(id="C4", statement=statement, verdict="inconclusive", measure=measure, value=float("nan"),
                 interval=NAN_INTERVAL, level=level, control=why, rule=why, reason=why)
