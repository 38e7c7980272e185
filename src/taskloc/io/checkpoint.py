"""Lazy checkpoints: names, shapes and dtypes from headers; tensor data only when asked for.

``Checkpoint`` is the one interface the rest of taskloc reads weights through. Subclasses:
``SafetensorsCheckpoint`` (a file, an HF folder, a sharded HF folder), ``PickleCheckpoint``
(.bin/.pt, only after the user opts in), ``MemoryCheckpoint`` (a state dict already in memory).
The PEFT LoRA adapter lives in lora.py; ``open_checkpoint`` in resolve.py picks the class.
"""
from __future__ import annotations

import difflib
import math
import mmap
import os
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from ..errors import CheckpointError
from .safetensors_format import Header, TensorEntry, read_header


class Checkpoint:
    """A named set of tensors read lazily.

    format:   "safetensors" (one file), "hf-folder" (folder with model.safetensors), "hf-sharded"
              (folder with model.safetensors.index.json), "pickle", "memory" or "peft-lora".
    path:     what the user gave (after resolving a run directory); ``root`` is the folder for
              folder formats and the file otherwise.
    metadata: the file's string metadata (first shard for sharded folders).
    is_delta: True when ``get`` returns a change to add to a base (LoRA), not weights.
    """

    format: str = ""
    is_delta: bool = False

    def __init__(self, path: Path, metadata: dict[str, str] | None = None) -> None:
        self.path = Path(path)
        self.metadata: dict[str, str] = dict(metadata or {})

    # --- header information: never reads tensor data -------------------------------------------
    def names(self) -> list[str]:
        raise NotImplementedError

    def shape(self, name: str) -> tuple[int, ...]:
        raise NotImplementedError

    def dtype(self, name: str) -> torch.dtype:
        raise NotImplementedError

    def numel(self, name: str) -> int:
        return math.prod(self.shape(name))

    def __contains__(self, name: object) -> bool:
        return name in set(self.names())

    # --- data ------------------------------------------------------------------------------------
    def get(self, name: str) -> torch.Tensor:
        """A fresh CPU tensor the caller may modify."""
        raise NotImplementedError

    def read_flat(self, name: str, out: torch.Tensor | None = None) -> torch.Tensor:
        """The tensor's entries as a flat CPU tensor of its dtype, read into ``out`` (1-D, same
        dtype, at least numel entries) when given, so a streaming loop can reuse one buffer."""
        flat = self.get(name).reshape(-1)
        if out is None:
            return flat
        dest = out[: flat.numel()]
        dest.copy_(flat)
        return dest

    def view_flat(self, name: str) -> torch.Tensor:
        """The tensor's entries as a flat CPU tensor for reading only: it may share memory with the
        checkpoint (a mapping of its file, or a state dict's own tensor), so the caller must not
        modify it. Streaming passes use it to look at every entry without copying them first."""
        return self.get(name).reshape(-1)

    def prefetch(self, name: str) -> None:
        """Hint that ``name`` is read next, so a cold file can be read ahead meanwhile."""

    def sample_bytes(self, name: str, windows: list[tuple[int, int]]) -> bytes:
        """Concatenated raw bytes at ``(begin, end)`` positions inside the tensor's data; used for
        fingerprints. Formats with files override this to read only those bytes."""
        raw = self.get(name).contiguous().view(-1).view(torch.uint8).numpy().tobytes()
        return b"".join(raw[b:e] for b, e in windows)

    def close(self) -> None:
        pass

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> str:
        return f"{self.path} ({self.format}, {len(self.names())} tensors)"

    def _unknown(self, name: str) -> CheckpointError:
        close = difflib.get_close_matches(name, self.names(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else "."
        return CheckpointError(f"{self.path} has no tensor {name!r}{hint}")


class SafetensorsCheckpoint(Checkpoint):
    """One or more safetensors files; ``entries`` says which file holds each tensor.

    read_header validates every file first, so a bad file fails with a CheckpointError before any
    data is touched. ``read_flat`` reads into a (reusable) buffer; ``view_flat`` maps one tensor's
    bytes instead (no copy at all: a warm page cache is read in place), and the mapping is released
    with the returned tensor, so memory stays at the tensors the caller holds, never the whole file.
    """

    def __init__(self, path: Path, format: str, headers: dict[Path, Header], entries: dict[str, TensorEntry],
                 index_file: Path | None = None) -> None:
        first = next(iter(headers.values()), None)
        super().__init__(path, first.metadata if first else {})
        self.format = format
        self.headers = headers  # file -> header, in shard order
        self.entries = entries  # name -> entry, in storage order
        self.index_file = index_file
        self._files: dict[Path, BinaryIO] = {}
        self._lock = threading.Lock()  # streaming passes read from worker threads: one seek+read at a time

    @classmethod
    def from_file(cls, file: Path, format: str = "safetensors", path: Path | None = None) -> SafetensorsCheckpoint:
        header = read_header(file)
        return cls(path or file, format, {file: header}, dict(header.entries))

    def names(self) -> list[str]:
        return list(self.entries)

    def _entry(self, name: str) -> TensorEntry:
        try:
            return self.entries[name]
        except KeyError:
            raise self._unknown(name) from None

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entry(name).shape

    def dtype(self, name: str) -> torch.dtype:
        return self._entry(name).dtype

    def file_of(self, name: str) -> Path:
        return self._entry(name).file

    def get(self, name: str) -> torch.Tensor:
        return self.read_flat(name).view(self._entry(name).shape)

    def read_flat(self, name: str, out: torch.Tensor | None = None) -> torch.Tensor:
        entry = self._entry(name)
        dest = torch.empty(entry.numel, dtype=entry.dtype) if out is None else out[: entry.numel]
        if not entry.numel:
            return dest
        view = memoryview(dest.view(torch.uint8).numpy())  # raw little-endian bytes, as on disk
        f = self._file(entry)
        try:
            with self._lock:
                f.seek(entry.begin)
                done = 0
                while done < len(view):  # one read may return less than asked (2 GiB cap on Linux)
                    got = f.readinto(view[done:])
                    if not got:
                        raise self._truncated(entry)
                    done += got
        except OSError as exc:
            raise CheckpointError(f"cannot read tensor {name!r} from {entry.file}: {exc.strerror or exc}.") from None
        return dest

    def view_flat(self, name: str) -> torch.Tensor:
        """A private copy-on-write mapping of the tensor's bytes: pages are read from the page cache
        only when touched, and unmapped when the returned tensor (and every view of it) is gone.
        The file's size is checked first, since touching a page past a truncated end kills the
        process (SIGBUS) where a read would raise."""
        entry = self._entry(name)
        if not entry.numel:
            return torch.empty(0, dtype=entry.dtype)
        f = self._file(entry)
        if os.fstat(f.fileno()).st_size < entry.end:
            raise self._truncated(entry)
        start = entry.begin - entry.begin % mmap.ALLOCATIONGRANULARITY  # mappings start on a boundary
        try:
            mapped = mmap.mmap(f.fileno(), entry.end - start, access=mmap.ACCESS_COPY, offset=start)
        except (OSError, ValueError):  # a file system that cannot map: read it instead
            return self.read_flat(name)
        raw = np.frombuffer(mapped, dtype=np.uint8, count=entry.end - entry.begin, offset=entry.begin - start)
        return torch.from_numpy(raw).view(entry.dtype)  # the tensor keeps the mapping alive

    def prefetch(self, name: str) -> None:
        entry = self._entry(name)
        if entry.numel and hasattr(os, "posix_fadvise"):
            try:
                os.posix_fadvise(self._file(entry).fileno(), entry.begin, entry.end - entry.begin, os.POSIX_FADV_WILLNEED)
            except OSError:
                pass  # only a hint

    def _file(self, entry: TensorEntry) -> BinaryIO:
        with self._lock:
            f = self._files.get(entry.file)
            if f is None:
                try:
                    f = self._files[entry.file] = open(entry.file, "rb", buffering=0)
                except OSError as exc:
                    raise CheckpointError(f"cannot read tensor {entry.name!r} from {entry.file}: {exc.strerror or exc}.") from None
            return f

    def _truncated(self, entry: TensorEntry) -> CheckpointError:
        return CheckpointError(f"{entry.file} ended while reading tensor {entry.name!r}; the file was truncated after it was opened.")

    def sample_bytes(self, name: str, windows: list[tuple[int, int]]) -> bytes:
        entry = self._entry(name)
        fd = self._file(entry).fileno()  # the open handle: one open per file, not per window
        try:
            return b"".join(os.pread(fd, e - b, entry.begin + b) for b, e in windows)
        except OSError as exc:
            raise CheckpointError(f"cannot read tensor {name!r} from {entry.file}: {exc.strerror or exc}.") from None

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()


class PickleCheckpoint(Checkpoint):
    """A torch pickle (.bin/.pt) loaded with ``weights_only=True`` (no arbitrary objects); several
    files when a pytorch_model.bin.index.json names shards, loaded one shard at a time."""

    format = "pickle"

    def __init__(self, path: Path, files: dict[str, Path]) -> None:
        """``files`` maps tensor name -> file, from an index; empty means ``path`` is one file."""
        super().__init__(path)
        self._files = files
        self._loaded: tuple[Path | None, dict[str, torch.Tensor]] = (None, {})
        self._lock = threading.Lock()  # one shard loaded at a time, also from worker threads
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._dtypes: dict[str, torch.dtype] = {}
        for file in dict.fromkeys(files.values()) if files else [path]:
            for name, t in self._load(file).items():
                self._shapes[name], self._dtypes[name] = tuple(t.shape), t.dtype
        if files:
            missing = sorted(set(files) - set(self._shapes))
            if missing:
                raise CheckpointError(f"{path}: the index names {len(missing)} tensors its shards lack, first {missing[0]!r}.")

    def _load(self, file: Path) -> dict[str, torch.Tensor]:
        with self._lock:
            return self._load_locked(file)

    def _load_locked(self, file: Path) -> dict[str, torch.Tensor]:
        if self._loaded[0] == file:
            return self._loaded[1]
        try:
            obj = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):  # legacy (non-zip) pickles cannot be mmapped
                raise CheckpointError(f"cannot load pickle checkpoint {file}: {exc}".splitlines()[0]) from None
            obj = self._load_plain(file)
        except Exception as exc:  # unpickling errors: corrupt file or non-tensor objects
            raise CheckpointError(f"cannot load pickle checkpoint {file}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        tensors = _state_dict_of(obj, file)
        self._loaded = (file, tensors)
        return tensors

    @staticmethod
    def _load_plain(file: Path) -> object:
        try:
            return torch.load(file, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"cannot load pickle checkpoint {file}: {str(exc).splitlines()[0]}") from None

    def names(self) -> list[str]:
        return list(self._shapes)

    def shape(self, name: str) -> tuple[int, ...]:
        if name not in self._shapes:
            raise self._unknown(name)
        return self._shapes[name]

    def dtype(self, name: str) -> torch.dtype:
        if name not in self._dtypes:
            raise self._unknown(name)
        return self._dtypes[name]

    def get(self, name: str) -> torch.Tensor:
        if name not in self._shapes:
            raise self._unknown(name)
        file = self._files.get(name, self.path)
        return self._load(file)[name].clone()

    def view_flat(self, name: str) -> torch.Tensor:
        if name not in self._shapes:
            raise self._unknown(name)
        return self._load(self._files.get(name, self.path))[name].reshape(-1)  # mapped by torch.load, no copy


def _state_dict_of(obj: object, file: Path) -> dict[str, torch.Tensor]:
    """The tensors of a loaded pickle: a flat dict of tensors, or one nested under a usual key."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "module"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(torch.is_tensor(v) for v in inner.values()):
                obj = inner
                break
        tensors = {str(k): v for k, v in obj.items() if torch.is_tensor(v)}
        if tensors:
            return tensors
    raise CheckpointError(f"{file} holds no state dict of tensors (found {type(obj).__name__}); save model.state_dict().")


class MemoryCheckpoint(Checkpoint):
    """A state dict in memory, so the analysis functions take ``model.state_dict()`` directly."""

    format = "memory"

    def __init__(self, tensors: Mapping[str, torch.Tensor], label: str = "<memory>") -> None:
        super().__init__(Path(label))
        self._tensors = dict(tensors)

    def names(self) -> list[str]:
        return list(self._tensors)

    def _t(self, name: str) -> torch.Tensor:
        try:
            return self._tensors[name]
        except KeyError:
            raise self._unknown(name) from None

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._t(name).shape)

    def dtype(self, name: str) -> torch.dtype:
        return self._t(name).dtype

    def get(self, name: str) -> torch.Tensor:
        return self._t(name).detach().to("cpu").clone()

    def view_flat(self, name: str) -> torch.Tensor:
        return self._t(name).detach().to("cpu").reshape(-1)  # the caller's own tensor when it is on the CPU


def first_names(names: Iterable[str], limit: int = 5) -> str:
    """``a, b, c`` or ``a, b, c and 12 more`` for error messages."""
    names = list(names)
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
