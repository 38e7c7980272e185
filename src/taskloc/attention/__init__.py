"""Attention kernels chosen by name; one registry serves TinyLM and Hugging Face models."""
from .kernels import ATTENTION, AttentionKernel, causal_mask, dense_attention

__all__ = ["ATTENTION", "AttentionKernel", "causal_mask", "dense_attention"]
