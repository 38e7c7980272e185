"""Add gamma * v to the residual stream during generation, through a scoped hook.

``with steering(model, vec, gamma): model.generate(...)`` adds gamma * v at ``vec.site`` to the
last position of every forward pass: the prompt's last token in the first pass, then each new
token as it is decoded (earlier positions sit in the KV cache, steered when they were new). The
hook is removed when the block exits, even on an exception (``taskloc.hooks.hooks``).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from ..hooks import hooks
from ..models import LanguageModel
from .vector import SteeringVector, check_layer


@contextlib.contextmanager
def steering(model: LanguageModel, vec: SteeringVector | torch.Tensor, gamma: float, layer: int | None = None) -> Iterator[None]:
    """vec: a SteeringVector, or a bare (D,) tensor with ``layer``."""
    if isinstance(vec, SteeringVector):
        vec.check_fits(model)
        vector, layer = vec.vector, vec.layer
    else:
        vector = vec
    if layer is None:
        raise ValueError("a bare vector needs its layer")
    check_layer(model, layer)
    cache: dict[tuple, torch.Tensor] = {}

    def add(x: torch.Tensor, name: str) -> torch.Tensor:  # x: (B, T, D)
        key = (x.device, x.dtype)
        if key not in cache:  # once per device/dtype, not per token
            cache[key] = (gamma * vector.double()).to(device=x.device, dtype=x.dtype)  # (D,)
        delta = cache[key]
        if x.shape[1] == 1:  # a decoding step: the only position is the last
            return x + delta
        out = x.clone()
        out[:, -1] += delta
        return out

    with hooks(model, {f"blocks.{layer}.hook_resid_post": add}):
        yield
