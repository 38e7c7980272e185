"""One loader for every model a verb can take: a taskloc TinyLM (a run directory or a model
.safetensors written by taskloc) or a local Hugging Face folder. Both come back with the same
hook-site names, so activation-level verbs work on either."""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from ..device import pick_device
from ..errors import CheckpointError, DataError
from ..io.resolve import is_run_dir, run_dir_model
from .codec import no_tokenizer_message
from .protocol import LanguageModel
from .tinylm import ModelConfig, TinyLM


@dataclass
class LoadedModel:
    model: LanguageModel  # TinyLM or taskloc.hf.HFModel
    kind: str  # "tinylm" or the HF family
    encode: Callable[[str], list[int]]
    source: Path


def _tinylm_file(path: Path) -> Path | None:
    if path.is_file() and path.suffix == ".safetensors":
        return path
    if is_run_dir(path):
        return run_dir_model(path)
    return None


def load_tinylm(path: Path, device: torch.device) -> TinyLM:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # safetensors raises several types for a damaged file
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc}); pass a model written by taskloc.") from None
    if "taskloc" not in meta:
        raise CheckpointError(f"{path} carries no taskloc metadata, so its architecture is unknown; "
                              "pass a taskloc run directory or a Hugging Face folder.")
    try:
        info: dict[str, Any] = json.loads(meta["taskloc"])
    except json.JSONDecodeError:
        raise CheckpointError(f"{path} has damaged taskloc metadata (not JSON); re-export the model with taskloc.") from None
    if not isinstance(info, dict) or not isinstance(info.get("model"), dict):
        raise CheckpointError(f"{path} is a taskloc artefact without a model config; pass a base model.")
    model = TinyLM(ModelConfig.from_dict(info["model"], "model."))
    try:
        load_weights(model, load_file(str(path)))
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc} (the model config in its metadata does not match them)") from None
    return model.to(device).eval()


def load_model(path: Path, device: str = "auto", dtype: torch.dtype | None = None,
               allow_pickle: bool = False) -> LoadedModel:
    """dtype: None keeps a Hugging Face checkpoint's own dtype on an accelerator (float32 on CPU);
    studies that train pass float32. allow_pickle: accept a Hugging Face folder's pytorch_model.bin
    (pickle can run code when loaded)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"model path {path} does not exist; pass a taskloc run directory, a taskloc .safetensors or a Hugging Face folder.")
    dev = pick_device(device)
    tiny = _tinylm_file(path)
    if tiny is not None:
        from ..tasks import encode

        return LoadedModel(load_tinylm(tiny, dev), "tinylm", encode, tiny)
    from ..hf import load_hf_model

    hf = load_hf_model(path, device=device, dtype=dtype, allow_pickle=allow_pickle)
    if hf.tokenizer is None:
        def no_tokenizer(text: str) -> list[int]:
            raise DataError(no_tokenizer_message(str(path)))
        return LoadedModel(hf, hf.family, no_tokenizer, path)
    return LoadedModel(hf, hf.family, lambda text: hf.tokenizer(text)["input_ids"], path)


def unique_weight_names(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of a state dict, one per storage: a tied alias (GPT-2's ``lm_head`` is its ``wte``)
    is listed once, under its first name."""
    seen: set[tuple[int, int]] = set()
    names = []
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if key not in seen:
            seen.add(key)
            names.append(name)
    return names


def weights_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """CPU copies of a model's state without tied aliases, so a delta or a patch never counts or
    edits the same weights twice."""
    state = model.state_dict()
    return {name: state[name].detach().cpu().clone() for name in unique_weight_names(state)}


def load_weights(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Load what ``weights_of`` returned: tied aliases are restored through their first name."""
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as exc:  # shape mismatches: a multi-line message; keep its first detail
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        raise CheckpointError(f"weights do not fit the model ({lines[1] if len(lines) > 1 else lines[0]}); "
                              "they were saved from a different architecture.") from None
    missing = sorted(set(missing) & set(unique_weight_names(model.state_dict())))
    if missing or unexpected:
        raise CheckpointError(f"weights do not fit the model (missing {missing[:3]}, unexpected {sorted(unexpected)[:3]}); "
                              "they were saved from a different architecture.")
