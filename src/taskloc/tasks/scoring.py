"""Accuracy per task and level by exact match.

Greedy decoding reproduces the target exactly iff, at every answer position, the argmax of the
next-token distribution given the *gold* prefix is the gold token (EOS included). So exact match
is computed from one teacher-forced forward pass per batch instead of token-by-token decoding;
tests check it against the model's greedy ``generate``.
"""
from __future__ import annotations

import torch

from ..models.codec import codec_of
from ..models.protocol import LanguageModel
from .base import Example, Task
from .mixture import eval_examples

LOGITS_BUDGET = 1 << 27  # logit entries per forward pass in evaluation (512 MB in float32)


@torch.no_grad()
def exact_match(model: LanguageModel, examples: list[Example], batch_size: int = 512) -> torch.Tensor:
    """Bool tensor (N,): does greedy decoding reproduce each example's target?"""
    device = model.device
    codec = codec_of(model)
    out = []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        inputs, labels, mask = (t.to(device) for t in codec.encode_batch([(e.prompt, e.target) for e in chunk]))
        # rows per forward pass so the (rows, T, V) logits stay near LOGITS_BUDGET entries: a real
        # model's 150k-token vocabulary would otherwise need gigabytes for one batch
        rows = max(1, LOGITS_BUDGET // (inputs.shape[1] * codec.vocab_size))
        for r in range(0, len(chunk), rows):
            pred = model(inputs[r:r + rows]).argmax(-1)  # (rows, T)
            wrong = (pred != labels[r:r + rows]) & mask[r:r + rows]
            out.append(~wrong.any(dim=1))
    return torch.cat(out).cpu()


def accuracy_table(model: LanguageModel, tasks: list[Task], levels: list[int], n: int, seed: int) -> dict[str, dict[str, list[int]]]:
    """{task: {level: [correct, total]}} on fixed evaluation sets."""
    table: dict[str, dict[str, list[int]]] = {}
    for task in tasks:
        row = {}
        for level in levels:
            if level in task.levels:
                hits = exact_match(model, eval_examples(task, level, n, seed))
                row[str(level)] = [int(hits.sum()), len(hits)]
        table[task.name] = row
    return table


@torch.no_grad()
def skill_scores(model: torch.nn.Module, examples: list[Example], batch_size: int = 512) -> dict[str, torch.Tensor]:
    """Three measures of skill per example from one teacher-forced pass, each (N,) float64:
    ``exact`` (1.0 when greedy decoding reproduces the whole target), ``token`` (share of answer
    tokens, EOS included, whose argmax is the gold token) and ``loss`` (mean cross-entropy over
    the answer tokens). Exact match is all-or-nothing over several tokens, so a partial skill shows
    in the other two first."""
    device = next(model.parameters()).device
    codec = codec_of(model)
    exact, token, loss = [], [], []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        inputs, labels, mask = (t.to(device) for t in codec.encode_batch([(e.prompt, e.target) for e in chunk]))
        rows = max(1, LOGITS_BUDGET // (inputs.shape[1] * codec.vocab_size))
        for r in range(0, len(chunk), rows):
            logits = model(inputs[r:r + rows]).double()  # (rows, T, V)
            gold, answer = labels[r:r + rows], mask[r:r + rows]  # (rows, T)
            right = (logits.argmax(-1) == gold) & answer
            n = answer.sum(1).clamp(min=1)  # (rows,)
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), gold, reduction="none") * answer  # (rows, T)
            exact.append((right.sum(1) == answer.sum(1)).double())
            token.append(right.sum(1).double() / n)
            loss.append(nll.sum(1) / n)
    return {"exact": torch.cat(exact).cpu(), "token": torch.cat(token).cpu(), "loss": torch.cat(loss).cpu()}
