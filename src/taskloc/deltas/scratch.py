"""Reused scratch tensors for the streaming passes.

A fresh array costs more in page faults than the elementwise op that fills it, so every temporary
of the hot loop (a block's delta, bucket ids, weights, flags) lives in one buffer per role that
grows to the largest size asked for and is then reused.
"""
from __future__ import annotations

import torch


class Scratch:
    def __init__(self, device: torch.device = torch.device("cpu")) -> None:
        self.device = device
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, role: str, n: int, dtype: torch.dtype, device: torch.device | None = None) -> torch.Tensor:
        """A 1-D tensor of ``n`` entries for ``role``; its contents are whatever was there before."""
        device = device or self.device
        buf = self._buffers.get(role)
        if buf is None or buf.numel() < n or buf.dtype != dtype or buf.device != device:
            buf = self._buffers[role] = torch.empty(max(n, 1), dtype=dtype, device=device)
        return buf[:n]
