"""Device choice: CUDA when present, else CPU. Nothing in taskloc assumes a GPU."""
from __future__ import annotations

import torch

from .errors import ConfigError


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {requested} was asked for but no CUDA device is visible; use --device cpu or auto.")
    if requested != "cpu" and not requested.startswith("cuda"):
        raise ConfigError(f"unknown device {requested!r}; use auto, cpu or cuda[:N].")
    return torch.device(requested)
