"""Random masks and per-module profiles of in-memory deltas (the studies' TinyLM fine-tunes).
Top-k masks and concentration curves come from the exact streaming code in ``deltas.api``."""
from __future__ import annotations

import torch

from .profile import TensorShare, group_label, profile_groups

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


def tensor_profile(deltas: StateDict) -> dict[str, dict[str, dict[str, float]]]:
    """Share of delta energy and of parameter count per module kind and per layer, grouped as the
    streaming report groups them (profile.profile_groups): {"kind"|"layer": {label: shares}}."""
    shares = [TensorShare(name, d.numel(), float(d.float().square().sum())) for name, d in deltas.items()]
    return {
        axis: {group_label(axis, row[axis]): {"energy_share": row["energy_share"], "param_share": row["param_share"]}
               for row in rows}
        for axis, rows in profile_groups(shares).items()
    }
