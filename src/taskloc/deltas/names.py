"""Where a tensor sits in a model, read from its name: layer index and module kind.

Covers TinyLM (tok_emb, pos_emb, blocks.i.attn.qkv/out, blocks.i.mlp.fc_in/fc_out, ln_*,
unembed), Llama/Qwen2/Mistral (model.layers.i.self_attn.q_proj, mlp.gate_proj/up_proj/down_proj,
input_layernorm, embed_tokens, lm_head), GPT-2 (transformer.h.i.attn.c_attn/c_proj,
mlp.c_fc/c_proj, ln_1, wte, wpe) and BERT (encoder.layer.i.attention.self.query,
attention.output.dense, intermediate.dense, output.dense, LayerNorm, embeddings.*).
"""
from __future__ import annotations

import re

LAYER = re.compile(r"(?:^|\.)(?:blocks|layers|h|layer)\.(\d+)\.")

# (kind, pattern) tried in order against the full tensor name; the first match wins. Order
# matters: norms before the attention/MLP rules (BERT's attention.output.LayerNorm), attention
# output before the MLP output rule (GPT-2's attn.c_proj vs mlp.c_proj, BERT's
# attention.output.dense vs output.dense).
KIND_RULES: list[tuple[str, re.Pattern[str]]] = [(k, re.compile(p)) for k, p in [
    ("norm", r"(^|\.)(ln_\w*|ln\d*|\w*layer_?norm\w*|\w*_norm|norm\w*|rms_?norm\w*)(\.|$)|LayerNorm"),
    ("embed", r"(^|\.)(tok_emb|pos_emb|embed_tokens|embed_positions|wte|wpe|word_embeddings|position_embeddings|token_type_embeddings|embeddings?)(\.|$)"),
    ("unembed", r"(^|\.)(unembed|lm_head|embed_out|output_layer)(\.|$)"),
    ("attn_qkv", r"(^|\.)(qkv|c_attn|query_key_value|qkv_proj|Wqkv|in_proj)(\.|_weight|_bias|$)"),
    ("attn_q", r"(^|\.)(q_proj|query|q|wq)(\.|$)"),
    ("attn_k", r"(^|\.)(k_proj|key|k|wk)(\.|$)"),
    ("attn_v", r"(^|\.)(v_proj|value|v|wv)(\.|$)"),
    ("attn_out", r"(attn|attention)\w*\.(out|o_proj|c_proj|out_proj|dense|wo|output\.dense)(\.|$)|(^|\.)o_proj(\.|$)"),
    ("mlp_in", r"(^|\.)(fc_in|gate_proj|up_proj|c_fc|fc1|w1|w3|gate_up_proj|dense_h_to_4h)(\.|$)|intermediate\.dense"),
    ("mlp_out", r"(^|\.)(fc_out|down_proj|fc2|w2|dense_4h_to_h)(\.|$)|mlp\.c_proj|(^|\.)output\.dense"),
]]  # fmt: skip
KINDS = [k for k, _ in KIND_RULES] + ["other"]


def layer_of(name: str) -> int | None:
    """The block index in names like ``blocks.3.``, ``layers.3.``, ``h.3.``, ``layer.3.``; None
    for tensors outside the blocks (embeddings, final norm, head)."""
    m = LAYER.search(name)
    return int(m.group(1)) if m else None


def kind_of(name: str) -> str:
    """One of KINDS: embed, unembed, norm, attn_q/k/v, attn_qkv (fused), attn_out, mlp_in, mlp_out, other."""
    for kind, pattern in KIND_RULES:
        if pattern.search(name):
            return kind
    return "other"
