"""Where each supported Hugging Face family keeps the pieces that taskloc's hook sites name.

Paths are dotted attribute paths: ``layers`` from the HF *base* model (``model.base_model``:
LlamaModel, GPT2Model, BertModel), every other path from one block of that list.

Site conventions (block i = ``layers[i]``; all (B, T, D) unless noted):

============================  ==========================  ========================  ===========================
site                          llama / qwen2 (pre-norm)    gpt2 (pre-norm)           bert (post-norm)
============================  ==========================  ========================  ===========================
blocks.i.hook_resid_pre       input of layers[i]          input of h[i]             input of layer[i]
blocks.i.attn.hook_pattern    softmax(QK^T) in self_attn  softmax(QK^T) in attn     softmax(QK^T) in
                              (B, H, Tq, Tk)              (B, H, Tq, Tk)            attention.self (B,H,Tq,Tk)
blocks.i.hook_attn_out        self_attn output[0]         attn output[0]            attention.output.dense out
                              (after o_proj)              (after c_proj, dropout)   (before add + LayerNorm)
blocks.i.hook_resid_mid       resid_pre + attn_out        resid_pre + attn_out      attention.output out, i.e.
                              (= input of post_attention  (= input of ln_2)         LayerNorm(resid_pre +
                              _layernorm)                                           attn_out)
blocks.i.mlp.hook_post        input of mlp.down_proj:     input of mlp.c_proj:      input of output.dense:
                              act(gate_proj x)*up_proj x  act(c_fc x)  (B, T, M)    act(intermediate.dense x)
                              (B, T, M)                                             (B, T, M)
blocks.i.hook_mlp_out         mlp output (down_proj)      mlp output (c_proj,drop)  output.dense out (before
                                                                                    add + LayerNorm)
blocks.i.hook_resid_post      output of layers[i]         output of h[i]            output of layer[i] (normed)
ln_final.hook_normalized      output of model.norm        output of ln_f            output of the last layer
                              (RMSNorm)                                             (BERT has no final norm; the
                                                                                    last LayerNorm plays its part)
============================  ==========================  ========================  ===========================

So ``ln_final.hook_normalized`` always equals HF's ``hidden_states[-1]``, and
``blocks.{i}.hook_resid_post`` equals ``hidden_states[i + 1]`` for every block whose output HF
reports un-normalised (all but the last in pre-norm families, all of them in BERT).
M is ``config.intermediate_size`` (llama, qwen2, bert) or ``n_inner or 4 * n_embd`` (gpt2).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..registry import Registry


@dataclass(frozen=True)
class Family:
    """How one HF architecture family lays out a block."""

    kind: Literal["causal-lm", "encoder"]  # decides the Auto class (see load.py)
    layers: str  # ModuleList of blocks, from the base model
    attn: str  # module handed to the attention function; its pattern is the site
    attn_out: str  # module whose output (or output[0]) is what attention adds to the residual
    mlp_down: str  # linear whose *input* is the MLP hidden activation (mlp.hook_post)
    mlp_out: str  # module whose output is what the MLP adds to the residual
    final_norm: str | None  # final norm, from the base model; None: post-norm, the last block's output
    resid_mid: str | None  # module whose output is resid_mid; None: computed as resid_pre + attn_out


FAMILIES: Registry[Family] = Registry("model family")

_LLAMA_LIKE = Family(
    kind="causal-lm",
    layers="layers",
    attn="self_attn",
    attn_out="self_attn",
    mlp_down="mlp.down_proj",
    mlp_out="mlp",
    final_norm="norm",
    resid_mid=None,
)
FAMILIES.register("llama")(_LLAMA_LIKE)
FAMILIES.register("qwen2")(_LLAMA_LIKE)  # same module tree as Llama (q/k/v biases differ, not the layout)
FAMILIES.register("gpt2")(
    Family(
        kind="causal-lm",
        layers="h",
        attn="attn",
        attn_out="attn",
        mlp_down="mlp.c_proj",
        mlp_out="mlp",
        final_norm="ln_f",
        resid_mid=None,
    )
)
FAMILIES.register("bert")(
    Family(
        kind="encoder",
        layers="encoder.layer",
        attn="attention.self",
        attn_out="attention.output.dense",
        mlp_down="output.dense",
        mlp_out="output.dense",
        final_norm=None,
        resid_mid="attention.output",
    )
)
