"""One content-addressed cache for everything a study builds: models, vectors, statistics,
merged checkpoints.

An artefact lives in ``artefacts/<kind>-<key>/`` where key = hash(what makes it different +
the source code of what built it). ``get_or_build`` returns the stored artefact when its final
file exists; otherwise it calls ``build(folder)`` — which may keep a resumable checkpoint in that
folder, so a killed run continues where it stopped — writes the result atomically, and removes
the checkpoint. A changed ingredient or a changed builder gives a new key, so nothing stale is
ever reused; two builders never share a folder.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch

from ..io.atomic import json_safe, write_json, write_safetensors

T = TypeVar("T")
CHECKPOINT = "checkpoint.safetensors"


@cache
def _module_source_digest(module: str) -> str:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ValueError(f"no source for module {module!r}")
    return hashlib.sha256(Path(spec.origin).read_bytes()).hexdigest()


def code_version(modules: Iterable[str]) -> str:
    """A short digest of the source of ``modules`` (dotted names): part of every cache key, so
    an edit to what builds an artefact invalidates it."""
    h = hashlib.sha256()
    for name in sorted(set(modules)):
        h.update(name.encode())
        h.update(_module_source_digest(name).encode())
    return h.hexdigest()[:16]


def package_version() -> str:
    """A digest of every source file of taskloc: the key of cached study results, which depend on
    the analysis code anywhere in the package."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def tensor_digest(tensors: dict[str, torch.Tensor] | None) -> str | None:
    """Content hash of a state dict or mask (names, dtypes, shapes and bytes)."""
    if tensors is None:
        return None
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.dtype != torch.bool else t.numpy().tobytes())
    return h.hexdigest()[:16]


def key_of(ingredients: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(json_safe(ingredients), sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Format(Generic[T]):
    """How an artefact is stored: its final file's name, and how to write and read it."""

    filename: str
    write: Callable[[Path, T, dict[str, str]], None]
    read: Callable[[Path], T]


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


TENSORS: Format[dict[str, torch.Tensor]] = Format("model.safetensors", lambda p, t, meta: write_safetensors(p, t, meta), _read_tensors)
JSON: Format[Any] = Format("result.json", lambda p, data, meta: write_json(p, {"meta": meta, "data": data}),
                           lambda p: json.loads(p.read_text())["data"])


class ArtefactCache:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def folder(self, kind: str, key: str) -> Path:
        path = self.root / f"{kind}-{key}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def find(self, kind: str, ingredients: dict[str, Any], fmt: Format[T]) -> Path:
        return self.root / f"{kind}-{key_of(ingredients)}" / fmt.filename

    def get_or_build(self, kind: str, ingredients: dict[str, Any], build: Callable[[Path], T], fmt: Format[T], *,
                     metadata: dict[str, str] | None = None) -> T:
        """The artefact keyed by ``ingredients`` (which must include the builder's code version):
        read if stored, else built in its folder (resumable through ``folder/checkpoint.safetensors``),
        written atomically, and its checkpoint removed."""
        folder = self.folder(kind, key_of(ingredients))
        final = folder / fmt.filename
        if final.exists():
            return fmt.read(final)
        value = build(folder)
        meta = {"taskloc": json.dumps(json_safe({"kind": kind, **ingredients}), sort_keys=True), **(metadata or {})}
        fmt.write(final, value, meta)
        (folder / CHECKPOINT).unlink(missing_ok=True)
        return value
