"""A PEFT LoRA adapter folder read as the change it makes to a base model.

For a low-rank module the change to the base weight is ``B @ A * scale`` (transposed for
``fan_in_fan_out`` layers such as GPT-2's Conv1D, and always for embeddings), with
``scale = alpha / r`` or ``alpha / sqrt(r)`` under rsLoRA; ``rank_pattern``/``alpha_pattern``
override r and alpha per module with PEFT's own matching rule. Full tensors saved beside the
low-rank pairs (``modules_to_save``, saved embedding layers) replace the base tensor outright.

Names: PEFT keys look like ``base_model.model.<module>.lora_A.weight``; the tensor they change is
``<module>.weight``. Deltas are computed one module at a time, when asked for.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError
from .checkpoint import Checkpoint

PREFIX = "base_model.model."
# key suffix -> (role, is_embedding); the module name is the key minus the suffix
_LOW_RANK_SUFFIXES = {
    ".lora_A.weight": ("A", False), ".lora_B.weight": ("B", False),
    ".lora_embedding_A": ("A", True), ".lora_embedding_B": ("B", True),
}  # fmt: skip
_UNSUPPORTED = (".lora_magnitude_vector", ".lora_B.bias")


@dataclass(frozen=True)
class LowRank:
    module: str  # PEFT module key, e.g. model.layers.0.self_attn.q_proj
    a_key: str
    b_key: str
    rank: int
    scale: float
    transpose: bool  # fan_in_fan_out layers and embeddings store the weight as (in, out)


class LoraAdapter(Checkpoint):
    """A PEFT LoRA adapter. ``names()`` are the base tensors it changes (``<module>.weight``, or
    the saved name for replaced tensors); ``get(name)`` is the float32 change for a low-rank
    module; ``merged(name, base)`` is what PEFT's ``merge_and_unload`` would leave in the model."""

    format = "peft-lora"
    is_delta = True

    def __init__(self, path: Path, config: dict, store: Checkpoint) -> None:
        super().__init__(path, store.metadata)
        self.config = config
        self.store = store  # the raw adapter tensors
        self.low_rank: dict[str, LowRank] = {}
        self.replaced: dict[str, str] = {}  # base-relative name -> adapter key
        self.saved_base: dict[str, str] = {}  # low-rank name -> adapter key of its saved base layer
        self._read_keys()

    # --- parsing ---------------------------------------------------------------------------------
    def _read_keys(self) -> None:
        halves: dict[str, dict[str, str]] = {}
        embedding: dict[str, bool] = {}
        for key in self.store.names():
            if any(key.endswith(s) or f"{s}." in key for s in _UNSUPPORTED):
                raise CheckpointError(
                    f"{self.path}: adapter tensor {key!r} belongs to a DoRA or LoRA-bias adapter, which taskloc "
                    "does not read; merge it with PEFT (merge_and_unload) and compare the merged model instead."
                )
            rel = key[len(PREFIX):] if key.startswith(PREFIX) else key
            for suffix, (role, is_emb) in _LOW_RANK_SUFFIXES.items():
                if rel.endswith(suffix):
                    module = rel[: -len(suffix)]
                    halves.setdefault(module, {})[role] = key
                    embedding[module] = is_emb
                    break
            else:
                if ".lora_" in rel:
                    raise CheckpointError(f"{self.path}: adapter tensor {key!r} is of a LoRA kind taskloc does not read.")
                name = re.sub(r"\.(base_layer|modules_to_save)(?=\.)", "", rel)
                self.replaced[name] = key
        for module, pair in halves.items():
            if set(pair) != {"A", "B"}:
                have = next(iter(pair.values()))
                raise CheckpointError(f"{self.path}: adapter tensor {have!r} has no lora_{'B' if 'A' in pair else 'A'} partner; the adapter is incomplete.")
            self.low_rank[f"{module}.weight"] = self._low_rank(module, pair["A"], pair["B"], embedding[module])
        # An embedding target also saves its base layer (PEFT's save_embedding_layers, for resized
        # vocabularies): the low-rank change is added to that saved copy, not to the base's tensor.
        for name in set(self.low_rank) & set(self.replaced):
            self.saved_base[name] = self.replaced.pop(name)

    def _low_rank(self, module: str, a_key: str, b_key: str, is_embedding: bool) -> LowRank:
        a_shape, b_shape = self.store.shape(a_key), self.store.shape(b_key)
        if len(a_shape) != 2 or len(b_shape) != 2:
            raise CheckpointError(
                f"{self.path}: LoRA tensor {a_key!r} has shape {a_shape}; only linear and embedding adapters (2-D A and B) are read."
            )
        if a_shape[0] != b_shape[1]:
            raise CheckpointError(f"{self.path}: {a_key!r} has shape {a_shape} but {b_key!r} has shape {b_shape}; their ranks differ.")
        cfg = self.config
        r = _pattern_value(cfg.get("rank_pattern") or {}, module, cfg.get("r", 8))
        alpha = _pattern_value(cfg.get("alpha_pattern") or {}, module, cfg.get("lora_alpha", 8))
        if a_shape[0] != r:
            raise CheckpointError(
                f"{self.path}: {a_key!r} has rank {a_shape[0]} but adapter_config.json gives module {module!r} r={r}; "
                "the config does not belong to these weights."
            )
        scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
        transpose = is_embedding or bool(cfg.get("fan_in_fan_out"))
        return LowRank(module, a_key, b_key, r, scale, transpose)

    # --- Checkpoint interface --------------------------------------------------------------------
    def names(self) -> list[str]:
        return list(self.low_rank) + list(self.replaced)

    def shape(self, name: str) -> tuple[int, ...]:
        if name in self.low_rank:
            lr = self.low_rank[name]
            out_dim, in_dim = self.store.shape(lr.b_key)[0], self.store.shape(lr.a_key)[1]
            return (in_dim, out_dim) if lr.transpose else (out_dim, in_dim)
        if name in self.replaced:
            return self.store.shape(self.replaced[name])
        raise self._unknown(name)

    def dtype(self, name: str) -> torch.dtype:
        if name in self.low_rank:
            return torch.float32  # deltas are computed in float32
        if name in self.replaced:
            return self.store.dtype(self.replaced[name])
        raise self._unknown(name)

    def rank(self, name: str) -> int | None:
        """The adapter rank for a low-rank tensor; None for a fully replaced one."""
        if name not in self.low_rank and name not in self.replaced:
            raise self._unknown(name)
        return self.low_rank[name].rank if name in self.low_rank else None

    def get(self, name: str) -> torch.Tensor:
        """The float32 change ``B @ A * scale`` for a low-rank tensor (same op order as PEFT)."""
        if name in self.replaced:
            raise CheckpointError(f"{self.path}: {name!r} is saved whole, not as a change; it needs the base (use merged()).")
        if name not in self.low_rank:
            raise self._unknown(name)
        lr = self.low_rank[name]
        a = self.store.get(lr.a_key).float()  # (r, in)
        b = self.store.get(lr.b_key).float()  # (out, r)
        product = b @ a  # (out, in)
        return (product.T if lr.transpose else product) * lr.scale

    def merged(self, name: str, base: torch.Tensor) -> torch.Tensor:
        """The tensor after ``merge_and_unload``: base + change (added in the base's dtype, as PEFT
        does), or the saved tensor for a replaced one."""
        if name in self.replaced:
            return self.store.get(self.replaced[name]).to(base.dtype)
        if name in self.saved_base:
            base = self.store.get(self.saved_base[name]).to(base.dtype)
        return base + self.get(name).to(base.dtype)

    def close(self) -> None:
        self.store.close()


def _pattern_value(patterns: dict, module: str, default: float) -> float:
    """PEFT's rule (peft.utils.other.get_pattern_key): the first pattern key K such that the module
    key matches ``(.*\\.)?K$`` wins; otherwise the default."""
    for key, value in patterns.items():
        try:
            if re.match(rf"(.*\.)?({key})$", module):
                return value
        except re.error as exc:
            raise CheckpointError(f"adapter_config.json pattern {key!r} is not a valid regular expression ({exc}).") from None
    return default


def read_adapter_config(folder: Path) -> dict:
    path = folder / "adapter_config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); re-save the adapter.") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} must hold a JSON object.")
    peft_type = config.get("peft_type", "LORA")
    if str(peft_type).upper() != "LORA":
        raise CheckpointError(f"{path} describes a {peft_type} adapter; taskloc reads LoRA adapters only.")
    if config.get("use_dora"):
        raise CheckpointError(f"{path} describes a DoRA adapter (use_dora=true), which taskloc does not read; merge it with PEFT first.")
    for key in ("r", "lora_alpha"):
        value = config.get(key)
        if value is not None and (not isinstance(value, (int, float)) or value <= 0):
            raise CheckpointError(f"{path}: {key}={value!r} must be a positive number.")
    return config
