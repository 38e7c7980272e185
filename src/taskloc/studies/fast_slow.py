"""fast-slow: route lessons to a fast prompt channel, keep parameter updates small (claim C5).

Per seed, three learners (``taskloc.adapt``) start from the base and learn a stream of tasks, one
after another, each for the same budget of parameter steps (the switch interval N):

- two-channel: cycles of a prompt phase (a population of prefixes evolved on a Pareto front over
  per-example scores) then ``cycle_steps`` KL-penalised parameter steps on batches whose examples
  carry prefixes drawn from the population;
- slow-only: the same parameter steps, same KL coefficient, no prompt (the control);
- fast-only: the prompt phases alone, no parameter step.

Measured, each on fixed evaluation sets: learning speed on each new task (accuracy after every
cycle; its mean over the segment, steps and seconds to the target accuracy); forgetting (accuracy
on earlier stream tasks at the end of their segment minus at the end of the stream, each with the
prompt the learner kept for it) and base skills lost (the base's trained cells, no prompt); drift
(KL from the start model on a fixed probe set); plasticity (mean accuracy over a plain fine-tune
of the final checkpoint on a further task, with the base's own as reference); and the size and
concentration of the parameter delta each learner leaves (C0's measures).

Intervals: seeds are the independent units (the stream's tasks share one trajectory, so they are
averaged within a seed): t-intervals over seed means of the paired differences (two-channel minus
slow-only), n_seeds - 1 degrees of freedom, exact for normal seed effects.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from ..adapt import KINDS, Learner, LearnerConfig, PromptSearchConfig, accuracy, probe_kl
from ..config import Config, field
from ..deltas import concentration_curve
from ..errors import ConfigError
from ..metrics import metric_profile
from ..models import codec_of, load_weights, weights_of
from ..progress import progress_bar
from ..tasks import Example, Task, get_task
from ..tasks.mixture import TaskMixture, eval_examples
from ..train import TrainConfig, train
from .base import STUDIES, Study, StudyResult, bars_figure, decide_claim, lines_figure
from .context import StudyContext
from .grafting import deltas_of, update_size
from .stats import hierarchical_interval
from .task_selection import TaskSelection, select_tasks, skipped_result
from .verdicts import Above, AllOf, Estimate, Rule

StateDict = dict[str, torch.Tensor]


@dataclass
class FastSlowConfig(Config):
    section = "studies.fast-slow."

    stream: list[str] = field(["sort:3", "hop:3", "add:3"], "the tasks learned one after another, as TASK:LEVEL (at least 3)")
    further: str = field("copy:3", "TASK:LEVEL a finished checkpoint then learns (plasticity)")
    segment: TrainConfig = field(TrainConfig(steps=24, batch_size=32, lr=2e-3, warmup=4, eval_every=10**9, ckpt_every=10**9),
                                 "schedule of each stream task; steps = N, the switch interval (parameter steps per task)")
    cycle_steps: int = field(8, "parameter steps per cycle; each cycle starts with a prompt phase")
    kl: float = field(0.1, "KL coefficient toward the start model (two-channel and slow-only alike)")
    prompt: PromptSearchConfig = field(PromptSearchConfig(), "the fast channel's population search")
    plasticity: TrainConfig = field(TrainConfig(steps=16, batch_size=32, lr=2e-3, warmup=4, eval_every=4, ckpt_every=10**9),
                                    "plain fine-tune of a finished checkpoint on the further task (evaluated every eval_every steps)")
    seeds: int = field(3, "seeds (data order and prompt search): the independent units of every interval")
    target: float = field(0.5, "accuracy on a new task that counts as learned (steps and seconds to reach it)")
    eval_examples: int = field(64, "evaluation examples per stream task and for the further task")
    probe_examples: int = field(8, "probe examples per trained (task, level) cell: drift KL and base skills lost")
    level: float = field(0.95, "nominal level of the intervals")

    def validate(self) -> None:
        if len(self.stream) < 3:
            raise ConfigError(f"{self.key('stream')}={self.stream}: a stream needs at least 3 tasks.")
        for name in ("cycle_steps", "seeds", "eval_examples", "probe_examples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{self.key(name)}={getattr(self, name)} must be at least 1.")
        if self.seeds < 2:
            raise ConfigError(f"{self.key('seeds')}={self.seeds}: need at least 2 seeds (intervals run over seeds).")
        if self.kl < 0:
            raise ConfigError(f"{self.key('kl')}={self.kl} must be >= 0.")
        if not 0 < self.target <= 1:
            raise ConfigError(f"{self.key('target')}={self.target} must lie in (0, 1].")
        if not 0.5 <= self.level < 1:
            raise ConfigError(f"{self.key('level')}={self.level} must lie in [0.5, 1).")


def cell_problem(text: str) -> str | None:
    """Why 'TASK:LEVEL' cannot be learned (malformed, unknown task, no such level), or None."""
    name, sep, level = text.rpartition(":")
    if not sep or not name or not level.strip().lstrip("-").isdigit():
        return f"{text!r} is not TASK:LEVEL (e.g. 'sort:3')"
    try:
        task = get_task(name)
    except ConfigError as exc:  # unknown name: did-you-mean
        return str(exc).rstrip(".")
    if int(level) not in task.levels:
        return f"task {name!r} has no level {level}; its levels are {list(task.levels)}"
    return None


def parse_cell(text: str, key: str) -> tuple[Task, int]:
    """'sort:3' -> (the task, 3); one clear line naming the setting when malformed."""
    problem = cell_problem(text)
    if problem:
        raise ConfigError(f"{key}: {problem}.")
    name, _, level = text.rpartition(":")
    return get_task(name), int(level)


SPEED = Above("speed_gain", 0.0, "two-channel minus slow-only mean accuracy over each task's segment (paired by seed)")
DRIFT = Above("drift_saved", 0.0, "slow-only minus two-channel KL drift from the start (paired by seed)")
PLASTICITY = Above("plasticity_gain", 0.0, "two-channel minus slow-only checkpoint's mean accuracy learning a further task")
FORGETTING = Above("forgetting_saved", 0.0, "slow-only minus two-channel forgetting of earlier stream tasks")
ADAPT_RULE = AllOf(SPEED, DRIFT)
CONTINUAL_RULE = AllOf(PLASTICITY, FORGETTING)


@dataclass
class Record:
    """One learner on one seed through the whole stream."""

    kind: str
    seed: int
    curves: list[list[tuple[int, float, float]]]  # per stream task: (steps done, accuracy, seconds spent)
    prompts: list[str]
    end_acc: list[float]  # accuracy on each stream task at the end of its segment
    retained: list[float]  # ... and at the end of the stream
    drift: float
    base_lost: float
    plasticity: float
    plasticity_curve: list[float]
    size: dict[str, float]

    @property
    def speed(self) -> list[float]:
        """Per stream task: mean accuracy over the segment's cycles (area under its curve)."""
        return [float(np.mean([a for _, a, _ in c[1:]])) for c in self.curves]

    def to_target(self, target: float) -> list[tuple[int | None, float | None]]:
        """Per stream task: (parameter steps, seconds) when the accuracy first reached ``target``;
        None when it never did within the segment (censored)."""
        out = []
        for c in self.curves:
            hit = next(((s, t) for s, a, t in c if a >= target), None)
            out.append((hit[0], hit[1] - c[0][2]) if hit else (None, None))
        return out

    @property
    def forgetting(self) -> float:
        """Accuracy lost on the stream tasks before the last one."""
        return float(np.mean([e - r for e, r in zip(self.end_acc[:-1], self.retained[:-1])]))


def _interval(values: list[float], units: list[Any], level: float) -> Estimate:
    iv = hierarchical_interval(values, units, level=level, method="t")
    return Estimate(iv.estimate, (iv.lo, iv.hi), iv.achieved)


@STUDIES.register("fast-slow")
class FastSlowStudy(Study):
    name = "fast-slow"
    summary = "a task stream learned by a prompt + KL-penalised parameter learner vs slow-only and fast-only: speed, drift, forgetting, plasticity, delta size"
    claims = ("C5",)
    requires = ("base-competent",)
    Config = FastSlowConfig

    @classmethod
    def rules(cls, cfg: FastSlowConfig) -> list[tuple[str, str, Rule]]:
        return [("C5", f"adapt fast, drift little: a {len(cfg.stream)}-task stream, {cfg.segment.steps} parameter steps per task, "
                       f"KL {cfg.kl:g}; control: slow-only at the same step budget", ADAPT_RULE),
                ("C5", "continual: the two-channel checkpoint keeps more plasticity and forgets less than slow-only's", CONTINUAL_RULE)]

    def check(self, cfg: FastSlowConfig, run_cfg) -> None:
        self.tasks_for(cfg, run_cfg)  # a cell the user set that it cannot learn: one line

    @staticmethod
    def tasks_for(cfg: FastSlowConfig, run_cfg) -> TaskSelection:
        """The stream and the further cell on the run's tasks (OOD levels of skills the base has);
        the stream's selection, or the further cell's when that one cannot run."""
        def task_of(cell: str) -> str:
            return cell.rpartition(":")[0]

        stream = select_tasks(cfg, "stream", run_cfg, at_least=3, usable=cell_problem, task_of=task_of)
        further = select_tasks(cfg, "further", run_cfg, at_least=1, usable=cell_problem, task_of=task_of)
        if further.skip and not stream.skip:
            return TaskSelection(stream.key, stream.entries, stream.dropped, further.skip)
        return stream

    # -- measuring ---------------------------------------------------------------------------------
    def run(self, ctx: StudyContext, cfg: FastSlowConfig) -> StudyResult:
        selection = self.tasks_for(cfg, ctx.cfg)
        if selection.skip:
            return skipped_result(self, cfg, selection)
        cfg = replace(cfg, stream=selection.entries)
        start = weights_of(ctx.base_model().model)
        stream = [parse_cell(c, cfg.key("stream")) for c in cfg.stream]
        further = parse_cell(cfg.further, cfg.key("further"))
        seed0 = ctx.cfg.eval.seed
        evals = [eval_examples(t, lv, cfg.eval_examples, seed0) for t, lv in stream]
        further_eval = eval_examples(*further, cfg.eval_examples, seed0)
        probe = [e for t in ctx.tasks for lv in ctx.cfg.data.train_levels if lv in t.levels
                 for e in eval_examples(t, lv, cfg.probe_examples, seed0 + 1)]
        ref = ctx.new_model()
        load_weights(ref, start)
        ref.eval()
        self._check_context(cfg, ref, evals + [further_eval])
        base_probe = accuracy(ref, probe)
        records: list[Record] = []
        base_plasticity: list[tuple[float, list[float]]] = []
        with progress_bar("fast-slow learners", total=cfg.seeds * (len(KINDS) + 1)) as advance:
            for seed in range(cfg.seeds):
                base_plasticity.append(self._plasticity(ctx, cfg, start, further, further_eval, seed))
                advance()
                for kind in KINDS:
                    records.append(self._learn(ctx, cfg, kind, seed, start, ref, stream, evals, probe, base_probe,
                                               further, further_eval, base_plasticity[-1]))
                    advance()
        result = StudyResult()
        self._report(cfg, stream, records, base_plasticity, result)
        result.notes.extend(selection.notes())
        return result

    @staticmethod
    def _check_context(cfg: FastSlowConfig, model, sets: list[list[Example]]) -> None:
        """The longest prompt prefix plus the longest example must fit the model's context."""
        limit = model.max_context
        if limit is None:
            return
        longest = (cfg.prompt.alphabet * cfg.prompt.length)[: cfg.prompt.length]
        width = max(codec_of(model).encode_batch([(longest + e.prompt, e.target) for e in s])[0].shape[1] for s in sets)
        if width > limit:
            raise ConfigError(f"{cfg.key('prompt.length')}={cfg.prompt.length}: a prefix that long plus the longest example needs "
                              f"{width} positions, more than the model's {limit}; shorten the prompt or the stream's levels.")

    def _plasticity(self, ctx: StudyContext, cfg: FastSlowConfig, weights: StateDict, further: tuple[Task, int],
                    examples: list[Example], seed: int) -> tuple[float, list[float]]:
        """Mean accuracy over a plain fine-tune of ``weights`` on the further task, and its curve."""
        model = ctx.new_model()
        load_weights(model, weights)
        task, level = further
        mixture = TaskMixture([task], [level], seed=90_000 + seed)  # the same data for every checkpoint of a seed
        before = accuracy(model, examples)
        history = train(model, cfg.plasticity, mixture, evaluate=lambda m: {"acc": accuracy(m, examples)}, label="fast-slow plasticity")
        curve = [before] + [h["acc"] for h in history]
        return float(np.mean(curve[1:])), curve

    def _learn(self, ctx: StudyContext, cfg: FastSlowConfig, kind: str, seed: int, start: StateDict, ref, stream, evals,
               probe, base_probe: float, further, further_eval, base_plasticity) -> Record:
        model = ctx.new_model()
        load_weights(model, start)
        learner = Learner(model, ref, LearnerConfig(kind, cfg.kl, cfg.cycle_steps), cfg.prompt, seed)
        curves, prompts, end_acc = [], [], []
        for i, (task, level) in enumerate(stream):
            # training data and search examples: the task's training split, per seed; never the evaluation set
            mixture = TaskMixture([task], [level], seed=1000 * (seed + 1) + i)
            search = TaskMixture([task], [level], seed=50_000 + 1000 * seed + i).batch(0, cfg.prompt.examples)
            curve = [(0, accuracy(model, evals[i], learner.prompt), learner.elapsed)]
            learner.segment(mixture, cfg.segment, search,
                            on_cycle=lambda s, ev=evals[i], c=curve: c.append((s, accuracy(model, ev, learner.prompt), learner.elapsed)))
            curves.append(curve)
            prompts.append(learner.prompt)
            end_acc.append(curve[-1][1])
        retained = [accuracy(model, ev, p) for ev, p in zip(evals, prompts)]
        final = weights_of(model)
        delta = deltas_of(final, start)
        size = update_size(delta, start)
        flat = torch.cat([d.flatten() for d in delta.values()])  # (n_params,)
        size["top1_energy"] = float(concentration_curve(delta, [0.01])["energy"][0])
        size["gini"] = float(metric_profile(flat)["gini"])
        plasticity = base_plasticity if kind == "fast-only" else self._plasticity(ctx, cfg, final, further, further_eval, seed)
        return Record(kind, seed, curves, prompts, end_acc, retained, probe_kl(model, ref, probe), base_probe - accuracy(model, probe),
                      plasticity[0], plasticity[1], size)

    # -- reporting ---------------------------------------------------------------------------------
    def _report(self, cfg: FastSlowConfig, stream, records: list[Record], base_plasticity, result: StudyResult) -> None:
        by = {k: [r for r in records if r.kind == k] for k in KINDS}
        seeds = list(range(cfg.seeds))
        names = [f"{t.name}:{lv}" for t, lv in stream]
        n = cfg.segment.steps

        measures = {"speed": lambda r: float(np.mean(r.speed)), "forgetting": lambda r: r.forgetting,
                    "base_lost": lambda r: r.base_lost, "drift": lambda r: r.drift, "plasticity": lambda r: r.plasticity,
                    "relative_norm": lambda r: r.size["relative_norm"], "top1_energy": lambda r: r.size["top1_energy"],
                    "gini": lambda r: r.size["gini"], "seconds": lambda r: r.curves[-1][-1][2]}
        summary = {k: {m: _interval([f(r) for r in by[k]], seeds, cfg.level) for m, f in measures.items()} for k in KINDS}
        base_plast = _interval([p for p, _ in base_plasticity], seeds, cfg.level)
        result.metrics["summary"] = {k: {m: {"mean": e.value, "lo": e.interval[0], "hi": e.interval[1]} for m, e in v.items()}
                                     for k, v in summary.items()}
        result.metrics["base_plasticity"] = {"mean": base_plast.value, "lo": base_plast.interval[0], "hi": base_plast.interval[1]}
        result.metrics["stream"] = names
        result.metrics["runs"] = [{"kind": r.kind, "seed": r.seed, "speed": r.speed, "end_acc": r.end_acc, "retained": r.retained,
                                   "prompts": r.prompts, "to_target": r.to_target(cfg.target), "drift": r.drift,
                                   "base_lost": r.base_lost, "plasticity": r.plasticity, "size": r.size,
                                   "curves": [[list(p) for p in c] for c in r.curves]} for r in records]

        # paired differences, two-channel vs slow-only, seed by seed
        two, slow = (sorted(by[k], key=lambda r: r.seed) for k in ("two-channel", "slow-only"))
        diffs = {"speed_gain": [np.mean(a.speed) - np.mean(b.speed) for a, b in zip(two, slow)],
                 "drift_saved": [b.drift - a.drift for a, b in zip(two, slow)],
                 "plasticity_gain": [a.plasticity - b.plasticity for a, b in zip(two, slow)],
                 "forgetting_saved": [b.forgetting - a.forgetting for a, b in zip(two, slow)]}
        estimates = {k: _interval([float(v) for v in vals], seeds, cfg.level) for k, vals in diffs.items()}
        if not any(a > c[0][1] for r in two + slow for c in r.curves for _, a, _ in c[1:]):
            # neither learner gained accuracy on any task: equal zeros say nothing about speed
            estimates["speed_gain"] = Estimate(float("nan"), (float("nan"), float("nan")), cfg.level)
            result.notes.append("Neither parameter learner raised its accuracy on any stream task within its segment, so learning "
                                "speed was not compared (the speed estimate has no interval and the verdict is inconclusive).")
        nan = Estimate(float("nan"), (float("nan"), float("nan")), cfg.level)
        if not any(a > curve[0] for curve in [c for _, c in base_plasticity] + [r.plasticity_curve for r in two + slow] for a in curve[1:]):
            estimates["plasticity_gain"] = nan  # no checkpoint learned the further task: nothing to compare
            result.notes.append(f"No checkpoint (the base included) gained accuracy on {cfg.further} within {cfg.plasticity.steps} steps, "
                                "so plasticity was not compared.")
        if not any(e > 0 for r in two + slow for e in r.end_acc[:-1]):
            estimates["forgetting_saved"] = nan  # nothing was learned on the earlier tasks, so nothing could be forgotten
            result.notes.append("Neither parameter learner ended an earlier stream task above zero accuracy, so forgetting was not compared.")
        result.metrics["paired"] = {k: {"mean": e.value, "lo": e.interval[0], "hi": e.interval[1], "per_seed": [float(v) for v in diffs[k]]}
                                    for k, e in estimates.items()}
        reached = {k: sum(s is not None for r in by[k] for s, _ in r.to_target(cfg.target)) for k in KINDS}
        total = cfg.seeds * len(stream)
        ratio = self._step_ratio(two, slow, cfg.target)
        result.metrics["steps_to_target"] = {"reached": reached, "of": total, "slow_over_two_ratio": ratio}
        s, f = summary["slow-only"], summary["fast-only"]
        result.claims.append(decide_claim(
            "C5", f"a prompt channel plus KL-penalised parameter steps learns each new task of a stream faster (in parameter steps) "
                  f"and drifts less from the start than parameter-only training at the same budget ({n} steps per task)",
            ADAPT_RULE, estimates, "speed_gain",
            measure="two-channel minus slow-only mean accuracy over each task's segment",
            control=f"slow-only: speed {s['speed'].value:.2f}, drift KL {s['drift'].value:.3g}; fast-only (no parameter step): speed "
                    f"{f['speed'].value:.2f}; target {cfg.target:g} reached in {reached['two-channel']}/{total} segments (two-channel), "
                    f"{reached['slow-only']}/{total} (slow-only), {reached['fast-only']}/{total} (fast-only)"
                    + (f"; slow/two steps-to-target ratio {ratio:.2f}" if ratio is not None else "")))
        result.claims.append(decide_claim(
            "C5", "the two-channel learner's checkpoint keeps more plasticity (learns a further task faster) and forgets less of the "
                  "earlier stream tasks than the slow-only learner's",
            CONTINUAL_RULE, estimates, "plasticity_gain",
            measure=f"two-channel minus slow-only mean accuracy over a {cfg.plasticity.steps}-step fine-tune on {cfg.further}",
            control=f"slow-only plasticity {s['plasticity'].value:.2f}, forgetting {s['forgetting'].value:.2f}; the base's own plasticity "
                    f"{base_plast.value:.2f}; fast-only (base weights) forgetting {f['forgetting'].value:.2f}"))

        self._figures(cfg, names, by, summary, base_plasticity, result)
        result.notes.append(
            f"Seeds ({cfg.seeds}) are the independent units: every interval is a t-interval over seed means ({cfg.seeds - 1} df, "
            f"nominal = achieved {cfg.level:.0%} for normal seed effects); the {len(stream)} stream tasks share one trajectory "
            "per seed, so they are averaged within it, never counted as units.")
        result.notes.append(
            "Steps are parameter steps; fast-only takes none, so its curve is drawn at the steps its cycles stand for. Accuracy is "
            "exact match with the learner's current best prompt (slow-only: none). Speed is the mean accuracy over a segment's "
            "cycles, which needs no censoring; steps-to-target (in runs[*].to_target) is None where the target was never reached.")
        prompts = sorted({p for r in by["two-channel"] for p in r.prompts})
        result.notes.append(f"Prompts the two-channel learner kept per task: {prompts}. The search starts from the empty prompt; a "
                            "prompt becomes the best only by beating the population's others on mean answer log-likelihood over the "
                            "search examples (training split), which need not mean higher exact-match accuracy.")

    @staticmethod
    def _step_ratio(two: list[Record], slow: list[Record], target: float) -> float | None:
        """Mean slow-only / two-channel steps-to-target over segments both reached (None if none)."""
        pairs = [(b[0], a[0]) for ra, rb in zip(two, slow) for a, b in zip(ra.to_target(target), rb.to_target(target))
                 if a[0] and b[0]]
        return float(np.mean([b / a for b, a in pairs])) if pairs else None

    def _figures(self, cfg: FastSlowConfig, names: list[str], by: dict[str, list[Record]], summary, base_plasticity,
                 result: StudyResult) -> None:
        n = cfg.segment.steps
        series = []
        for kind in KINDS:
            xs = [i * n + s for i in range(len(names)) for s, _, _ in by[kind][0].curves[i]]
            ys = np.asarray([[a for c in r.curves for _, a, _ in c] for r in by[kind]])  # (seeds, points)
            series.append({"label": kind, "x": xs, "y": ys.mean(0).tolist(), "lo": ys.min(0).tolist(), "hi": ys.max(0).tolist()})
        result.figures.append(lines_figure(
            "stream", f"Learning the stream {' -> '.join(names)} (switch every {n} steps)", "parameter steps", "accuracy on the current task",
            series, ylim=(0, 1.05), caption="Mean over seeds; bands span the lowest and highest seed. Each segment starts at the "
                                            "accuracy the learner brings to the new task."))
        groups = []
        for kind in KINDS:
            es = [summary[kind][m] for m in ("speed", "forgetting", "base_lost", "plasticity")]
            groups.append({"label": kind, "values": [e.value for e in es], "lo": [e.interval[0] for e in es],
                           "hi": [e.interval[1] for e in es]})
        result.figures.append(bars_figure(
            "adaptation", "Learning speed, forgetting and plasticity", ["speed (mean acc. per segment)", "forgetting (stream)",
                                                                        "base skills lost", f"plasticity ({cfg.further})"],
            groups, "accuracy", caption=f"Mean over seeds with {cfg.level:.0%} t-intervals over seeds."))
        for name, title, metrics, ylabel in (
                ("drift", "Drift from the start model", ["drift"], "KL(model || start) on the probe set"),
                ("delta", "The parameter delta each learner leaves", ["relative_norm", "top1_energy", "gini"], "value")):
            result.figures.append(bars_figure(
                name, title, metrics, [{"label": k, "values": [summary[k][m].value for m in metrics],
                                        "lo": [summary[k][m].interval[0] for m in metrics],
                                        "hi": [summary[k][m].interval[1] for m in metrics]} for k in KINDS],
                ylabel, caption="relative_norm = ||delta|| / ||base||; top1_energy = share of sum delta^2 in the top 1% of entries; "
                                "gini of |delta| (C0's measures). Fast-only moves no weight." if name == "delta" else
                                "Mean KL at answer positions of the base's trained cells, no prompt."))
        steps = [0] + list(range(cfg.plasticity.eval_every, cfg.plasticity.steps + 1, cfg.plasticity.eval_every))
        if steps[-1] != cfg.plasticity.steps:
            steps.append(cfg.plasticity.steps)
        plast = [{"label": "base", "x": steps, "y": np.mean([c for _, c in base_plasticity], axis=0).tolist(), "style": "--"}]
        plast += [{"label": k, "x": steps, "y": np.mean([r.plasticity_curve for r in by[k]], axis=0).tolist()} for k in KINDS if k != "fast-only"]
        result.figures.append(lines_figure(
            "plasticity", f"Plasticity: each final checkpoint fine-tuned on {cfg.further}", "steps", "accuracy", plast, ylim=(0, 1.05),
            caption="Mean over seeds; the same data and schedule for every checkpoint. Fast-only's checkpoint is the base."))
