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
