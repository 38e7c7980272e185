"""Per-layer metrics of the last prompt token over a list of (prompt, target) pairs, with what the
same forward pass says about the answer: exact match, the first answer token's max softmax
probability, and the prompt's length in tokens.

One teacher-forced pass per batch serves everything: the codec packs prompt + target, the sites
are read through ``capture(..., reducer=LastTokenScalars(fn))`` with the reduction's mask set to
the *prompt* positions (so the last real position is the last prompt token, as the paper reads
it), and the logits at that position are the first answer token's distribution. Memory holds a
few scalars per prompt and site, never the activations.

    run = last_token_metrics(model, [(e.prompt, e.target) for e in examples], ["blocks.*.hook_resid_post"])
    run.metrics["blocks.3.hook_resid_post"]["top5_energy"]  # (N,) float64
    run.correct, run.max_prob, run.prompt_len             # (N,) each
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..hooks import capture, resolve_sites
from ..metrics import CONVENTIONS, DEFAULT_FRACTIONS, metric_profile
from ..models.codec import codec_of
from .reducers import LastTokenScalars

PAPER_PREFIX = "paper_"  # keys of the paper convention beside ours, e.g. paper_top5_energy


def profile_fn(conventions: Iterable[str] = CONVENTIONS, fractions: Iterable[float] = DEFAULT_FRACTIONS
               ) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    """rows (B, D) -> {metric: (B,)} for every convention: taskloc's keys as they are, the paper's
    prefixed ``paper_`` (the two disagree on top-k counting, l0's std and the effective rank)."""
    conventions, fractions = tuple(conventions), tuple(fractions)

    def fn(rows: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for convention in conventions:
            prefix = PAPER_PREFIX if convention == "paper" else ""
            out.update({prefix + k: v for k, v in metric_profile(rows, convention, fractions).items()})
        return out

    return fn


@dataclass
class LastTokenRun:
    """Per prompt, in input order. ``metrics[site][name]`` (N,) float64; ``correct`` (N,) bool
    (greedy decoding reproduces the target); ``max_prob`` (N,) the largest softmax probability of
    the first answer token; ``prompt_len`` (N,) prompt tokens (special prefix tokens included)."""

    sites: list[str]
    metrics: dict[str, dict[str, np.ndarray]]
    correct: np.ndarray
    max_prob: np.ndarray
    prompt_len: np.ndarray


@torch.no_grad()
def last_token_metrics(model, pairs: Sequence[tuple[str, str]], sites: list[str],
                       fn: Callable[[torch.Tensor], dict[str, torch.Tensor]] | None = None,
                       batch_size: int = 256) -> LastTokenRun:
    """Metrics ``fn`` (default: every C1 metric, both conventions) of the last prompt token at each
    site (glob patterns allowed; an unknown site is a HookError with did-you-mean), per pair.
    A target of "" is fine when only the activations matter (``correct`` then scores the stop token)."""
    if not pairs:
        from ..errors import DataError

        raise DataError("no prompts to measure; give at least one (prompt, target) pair.")
    names = resolve_sites(model, sites)
    fn = fn or profile_fn()
    codec = codec_of(model)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct, max_prob, prompt_len = [], [], []
    try:
        with capture(model, names, reducer=lambda: LastTokenScalars(fn)) as red:
            for i in range(0, len(pairs), batch_size):
                inputs, labels, answer = (t.to(device) for t in codec.encode_batch(list(pairs[i : i + batch_size])))
                # the first answer position is the last prompt token: its label is the first answer token
                last = answer.to(torch.int8).argmax(dim=1)  # (B,)
                positions = torch.arange(inputs.shape[1], device=device)
                red.mask = positions[None, :] <= last[:, None]  # (B, T): the prompt's tokens
                logits = model(inputs)  # (B, T, V)
                wrong = (logits.argmax(-1) != labels) & answer
                correct.append((~wrong.any(dim=1)).cpu())
                first = logits[torch.arange(inputs.shape[0], device=device), last].float()  # (B, V)
                max_prob.append(torch.softmax(first, dim=-1).max(-1).values.double().cpu())
                prompt_len.append((last + 1).cpu())
        metrics = {s: {k: v.numpy() for k, v in red[s].scalars().items()} for s in names}  # type: ignore[union-attr]
    finally:
        model.train(was_training)
    return LastTokenRun(names, metrics, torch.cat(correct).numpy(), torch.cat(max_prob).numpy(), torch.cat(prompt_len).numpy())
