"""Attention kernels, chosen by name through a registry.

A kernel maps (q, k, v) to the attended values. It receives the block's ``hook_pattern`` site and
must pass the attention pattern through it when the site is active (a hook is attached); when it
is not, a kernel is free to use a fused implementation that never materialises the pattern.
The sparse-attention work adds kernels here.
"""
from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F

from ..hooks import HookPoint
from ..registry import Registry


class AttentionKernel(Protocol):
    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern_site: HookPoint) -> torch.Tensor:
        """q: (B, H, Tq, Dh); k, v: (B, H, Tk, Dh) with Tk >= Tq, the queries being the last Tq
        positions (Tk - Tq cached keys precede them). Returns (B, H, Tq, Dh)."""
        ...


ATTENTION: Registry[AttentionKernel] = Registry("attention kernel")


def causal_mask(t_q: int, t_k: int, device: torch.device) -> torch.Tensor:
    """(Tq, Tk) bool, True where query i (at absolute position Tk-Tq+i) may attend key j."""
    offset = t_k - t_q
    rows = torch.arange(t_q, device=device)[:, None] + offset
    cols = torch.arange(t_k, device=device)[None, :]
    return cols <= rows


@ATTENTION.register("dense")
def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern_site: HookPoint) -> torch.Tensor:
    t_q, t_k = q.shape[-2], k.shape[-2]
    if not pattern_site.active:
        # Fused path: no hook reads the pattern, so never build the (Tq, Tk) matrix.
        if t_q == t_k:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(t_q, t_k, q.device))
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, H, Tq, Tk)
    scores = scores.masked_fill(~causal_mask(t_q, t_k, q.device), float("-inf"))
    pattern = pattern_site(torch.softmax(scores, dim=-1))  # (B, H, Tq, Tk), rows sum to 1
    return pattern @ v
