"""Delta statistics on in-memory state dicts (small models: the studies' TinyLM fine-tunes).

The streaming tools in this package handle checkpoints too big for memory; these functions are
the plain reference computations and what studies use when everything already fits.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .names import kind_of, layer_of

StateDict = dict[str, torch.Tensor]


def _flat_abs(deltas: StateDict) -> torch.Tensor:
    return torch.cat([d.detach().float().abs().flatten() for d in deltas.values()])  # (N,)


def global_topk_mask(deltas: StateDict, fraction: float) -> dict[str, torch.Tensor]:
    """Exactly round(fraction * N) entries with the largest |delta| over all tensors. Ties are
    broken deterministically by position in (tensor order, flat index) order: earlier wins."""
    flat = _flat_abs(deltas)
    k = int(round(fraction * flat.numel()))
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    if k > 0:
        order = torch.argsort(flat, descending=True, stable=True)  # stable: ties keep index order
        chosen[order[:k]] = True
    return _split(chosen, deltas)


def random_mask(shapes: dict[str, torch.Size], fraction: float, seed: int) -> dict[str, torch.Tensor]:
    """Exactly round(fraction * N) entries chosen uniformly at random over all tensors."""
    sizes = [int(torch.Size(s).numel()) for s in shapes.values()]
    total = sum(sizes)
    k = int(round(fraction * total))
    chosen = torch.zeros(total, dtype=torch.bool)
    if k > 0:
        gen = torch.Generator().manual_seed(seed)
        chosen[torch.randperm(total, generator=gen)[:k]] = True
    out, start = {}, 0
    for (name, shape), n in zip(shapes.items(), sizes):
        out[name] = chosen[start : start + n].view(shape)
        start += n
    return out


def _split(flat: torch.Tensor, like: StateDict) -> dict[str, torch.Tensor]:
    out, start = {}, 0
    for name, t in like.items():
        out[name] = flat[start : start + t.numel()].view(t.shape)
        start += t.numel()
    return out


def concentration_curve(deltas: StateDict, fractions: Sequence[float]) -> dict[str, list[float]]:
    """Share of sum(delta^2) ("energy") and of sum|delta| ("l1") held by the top-k fraction of
    entries by |delta|, over all tensors together, for each k in ``fractions``."""
    flat = _flat_abs(deltas).double()
    ordered = torch.sort(flat, descending=True).values
    l1 = torch.cumsum(ordered, 0)
    energy = torch.cumsum(ordered.square(), 0)
    n = flat.numel()
    out: dict[str, list[float]] = {"energy": [], "l1": []}
    for f in fractions:
        k = min(n, max(0, int(round(f * n))))
        out["energy"].append(float(energy[k - 1] / energy[-1]) if k and energy[-1] > 0 else 0.0)
        out["l1"].append(float(l1[k - 1] / l1[-1]) if k and l1[-1] > 0 else 0.0)
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
