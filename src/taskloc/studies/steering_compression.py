"""steering-compression: does one direction from a few pairs shorten reasoning at equal accuracy? (C3)

The base is fine-tuned (cached) on a style-free arithmetic task: the prompt "M:{expr}=" carries no
style signal and is answered with the verbose trace ("8+6=4,4-1=3") with probability p_verbose and
with the concise one ("4,3") otherwise, so greedy decoding writes the verbose trace while the
concise style stays within the model's reach. Then:

1. v = mean over N pairs (prompt, concise, verbose) of the residual difference at one middle-late
   block's output, last token (``taskloc.steering``; positive gamma moves toward concise);
   gamma is the largest whose mean next-token KL on the pair prompts stays within a budget.
2. Held-out problems (none of them a pair's) are generated greedily without steering, with
   +gamma v, with a random direction of the same norm at the same gamma, and with -gamma v.
   Measured: output length, final-answer accuracy, the style written, tokens/s and wall clock.
3. Sweeps: the layer (each with its own KL-calibrated gamma), the number of pairs and gamma; a
   linear probe per layer says where the two styles separate.

Intervals are over held-out problems (independent draws): they cover problem sampling for this
one fine-tune and pair draw, not the spread across fine-tunes or pair sets (the pairs sweep shows
the latter's size).
"""
from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..config import Config, field
from ..errors import ConfigError
from ..models import load_weights, weights_of
from ..steering.calibrate import calibrate_gamma, mean_kl
from ..steering.extract import METHODS, Pair, extract_vector, pair_states
from ..steering.inject import steering
from ..steering.text import decode_ids, eos_id, generated_length, group_by_length, prompt_ids
from ..steering.vector import SteeringVector, model_fingerprint
from ..tasks.base import Example
from ..tasks.mixture import TaskMixture
from ..tasks.synthetic import LEVELS, arithmetic_problem
from ..train import TrainConfig
from .base import STUDIES, Precondition, Study, StudyResult, bars_figure, decide_claim, lines_figure
from .context import StudyContext
from .stats import t_interval, wilson
from .verdicts import Above, AllOf, Estimate, Rule, Threshold, downgrade

TAG = "M:"  # a prompt tag no built-in task uses
VERBOSE = re.compile(r"^\d[+-]\d=\d(,\d[+-]\d=\d)*$")
CONCISE = re.compile(r"^\d(,\d)*$")


def verbose_text(steps: list[str]) -> str:
    return ",".join(steps)


def concise_text(steps: list[str]) -> str:
    return ",".join(s.split("=")[1] for s in steps)


class StyleMixedArithmetic:
    """The mod-10 chains of `trace`/`arith` behind one style-free prompt: answered verbosely with
    probability ``p_verbose``, concisely otherwise. Not registered (it is this study's data)."""

    name = "style-mixed"
    description = "mod-10 chains, prompt with no style signal, verbose or concise answer at random"
    levels = LEVELS

    def __init__(self, p_verbose: float) -> None:
        self.p_verbose = p_verbose
        self.name = f"style-mixed-p{p_verbose:g}"  # the mixture's fingerprint names the share

    def sample(self, n: int, rng: np.random.Generator, level: int) -> list[Example]:
        out = []
        for _ in range(n):
            expr, steps, _ = arithmetic_problem(rng, level)
            text = verbose_text(steps) if rng.random() < self.p_verbose else concise_text(steps)
            out.append(Example(f"{TAG}{expr}=", text, level))
        return out

    def score(self, prediction: str, example: Example) -> bool:
        return prediction == example.target


@dataclass(frozen=True)
class Problem:
    level: int
    expr: str
    steps: tuple[str, ...]
    answer: int

    @property
    def prompt(self) -> str:
        return f"{TAG}{self.expr}="

    def pair(self) -> Pair:
        return Pair(self.prompt, concise_text(list(self.steps)), verbose_text(list(self.steps)))


def draw_problems(rng: np.random.Generator, levels: list[int], n: int, exclude: set[str] = frozenset()) -> list[Problem]:
    """n problems, levels in turn; expressions in ``exclude`` (the pairs') are redrawn."""
    out: list[Problem] = []
    seen = set(exclude)
    tries = 0
    while len(out) < n:
        level = levels[len(out) % len(levels)]
        expr, steps, answer = arithmetic_problem(rng, level)
        tries += 1
        if expr in seen and tries < 100 * n:
            continue
        seen.add(expr)
        out.append(Problem(level, expr, tuple(steps), answer))
    return out


@dataclass(frozen=True)
class Outcome:
    length: int  # generated tokens, the stop token included
    correct: bool  # the last running result written is the answer
    style: str  # verbose | concise | other


def judge(text: str, length: int, problem: Problem) -> Outcome:
    last = text.split(",")[-1].split("=")[-1]
    style = "verbose" if VERBOSE.match(text) else "concise" if CONCISE.match(text) else "other"
    return Outcome(length, last == str(problem.answer), style)


@dataclass
class SteeringCompressionConfig(Config):
    section = "studies.steering-compression."

    p_verbose: float = field(0.8, "share of verbose answers in the style-free fine-tuning data (the rest concise)")
    levels: list[int] = field([], "chain lengths fine-tuned, paired and evaluated (empty: the run's data.train_levels)")
    finetune: TrainConfig = field(TrainConfig(steps=300, batch_size=64, lr=1e-3, warmup=20, eval_every=10**9, ckpt_every=100),
                                  "fine-tuning schedule on the style-free task (cached)")
    layer: int = field(-1, "block whose output is read and steered (-1: the middle-late block round(0.6 * (n_layer - 1)))")
    method: str = field("last", "extraction: last (last token, the paper's) | mean (over completion tokens) | pca")
    n_pairs: int = field(50, "pairs the headline vector is extracted from")
    pair_counts: list[int] = field([5, 10, 25, 50, 100], "numbers of pairs swept (nested: the first N of one draw)")
    kl_budget: float = field(1.0, "nats: gamma is the largest whose mean next-token KL on the pair prompts stays within it "
                                  "(about what flipping an 80/20 choice costs: 0.8 ln 4 - 0.2 ln 4 = 0.83)")
    gamma_grid: list[float] = field([-2.0, -1.0, 0.0, 0.5, 1.0, 2.0, 4.0, 8.0], "gammas swept, in units of v (1 = one mean difference)")
    eval_examples: int = field(200, "held-out problems for the headline comparison (levels in turn)")
    sweep_examples: int = field(100, "held-out problems per sweep point (the first of the headline set)")
    timing_examples: int = field(50, "problems generated one batch at a time for tokens/s and wall clock")
    timing_batch: int = field(1, "prompts per generate call when timing (1: one request at a time, as in the paper)")
    min_reduction: float = field(0.2, "mean relative length reduction that counts as compression")
    accuracy_margin: float = field(0.05, "accuracy drop (steered minus unsteered) still counted as equal accuracy")
    min_verbose: float = field(0.5, "precondition: share of unsteered outputs that are verbose")
    min_concise: float = field(0.5, "precondition: share of problems the model finishes concisely once given the first concise token")
    level: float = field(0.95, "nominal level of the intervals")
    seed: int = field(0, "seed of the pair, evaluation and random-direction draws")

    def validate(self) -> None:
        if not 0.5 < self.p_verbose < 1:
            raise ConfigError(f"{self.key('p_verbose')}={self.p_verbose} must lie in (0.5, 1): verbose usually, concise sometimes.")
        if self.method not in METHODS:
            raise ConfigError(f"{self.key('method')}={self.method!r}: choose one of {', '.join(METHODS)}.")
        if self.n_pairs < 2 or any(n < 2 for n in self.pair_counts):
            raise ConfigError(f"{self.key('n_pairs')} and {self.key('pair_counts')} must be at least 2 (a mean difference).")
        for name in ("eval_examples", "sweep_examples", "timing_examples"):
            if getattr(self, name) < 2:
                raise ConfigError(f"{self.key(name)}={getattr(self, name)} must be at least 2.")
        if self.timing_batch < 1:
            raise ConfigError(f"{self.key('timing_batch')}={self.timing_batch} must be at least 1.")
        if self.sweep_examples > self.eval_examples or self.timing_examples > self.eval_examples:
            raise ConfigError(f"{self.key('sweep_examples')} and {self.key('timing_examples')} must not exceed "
                              f"{self.key('eval_examples')}={self.eval_examples} (they are its first problems).")
        if not self.kl_budget > 0:
            raise ConfigError(f"{self.key('kl_budget')}={self.kl_budget} must be positive (nats).")
        for name in ("min_reduction", "accuracy_margin", "min_verbose", "min_concise"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{self.key(name)}={getattr(self, name)} must lie in [0, 1].")
        if not 0.5 <= self.level < 1:
            raise ConfigError(f"{self.key('level')}={self.level} must lie in [0.5, 1).")
        if any(lv not in LEVELS for lv in self.levels):
            raise ConfigError(f"{self.key('levels')}={self.levels}: chain lengths must be among {list(LEVELS)}.")


def c3_rule(cfg: SteeringCompressionConfig) -> Rule:
    return AllOf(Above("reduction", cfg.min_reduction, "mean relative length reduction (steered vs unsteered, paired)"),
                 Above("accuracy_diff", -cfg.accuracy_margin, "accuracy steered minus unsteered (paired)"),
                 Above("vs_random", 0.0, "length reduction minus that of a random direction of the same norm (paired)"))


# -- measuring ----------------------------------------------------------------------------------

class Generator:
    """Greedy generation of one model on problems, optionally steered, batched by level."""

    def __init__(self, model, max_new: int) -> None:
        self.model, self.max_new, self.stop = model, max_new, eos_id(model)

    @torch.no_grad()
    def __call__(self, problems: list[Problem], vec: SteeringVector | None = None, gamma: float = 0.0,
                 suffix: dict[int, str] | None = None, batch: int | None = None) -> tuple[list[Outcome], list[str], float]:
        """Outcomes, texts and the seconds spent in generate. suffix: text appended to problem i's
        prompt (teacher-forcing the first answer tokens)."""
        suffix = suffix or {}
        rows = [prompt_ids(self.model, p.prompt + suffix.get(i, "")) for i, p in enumerate(problems)]
        outcomes: list[Outcome | None] = [None] * len(problems)
        texts = [""] * len(problems)
        seconds = 0.0
        scope = steering(self.model, vec, gamma) if vec is not None else contextlib.nullcontext()
        with scope:
            for idx, ids in group_by_length(rows):
                for start in range(0, len(idx), batch or len(idx)):
                    part = idx[start:start + (batch or len(idx))]
                    t0 = time.perf_counter()
                    new = self.model.generate(ids[start:start + len(part)].to(self.model.device), self.max_new, eos_id=self.stop).cpu()
                    seconds += time.perf_counter() - t0
                    for i, row in zip(part, new.tolist()):
                        texts[i] = decode_ids(self.model, row)
                        outcomes[i] = judge(suffix.get(i, "") + texts[i], generated_length(row, self.stop), problems[i])
        return outcomes, texts, seconds  # type: ignore[return-value]


def logistic_fit(x: torch.Tensor, y: torch.Tensor, l2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-regularised logistic regression by L-BFGS: x (n, D) float64, y (n,) in {0, 1} -> w (D,), b ()."""
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y) + l2 * (w @ w)
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def probe_accuracy(pos: torch.Tensor, neg: torch.Tensor, l2: float = 1e-2) -> tuple[int, int]:
    """Two-fold (by pair) logistic-regression accuracy at telling positive states from negative
    ones: (correct, total) over the held-out folds. pos, neg: (N, D), row i of each from pair i."""
    n = pos.shape[0]
    correct = 0
    for k in (0, 1):
        test = torch.arange(n) % 2 == k
        train = ~test
        x = torch.cat([pos[train], neg[train]]).double()  # (2 n_train, D)
        y = torch.cat([torch.ones(int(train.sum())), torch.zeros(int(train.sum()))]).double()
        mu, sd = x.mean(0), x.std(0) + 1e-6  # standardised: widths differ a lot between layers
        w, b = logistic_fit((x - mu) / sd, y, l2)
        xt = (torch.cat([pos[test], neg[test]]).double() - mu) / sd
        yt = torch.cat([torch.ones(int(test.sum())), torch.zeros(int(test.sum()))]).double()
        correct += int((((xt @ w + b) > 0).double() == yt).sum())
    return correct, 2 * n


def random_like(vec: SteeringVector, seed: int) -> SteeringVector:
    """A direction drawn uniformly on the sphere, with v's norm, layer and metadata."""
    r = torch.randn(vec.d_model, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    r = (r / r.norm() * vec.vector.double().norm()).float()
    return SteeringVector(r, vec.layer, vec.n_pairs, f"random ({vec.method} norm)", vec.model_fingerprint)


def _mean_iv(values: list[float], level: float) -> dict[str, float]:
    iv = t_interval(values, level=level)
    return {"mean": iv.estimate, "lo": iv.lo, "hi": iv.hi}


def _reduction(base: list[Outcome], other: list[Outcome]) -> list[float]:
    return [1 - o.length / b.length for b, o in zip(base, other)]


@STUDIES.register("steering-compression")
class SteeringCompressionStudy(Study):
    name = "steering-compression"
    summary = "one steering direction from N concise/verbose pairs: length, accuracy and speed vs random and negative controls"
    claims = ("C3",)
    Config = SteeringCompressionConfig

    @classmethod
    def rules(cls, cfg: SteeringCompressionConfig) -> list[tuple[str, str, Rule]]:
        return [("C3", f"adding gamma v ({cfg.n_pairs} pairs, gamma from a {cfg.kl_budget:g}-nat KL budget) shortens greedy "
                       "outputs at equal accuracy, beyond a random direction of the same norm", c3_rule(cfg))]

    def check(self, cfg: SteeringCompressionConfig, run_cfg) -> None:
        if cfg.layer >= run_cfg.model.n_layer or cfg.layer < -1:
            raise ConfigError(f"{cfg.key('layer')}={cfg.layer} is out of range: the model has {run_cfg.model.n_layer} blocks "
                              f"(0..{run_cfg.model.n_layer - 1}, or -1 for the middle-late one).")

    def run(self, ctx: StudyContext, cfg: SteeringCompressionConfig) -> StudyResult:
        levels = cfg.levels or list(ctx.cfg.data.train_levels)
        base = ctx.base_model().model
        task = StyleMixedArithmetic(cfg.p_verbose)
        mixture = TaskMixture([task], levels, seed=ctx.cfg.seed + 4242)
        tuned = ctx.finetune(f"style-mixed p={cfg.p_verbose:g}", {"task": task.name, "levels": levels}, weights_of(base),
                             mixture, cfg.finetune)
        model = ctx.new_model()
        load_weights(model, tuned)
        model.eval()
        n_layer = model.n_layer
        layer = cfg.layer if cfg.layer >= 0 else round(0.6 * (n_layer - 1))
        fp = model_fingerprint(model)

        n_max = max([*cfg.pair_counts, cfg.n_pairs])
        pair_problems = draw_problems(np.random.default_rng([cfg.seed, 1]), levels, n_max)
        pairs = [p.pair() for p in pair_problems]
        held_out = draw_problems(np.random.default_rng([cfg.seed, 2]), levels, cfg.eval_examples, {p.expr for p in pair_problems})
        sweep = held_out[: cfg.sweep_examples]
        gen = Generator(model, max_new=6 * max(levels) + 4)  # the verbose trace is 6 * level - 1 characters
        calib = [ids for _, ids in group_by_length([prompt_ids(model, p.prompt) for p in pairs[: cfg.n_pairs]])]

        def vector(n: int, at: int) -> SteeringVector:
            return extract_vector(model, pairs[:n], at, cfg.method, fingerprint=fp)

        # -- headline ------------------------------------------------------------------------------
        vec = vector(cfg.n_pairs, layer)
        cal = calibrate_gamma(model, vec, calib, cfg.kl_budget)
        gamma = cal.gamma
        base_out, base_text, _ = gen(held_out)
        steer_out, steer_text, _ = gen(held_out, vec, gamma)
        rand_out, _, _ = gen(held_out, random_like(vec, cfg.seed + 17), gamma)
        neg_out, _, _ = gen(held_out, vec, -gamma)
        conditions = {"unsteered": base_out, "steered (+gamma v)": steer_out, "random direction": rand_out, "negative (-gamma v)": neg_out}

        result = StudyResult(metrics={"layer": layer, "levels": levels, "gamma": gamma, "kl_at_gamma": cal.kl,
                                      "budget_reached": cal.reached, "vector_norm": vec.norm, "model_fingerprint": fp,
                                      "calibration_trace": cal.trace,
                                      "examples": [{"prompt": p.prompt, "unsteered": b, "steered": s}
                                                   for p, b, s in list(zip(held_out, base_text, steer_text))[:8]]})
        pre = self._style_precondition(cfg, gen, held_out, base_out, result)
        self._conditions(cfg, conditions, result)
        self._timing(cfg, gen, held_out[: cfg.timing_examples], vec, gamma, result)
        self._claim(cfg, base_out, steer_out, rand_out, neg_out, gamma, pre, result)

        # -- sweeps ---------------------------------------------------------------------------------
        sweep_base, _, _ = gen(sweep)

        def point(v: SteeringVector, g: float) -> dict[str, float]:
            out, _, _ = gen(sweep, v, g)
            red = _mean_iv(_reduction(sweep_base, out), cfg.level)
            acc = sum(o.correct for o in out)
            lo, hi = wilson(acc, len(out))
            return {"gamma": g, "reduction": red, "accuracy": {"mean": acc / len(out), "lo": lo, "hi": hi},
                    "concise": sum(o.style == "concise" for o in out) / len(out)}

        layers = []
        for at in range(n_layer):
            v = vector(cfg.n_pairs, at)
            c = calibrate_gamma(model, v, calib, cfg.kl_budget)
            pos = pair_states(model, [(p.prompt, p.positive) for p in pairs], at)
            neg = pair_states(model, [(p.prompt, p.negative) for p in pairs], at)
            correct, total = probe_accuracy(pos, neg)
            lo, hi = wilson(correct, total)
            layers.append({"layer": at, **point(v, c.gamma), "probe": {"mean": correct / total, "lo": lo, "hi": hi}})
        counts = []
        full = vector(n_max, layer)
        for n in sorted(set(cfg.pair_counts)):
            v = vector(n, layer)
            c = calibrate_gamma(model, v, calib, cfg.kl_budget)
            cos = float(v.vector @ full.vector / (v.vector.norm() * full.vector.norm() + 1e-12))
            counts.append({"n_pairs": n, **point(v, c.gamma), "cosine_to_all": cos})
        gammas = [{**point(vec, g), "kl": mean_kl(model, vec, g, calib)} for g in cfg.gamma_grid]
        methods = []  # descriptive: every extraction method, each sign calibrated to the same budget
        for m in METHODS:
            v = extract_vector(model, pairs[: cfg.n_pairs], layer, m, fingerprint=fp)
            for sign in (1, -1):
                methods.append({"method": f"{m} {'+' if sign > 0 else '-'}", **point(v, calibrate_gamma(model, v, calib, cfg.kl_budget, sign).gamma)})
        result.metrics.update({"layer_sweep": layers, "pairs_sweep": counts, "gamma_sweep": gammas, "method_sign": methods})
        self._sweep_figures(cfg, layer, layers, counts, gammas, methods, gamma, result)
        result.notes.insert(0, (
            f"Model: the base fine-tuned for {cfg.finetune.steps} steps on '{TAG}expr=' answered verbosely with probability "
            f"{cfg.p_verbose:g} (levels {levels}). Vector: {cfg.n_pairs} pairs, layer {layer} of {n_layer} (fixed in advance: "
            f"the middle-late block), method '{cfg.method}', norm {vec.norm:.3g}; gamma {gamma:.3g} from a KL budget of "
            f"{cfg.kl_budget:g} nats (mean KL {cal.kl:.3g}). {len(held_out)} held-out problems, none of them a pair's. "
            f"Intervals: t over problems (nominal {cfg.level:.0%}; for means of {len(held_out)} bounded per-problem values the "
            "coverage is close to nominal by the central limit theorem, not exact) and Wilson for accuracies; they cover problem "
            "sampling for this one fine-tune and pair draw, not other fine-tunes or pair sets (the pairs sweep shows how much "
            "the pair draw matters)."))
        return result

    # -- parts -----------------------------------------------------------------------------------
    def _style_precondition(self, cfg, gen: Generator, problems: list[Problem], base_out: list[Outcome],
                            result: StudyResult) -> bool:
        verbose = sum(o.style == "verbose" for o in base_out) / len(base_out)
        # can it write concisely? give it the first concise token where that differs from the verbose one
        forced = {i: concise_text(list(p.steps))[0] for i, p in enumerate(problems) if concise_text(list(p.steps))[0] != p.expr[0]}
        subset = [problems[i] for i in forced]
        outs, _, _ = gen(subset, suffix={j: forced[i] for j, i in enumerate(forced)})
        concise = sum(o.style == "concise" and o.correct for o in outs) / max(1, len(outs))
        ok_v = Threshold(cfg.min_verbose, "share of unsteered outputs that are verbose").check(verbose)
        ok_c = Threshold(cfg.min_concise, "share finished concisely (and right) after the first concise token").check(concise)
        result.metrics["style"] = {"verbose_share": verbose, "concise_capable": concise, "concise_forced_n": len(outs)}
        check = "pass" if ok_v == ok_c == "pass" else "fail"
        lo, hi = wilson(round(verbose * len(base_out)), len(base_out))
        result.preconditions.append(Precondition(
            id="steering-style-mix", statement="without steering the model usually writes the verbose trace, and can write the concise one",
            check=check, measure="share of unsteered outputs that are verbose", value=verbose, interval=(lo, hi),
            control=f"concise and right after being given the first concise token: {concise:.2f} of {len(outs)}",
            rule=f"pass when the verbose share >= {cfg.min_verbose:g} and the concise share >= {cfg.min_concise:g}"))
        return check == "pass"

    def _conditions(self, cfg, conditions: dict[str, list[Outcome]], result: StudyResult) -> None:
        rows, length_g, acc_g = [], [], []
        for label, outs in conditions.items():
            ln = _mean_iv([o.length for o in outs], cfg.level)
            k = sum(o.correct for o in outs)
            lo, hi = wilson(k, len(outs))
            styles = {s: sum(o.style == s for o in outs) / len(outs) for s in ("verbose", "concise", "other")}
            result.metrics.setdefault("conditions", {})[label] = {"length": ln, "accuracy": {"mean": k / len(outs), "lo": lo, "hi": hi},
                                                                  "styles": styles}
            rows.append([label, f"{ln['mean']:.2f} [{ln['lo']:.2f}, {ln['hi']:.2f}]", f"{k / len(outs):.3f} [{lo:.3f}, {hi:.3f}]",
                         f"{styles['verbose']:.2f} / {styles['concise']:.2f} / {styles['other']:.2f}"])
            length_g.append({"label": label, "values": [ln["mean"]], "lo": [ln["lo"]], "hi": [ln["hi"]]})
            acc_g.append({"label": label, "values": [k / len(outs)], "lo": [lo], "hi": [hi]})
        result.tables.append({"title": f"Held-out problems by condition (mean [{cfg.level:.0%} interval])",
                              "columns": ["condition", "generated tokens", "final-answer accuracy (Wilson)", "verbose / concise / other"],
                              "rows": rows})
        result.figures.append(bars_figure("steer-length", "Output length by condition", ["generated tokens"], length_g, "tokens",
                                          caption=f"Mean over held-out problems, {cfg.level:.0%} t-intervals."))
        result.figures.append(bars_figure("steer-accuracy", "Final-answer accuracy by condition", ["accuracy"], acc_g, "accuracy",
                                          ylim=(0, 1.05), caption="Wilson intervals over held-out problems."))

    def _timing(self, cfg, gen: Generator, problems: list[Problem], vec: SteeringVector, gamma: float, result: StudyResult) -> None:
        """Unsteered and steered runs interleaved batch by batch, so drift in machine load hits both."""
        tokens = {"unsteered": 0, "steered": 0}
        seconds = {"unsteered": 0.0, "steered": 0.0}
        for start in range(0, len(problems), cfg.timing_batch):
            part = problems[start:start + cfg.timing_batch]
            for label, v in (("unsteered", None), ("steered", vec)):
                outs, _, s = gen(part, v, gamma, batch=cfg.timing_batch)
                tokens[label] += sum(o.length for o in outs)
                seconds[label] += s
        rate = {k: tokens[k] / max(seconds[k], 1e-9) for k in tokens}
        speedup = seconds["unsteered"] / max(seconds["steered"], 1e-9)
        result.metrics["timing"] = {"tokens": tokens, "seconds": seconds, "tokens_per_s": rate, "wall_clock_speedup": speedup,
                                    "batch": cfg.timing_batch, "problems": len(problems)}
        result.tables.append({"title": f"Speed: {len(problems)} held-out problems, {cfg.timing_batch} per generate call, interleaved",
                              "columns": ["condition", "tokens", "seconds", "tokens/s"],
                              "rows": [[k, str(tokens[k]), f"{seconds[k]:.3f}", f"{rate[k]:.0f}"] for k in tokens]})
        result.notes.append(f"Wall-clock speed-up of steered over unsteered generation: {speedup:.2f}x on the same problems "
                            f"(tokens/s {rate['unsteered']:.0f} unsteered, {rate['steered']:.0f} steered: the hook's own cost; "
                            "benchmarks/steer_overhead.py measures it alone). One timing run, not an interval.")

    def _claim(self, cfg, base_out, steer_out, rand_out, neg_out, gamma: float, style_ok: bool, result: StudyResult) -> None:
        reduction = _reduction(base_out, steer_out)
        acc_diff = [float(s.correct) - float(b.correct) for b, s in zip(base_out, steer_out)]
        vs_random = [a - b for a, b in zip(reduction, _reduction(base_out, rand_out))]

        def est(values: list[float]) -> Estimate:
            iv = t_interval(values, level=cfg.level)
            return Estimate(iv.estimate, (iv.lo, iv.hi), iv.achieved)

        estimates = {"reduction": est(reduction), "accuracy_diff": est(acc_diff), "vs_random": est(vs_random)}
        neg = est(_reduction(base_out, neg_out))
        acc = {k: sum(o.correct for o in v) / len(v) for k, v in (("base", base_out), ("steer", steer_out))}
        d = estimates["accuracy_diff"]
        claim = decide_claim(
            "C3", f"one direction from {cfg.n_pairs} concise/verbose pairs, added at every generated token, shortens outputs "
                  f"by at least {cfg.min_reduction:.0%} at equal accuracy (drop < {cfg.accuracy_margin:g})",
            c3_rule(cfg), estimates, "reduction", measure=f"mean relative length reduction at gamma {gamma:.3g}",
            control=f"accuracy {acc['base']:.3f} -> {acc['steer']:.3f} (paired difference {d.value:+.3f} [{d.interval[0]:+.3f}, "
                    f"{d.interval[1]:+.3f}]); random direction of the same norm: reduction "
                    f"{estimates['reduction'].value - estimates['vs_random'].value:.3f}; negative gamma: reduction {neg.value:.3f} "
                    f"[{neg.interval[0]:.3f}, {neg.interval[1]:.3f}]")
        if neg.interval[0] > cfg.min_reduction and not estimates["reduction"].interval[0] > cfg.min_reduction:
            result.notes.append(
                f"The direction compresses with the opposite sign: -gamma v shortens outputs by {neg.value:.0%} "
                f"[{neg.interval[0]:.0%}, {neg.interval[1]:.0%}] while +gamma v (toward the concise texts' last-token state, "
                "the paper's stated rule) does not. The authors' public code subtracts its concise-minus-verbose vector, i.e. "
                "applies this opposite sign. The verdict tests the rule as stated; the method-and-sign table shows both signs "
                "for every extraction method, each at its own KL-calibrated gamma.")
        if not style_ok:
            claim.verdict, note = downgrade(claim.verdict, ["steering-style-mix"])
            claim.reason = f"{note}; {claim.reason}"
            result.notes.append("The verdict is inconclusive because the fine-tuned model does not have both styles as the "
                                "precondition asks (see style metrics): there is nothing for steering to choose between.")
        claim.study = self.name
        result.claims.append(claim)

    def _sweep_figures(self, cfg, layer: int, layers, counts, gammas, methods, gamma: float, result: StudyResult) -> None:
        def series(rows, x, key, label, style="-"):
            return {"label": label, "x": [r[x] for r in rows], "y": [r[key]["mean"] for r in rows],
                    "lo": [r[key]["lo"] for r in rows], "hi": [r[key]["hi"] for r in rows], "style": style}

        result.figures.append(lines_figure(
            "steer-layers", "Where the direction lives: each layer's vector at its own KL-calibrated gamma", "layer (block output)",
            "share", [series(layers, "layer", "reduction", "length reduction"), series(layers, "layer", "accuracy", "accuracy", "--"),
                      series(layers, "layer", "probe", "linear probe accuracy (concise vs verbose)", ":")],
            caption=f"Headline layer {layer} was fixed in advance. Probe: two-fold logistic regression on the last-token states "
                    "of the pair texts, Wilson intervals (folds share the model). Reduction: t-intervals over problems."))
        result.figures.append(lines_figure(
            "steer-pairs", "Number of pairs", "pairs (N)", "share",
            [series(counts, "n_pairs", "reduction", "length reduction"), series(counts, "n_pairs", "accuracy", "accuracy", "--"),
             {"label": "cosine to the vector of all pairs", "x": [r["n_pairs"] for r in counts], "y": [r["cosine_to_all"] for r in counts],
              "style": ":"}],
            logx=True, caption="Nested draws: the first N pairs of one draw; each vector at its own KL-calibrated gamma."))
        result.figures.append(lines_figure(
            "steer-gamma", "Steering strength", "gamma (units of v)", "share / nats",
            [series(gammas, "gamma", "reduction", "length reduction"), series(gammas, "gamma", "accuracy", "accuracy", "--"),
             {"label": "mean next-token KL (nats)", "x": [r["gamma"] for r in gammas], "y": [r["kl"] for r in gammas], "style": ":"}],
            caption=f"Calibrated gamma: {gamma:.3g} (KL budget {cfg.kl_budget:g} nats). Negative gamma steers toward the verbose style."))
        result.tables.append({"title": "Sweeps (held-out subset): reduction and accuracy",
                              "columns": ["sweep", "setting", "gamma", "length reduction", "accuracy", "concise share"],
                              "rows": [[s, str(r[k]), f"{r['gamma']:.3g}", f"{r['reduction']['mean']:.3f}", f"{r['accuracy']['mean']:.3f}",
                                        f"{r['concise']:.2f}"]
                                       for s, k, rows in (("layer", "layer", layers), ("pairs", "n_pairs", counts), ("gamma", "gamma", gammas),
                                                          ("method, sign (own calibration)", "method", methods))
                                       for r in rows]})
