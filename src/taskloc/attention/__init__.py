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
