"""Random masks and per-module profiles of in-memory deltas (the studies' TinyLM fine-tunes).
Top-k masks and concentration curves come from the exact streaming code in ``deltas.api``."""
from __future__ import annotations

import torch

from .names import kind_of, layer_of

StateDict = dict[str, torch.Tensor]


def random_mask(shapes: dict[str, torch.Size], fraction: float, seed: int) -> dict[str, torch.Tensor]:
    """Exactly round(fraction * N) entries chosen uniformly at random over all tensors."""
    sizes = [int(torch.Size(s).numel()) for s in shapes.values()]
    total = sum(sizes)
    k = round(fraction * total)
    chosen = torch.zeros(total, dtype=torch.bool)
    if k > 0:
        gen = torch.Generator().manual_seed(seed)
        chosen[torch.randperm(total, generator=gen)[:k]] = True
    out, start = {}, 0
    for (name, shape), n in zip(shapes.items(), sizes):
        out[name] = chosen[start : start + n].view(shape)
        start += n
    return out


def tensor_profile(deltas: StateDict) -> dict[str, dict]:
    """Share of delta energy and of parameter count per module kind and per layer."""
    total_energy = sum(float(d.float().square().sum()) for d in deltas.values()) or 1.0
    total_params = sum(d.numel() for d in deltas.values())
    out: dict[str, dict] = {"kind": {}, "layer": {}}
    for name, d in deltas.items():
        layer = layer_of(name)
        for axis, key in (("kind", kind_of(name)), ("layer", "outside blocks" if layer is None else f"block {layer}")):
            slot = out[axis].setdefault(key, {"energy_share": 0.0, "param_share": 0.0})
            slot["energy_share"] += float(d.float().square().sum()) / total_energy
            slot["param_share"] += d.numel() / total_params
    return out
