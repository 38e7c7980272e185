"""Local Hugging Face models with taskloc's hook sites.

``load_hf_model(path)`` loads a Llama, Qwen2 or GPT-2 causal LM, or a BERT encoder, from a local
folder (offline, never remote code) and returns an ``HFModel``: the HF model plus one HookPoint
per TinyLM site name (``blocks.{i}.hook_resid_post``, ``blocks.{i}.mlp.hook_post``,
``blocks.{i}.attn.hook_pattern``, ``ln_final.hook_normalized``, ...). Each family's module tree is
mapped onto those names by PyTorch hooks on the HF modules (table in ``families.py``), so
``taskloc.hooks.hooks`` and ``capture`` read and replace activations exactly as on TinyLM.

transformers is imported only when a model is loaded; taskloc runs without it otherwise.
"""
from .families import FAMILIES, Family
from .load import load_hf_model
from .wrapper import HFModel, site_names

__all__ = ["FAMILIES", "Family", "HFModel", "load_hf_model", "site_names"]
