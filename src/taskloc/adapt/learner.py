"""The two-channel learner (REFERENCE C5) and its one-channel baselines.

- fast channel: a ``PromptSearch`` population of prompt prefixes, evolved in a prompt phase
  against per-example scores of the current model on search examples;
- slow channel: parameter steps on the task's answer loss plus ``kl`` times the KL divergence
  from the start model (a frozen copy) at the answer positions, a few steps per cycle, each
  example carrying a prefix drawn from the population's Pareto front.

A segment (one task of a stream) runs cycles of (prompt phase, ``cycle_steps`` parameter steps)
until the segment's step budget is spent. ``slow-only`` is the same loop with the fast channel off
(every prefix empty), ``fast-only`` with the slow channel off (prompt phases, no steps). The
parameter steps repeat ``taskloc.train.train`` step for step (same batches, schedule, optimizer,
clipping): with ``kl = 0`` and no prompt a segment leaves exactly train()'s weights (tested).
Works on any ``LanguageModel`` (TinyLM or a wrapped HF causal LM): text goes through the model's
codec and the only call is ``model(ids) -> logits``.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..models import LanguageModel, codec_of
from ..tasks.base import Example
from ..tasks.scoring import exact_match, skill_scores
from ..train import TrainConfig, answer_loss, lr_at
from .prompt_search import PromptSearch, PromptSearchConfig, with_prefix

KINDS = ("two-channel", "slow-only", "fast-only")


def make_optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer ``train.train`` builds for ``cfg`` (it builds it inline; kept identical so
    that slow-only training here is train()'s, which the tests check weight for weight)."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))


def answer_kl(logits: torch.Tensor, ref_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(p_model || p_start) over the vocabulary at answer positions, averaged per example first
    (as ``answer_loss`` averages), then over the batch. logits, ref_logits: (B, T, V); mask: (B, T)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    logq = F.log_softmax(ref_logits.float(), dim=-1)
    per_token = (logp.exp() * (logp - logq)).sum(-1) * mask  # (B, T)
    return (per_token.sum(1) / mask.sum(1).clamp(min=1)).mean()


@torch.no_grad()
def probe_kl(model: LanguageModel, start: LanguageModel, examples: list[Example], batch_size: int = 256) -> float:
    """Drift: mean KL(model || start) at the answer positions of a fixed probe set (no prefix)."""
    codec = codec_of(model)
    total, n = 0.0, 0
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        inputs, _, mask = (t.to(model.device) for t in codec.encode_batch([(e.prompt, e.target) for e in chunk]))
        total += float(answer_kl(model(inputs), start(inputs), mask)) * len(chunk)
        n += len(chunk)
    return total / max(n, 1)


def prefixed(examples: list[Example], prefix: str) -> list[Example]:
    return [Example(prefix + e.prompt, e.target, e.level) for e in examples]


def accuracy(model: LanguageModel, examples: list[Example], prefix: str = "") -> float:
    """Exact-match accuracy with ``prefix`` before every prompt."""
    return float(exact_match(model, prefixed(examples, prefix)).double().mean())


def prompt_scorer(model: LanguageModel, examples: list[Example]) -> Callable[[list[str]], np.ndarray]:
    """Per-example scores of prompts for the search: the answer's mean log-likelihood (minus the
    per-token cross-entropy), continuous so that prompts can win on single examples. (P,) -> (P, N)."""
    def score(prompts: list[str]) -> np.ndarray:
        if not prompts:
            return np.zeros((0, len(examples)))
        every = [e for p in prompts for e in prefixed(examples, p)]  # all prompts in one pass: (P * N) rows
        return -skill_scores(model, every)["loss"].numpy().reshape(len(prompts), len(examples))
    return score


@dataclass
class LearnerConfig:
    kind: str  # one of KINDS
    kl: float  # coefficient of the KL penalty to the start model
    cycle_steps: int  # parameter steps per cycle (one prompt phase each)

    @property
    def fast(self) -> bool:
        return self.kind in ("two-channel", "fast-only")

    @property
    def slow(self) -> bool:
        return self.kind in ("two-channel", "slow-only")


class Learner:
    """Holds the model (trained in place), the frozen start model and the prompt population.
    ``elapsed`` counts seconds spent searching and stepping (evaluation callbacks excluded)."""

    def __init__(self, model: LanguageModel, start: LanguageModel, cfg: LearnerConfig, search: PromptSearchConfig, seed: int) -> None:
        self.model, self.start, self.cfg = model, start, cfg
        self.search = PromptSearch(search, seed) if cfg.fast else None
        self.rng = np.random.default_rng([seed, 7877])  # prefixes of the slow channel's batches only
        self.elapsed = 0.0
        for p in start.parameters():
            p.requires_grad_(False)

    @property
    def prompt(self) -> str:
        """The fast channel's best prompt ('' without one)."""
        return self.search.best if self.search is not None else ""

    def segment(self, mixture, train_cfg: TrainConfig, search_examples: list[Example],
                on_cycle: Callable[[int], None] | None = None) -> None:
        """One task: ceil(steps / cycle_steps) cycles of (prompt phase, parameter steps), with
        ``on_cycle(steps done)`` after each. A fresh optimizer and schedule per segment, as a
        train() call per task would have."""
        model = self.model
        params = dict(model.named_parameters())
        opt = make_optimizer([p for p in params.values() if p.requires_grad], train_cfg) if self.cfg.slow else None
        codec = codec_of(model)
        cycles = math.ceil(train_cfg.steps / self.cfg.cycle_steps)
        for cycle in range(cycles):
            t0 = time.perf_counter()
            if self.search is not None:
                model.eval()
                self.search.phase(prompt_scorer(model, search_examples))
            first, last = cycle * self.cfg.cycle_steps, min(train_cfg.steps, (cycle + 1) * self.cfg.cycle_steps)
            if opt is not None:
                model.train()
                for step in range(first, last):
                    self._step(opt, codec, mixture, step, train_cfg)
                model.eval()
            self.elapsed += time.perf_counter() - t0
            if on_cycle is not None:
                on_cycle(last)

    def _step(self, opt: torch.optim.Optimizer, codec, mixture, step: int, cfg: TrainConfig) -> float:
        model = self.model
        pairs = [(e.prompt, e.target) for e in mixture.batch(step, cfg.batch_size)]
        if self.search is not None:  # "batches drawn across the prompt population"
            pairs = with_prefix(pairs, self.search.sample(len(pairs), self.rng))
        inputs, labels, ans = (t.to(model.device) for t in codec.encode_batch(pairs))
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        captured: dict[str, torch.Tensor] = {}

        def forward(ids: torch.Tensor) -> torch.Tensor:  # answer_loss's own forward, logits kept for the KL
            captured["logits"] = model(ids)
            return captured["logits"]

        loss = answer_loss(forward, inputs, labels, ans)
        if self.cfg.kl > 0:  # skipped at 0, so that slow-only at kl = 0 is train()'s arithmetic exactly
            with torch.no_grad():
                ref = self.start(inputs)  # (B, T, V)
            loss = loss + self.cfg.kl * answer_kl(captured["logits"], ref, ans)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        return float(loss.detach())
