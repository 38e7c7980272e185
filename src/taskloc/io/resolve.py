"""open_checkpoint: any path a user may give -> the right lazy Checkpoint, or one clear error.

Accepted, in the order they are tried:
  a .safetensors file                         -> "safetensors"
  a .bin/.pt/.pth/.ckpt file (--allow-pickle)  -> "pickle"
  a folder with adapter_config.json            -> "peft-lora" (LoraAdapter)
  a folder with model.safetensors.index.json   -> "hf-sharded"
  a folder with model.safetensors, or with exactly one other .safetensors file -> "hf-folder"
  a folder with pytorch_model.bin[.index.json] (--allow-pickle) -> "pickle"
  a taskloc run directory                      -> the one artefacts/**/model.safetensors folder
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Union

from ..errors import CheckpointError
from .checkpoint import Checkpoint, PickleCheckpoint, SafetensorsCheckpoint, first_names
from .lora import LoraAdapter, read_adapter_config
from .safetensors_format import read_header

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
EXPECTED = (
    "expected a .safetensors file, a Hugging Face model folder (model.safetensors or "
    "model.safetensors.index.json), a PEFT LoRA adapter folder, or a taskloc run directory"
)


def open_checkpoint(path: Union[str, Path], allow_pickle: bool = False) -> Checkpoint:
    """Open ``path`` lazily: headers are read and validated now, tensor data on ``get``."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; {EXPECTED}.")
    if path.is_file():
        return _open_file(path, allow_pickle)
    return _open_folder(path, allow_pickle)


def _open_file(path: Path, allow_pickle: bool) -> Checkpoint:
    if path.suffix == ".safetensors":
        return SafetensorsCheckpoint.from_file(path)
    if path.name.endswith(".safetensors.index.json"):
        return _open_sharded(path.parent, path)
    if path.suffix in PICKLE_SUFFIXES:
        _refuse_pickle(path, allow_pickle)
        return PickleCheckpoint(path, {})
    raise CheckpointError(f"{path} is not a checkpoint file; {EXPECTED}.")


def _refuse_pickle(path: Path, allow_pickle: bool) -> None:
    if not allow_pickle:
        raise CheckpointError(
            f"{path} is a pickle checkpoint, which can run code when loaded; refused. Convert it to "
            "safetensors, or pass --allow-pickle if you trust its source."
        )


def _open_folder(folder: Path, allow_pickle: bool) -> Checkpoint:
    if (folder / "adapter_config.json").is_file():
        return _open_adapter(folder, allow_pickle)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return _open_sharded(folder, index)
    if (folder / "model.safetensors").is_file():
        return SafetensorsCheckpoint.from_file(folder / "model.safetensors", "hf-folder", folder)
    files = sorted(p for p in folder.glob("*.safetensors") if p.is_file())
    if len(files) == 1:
        return SafetensorsCheckpoint.from_file(files[0], "hf-folder", folder)
    if len(files) > 1:
        raise CheckpointError(
            f"{folder} holds {len(files)} .safetensors files ({first_names(p.name for p in files)}) and no "
            "model.safetensors.index.json saying how they fit together; pass one file, or add the index."
        )
    pickle_index = folder / "pytorch_model.bin.index.json"
    if pickle_index.is_file():
        _refuse_pickle(pickle_index, allow_pickle)
        weight_map = _weight_map(pickle_index)
        files_by_name = {name: _shard_path(folder, pickle_index, shard) for name, shard in weight_map.items()}
        return PickleCheckpoint(pickle_index, files_by_name)
    if (folder / "pytorch_model.bin").is_file():
        _refuse_pickle(folder / "pytorch_model.bin", allow_pickle)
        return PickleCheckpoint(folder / "pytorch_model.bin", {})
    if (folder / "artefacts").is_dir():
        return _open_run_dir(folder, allow_pickle)
    raise CheckpointError(f"{folder} is a folder that holds no model; {EXPECTED}.")


def _open_run_dir(folder: Path, allow_pickle: bool) -> Checkpoint:
    found = sorted(p.parent for p in (folder / "artefacts").rglob("model.safetensors"))
    if len(found) == 1:
        return _open_folder(found[0], allow_pickle)
    if not found:
        raise CheckpointError(
            f"{folder} looks like a taskloc run directory but its artefacts/ hold no model.safetensors; "
            "run the study that trains a model first, or pass a checkpoint path."
        )
    listed = first_names((str(p.relative_to(folder)) for p in found), limit=8)
    raise CheckpointError(f"{folder} is a run directory with {len(found)} models ({listed}); pass one of these folders.")


def _weight_map(index: Path) -> dict[str, str]:
    try:
        obj = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{index} is not valid JSON ({exc}); re-save or re-download it.") from None
    weight_map = obj.get("weight_map") if isinstance(obj, dict) else None
    if not isinstance(weight_map, dict) or not weight_map or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{index} has no usable weight_map (tensor name -> shard file); re-save the model.")
    return weight_map


def _shard_path(folder: Path, index: Path, shard: str) -> Path:
    path = folder / shard
    if Path(shard).name != shard:
        raise CheckpointError(f"{index} names shard {shard!r} outside the folder; re-save the model.")
    if not path.is_file():
        raise CheckpointError(f"shard {shard!r} named in {index.name} is missing from {folder}; download or copy it.")
    return path


def _open_sharded(folder: Path, index: Path) -> SafetensorsCheckpoint:
    weight_map = _weight_map(index)
    shards = sorted(set(weight_map.values()))
    headers = {path: read_header(path) for path in (_shard_path(folder, index, s) for s in shards)}
    entries = {}
    for path, header in headers.items():
        for name, entry in header.entries.items():
            if weight_map.get(name) == path.name:
                entries[name] = entry
    missing = [name for name, shard in weight_map.items() if name not in entries]
    if missing:
        shard = weight_map[missing[0]]
        raise CheckpointError(
            f"{index} places {len(missing)} tensors in shards that lack them, e.g. {missing[0]!r} in {shard!r}; "
            "the index does not match the shards: re-save the model."
        )
    return SafetensorsCheckpoint(folder, "hf-sharded", headers, entries, index_file=index)


def _open_adapter(folder: Path, allow_pickle: bool) -> LoraAdapter:
    config = read_adapter_config(folder)
    weights = folder / "adapter_model.safetensors"
    if weights.is_file():
        store: Checkpoint = SafetensorsCheckpoint.from_file(weights)
    elif (folder / "adapter_model.bin").is_file():
        _refuse_pickle(folder / "adapter_model.bin", allow_pickle)
        store = PickleCheckpoint(folder / "adapter_model.bin", {})
    else:
        raise CheckpointError(f"{folder} has adapter_config.json but no adapter_model.safetensors; copy the adapter weights.")
    return LoraAdapter(folder, config, store)
