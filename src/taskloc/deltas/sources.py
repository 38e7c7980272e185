"""Delta sources: where the streaming analysis gets one tensor's delta at a time.

``pair_source(base, tuned)`` checks, from headers only, that the two checkpoints hold the same
tensors with the same shapes and dtypes (or, for a LoRA adapter, that every module it changes
exists in the base with the right shape), before any data is read. ``DictSource`` wraps deltas
already in memory. Every source yields ``Loaded`` items: the base and tuned tensors as stored
(mapped from their files where possible, so nothing is copied up front) from which the float32
delta is computed block by block, or the delta itself for in-memory sources.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import CheckpointError
from ..io.checkpoint import Checkpoint, first_names
from ..io.lora import LoraAdapter

# float dtypes whose deltas are computed in numpy (no threads: on a busy machine torch's threaded
# elementwise kernels can stall for milliseconds per call); bf16 travels as its int16 bit pattern
_NUMPY_DTYPES = {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: np.int16}


def _numpy_view(t: torch.Tensor) -> np.ndarray:
    return (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy()


def _widen(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """float32 values of a numpy block (float32 as is; bf16 bit patterns shifted into the high half
    of a float32, which is exact; fp16 converted exactly), into ``out`` unless already float32."""
    if x.dtype == np.float32:
        return x
    if x.dtype == np.int16:  # bf16
        np.left_shift(x, 16, out=out.view(np.int32), dtype=np.int32)
        return out
    np.copyto(out, x)
    return out


@dataclass
class Loaded:
    """One tensor pair. Tensors are flat CPU tensors for reading only (they may map a file)."""

    base: torch.Tensor | None  # (n,) as stored; None when the source has no base
    tuned: torch.Tensor | None  # (n,) as stored; None when equal to the base
    given: torch.Tensor | None = None  # (n,) the delta itself, for sources that hold deltas

    def __post_init__(self) -> None:
        self._np = None  # numpy views (tuned, base) of float32/fp16/bf16 pairs
        if self.given is None and self.tuned is not None and self.base is not None and self.tuned.dtype in _NUMPY_DTYPES:
            self._np = (_numpy_view(self.tuned), _numpy_view(self.base))
        self._tmp = np.zeros(0, np.float32)

    @property
    def zero(self) -> bool:
        """Identically zero (an untouched tensor)."""
        return self.given is None and self.tuned is None

    @property
    def numel(self) -> int:
        held = self.given if self.given is not None else self.base
        return 0 if held is None else held.numel()

    def float32_pair(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(tuned, base) as flat float32 numpy arrays when both are float32 (the compiled sweep
        reads them in place), else None."""
        if self._np is not None and self._np[0].dtype == np.float32:
            return self._np
        return None

    def _block_tmp(self, m: int) -> np.ndarray:
        if len(self._tmp) < m:
            self._tmp = np.empty(m, np.float32)
        return self._tmp[:m]

    def delta_into(self, start: int, stop: int, out: torch.Tensor) -> torch.Tensor:
        """Write the float32 delta of entries [start, stop) into ``out`` (stop - start entries, any
        device). bf16/fp16 inputs are widened first, so the difference of their values is exact (a
        subtraction in bf16 would round it)."""
        if self.given is not None:
            return out.copy_(self.given[start:stop])
        if self.tuned is None:
            return out.zero_()
        if self._np is not None and out.device.type == "cpu":
            tuned, base = self._np
            o = out.numpy()
            if tuned.dtype == np.float32:  # the common case, without a call per widening
                np.subtract(tuned[start:stop], base[start:stop], out=o)
            else:
                np.subtract(_widen(tuned[start:stop], o), _widen(base[start:stop], self._block_tmp(stop - start)), out=o)
            return out
        out.copy_(self.tuned[start:stop])
        return out.sub_(self.base[start:stop].to(out.device))  # type: ignore[union-attr]

    def base_squares(self, start: int, stop: int) -> float | None:
        """sum base^2 over [start, stop) from float32 products (None when not a numpy pair)."""
        if self._np is None:
            return None
        b = self._np[1][start:stop]
        if b.dtype != np.float32:
            b = _widen(b, self._block_tmp(stop - start))
        return float(np.dot(b, b))

    @property
    def delta(self) -> torch.Tensor | None:
        """The whole float32 delta (a new CPU tensor), None when identically zero. For small
        tensors and checks; the streaming passes use ``delta_into`` on blocks instead."""
        if self.zero:
            return None
        return self.delta_into(0, self.numel, torch.empty(self.numel, dtype=torch.float32))

    def sample(self, stride: int) -> np.ndarray:
        """float32 delta of every ``stride``-th entry (from entry 0)."""
        if self.zero:
            return np.zeros(-(-self.numel // stride), dtype=np.float32)
        if self.given is not None:
            return self.given[::stride].float().numpy()
        if self._np is not None:
            tuned, base = (x[::stride] for x in self._np)
            return np.subtract(_widen(tuned, np.empty(len(tuned), np.float32)), _widen(base, np.empty(len(base), np.float32)))
        return (self.tuned[::stride].float() - self.base[::stride].float()).numpy()  # type: ignore[index,union-attr]


class DeltaSource:
    """Base class. ``names`` are the floating-point tensors analysed, in the base's order."""

    base_label = "base"
    tuned_label = "tuned"
    base: Checkpoint | None = None

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

    def load(self, name: str) -> Loaded:
        """One tensor pair, without copying its data where the checkpoint can be mapped."""
        raise NotImplementedError

    def prefetch(self, name: str) -> None:
        """Hint that ``name`` is loaded next (lets a cold file be read ahead)."""

    def lora_rank(self, name: str) -> int | None:
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

    def load(self, name: str) -> Loaded:
        return Loaded(self.base.view_flat(name), self.tuned.view_flat(name))  # type: ignore[union-attr]

    def prefetch(self, name: str) -> None:
        self.base.prefetch(name)  # type: ignore[union-attr]
        self.tuned.prefetch(name)

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

    def load(self, name: str) -> Loaded:
        base = self.base.view_flat(name)  # type: ignore[union-attr]
        if name not in self.target:
            return Loaded(base, None)
        tuned = self.adapter.merged(self.target[name], base.view(self.shapes[name])).reshape(-1)
        return Loaded(base, tuned)

    def prefetch(self, name: str) -> None:
        self.base.prefetch(name)  # type: ignore[union-attr]

    def lora_rank(self, name: str) -> int | None:
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

    def load(self, name: str) -> Loaded:
        return Loaded(None, None, self.deltas[name].detach().reshape(-1).cpu())

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
