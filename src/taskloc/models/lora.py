"""LoRA fine-tuning (Hu et al. 2021): an imposed low-rank update W + scale * B @ A on a model's
linear layers, trained with the base frozen, then merged into plain weights.

The adapters are attached as ``torch.nn.utils.parametrize`` parametrizations of each chosen
``nn.Linear.weight``, so the model's own forward (TinyLM or a Hugging Face model) runs unchanged
and the ordinary training loop trains them: the mask ``attach`` returns lets only A and B move.
``merge`` folds them in and removes the parametrizations, leaving the architecture's usual state
dict, whose difference from the base is the low-rank delta the weight-delta study analyses.

Initialisation follows the paper: A random (Kaiming-uniform, as PEFT does), B zero, so the
adapted model starts exactly at the base.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import ConfigError

# Output heads and embeddings stay out: LoRA's usual targets are the attention and MLP matrices.
_NEVER = ("unembed", "lm_head", "emb", "wte", "wpe")


@dataclass(frozen=True)
class LoraSpec:
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ()  # substrings of module names; empty: every linear layer but the head
    seed: int = 0  # draws every A (its own generator: the adapters do not depend on what ran before)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def to_dict(self) -> dict:
        return {**asdict(self), "targets": list(self.targets)}


class LowRankUpdate(nn.Module):
    """The parametrization W -> W + scale * B @ A of one linear layer's weight (out, in)."""

    def __init__(self, out_features: int, in_features: int, rank: int, scale: float, generator: torch.Generator) -> None:
        super().__init__()
        self.scale = scale
        self.A = nn.Parameter(torch.empty(rank, in_features))  # (r, in)
        self.B = nn.Parameter(torch.zeros(out_features, rank))  # (out, r): zero, so training starts at the base
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5), generator=generator)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.scale * (self.B @ self.A).to(weight.dtype)  # (out, in)


def target_layers(model: nn.Module, spec: LoraSpec) -> dict[str, nn.Linear]:
    """The linear layers LoRA adapts, by module name."""
    chosen = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)
              and not any(part in name.split(".")[-1] for part in _NEVER)
              and (not spec.targets or any(t in name for t in spec.targets))}
    if not chosen and not spec.targets:
        raise ConfigError("LoRA adapts nn.Linear layers and this model has none outside its head (e.g. GPT-2's Conv1D "
                          "layers); fine-tune it with another regime.")
    if not chosen:
        raise ConfigError(f"LoRA targets {list(spec.targets)} match no linear layer of the model; name parts of its "
                          "module names (e.g. qkv, fc_in, q_proj) or leave the list empty for every linear layer.")
    return chosen


def attach(model: nn.Module, spec: LoraSpec) -> dict[str, torch.Tensor]:
    """Attach adapters in place; returns the training mask (parameter name -> all-True tensor for
    every A and B), under which ``train`` freezes everything else."""
    if spec.rank < 1 or not spec.alpha > 0:
        raise ConfigError(f"LoRA rank={spec.rank} must be >= 1 and alpha={spec.alpha} positive.")
    generator = torch.Generator().manual_seed(spec.seed)
    for layer in target_layers(model, spec).values():  # module order: the same draws every time
        out_f, in_f = layer.weight.shape
        # scale stays alpha / spec.rank even where a small layer caps the rank: one scale for the whole model
        update = LowRankUpdate(out_f, in_f, min(spec.rank, out_f, in_f), spec.scale, generator).to(layer.weight.device)
        parametrize.register_parametrization(layer, "weight", update)
    return {name: torch.ones(p.shape, dtype=torch.bool) for name, p in model.named_parameters()
            if name.endswith((".A", ".B")) and ".parametrizations." in name}


def merge(model: nn.Module) -> None:
    """Fold every adapter into its weight and drop the parametrizations (the model's state dict
    then has its usual names)."""
    for module in list(model.modules()):
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
