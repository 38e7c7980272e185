"""Masks that read the model: the task loss's gradient at the base (saliency) and a learned mask.

The learned mask follows the grafting objective of Panigrahi et al. 2023 ("Task-Specific Skill
Localization in Fine-tuned Language Models"): over the delta of a fine-tune, the weights

    theta(s) = base + sigmoid(s) * delta            (entrywise, s a real logit per entry)

are scored by the task's answer loss on its training pairs, and s alone is optimised (Adam) with
the model frozen. s starts at +init_logit inside a start mask and -init_logit outside, so the
optimisation begins at (a smoothed) graft of that mask: the magnitude top-k, as in the paper, or
the saliency top-k (``init``), which on small deltas where magnitude keeps nearly nothing lets a
short optimisation start from a graft that already reads the task loss. A penalty ``sparsity * sum(sigmoid(s)) / k``
prices every kept entry at ``sparsity / k`` of the loss: an entry rises only while its first-order
share of the loss reduction exceeds that price, and entries that do not move the loss (however
large their delta) sink. At the end the mask is binarised to exactly k entries: the top k of s.

Batches are drawn by a torch.Generator seeded with ``seed``, so on one machine the same inputs
give the same mask. The model's own parameters are never written to (not even their .grad):
every forward runs through torch.func.functional_call on tensors this module owns.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import torch
from torch.func import functional_call

from ..errors import ConfigError
from ..models import LanguageModel, codec_of, unique_weight_names
from ..train import answer_loss
from .masks import Mask, SelectOptions, top_k_scores

Pairs = Sequence[tuple[str, str]]


def task_loss(model: LanguageModel, params: Mapping[str, torch.Tensor], pairs: Pairs) -> torch.Tensor:
    """The answer-only loss of ``pairs`` under ``params`` (the model's state with some tensors
    replaced), computed without touching the model's own tensors."""
    full = model.state_dict()
    # frozen (no grad reaches the model); one name per storage, so a tied alias (GPT-2's lm_head)
    # follows the replaced tensor instead of contradicting it
    state = {name: full[name].detach() for name in unique_weight_names(full)}
    state.update(params)
    inputs, labels, answer = (t.to(model.device) for t in codec_of(model).encode_batch(list(pairs)))

    def forward(idx: torch.Tensor) -> torch.Tensor:
        return functional_call(model, state, (idx,))  # type: ignore[arg-type]

    return answer_loss(forward, inputs, labels, answer)  # type: ignore[arg-type]


def _batches(pairs: Pairs, batch_size: int, generator: torch.Generator) -> Iterator[list[tuple[str, str]]]:
    """Endless batches: each epoch a fresh permutation of the pairs, cut into batch_size pieces."""
    while True:
        order = torch.randperm(len(pairs), generator=generator).tolist()
        for start in range(0, len(order), batch_size):
            yield [pairs[i] for i in order[start : start + batch_size]]


def loss_gradient(model: LanguageModel, base: Mapping[str, torch.Tensor], pairs: Pairs, *, batch_size: int = 32) -> dict[str, torch.Tensor]:
    """d(answer loss)/d(theta) at theta = base for every tensor of ``base``, over all ``pairs``
    (each batch weighted by its share of the pairs, so the result is the full-data gradient of the
    per-example mean). Returns CPU float32 tensors shaped like ``base``."""
    model.eval()
    device = model.device
    params = {name: t.detach().to(device, torch.float32).requires_grad_(True) for name, t in base.items()}
    total = {name: torch.zeros_like(p) for name, p in params.items()}
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        grads = torch.autograd.grad(task_loss(model, params, chunk), list(params.values()), allow_unused=True)
        for acc, g in zip(total.values(), grads):
            if g is not None:
                acc.add_(g, alpha=len(chunk) / len(pairs))
    return {name: g.cpu() for name, g in total.items()}


def select_start(base: Mapping[str, torch.Tensor], deltas: Mapping[str, torch.Tensor], k: int, options) -> Mask:
    """The k entries the optimisation starts from: the magnitude top k (the paper's start) or the
    saliency top k (a start that already reads the task loss)."""
    if options.init == "magnitude":
        return top_k_scores(deltas, k)
    if options.init != "saliency":
        raise ConfigError(f"learned-mask init={options.init!r}: choose 'magnitude' or 'saliency'.")
    grads = options.gradient or loss_gradient(options.model, base, options.data, batch_size=options.batch_size)
    return top_k_scores({name: (d * grads[name]).abs() for name, d in deltas.items()}, k)


def learn_mask(model: LanguageModel, base: Mapping[str, torch.Tensor], deltas: Mapping[str, torch.Tensor], k: int,
               options: SelectOptions) -> Mask:
    """Exactly k entries of ``deltas``: the top k of the logits s after ``options.steps`` Adam
    steps on task loss + sparsity * sum(sigmoid(s)) / k (see the module docstring)."""
    if k == 0:
        return {name: torch.zeros_like(d, dtype=torch.bool) for name, d in deltas.items()}
    model.eval()
    device = model.device
    start = select_start(base, deltas, k, options)
    base_d = {name: base[name].to(device, torch.float32) for name in deltas}
    delta_d = {name: d.to(device, torch.float32) for name, d in deltas.items()}
    logits = {name: torch.where(start[name], options.init_logit, -options.init_logit).to(device).requires_grad_(True)
              for name in deltas}
    opt = torch.optim.Adam(list(logits.values()), lr=options.lr)
    generator = torch.Generator().manual_seed(options.seed)
    batches = _batches(options.data, options.batch_size, generator)  # type: ignore[arg-type]
    price = options.sparsity / k  # loss per fully kept entry
    for _ in range(options.steps):
        gates = {name: torch.sigmoid(s) for name, s in logits.items()}  # (shape of each tensor), in (0, 1)
        params = {name: base_d[name] + gates[name] * delta_d[name] for name in deltas}
        kept = sum(g.sum() for g in gates.values())  # soft count of kept entries
        loss = task_loss(model, params, next(batches)) + price * kept
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    # the top k of s, shifted to be non-negative (a monotone map) for the exact global top-k
    low = min(float(s.detach().min()) for s in logits.values())
    return top_k_scores({name: (s.detach() - low).cpu() for name, s in logits.items()}, k)
