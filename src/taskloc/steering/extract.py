"""Extract a steering vector from (prompt, positive completion, negative completion) pairs.

Each text (prompt + completion) runs once through the model; the residual stream at the layer's
site (``blocks.{L}.hook_resid_post``) is read at the last token ("last", the paper's choice) or
averaged over the completion's tokens ("mean"). The vector is the mean over pairs of the
positive-minus-negative difference; "pca" instead takes the top principal direction of the
last-token differences, signed and scaled to agree with their mean (so gamma keeps its units).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from ..errors import DataError
from ..hooks import capture
from ..models import LanguageModel
from .vector import SteeringVector, check_layer, model_fingerprint, site_of

METHODS = ("last", "mean", "pca")
Reduce = Literal["last", "mean"]


@dataclass(frozen=True)
class Pair:
    prompt: str
    positive: str  # the completion steering should move toward (e.g. the concise solution)
    negative: str  # the completion it should move away from (e.g. the verbose one)


@torch.no_grad()
def pair_states(model: LanguageModel, texts: Sequence[tuple[str, str]], layer: int, reduce: Reduce = "last",
                batch_size: int = 64) -> torch.Tensor:
    """Residual stream at ``site_of(layer)`` for each (prompt, completion): (N, D) float32 on the
    CPU; at the completion's last token, or averaged over its tokens."""
    check_layer(model, layer)
    site = site_of(layer)
    out = []
    for i in range(0, len(texts), batch_size):
        chunk = list(texts[i:i + batch_size])
        # inputs (B, T) = prompt + completion ids (right-padded); mask (B, T) is True from the
        # prompt's last token through the completion's last: its first True is the prompt's.
        inputs, _, mask = model.codec.encode_batch(chunk)
        with capture(model, [site]) as store:
            model(inputs.to(model.device))
        h = store[site].float().cpu()  # (B, T, D)
        completion = mask.clone()
        completion[torch.arange(len(chunk)), mask.float().argmax(1)] = False  # drop the prompt's last token
        if reduce == "last":
            last = mask.shape[1] - 1 - mask.flip(1).float().argmax(1)  # (B,) index of the last True
            out.append(h[torch.arange(len(chunk)), last])
        else:
            w = completion.float()  # (B, T)
            out.append((h * w[..., None]).sum(1) / w.sum(1, keepdim=True))
    return torch.cat(out)


def check_pairs(pairs: Sequence[Pair], where: str = "pairs") -> None:
    if len(pairs) < 2:
        raise DataError(f"{where}: {len(pairs)} pair(s); a mean difference needs at least 2 pairs.")
    for i, p in enumerate(pairs):
        if not (p.prompt and p.positive and p.negative):
            raise DataError(f"{where}: pair {i + 1} has an empty prompt, positive or negative text; every field must be non-empty.")


def extract_vector(model: LanguageModel, pairs: Sequence[Pair], layer: int, method: str = "last",
                   fingerprint: str | None = None) -> SteeringVector:
    """The steering vector of ``pairs`` at ``layer`` (see the module docstring for ``method``).
    ``fingerprint``: the model's, when the caller has it already (it reads every tensor)."""
    if method not in METHODS:
        raise DataError(f"unknown extraction method {method!r}; choose one of {', '.join(METHODS)}.")
    check_layer(model, layer)
    check_pairs(pairs)
    reduce: Reduce = "mean" if method == "mean" else "last"
    pos = pair_states(model, [(p.prompt, p.positive) for p in pairs], layer, reduce)  # (N, D)
    neg = pair_states(model, [(p.prompt, p.negative) for p in pairs], layer, reduce)
    diffs = pos.double() - neg.double()  # (N, D)
    mean = diffs.mean(0)
    if method == "pca":
        # top right singular vector of the (uncentred) differences: the direction they share
        u = torch.linalg.svd(diffs, full_matrices=False).Vh[0]  # (D,)
        u = u if float(u @ mean) >= 0 else -u
        vector = u * float((diffs @ u).mean())  # scaled to the mean difference's projection
    else:
        vector = mean
    return SteeringVector(vector.float(), layer, len(pairs), method,
                          fingerprint if fingerprint is not None else model_fingerprint(model))
