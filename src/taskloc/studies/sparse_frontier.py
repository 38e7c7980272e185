"""Study ``sparse-frontier`` (claim C6): at equal attention FLOPs per query, does a larger model
with sparse attention beat a smaller dense one?

TinyLMs of several widths are trained (cached through ctx.build) on long-context retrieval
(attention/longctx_tasks.py: needle, variable tracking, multi-hop) at ``context`` characters.
Each trained model is then evaluated, training-free, with every pattern at every density, in two
modes: ``prefill`` (the whole prompt attended sparsely, the answer decoded densely) and
``decode`` (the context prefilled densely, the 3 question tokens and the answer decoded one at a
time with the pattern through the KV cache). A FlopLedger counts the attended pairs exactly, so
attention cost per query token = layers x heads x attended pairs x 2(Dh + Dv), selection included
(the issue's isoFLOP axis); the total view adds the matmuls, 2 x non-embedding parameters. Both
frontiers are drawn; ``cost`` says which one the C6 comparison uses, the other is reported beside it.

The isoFLOP test is held out: the evaluation examples are split in two; the larger model's best
(pattern, density) that costs no more than the smaller dense model is chosen on the first half,
and its accuracy minus the smaller dense model's is measured on the second half, per task and
seed; a t interval over tasks (seeds nested) decides the claim.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from ..attention import FlopLedger, PatternSpec, SparseAttention
from ..attention.kernels import dense_attention
from ..attention.longctx_tasks import QUESTION, long_context_tasks
from ..config import Config, field
from ..errors import ConfigError
from ..models import TinyLM, load_weights, weights_of
from ..models.tinylm import ModelConfig
from ..tasks.mixture import TaskMixture, eval_examples
from ..tasks.vocab import EOS, VOCAB_SIZE, decode, encode
from ..train import TrainConfig, train
from .base import STUDIES, Study, StudyResult, decide_claim, lines_figure
from .cache import TENSORS
from .stats import hierarchical_interval
from .verdicts import NOT_SUPPORTED, SUPPORTED, Above, AllOf, AnyOf, Below, Estimate, FirstOf, Rule

MODES = ("prefill", "decode")
CODE = ("taskloc.attention.longctx_tasks", "taskloc.studies.sparse_frontier")


@dataclass
class SparseFrontierConfig(Config):
    section = "studies.sparse-frontier."

    widths: list[int] = field([32, 48, 64], "d_model of each TinyLM size (at least 2; ascending)")
    n_layer: int = field(2, "blocks per model")
    n_head: int = field(2, "heads per block")
    context: int = field(125, "characters before the 3-character question (prompt = context + 3; a multiple of block)")
    tasks: list[str] = field(["needle", "vartrack", "multihop"], "long-context tasks (needle, vartrack, multihop)")
    seeds: int = field(2, "training seeds per size (intervals run over tasks, seeds nest inside)")
    train: TrainConfig = field(TrainConfig(steps=400, batch_size=32, lr=3e-3, warmup=30, eval_every=10**9, ckpt_every=100),
                               "training schedule of every model")
    patterns: list[str] = field(["sliding-window", "block-sparse", "vertical-slash", "top-k", "quest"], "sparse patterns")
    densities: list[float] = field([1.0, 0.5, 0.25, 0.125, 0.05], "target densities (1 = dense)")
    modes: list[str] = field(["prefill", "decode"], "where the pattern applies: prefill, decode")
    block: int = field(16, "block size (block-sparse, sliding-window rows, vertical-slash rows)")
    page: int = field(16, "Quest page size")
    sinks: int = field(4, "sink keys (sliding-window, vertical-slash)")
    last_q: int = field(16, "queries that choose vertical-slash's lines")
    examples: int = field(64, "evaluation examples per task (half choose the config, half measure)")
    cost: Literal["attention", "total"] = field(
        "attention", "isoFLOP cost the C6 comparison uses: attention FLOPs per query, or attention + matmul FLOPs")
    level: float = field(0.95, "nominal level of the intervals")

    def validate(self) -> None:
        if len(self.widths) < 2 or sorted(self.widths) != self.widths or len(set(self.widths)) != len(self.widths):
            raise ConfigError(f"{self.key('widths')}={self.widths}: give at least two distinct widths in ascending order.")
        if any(w % self.n_head for w in self.widths):
            raise ConfigError(f"{self.key('widths')}={self.widths}: every width must divide by n_head={self.n_head}.")
        for mode in self.modes:
            if mode not in MODES:
                raise ConfigError(f"{self.key('modes')}: unknown mode {mode!r}; choose from {', '.join(MODES)}.")
        for name in self.patterns:
            for d in self.densities:
                PatternSpec(name, d, block=self.block, sinks=self.sinks, last_q=self.last_q, page=self.page).check()
        if 1.0 not in self.densities:
            raise ConfigError(f"{self.key('densities')}={self.densities} must include 1 (the dense baseline).")
        if (self.context + QUESTION) % self.block:
            raise ConfigError(f"{self.key('block')}={self.block} does not divide the prompt length "
                              f"{self.context + QUESTION} (context + {QUESTION}); pick context = k * block - {QUESTION}.")
        if self.seeds < 1 or self.examples < 4:
            raise ConfigError(f"{self.key('seeds')} must be >= 1 and {self.key('examples')} >= 4.")
        long_context_tasks(self.tasks, self.context)


CHANCE = 0.1  # one digit answers


def iso_rule(modes: list[str]) -> Rule:
    """Decided only when the largest model reads the tasks at all (dense accuracy above chance):
    sparse-vs-dense comparisons between models that cannot do the task say nothing."""
    competent = Above("competent", CHANCE, "largest model's dense accuracy (all tasks)")
    wins = [Above(f"iso@{m}", 0.0, f"largest sparse minus smallest dense at <= equal FLOPs ({m}, held out)") for m in modes]
    loses = [Below(f"iso@{m}", 0.0, f"largest sparse minus smallest dense at <= equal FLOPs ({m}, held out)") for m in modes]
    return FirstOf(("larger sparse wins", SUPPORTED, AllOf(competent, *wins)),
                   ("smaller dense wins", NOT_SUPPORTED, AllOf(competent, AnyOf(*loses))))


class _Swap:
    """Sets every block's attention kernel for a while (the model's own modules, no copy)."""

    def __init__(self, model: TinyLM, kernel) -> None:
        self.model, self.kernel = model, kernel

    def __enter__(self):
        for block in self.model.blocks:
            block.attn.kernel = self.kernel

    def __exit__(self, *exc):
        for block in self.model.blocks:
            block.attn.kernel = dense_attention


@torch.no_grad()
def answers(model: TinyLM, prompts: list[str], mode: str, kernel, context: int) -> list[str]:
    """Greedy one-digit answers (plus stop) with ``kernel`` applied in ``mode``."""
    ids = torch.tensor([encode(p) for p in prompts], device=model.device)  # (B, P)
    if mode == "prefill":
        with _Swap(model, kernel):
            logits, cache = model(ids, return_cache=True)
    else:  # dense context, sparse question tokens one at a time
        logits, cache = model(ids[:, :context], return_cache=True)
        with _Swap(model, kernel):
            for t in range(context, ids.shape[1]):
                logits, cache = model(ids[:, t : t + 1], cache=cache, return_cache=True)
    first = logits[:, -1].argmax(-1)  # (B,)
    return [decode([int(i), EOS]) for i in first]


@STUDIES.register("sparse-frontier")
class SparseFrontierStudy(Study):
    name = "sparse-frontier"
    summary = "sparse attention patterns x densities on long-context TinyLMs of several sizes: the isoFLOP frontier"
    claims = ("C6",)
    Config = SparseFrontierConfig

    @classmethod
    def rules(cls, cfg: SparseFrontierConfig) -> list[tuple[str, str, Rule]]:
        return [("C6", f"at equal {cfg.cost} FLOPs per query token the largest model with sparse attention beats the "
                       "smallest dense one (config chosen on held-in examples, measured on held-out ones)",
                 iso_rule(cfg.modes))]

    def model_config(self, cfg: SparseFrontierConfig, width: int) -> ModelConfig:
        return ModelConfig(vocab_size=VOCAB_SIZE, block_size=cfg.context + QUESTION + 2, n_layer=cfg.n_layer,
                           n_head=cfg.n_head, d_model=width, d_mlp=4 * width)

    def trained(self, ctx, cfg: SparseFrontierConfig, width: int, seed: int, mixture: TaskMixture) -> TinyLM:
        mcfg = self.model_config(cfg, width)
        torch.manual_seed(seed)
        model = TinyLM(mcfg).to(ctx.device)

        def build(folder):
            train(model, cfg.train, mixture, label=f"sparse-frontier d={width} seed={seed}", log=lambda r: None)
            return weights_of(model)

        ingredients = {"model": mcfg.to_dict(), "seed": seed, "train": cfg.train.to_dict(), "data": mixture.fingerprint()}
        load_weights(model, ctx.build("sparse-frontier-model", ingredients, build, TENSORS,
                                      CODE + ("taskloc.train", "taskloc.models.tinylm", "taskloc.attention.kernels")))
        return model.eval()

    def run(self, ctx, cfg: SparseFrontierConfig) -> StudyResult:
        tasks = long_context_tasks(cfg.tasks, cfg.context)
        result = StudyResult()
        evals = {t.name: eval_examples(t, 1, cfg.examples, ctx.cfg.eval.seed) for t in tasks}
        half = cfg.examples // 2
        rows: list[dict[str, Any]] = []  # one per (width, seed, mode, pattern, density, task)
        for width in cfg.widths:
            for seed in range(cfg.seeds):
                mixture = TaskMixture(tasks, [1], ctx.cfg.seed + 1000 * seed)
                model = self.trained(ctx, cfg, width, seed, mixture)
                matmul = 2 * sum(p.numel() for n, p in model.named_parameters() if "emb" not in n and p.dim() == 2)
                for mode in cfg.modes:
                    for pattern in cfg.patterns:
                        for density in cfg.densities:
                            if density == 1.0 and pattern != cfg.patterns[0]:
                                continue  # density 1 is the dense kernel for every pattern: measured once
                            spec = PatternSpec(pattern, density, block=cfg.block, sinks=cfg.sinks, last_q=cfg.last_q,
                                               page=cfg.page)
                            ledger = FlopLedger()
                            kernel = SparseAttention(spec, ledger=ledger)
                            for task in tasks:
                                exs = evals[task.name]
                                got = answers(model, [e.prompt for e in exs], mode, kernel, cfg.context)
                                hits = [float(task.score(g, e)) for g, e in zip(got, exs)]
                                rows.append({"width": width, "seed": seed, "mode": mode,
                                             "pattern": "dense" if density == 1.0 else pattern, "density": density,
                                             "task": task.name, "select": float(np.mean(hits[:half])),
                                             "test": float(np.mean(hits[half:])), "all": float(np.mean(hits))})
                            # per (query, head, layer) -> per query token, summed over heads and layers
                            attn = ledger.flops_per_query() * cfg.n_layer * cfg.n_head
                            for r in rows[-len(tasks):]:
                                r.update(achieved=ledger.density, attention=attn, total=attn + matmul)
        self.report(result, cfg, rows)
        return result

    def report(self, result: StudyResult, cfg: SparseFrontierConfig, rows: list[dict[str, Any]]) -> None:
        def cell(**match):
            return [r for r in rows if all(r[k] == v for k, v in match.items())]

        configs = sorted({(r["pattern"], r["density"]) for r in rows}, key=lambda c: (c[0] != "dense", c[0], -c[1]))
        table = []
        for width in cfg.widths:
            for mode in cfg.modes:
                for pattern, density in configs:
                    rs = cell(width=width, mode=mode, pattern=pattern, density=density)
                    if not rs:
                        continue
                    iv = hierarchical_interval([r["all"] for r in rs], [r["task"] for r in rs], [r["seed"] for r in rs],
                                               level=cfg.level)
                    table.append([width, mode, pattern, density, round(float(np.mean([r["achieved"] for r in rs])), 4),
                                  round(float(np.mean([r["attention"] for r in rs]))), round(float(np.mean([r["total"] for r in rs]))),
                                  round(iv.estimate, 3), round(iv.lo, 3), round(iv.hi, 3)])
        result.tables.append({"name": "frontier", "title": "accuracy per size, mode, pattern and density",
                              "columns": ["d_model", "mode", "pattern", "target density", "achieved density",
                                          "attention FLOPs/query", "total FLOPs/token", "accuracy", "lo", "hi"],
                              "rows": table})
        result.metrics["grid"] = table
        for mode in cfg.modes:
            series = []
            for pattern in cfg.patterns:
                pts = [t for t in table if t[0] == cfg.widths[-1] and t[1] == mode and (t[2] == pattern or t[2] == "dense")]
                pts.sort(key=lambda t: t[3])
                series.append({"label": pattern, "x": [t[3] for t in pts], "y": [t[7] for t in pts],
                               "lo": [t[8] for t in pts], "hi": [t[9] for t in pts]})
            result.figures.append(lines_figure(f"sparse-accuracy-{mode}", f"Accuracy vs density, d_model={cfg.widths[-1]}, {mode}",
                                               "target density", "exact match", series, logx=True, ylim=(0, 1)))
            for basis, column, axis in (("attention", 5, "attention FLOPs per query token"),
                                        ("total", 6, "attention + matmul FLOPs per token")):
                frontier = []
                for width in cfg.widths:
                    pts = sorted((t for t in table if t[0] == width and t[1] == mode), key=lambda t: t[column])
                    best, xs, ys = -1.0, [], []
                    for t in pts:  # the frontier: best accuracy at or below each cost
                        if t[7] > best:
                            best = t[7]
                            xs.append(t[column])
                            ys.append(t[7])
                    frontier.append({"label": f"d_model={width}", "x": xs, "y": ys})
                name = f"isoflop-{mode}" if basis == "attention" else f"isoflop-total-{mode}"
                result.figures.append(lines_figure(name, f"isoFLOP frontier ({mode}, {basis} FLOPs): best accuracy "
                                                   "at or below a cost", axis, "exact match", frontier, logx=True,
                                                   ylim=(0, 1)))
        estimates: dict[str, Estimate] = {}
        small, large = cfg.widths[0], cfg.widths[-1]
        dense_large = cell(width=large, mode=cfg.modes[0], pattern="dense")
        iv = hierarchical_interval([r["all"] for r in dense_large], [r["task"] for r in dense_large],
                                   [r["seed"] for r in dense_large], level=cfg.level)
        estimates["competent"] = Estimate(iv.estimate, (iv.lo, iv.hi), iv.nominal)
        result.notes.append(f"Competence: dense d_model={large} exact match {iv.estimate:.3f} [{iv.lo:.3f}, {iv.hi:.3f}] "
                            f"against chance {CHANCE:g}; below it the C6 verdict stays inconclusive.")
        for mode in cfg.modes:
            for basis in (cfg.cost, "total" if cfg.cost == "attention" else "attention"):
                note = self.iso_compare(cfg, cell, configs, mode, basis, estimates if basis == cfg.cost else None)
                result.notes.append(note if basis == cfg.cost else f"(not in the verdict) {note}")
        headline = f"iso@{cfg.modes[0]}"
        result.claims.append(decide_claim(
            "C6", "at equal compute, larger sparse-attention models beat smaller dense ones", iso_rule(cfg.modes), estimates,
            headline, measure=f"held-out exact match, largest sparse (d_model={large}) minus smallest dense (d_model={small})",
            control=f"the smallest model with dense attention at the same {cfg.cost} FLOPs per query token "
                    f"(d_model={small})"))
        result.notes.append(f"Context {cfg.context} + {QUESTION} characters; attention cost = exact attended pairs x "
                            f"2(Dh + Dv), selection included, summed over heads and layers per query token; total = that "
                            f"+ 2 x non-embedding parameters. C6 is decided on the {cfg.cost} basis; density 1 is dense "
                            "attention.")

    @staticmethod
    def iso_compare(cfg: SparseFrontierConfig, cell, configs, mode: str, basis: str,
                    estimates: dict[str, Estimate] | None) -> str:
        """The largest model's best configuration (chosen on held-in examples) among those costing
        no more than the smallest dense model on ``basis``, minus that dense model on held-out
        examples, paired by task and seed; the interval goes into ``estimates`` when given."""
        small, large = cfg.widths[0], cfg.widths[-1]

        def cost(c):
            return float(np.mean([r[basis] for r in cell(width=large, mode=mode, pattern=c[0], density=c[1])]))

        budget = float(np.mean([r[basis] for r in cell(width=small, mode=mode, pattern="dense")]))
        fits = [c for c in configs if cell(width=large, mode=mode, pattern=c[0], density=c[1]) and cost(c) <= budget]
        if not fits:
            return (f"{mode}, {basis} FLOPs: no configuration of d_model={large} costs <= the dense d_model={small} "
                    f"({budget:.3g} FLOPs per query token), so there is no equal-cost comparison on this basis.")
        chosen = max(fits, key=lambda c: np.mean([r["select"] for r in cell(width=large, mode=mode, pattern=c[0],
                                                                              density=c[1])]))
        diffs, task_ids, seeds = [], [], []
        for r in cell(width=large, mode=mode, pattern=chosen[0], density=chosen[1]):
            base = cell(width=small, mode=mode, pattern="dense", task=r["task"], seed=r["seed"])[0]
            diffs.append(r["test"] - base["test"])
            task_ids.append(r["task"])
            seeds.append(r["seed"])
        iv = hierarchical_interval(diffs, task_ids, seeds, level=cfg.level)
        if estimates is not None:
            estimates[f"iso@{mode}"] = Estimate(iv.estimate, (iv.lo, iv.hi), iv.nominal)
        return (f"{mode}, {basis} FLOPs: d_model={large} with {chosen[0]} at density {chosen[1]:g} (chosen on held-in "
                f"examples among {len(fits)} configs costing <= {budget:.3g}, {cost(chosen):.3g} FLOPs per query token) "
                f"minus dense d_model={small}: {iv.estimate:+.3f} [{iv.lo:+.3f}, {iv.hi:+.3f}] ({iv.label()}).")
