"""Sparse patches: the global top-k of a delta as a file, and grafting it onto a base.

Format (safetensors, version 1). For each tensor with selected entries:
    "<name>:indices"  int32 (int64 when the tensor has 2^31 entries or more), flat row-major
                      indices, ascending
    "<name>:values"   the TUNED model's entries at those indices, in the checkpoint's own dtype
String metadata: taskloc_patch="1", base_fingerprint, tuned_fingerprint, k, n, fraction, top (as
the user wrote it), selection (the rule), threshold, values="tuned", tensors (JSON list of
[name, shape, dtype] for every analysed tensor), base_path, tuned_path.

Why tuned values rather than float32 deltas: base + (tuned - base) is not always tuned again in
floating point (e.g. base = 1, tuned = 1e-10 in float32), and a graft of k = 100% must reproduce
the tuned model bit for bit. The delta is recovered as values - base against the fingerprinted
base. ``graft`` writes base + scale * (values - base): values themselves at scale 1, the base at
scale 0, float32 arithmetic in between.
"""
from __future__ import annotations

import json
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError
from ..io.atomic import atomic_path
from ..io.checkpoint import Checkpoint, SafetensorsCheckpoint
from ..io.fingerprint import fingerprint
from ..io.safetensors_format import DTYPE_NAMES, DTYPES, SafetensorsStreamWriter
from ..io.writers import check_output, write_like
from ..progress import progress_bar
from .selection import SelectionSink, choose_candidates
from .sources import Loaded

FORMAT_VERSION = "1"
INDEX_LIMIT = 2**31 - 1


def index_dtype(numel: int) -> torch.dtype:
    return torch.int32 if numel <= INDEX_LIMIT else torch.int64


# numpy has no bfloat16: values travel through the spool as same-sized integers (bit patterns)
_RAW = {1: (torch.uint8, np.uint8), 2: (torch.int16, np.int16), 4: (torch.int32, np.int32), 8: (torch.int64, np.int64)}


def raw_view(t: torch.Tensor) -> np.ndarray:
    """The entries of a CPU tensor as integers of the same size (bit patterns, no copy)."""
    return t.view(_RAW[t.element_size()][0]).numpy()


def from_raw(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).view(dtype)


class PatchSink(SelectionSink):
    """Collects the selection into a spool beside the output (definite entries on disk, candidates
    in memory with the tuned values they would carry), then writes the patch atomically."""

    def __init__(self, out: Path, shapes: dict[str, tuple[int, ...]], dtypes: dict[str, torch.dtype], order: list[str]) -> None:
        self.out = Path(out)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.shapes, self.dtypes, self.order = shapes, dtypes, order
        self._spool = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", suffix=".spool", dir=self.out.parent))
        self._idx = open(self._spool / "indices.bin", "wb")
        self._val = open(self._spool / "values.bin", "wb")
        self._segments: dict[str, list[tuple[int, int, int]]] = {}  # name -> [(idx byte offset, value byte offset, count)]
        self._candidates: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # name -> (idx, bits, raw values)
        self._chosen: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    @staticmethod
    def _values(item: Loaded, idx: np.ndarray) -> np.ndarray:
        source = item.tuned if item.tuned is not None else item.base
        if source is None:
            raise ValueError("this delta source has no tuned values; patches need checkpoints")
        return raw_view(source)[idx]

    def definite(self, name: str, idx: torch.Tensor, item: Loaded) -> None:
        if not idx.numel():
            return
        idx_np = idx.numpy().astype(np.int64, copy=False)
        self._segments.setdefault(name, []).append((self._idx.tell(), self._val.tell(), len(idx_np)))
        idx_np.tofile(self._idx)
        self._values(item, idx_np).tofile(self._val)

    def candidates(self, name: str, idx: torch.Tensor, bits: np.ndarray, item: Loaded) -> None:
        if idx.numel():
            idx_np = idx.numpy().astype(np.int64, copy=False)
            self._candidates[name] = (idx_np, bits, self._values(item, idx_np))

    def resolve(self, t_bits: int, quotas: dict[str, int]) -> None:
        for name, (idx, bits, values) in self._candidates.items():
            keep = choose_candidates(bits, t_bits, quotas.get(name, 0))
            if keep.any():
                self._chosen[name] = (idx[keep], values[keep])
        self._candidates.clear()

    def discard(self) -> None:
        self._candidates.clear()

    def _entries(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """All selected (indices ascending, raw values) of one tensor: spool segments and chosen candidates."""
        raw_dtype = _RAW[self.dtypes[name].itemsize][1]
        idx_parts, val_parts = [], []
        for idx_off, val_off, count in self._segments.get(name, []):
            idx_parts.append(np.fromfile(self._spool / "indices.bin", dtype=np.int64, count=count, offset=idx_off))
            val_parts.append(np.fromfile(self._spool / "values.bin", dtype=raw_dtype, count=count, offset=val_off))
        if name in self._chosen:
            idx_parts.append(self._chosen[name][0])
            val_parts.append(self._chosen[name][1])
        idx, values = np.concatenate(idx_parts), np.concatenate(val_parts)
        if len(idx_parts) > 1:  # ascending runs (spool segments, chosen candidates): a stable sort merges them
            order = np.argsort(idx, kind="stable")
            idx, values = idx[order], values[order]
        return idx, values

    def write(self, metadata: dict[str, str]) -> Path:
        self._idx.close()
        self._val.close()
        names = [n for n in self.order if n in self._segments or n in self._chosen]
        counts = {n: sum(c for _, _, c in self._segments.get(n, [])) + (len(self._chosen[n][0]) if n in self._chosen else 0)
                  for n in names}
        specs = []
        for n in names:
            specs.append((f"{n}:indices", index_dtype(math.prod(self.shapes[n])), (counts[n],)))
            specs.append((f"{n}:values", self.dtypes[n], (counts[n],)))
        meta = {**metadata, "taskloc_patch": FORMAT_VERSION, "values": "tuned",
                "tensors": json.dumps([[n, list(self.shapes[n]), DTYPE_NAMES[self.dtypes[n]]] for n in self.order])}
        with atomic_path(self.out) as tmp, open(tmp, "wb") as f:
            writer = SafetensorsStreamWriter(f, specs, meta)
            for n in names:
                idx, values = self._entries(n)
                index_np = np.int32 if index_dtype(math.prod(self.shapes[n])) == torch.int32 else np.int64
                writer.write(f"{n}:indices", torch.from_numpy(idx.astype(index_np)))
                writer.write(f"{n}:values", from_raw(values, self.dtypes[n]))
            writer.close()
        return self.out

    def close(self) -> None:
        self._idx.close()
        self._val.close()
        shutil.rmtree(self._spool, ignore_errors=True)


@dataclass
class Patch:
    path: Path
    metadata: dict[str, str]
    tensors: dict[str, tuple[tuple[int, ...], torch.dtype]]  # every analysed tensor: shape, dtype
    store: SafetensorsCheckpoint

    @property
    def base_fingerprint(self) -> str:
        return self.metadata.get("base_fingerprint", "")

    def names(self) -> list[str]:
        """Tensors with at least one patched entry."""
        return [n for n in self.tensors if f"{n}:indices" in self.store.entries]

    def get(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(flat int64 indices, values) of one tensor, checked against its size."""
        idx, values = self.store.get(f"{name}:indices").to(torch.int64), self.store.get(f"{name}:values")
        numel = math.prod(self.tensors[name][0])
        if idx.shape != values.shape or (idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= numel)):
            raise CheckpointError(f"patch {self.path} is corrupt: tensor {name!r} has indices outside its {numel} entries.")
        return idx, values


def open_patch(path: Path) -> Patch:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"patch {path} does not exist; make one with `taskloc delta BASE TUNED --patch {path.name}`.")
    if path.suffix != ".safetensors":
        raise CheckpointError(f"patch {path} is not a .safetensors file; make one with `taskloc delta BASE TUNED --patch FILE.safetensors`.")
    store = SafetensorsCheckpoint.from_file(path)
    meta = store.metadata
    if "taskloc_patch" not in meta:
        raise CheckpointError(f"{path} is not a taskloc patch (no taskloc_patch metadata); make one with `taskloc delta --patch`.")
    if meta["taskloc_patch"] != FORMAT_VERSION:
        raise CheckpointError(f"patch {path} has format version {meta['taskloc_patch']}; this taskloc reads version {FORMAT_VERSION}.")
    try:
        listed = json.loads(meta["tensors"])
        tensors = {str(n): (tuple(int(s) for s in shape), DTYPES[dt]) for n, shape, dt in listed}
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"patch {path} has corrupt metadata ({type(exc).__name__}: {exc}); re-create it.") from None
    for key in store.names():
        name, _, part = key.rpartition(":")
        if part not in ("indices", "values") or name not in tensors:
            raise CheckpointError(f"patch {path} holds an unexpected tensor {key!r}; re-create it.")
    return Patch(path, dict(meta), tensors, store)


@dataclass
class GraftResult:
    out: Path
    patched_tensors: int
    patched_entries: int
    fingerprint_matched: bool


def graft(base: Checkpoint, patch_path: Path, out: Path, scale: float = 1.0,
          allow_fingerprint_mismatch: bool = False) -> GraftResult:
    """Write base + scale * patch to ``out`` in the base's layout (file or HF folder)."""
    if not math.isfinite(scale):
        raise CheckpointError(f"--scale {scale} must be a finite number.")
    if base.is_delta:
        raise CheckpointError(f"{base.path} is a LoRA adapter; graft onto the full model it was trained on.")
    patch = open_patch(patch_path)
    check_output(base, out)
    base_names = set(base.names())
    for name, (shape, dtype) in patch.tensors.items():
        if name not in base_names:
            raise CheckpointError(f"patch {patch.path} changes tensor {name!r}, which the base {base.path} lacks; use the base the patch was made from.")
        if base.shape(name) != shape:
            raise CheckpointError(f"tensor {name!r} has shape {base.shape(name)} in the base but {shape} in patch {patch.path}; use the base the patch was made from.")
        if base.dtype(name) != dtype:
            raise CheckpointError(f"tensor {name!r} is {base.dtype(name)} in the base but {dtype} in patch {patch.path}; use the base the patch was made from.")
    found = fingerprint(base)
    matched = found == patch.base_fingerprint
    if not matched and not allow_fingerprint_mismatch:
        raise CheckpointError(
            f"patch {patch.path} was made for another base (fingerprint {patch.base_fingerprint[:19]}...) but "
            f"{base.path} has {found[:19]}...; use the base the patch was made from, or pass "
            "--allow-fingerprint-mismatch if you are sure the weights match."
        )
    patched = set(patch.names())
    entries = 0

    def tensor_for(name: str) -> torch.Tensor:
        nonlocal entries
        t = base.get(name)
        if name in patched and scale != 0:
            idx, values = patch.get(name)
            flat = t.view(-1)
            if scale == 1:
                flat[idx] = values  # exact: the tuned entries themselves
            else:
                current = flat[idx].float()
                flat[idx] = (current + scale * (values.float() - current)).to(t.dtype)
            entries += idx.numel()
        return t

    meta = {"taskloc_graft": json.dumps({"patch": str(patch.path), "scale": scale, "k": patch.metadata.get("k"),
                                         "base_fingerprint": found})}
    with progress_bar("graft", total=len(base.names())) as advance:
        write_like(base, out, tensor_for, meta, on_tensor=advance)
    patch.store.close()
    return GraftResult(Path(out), len(patched), entries, matched)
