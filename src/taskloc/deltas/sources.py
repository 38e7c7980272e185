"""Delta sources: where the streaming analysis gets one tensor's delta at a time.

``pair_source(base, tuned)`` checks, from headers only, that the two checkpoints hold the same
tensors with the same shapes and dtypes (or, for a LoRA adapter, that every module it changes
exists in the base with the right shape), before any data is read. ``DictSource`` wraps deltas
already in memory. Every source yields ``Loaded`` items: the flat float32 delta plus the base and
tuned tensors it came from (for relative norms, NaN blame and patch values).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

import numpy as np
import torch

from ..errors import CheckpointError
from ..io.checkpoint import Checkpoint, first_names
from ..io.lora import LoraAdapter
from .scratch import Scratch


@dataclass
class Loaded:
    delta: Optional[torch.Tensor]  # (n,) float32 on the compute device; None when identically zero
    base: Optional[torch.Tensor]  # (n,) as stored, CPU; None when the source has no base
    tuned: Optional[torch.Tensor]  # (n,) as stored, CPU; None when equal to the base

class DeltaSource:
    """Base class. ``names`` are the floating-point tensors analysed, in the base's order."""

    base_label = "base"
    tuned_label = "tuned"
    base: Optional[Checkpoint] = None

    def __init__(self) -> None:
        self.names: list[str] = []
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, torch.dtype] = {}
        self.skipped: list[str] = []  # non-float tensors, not analysed

    def numel(self, name: str) -> int:
        n = 1
        for s in self.shapes[name]:
            n *= s
        return n

    def load(self, name: str, scratch: Scratch) -> Loaded:
        """One tensor's delta, computed on ``scratch.device`` into scratch buffers (valid until
        the next load)."""
        raise NotImplementedError

    def lora_rank(self, name: str) -> Optional[int]:
        return None

    def differing_skipped(self) -> list[str]:
        """Non-float tensors whose values differ (reported; a patch cannot carry them)."""
        return []

    def raise_nonfinite(self, name: str, item: Loaded) -> None:
        """The delta of ``name`` holds NaN/Inf: say which checkpoint is to blame."""
        for label, tensor, where in ((self.base_label, item.base, "base"), (self.tuned_label, item.tuned, "tuned")):
            if tensor is not None and not bool(torch.isfinite(tensor).all()):
                raise CheckpointError(
                    f"tensor {name!r} holds NaN or Inf in the {where} checkpoint {label}; the weights are broken "
                    "(diverged training or a corrupt file): fix or re-save them."
                )
        raise CheckpointError(
            f"the delta of tensor {name!r} overflows float32 (|tuned - base| > 3.4e38) between {self.base_label} "
            f"and {self.tuned_label}; these checkpoints are not a fine-tune of one another."
        )


def _flat_delta(base: torch.Tensor, tuned: torch.Tensor, scratch: Scratch) -> torch.Tensor:
    """(n,) float32 tuned - base in a scratch buffer. bf16/fp16 inputs are widened first, so the
    difference of their values is exact (a subtraction in bf16 would round it)."""
    base, tuned = base.reshape(-1).to(scratch.device), tuned.reshape(-1).to(scratch.device)
    delta = scratch.get("delta", base.numel(), torch.float32)
    if base.dtype == torch.float32 and delta.device.type == "cpu":
        np.subtract(tuned.numpy(), base.numpy(), out=delta.numpy())  # see radix.abs_bits on numpy
        return delta
    if base.dtype == torch.float32:
        return torch.sub(tuned, base, out=delta)
    delta.copy_(tuned)
    return delta.sub_(base)


class CheckpointPair(DeltaSource):
    """Two full checkpoints of one architecture."""

    def __init__(self, base: Checkpoint, tuned: Checkpoint) -> None:
        super().__init__()
        self.base, self.tuned = base, tuned
        self.base_label, self.tuned_label = str(base.path), str(tuned.path)
        base_names, tuned_names = base.names(), tuned.names()
        base_set, tuned_set = set(base_names), set(tuned_names)
        missing = [n for n in base_names if n not in tuned_set]
        extra = [n for n in tuned_names if n not in base_set]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"lacks {len(missing)} tensors of the base ({first_names(missing)})")
            if extra:
                parts.append(f"has {len(extra)} tensors the base lacks ({first_names(extra)})")
            raise CheckpointError(
                f"the tuned checkpoint {tuned.path} {' and '.join(parts)}; compare two checkpoints of the same architecture."
            )
        for name in base_names:
            if base.shape(name) != tuned.shape(name):
                raise CheckpointError(
                    f"tensor {name!r} has shape {base.shape(name)} in the base but {tuned.shape(name)} in the tuned "
                    "checkpoint; compare two checkpoints of the same architecture."
                )
            if base.dtype(name) != tuned.dtype(name):
                raise CheckpointError(
                    f"tensor {name!r} is {_dt(base.dtype(name))} in the base but {_dt(tuned.dtype(name))} in the tuned "
                    "checkpoint; save both in one dtype before comparing."
                )
            self.shapes[name], self.dtypes[name] = base.shape(name), base.dtype(name)
            (self.names if base.dtype(name).is_floating_point else self.skipped).append(name)

    def load(self, name: str, scratch: Scratch) -> Loaded:
        n, dtype = self.numel(name), self.dtypes[name]
        cpu = torch.device("cpu")
        base = self.base.read_flat(name, scratch.get("base", n, dtype, cpu))  # type: ignore[union-attr]
        tuned = self.tuned.read_flat(name, scratch.get("tuned", n, dtype, cpu))  # type: ignore[union-attr]
        return Loaded(_flat_delta(base, tuned, scratch), base, tuned)

    def differing_skipped(self) -> list[str]:
        return [n for n in self.skipped if not torch.equal(self.base.get(n), self.tuned.get(n))]  # type: ignore[union-attr]


class LoraPair(DeltaSource):
    """A base checkpoint and a LoRA adapter: tuned = what merge_and_unload would write."""

    def __init__(self, base: Checkpoint, adapter: LoraAdapter) -> None:
        super().__init__()
        self.base, self.adapter = base, adapter
        self.base_label, self.tuned_label = str(base.path), str(adapter.path)
        base_names = base.names()
        self.target: dict[str, str] = {}  # base name -> adapter name
        for a_name in adapter.names():
            b_name = _match_name(a_name, base_names, adapter, base)
            if adapter.shape(a_name) != base.shape(b_name):
                raise CheckpointError(
                    f"tensor {b_name!r} has shape {base.shape(b_name)} in the base but the adapter {adapter.path} "
                    f"changes it with shape {adapter.shape(a_name)}; the adapter was trained on another model."
                )
            if not base.dtype(b_name).is_floating_point:
                raise CheckpointError(f"the adapter changes tensor {b_name!r}, which is {_dt(base.dtype(b_name))} in the base.")
            self.target[b_name] = a_name
        for name in base_names:
            self.shapes[name], self.dtypes[name] = base.shape(name), base.dtype(name)
            (self.names if base.dtype(name).is_floating_point else self.skipped).append(name)

    def load(self, name: str, scratch: Scratch) -> Loaded:
        base = self.base.read_flat(name, scratch.get("base", self.numel(name), self.dtypes[name], torch.device("cpu")))  # type: ignore[union-attr]
        if name not in self.target:
            return Loaded(None, base, None)
        tuned = self.adapter.merged(self.target[name], base.view(self.shapes[name])).reshape(-1)
        return Loaded(_flat_delta(base, tuned, scratch), base, tuned)

    def lora_rank(self, name: str) -> Optional[int]:
        return self.adapter.rank(self.target[name]) if name in self.target else None


def _match_name(a_name: str, base_names: list[str], adapter: LoraAdapter, base: Checkpoint) -> str:
    """The base tensor an adapter name refers to: the same name, or the one base name that equals
    it after dropping leading components from either side (GPT-2 checkpoints saved without the
    ``transformer.`` prefix, for example)."""
    if a_name in set(base_names):
        return a_name
    hits = [b for b in base_names if b.endswith("." + a_name) or a_name.endswith("." + b)]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise CheckpointError(
            f"the adapter {adapter.path} changes {a_name!r}, which the base {base.path} does not hold; "
            "the adapter was trained on another model."
        )
    raise CheckpointError(f"the adapter's {a_name!r} could be any of {first_names(hits)} in the base; rename to disambiguate.")


class DictSource(DeltaSource):
    """Deltas already in memory (name -> tensor), e.g. tuned_sd[n] - base_sd[n] from a study."""

    def __init__(self, deltas: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        self.deltas = deltas
        self.base_label = self.tuned_label = "<memory>"
        for name, t in deltas.items():
            self.shapes[name], self.dtypes[name] = tuple(t.shape), t.dtype
            (self.names if t.dtype.is_floating_point else self.skipped).append(name)

    def load(self, name: str, scratch: Scratch) -> Loaded:
        delta = scratch.get("delta", self.numel(name), torch.float32)
        return Loaded(delta.copy_(self.deltas[name].detach().reshape(-1)), None, None)

    def raise_nonfinite(self, name: str, item: Loaded) -> None:
        raise CheckpointError(f"delta tensor {name!r} holds NaN or Inf; check the weights it was computed from.")


def pair_source(base: Checkpoint, tuned: Checkpoint) -> DeltaSource:
    if base.is_delta:
        raise CheckpointError(f"the base {base.path} is a LoRA adapter; give the model it was trained on as the base.")
    if isinstance(tuned, LoraAdapter):
        return LoraPair(base, tuned)
    return CheckpointPair(base, tuned)


def _dt(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")
