"""Write a model in the same layout as the checkpoint it came from, one tensor at a time.

A single .safetensors file stays a single file (its metadata carried over); an HF folder stays a
folder (config, tokenizer and every other non-weight file copied; weights as safetensors, sharded
like the input with the index updated), so ``AutoModelForCausalLM.from_pretrained(out)`` loads
it. Pickle inputs become safetensors. Everything is written into a temporary file or folder and
renamed at the end, so an error leaves no partial output.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import CheckpointError
from .atomic import atomic_dir, atomic_path
from .checkpoint import Checkpoint, SafetensorsCheckpoint
from .safetensors_format import SafetensorsStreamWriter, tensor_nbytes

TensorSource = Callable[[str], torch.Tensor]  # name -> tensor to write (the base's dtype and shape)
# Files in a model folder that hold weights: never copied next to the new weights.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")
WEIGHT_INDEXES = (".safetensors.index.json", ".bin.index.json")


def output_kind(base: Checkpoint) -> str:
    """"file" or "folder": what ``write_like(base, ...)`` produces."""
    if base.format in ("hf-folder", "hf-sharded"):
        return "folder"
    if base.format == "pickle" and base.path.name.startswith("pytorch_model.bin"):
        return "folder"
    if base.format in ("safetensors", "pickle"):
        return "file"
    raise CheckpointError(f"{base.path} is a {base.format} checkpoint; taskloc cannot write a model in its layout.")


def check_output(base: Checkpoint, out: Path) -> None:
    """Refuse an output path before any work is done."""
    kind = output_kind(base)
    out = Path(out)
    if out.resolve() == base.path.resolve() or base.path.resolve() in out.resolve().parents:
        raise CheckpointError(f"--out {out} would write into the input {base.path}; choose another path.")
    if kind == "file":
        if out.suffix != ".safetensors":
            raise CheckpointError(f"the base {base.path} is a single file, so --out must be a .safetensors file path, not {out}.")
        if out.is_dir():
            raise CheckpointError(f"--out {out} is a folder; the base is a single file, so give a .safetensors file path.")
    elif out.exists() and (out.is_file() or any(out.iterdir())):
        raise CheckpointError(f"--out {out} already exists; the output is a model folder: remove it or choose a new path.")


def write_like(base: Checkpoint, out: Path, tensor_for: TensorSource, metadata: dict[str, str] | None = None,
               on_tensor: Callable[[], None] | None = None) -> Path:
    """Write every tensor of ``base`` (values from ``tensor_for``) to ``out`` in base's layout."""
    check_output(base, out)
    extra = dict(metadata or {})
    tick = on_tensor or (lambda: None)
    if output_kind(base) == "file":
        with atomic_path(out) as tmp:
            _write_file(tmp, base, base.names(), {**base.metadata, **extra}, tensor_for, tick)
        return out
    with atomic_dir(out) as tmp:
        _copy_non_weight_files(_folder_of(base), tmp)
        if isinstance(base, SafetensorsCheckpoint) and base.format == "hf-sharded":
            _write_shards(tmp, base, extra, tensor_for, tick)
        else:
            _write_file(tmp / _weight_file_name(base), base, base.names(), _hf_metadata(base.metadata, extra), tensor_for, tick)
    return out


def _folder_of(base: Checkpoint) -> Path:
    return base.path if base.path.is_dir() else base.path.parent


def _weight_file_name(base: Checkpoint) -> str:
    if isinstance(base, SafetensorsCheckpoint):
        return next(iter(base.headers)).name
    return "model.safetensors"  # pickle weights are rewritten as safetensors


def _hf_metadata(metadata: dict[str, str], extra: dict[str, str]) -> dict[str, str]:
    # transformers refuses safetensors weights without a known "format" entry
    return {"format": "pt", **metadata, **extra}


def _write_file(path: Path, base: Checkpoint, names: list[str], metadata: dict[str, str],
                tensor_for: TensorSource, tick: Callable[[], None]) -> int:
    specs = [(n, base.dtype(n), base.shape(n)) for n in names]
    with open(path, "wb") as f:
        writer = SafetensorsStreamWriter(f, specs, metadata)
        for name in names:
            tensor = tensor_for(name)
            if tensor.dtype != base.dtype(name) or tuple(tensor.shape) != base.shape(name):
                raise ValueError(f"{name}: writer got {tensor.dtype} {tuple(tensor.shape)}, base has {base.dtype(name)} {base.shape(name)}")
            writer.write(name, tensor)
            tick()
        writer.close()
    return sum(tensor_nbytes(d, s) for _, d, s in specs)


def _write_shards(folder: Path, base: SafetensorsCheckpoint, extra: dict[str, str], tensor_for: TensorSource,
                  tick: Callable[[], None]) -> None:
    total = 0
    for file, header in base.headers.items():
        names = [n for n, e in base.entries.items() if e.file == file]
        total += _write_file(folder / file.name, base, names, _hf_metadata(header.metadata, extra), tensor_for, tick)
    assert base.index_file is not None  # hf-sharded always has one
    index = json.loads(base.index_file.read_text(encoding="utf-8"))
    index.setdefault("metadata", {})
    index["metadata"]["total_size"] = total
    index["weight_map"] = {n: e.file.name for n, e in base.entries.items()}
    (folder / base.index_file.name).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _copy_non_weight_files(src: Path, dst: Path) -> None:
    for path in sorted(src.iterdir()):
        name = path.name
        if not path.is_file() or name.endswith(WEIGHT_SUFFIXES) or name.endswith(WEIGHT_INDEXES):
            continue
        shutil.copy2(path, dst / name)
