"""open_checkpoint: any path a user may give -> the right lazy Checkpoint, or one clear error.

Accepted, in the order they are tried:
  a .safetensors file                         -> "safetensors"
  a .bin/.pt/.pth/.ckpt file (--allow-pickle)  -> "pickle"
  a folder with adapter_config.json            -> "peft-lora" (LoraAdapter)
  a taskloc run directory                      -> the base model it pretrained (artefacts/base-*/)
  a folder with model.safetensors.index.json   -> "hf-sharded"
  a folder with model.safetensors, or with exactly one other .safetensors file -> "hf-folder"
  a folder with pytorch_model.bin[.index.json] (--allow-pickle) -> "pickle"

The model loaders use the same checks: ``locate_weights`` for a Hugging Face folder's weights and
``run_dir_model`` for a run directory, so every path is judged, and every mistake named, once.
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


# --- taskloc run directories --------------------------------------------------------------------


def is_run_dir(folder: Path) -> bool:
    """A taskloc run directory: it has artefacts/, or a run's config.json (preset and pretrain
    sections; a Hugging Face config.json has model_type instead)."""
    if not folder.is_dir():
        return False
    if (folder / "artefacts").is_dir():
        return True
    try:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and "preset" in cfg and "pretrain" in cfg and "model_type" not in cfg


def run_dir_model(folder: Path) -> Path:
    """The model a run directory stands for: the base it pretrained, artefacts/base-*/model.safetensors."""
    found = sorted(folder.glob("artefacts/base-*/model.safetensors"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise CheckpointError(
            f"{folder} is a taskloc run directory without a finished base model (still pretraining, or a run on "
            "--model); pass a run that pretrained its base, or the model file or folder itself."
        )
    listed = first_names((str(p.parent.relative_to(folder)) for p in found), limit=8)
    raise CheckpointError(f"{folder} is a run directory with {len(found)} base models ({listed}); pass one of these folders.")


# --- Hugging Face folders -----------------------------------------------------------------------


def locate_weights(folder: Path, allow_pickle: bool) -> tuple[str, Path] | None:
    """Where a Hugging Face folder keeps its weights, checked but not read: ("hf-sharded", index),
    ("hf-folder", file), ("pickle", index or file); None when it holds none. An index whose shards
    are missing, several unindexed files, and pickles without ``allow_pickle`` are errors."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        _shard_files(folder, index)
        return "hf-sharded", index
    if (folder / "model.safetensors").is_file():
        return "hf-folder", folder / "model.safetensors"
    files = sorted(p for p in folder.glob("*.safetensors") if p.is_file())
    if len(files) == 1:
        return "hf-folder", files[0]
    if len(files) > 1:
        raise CheckpointError(
            f"{folder} holds {len(files)} .safetensors files ({first_names(p.name for p in files)}) and no "
            "model.safetensors.index.json saying how they fit together; pass one file, or add the index."
        )
    for name in ("pytorch_model.bin.index.json", "pytorch_model.bin"):
        if (folder / name).is_file():
            _refuse_pickle(folder / name, allow_pickle)
            if name.endswith(".json"):
                _shard_files(folder, folder / name)
            return "pickle", folder / name
    return None


def no_weights(folder: Path) -> CheckpointError:
    """The error for a folder with a model's config.json and nothing to load beside it."""
    return CheckpointError(
        f"{folder} has a config.json but no weights; expected model.safetensors "
        "(or model.safetensors.index.json and its shards) beside it."
    )


def _refuse_pickle(path: Path, allow_pickle: bool) -> None:
    if not allow_pickle:
        raise CheckpointError(
            f"{path} is a pickle checkpoint, which can run code when loaded; refused. Convert it to "
            "safetensors, or pass --allow-pickle if you trust its source."
        )


def _weight_map(index: Path) -> dict[str, str]:
    try:
        obj = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{index} is not valid JSON ({exc}); re-save or re-download it.") from None
    weight_map = obj.get("weight_map") if isinstance(obj, dict) else None
    if not isinstance(weight_map, dict) or not weight_map or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{index} has no usable weight_map (tensor name -> shard file); re-save the model.")
    return weight_map


def _shard_files(folder: Path, index: Path) -> dict[str, Path]:
    """Tensor name -> shard file, once every shard the index names is known to be in ``folder``."""
    weight_map = _weight_map(index)
    shards = sorted(set(weight_map.values()))
    outside = [s for s in shards if Path(s).name != s]
    if outside:
        raise CheckpointError(f"{index} names shard {outside[0]!r} outside the folder; re-save the model.")
    absent = [s for s in shards if not (folder / s).is_file()]
    if absent:
        raise CheckpointError(
            f"{index.name} in {folder} lists {len(shards)} shard(s) but {len(absent)} are missing, "
            f"first {absent[0]}; download or copy the complete checkpoint."
        )
    return {name: folder / shard for name, shard in weight_map.items()}


# --- opening --------------------------------------------------------------------------------------


def _open_file(path: Path, allow_pickle: bool) -> Checkpoint:
    if path.suffix == ".safetensors":
        return SafetensorsCheckpoint.from_file(path)
    if path.name.endswith(".safetensors.index.json"):
        return _open_sharded(path.parent, path)
    if path.suffix in PICKLE_SUFFIXES:
        _refuse_pickle(path, allow_pickle)
        return PickleCheckpoint(path, {})
    raise CheckpointError(f"{path} is not a checkpoint file; {EXPECTED}.")


def _open_folder(folder: Path, allow_pickle: bool) -> Checkpoint:
    if (folder / "adapter_config.json").is_file():
        return _open_adapter(folder, allow_pickle)
    if is_run_dir(folder):
        return _open_folder(run_dir_model(folder).parent, allow_pickle)
    found = locate_weights(folder, allow_pickle)
    if found is None:
        if (folder / "config.json").is_file():
            raise no_weights(folder)
        raise CheckpointError(f"{folder} is a folder that holds no model; {EXPECTED}.")
    format, path = found
    if format == "hf-sharded":
        return _open_sharded(folder, path)
    if format == "hf-folder":
        return SafetensorsCheckpoint.from_file(path, "hf-folder", folder)
    return PickleCheckpoint(path, _shard_files(folder, path) if path.name.endswith(".json") else {})


def _open_sharded(folder: Path, index: Path) -> SafetensorsCheckpoint:
    files = _shard_files(folder, index)
    headers = {path: read_header(path) for path in sorted(set(files.values()))}
    entries = {}
    for path, header in headers.items():
        for name, entry in header.entries.items():
            if files.get(name) == path:
                entries[name] = entry
    missing = [name for name in files if name not in entries]
    if missing:
        shard = files[missing[0]].name
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
