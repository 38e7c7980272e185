"""A steering vector and its file: safetensors holding the vector (D,) and, as metadata, the
model fingerprint, the layer, the number of pairs, the method and the convention (see the
package docstring), so a vector is never applied to a model, or at a site, it was not made for."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from ..errors import CheckpointError, ConfigError
from ..io import MemoryCheckpoint, fingerprint
from ..io.atomic import write_safetensors
from ..models import LanguageModel, weights_of

CONVENTION = ("taskloc-steer-v1: read at blocks.{L}.hook_resid_post (output of block L, 0-based; HF hidden_states[L+1]), "
              "added at the same site's last position in every forward pass; v = mean(h_positive - h_negative), "
              "gamma > 0 moves toward the positive completions")
META_KEY = "taskloc-steering"


def site_of(layer: int) -> str:
    """The site a vector of ``layer`` is read at and added to."""
    return f"blocks.{layer}.hook_resid_post"


def check_layer(model: LanguageModel, layer: int) -> int:
    if not 0 <= layer < model.n_layer:
        raise ConfigError(f"layer {layer} is out of range: the model has {model.n_layer} blocks, so the layer must be "
                          f"0..{model.n_layer - 1} (the output of that block is read and steered).")
    return layer


def model_fingerprint(model: LanguageModel) -> str:
    """Content fingerprint of the model's weights (sampled bytes of every tensor)."""
    return fingerprint(MemoryCheckpoint(weights_of(model)))


@dataclass
class SteeringVector:
    vector: torch.Tensor  # (D,) float32, on the CPU
    layer: int
    n_pairs: int
    method: str
    model_fingerprint: str
    convention: str = CONVENTION

    @property
    def d_model(self) -> int:
        return int(self.vector.shape[0])

    @property
    def site(self) -> str:
        return site_of(self.layer)

    @property
    def norm(self) -> float:
        return float(self.vector.norm())

    def meta(self) -> dict:
        return {"layer": self.layer, "n_pairs": self.n_pairs, "method": self.method, "d_model": self.d_model,
                "model_fingerprint": self.model_fingerprint, "convention": self.convention}

    def save(self, path: Path) -> Path:
        """Written atomically: a failed write leaves no partial file."""
        write_safetensors(Path(path), {"vector": self.vector.detach().float().cpu().contiguous()}, {META_KEY: json.dumps(self.meta())})
        return Path(path)

    def check_fits(self, model: LanguageModel, source: str = "the vector") -> None:
        """A vector from a model of another width, or for a block the model lacks, is an error."""
        if self.d_model != model.d_model:
            raise ConfigError(f"{source} has {self.d_model} entries but the model's hidden size is {model.d_model}; "
                              "it was extracted from a different model; extract one from this model.")
        if self.layer >= model.n_layer:
            raise ConfigError(f"{source} is for layer {self.layer} but the model has {model.n_layer} blocks; "
                              "extract one from this model.")


def load_vector(path: Path) -> SteeringVector:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"steering vector {path} does not exist; write one with `taskloc steer extract`.")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            vector = f.get_tensor("vector") if "vector" in f.keys() else None  # noqa: SIM118
    except Exception as exc:  # safetensors raises several types for a damaged file
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc}); pass a vector written by `taskloc steer extract`.") from None
    if META_KEY not in meta or vector is None:
        raise CheckpointError(f"{path} is not a taskloc steering vector (no {META_KEY!r} metadata or no 'vector' tensor); "
                              "write one with `taskloc steer extract`.")
    try:
        info = json.loads(meta[META_KEY])
        out = SteeringVector(vector.float(), int(info["layer"]), int(info["n_pairs"]), str(info["method"]),
                             str(info["model_fingerprint"]), str(info["convention"]))
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"{path} has damaged steering metadata; extract the vector again.") from None
    if vector.dim() != 1 or not torch.isfinite(vector).all():
        raise CheckpointError(f"{path}: the vector must be one finite row of hidden-size entries; extract it again.")
    if out.convention != CONVENTION:
        raise CheckpointError(f"{path} was written under another steering convention ({out.convention[:40]}...); extract it again.")
    return out
