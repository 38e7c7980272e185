"""Attention kernels chosen by name; one registry serves TinyLM and Hugging Face models."""
from .kernels import (
    ATTENTION,
    AttentionKernel,
    PatternSite,
    attention_bias,
    causal_mask,
    dense_attention,
    grouped_scores,
    grouped_values,
    kv_groups,
)

__all__ = [
    "ATTENTION",
    "AttentionKernel",
    "PatternSite",
    "attention_bias",
    "causal_mask",
    "dense_attention",
    "grouped_scores",
    "grouped_values",
    "kv_groups",
]

from .flops import FlopLedger, causal_pairs
from .patterns import PATTERNS, PatternSpec, Selection, select
from .sparse import SparseAttention, sparse_kernel

__all__ += ["PATTERNS", "FlopLedger", "PatternSpec", "Selection", "SparseAttention", "causal_pairs", "select",
            "sparse_kernel"]
