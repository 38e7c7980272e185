"""The safetensors container, read and written by hand where the library cannot help.

``read_header`` validates a file's header before any tensor is read, so a truncated or corrupt
file gives one clear CheckpointError naming the file and what is wrong with it. ``SafetensorsStreamWriter``
writes a file one tensor at a time: the header (names, dtypes, shapes, offsets) is known before
any data exists, so a model bigger than memory can be written while it is being computed.

Layout (https://github.com/huggingface/safetensors): 8-byte little-endian header length N, N
bytes of JSON ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``
(offsets relative to the data section), then the data section, tensors packed without gaps.
"""
from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

from ..errors import CheckpointError

# safetensors dtype string <-> torch dtype. Only names torch can hold are listed.
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64,
}  # fmt: skip
DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}
MAX_HEADER_BYTES = 100_000_000  # the library's own limit
ALIGN = 8  # the header is padded with spaces so the data section starts 8-byte aligned


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives: ``begin``/``end`` are absolute byte positions in ``file``."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    file: Path
    begin: int
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Header:
    entries: dict[str, TensorEntry]  # in storage order (by data offset)
    metadata: dict[str, str]
    data_start: int  # absolute position of the data section


def read_header(path: Path) -> Header:
    """Parse and validate ``path``'s header: its length fits the file, the JSON parses, every entry
    has a known dtype and a shape whose byte size matches its offsets, and every offset lies
    inside the file."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise CheckpointError(
                    f"{path} holds {size} bytes, too few for a safetensors file (8-byte header length "
                    "first); the file is truncated or not safetensors: re-save or re-download it."
                )
            (n,) = struct.unpack("<Q", prefix)
            if n > size - 8:
                raise CheckpointError(
                    f"{path} is truncated or not safetensors: its header length field says {n} bytes but "
                    f"only {size - 8} bytes follow; re-save or re-download it."
                )
            if n > MAX_HEADER_BYTES:
                raise CheckpointError(f"{path} has a corrupt header: length {n} exceeds {MAX_HEADER_BYTES} bytes.")
            raw = f.read(n)
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}; check the path and its permissions.") from None
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} has a corrupt header (not valid JSON: {exc}); re-save or re-download it.") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} has a corrupt header: expected a JSON object, found {type(obj).__name__}.")
    metadata = obj.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise CheckpointError(f"{path} has a corrupt header: __metadata__ must map strings to strings.")
    data_start = 8 + n
    data_size = size - data_start
    entries = [_entry(path, name, spec, data_start, data_size) for name, spec in obj.items()]
    entries.sort(key=lambda e: (e.begin, e.name))
    return Header({e.name: e for e in entries}, dict(metadata), data_start)


def _entry(path: Path, name: str, spec: object, data_start: int, data_size: int) -> TensorEntry:
    def corrupt(why: str) -> CheckpointError:
        return CheckpointError(f"{path} has a corrupt header: tensor {name!r} {why}; re-save or re-download it.")

    if not isinstance(spec, dict):
        raise corrupt("is not described by a JSON object")
    dtype = DTYPES.get(spec.get("dtype"))  # type: ignore[arg-type]
    if dtype is None:
        raise corrupt(f"has dtype {spec.get('dtype')!r}, which taskloc does not know (known: {', '.join(DTYPES)})")
    shape, offsets = spec.get("shape"), spec.get("data_offsets")
    if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise corrupt(f"has an invalid shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) and o >= 0 for o in offsets)):
        raise corrupt(f"has invalid data_offsets {offsets!r}")
    begin, end = offsets
    if end > data_size:
        raise CheckpointError(
            f"{path} is truncated: tensor {name!r} ends at data byte {end} but the data section holds only "
            f"{data_size} bytes; re-save or re-download it."
        )
    expected = math.prod(shape) * dtype.itemsize
    if end - begin != expected:
        raise corrupt(f"of shape {tuple(shape)} and dtype {spec['dtype']} needs {expected} bytes but its offsets span {end - begin}")
    return TensorEntry(name, dtype, tuple(shape), path, data_start + begin, data_start + end)


def tensor_nbytes(dtype: torch.dtype, shape: tuple[int, ...]) -> int:
    return math.prod(shape) * dtype.itemsize


class SafetensorsStreamWriter:
    """Writes a safetensors file tensor by tensor, in the order given to the constructor.

    The file object must be open for binary writing; the caller owns atomicity (write to a temp
    path, rename on success). ``write`` checks each tensor against the promised name, dtype and
    shape, and ``close`` checks that every promised tensor arrived.
    """

    def __init__(self, f: BinaryIO, specs: list[tuple[str, torch.dtype, tuple[int, ...]]],
                 metadata: dict[str, str] | None = None) -> None:
        header: dict[str, object] = {}
        if metadata:
            header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
        offset = 0
        for name, dtype, shape in specs:
            size = tensor_nbytes(dtype, shape)
            header[name] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
            offset += size
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-(8 + len(raw)) % ALIGN)
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        self._f = f
        self._pending = list(specs)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if not self._pending:
            raise ValueError(f"tensor {name!r} written after every promised tensor")
        want_name, dtype, shape = self._pending.pop(0)
        if (name, tensor.dtype, tuple(tensor.shape)) != (want_name, dtype, shape):
            raise ValueError(f"expected {want_name} {dtype} {shape}, got {name} {tensor.dtype} {tuple(tensor.shape)}")
        write_tensor_bytes(self._f, tensor)

    def close(self) -> None:
        if self._pending:
            raise ValueError(f"{len(self._pending)} promised tensors never written, first {self._pending[0][0]!r}")


def write_tensor_bytes(f: BinaryIO, tensor: torch.Tensor) -> None:
    """Raw little-endian bytes of ``tensor`` in row-major order (numpy has no bfloat16, so the
    bytes go through a uint8 view)."""
    t = tensor.detach().to("cpu").contiguous()
    if t.numel():
        f.write(memoryview(t.view(-1).view(torch.uint8).numpy()))


def read_bytes(path: Path, begin: int, end: int) -> bytes:
    """``end - begin`` bytes of ``path`` from absolute position ``begin``."""
    with open(path, "rb", buffering=0) as f:
        return os.pread(f.fileno(), end - begin, begin)
