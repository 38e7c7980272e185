"""TinyLM: a small decoder-only transformer (pre-norm GPT) with named hook sites.

Sites, per block i (TransformerLens names):
    blocks.{i}.hook_resid_pre      residual stream entering the block        (B, T, D)
    blocks.{i}.attn.hook_pattern   attention probabilities                   (B, H, Tq, Tk)
    blocks.{i}.hook_attn_out       attention output added to the residual    (B, T, D)
    blocks.{i}.hook_resid_mid      residual after attention                  (B, T, D)
    blocks.{i}.mlp.hook_post       MLP hidden activation after nonlinearity  (B, T, M)
    blocks.{i}.hook_mlp_out        MLP output added to the residual          (B, T, D)
    blocks.{i}.hook_resid_post     residual stream leaving the block         (B, T, D)
and ``ln_final.hook_normalized`` (B, T, D), the input of the unembedding.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import ATTENTION
from ..config import Config, field
from ..errors import ConfigError
from ..hooks import HookPoint, name_sites, site_names
from .codec import CHAR_CODEC

KVCache = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: k, v of shape (B, H, T_past, Dh)


@dataclass
class ModelConfig(Config):
    section = "model."
    vocab_size: int = field(64, "number of token ids")
    block_size: int = field(64, "longest sequence (prompt + answer) the model can read")
    n_layer: int = field(4, "number of transformer blocks")
    n_head: int = field(4, "attention heads per block")
    d_model: int = field(128, "residual stream width")
    d_mlp: int = field(512, "MLP hidden width")
    activation: Literal["relu", "gelu", "silu"] = field("gelu", "MLP nonlinearity")
    attention: str = field("dense", "attention kernel name (see taskloc.attention.ATTENTION)")
    positional: Literal["rope", "learned"] = field(
        "rope", "rotary position encoding on q/k (relative: lookup circuits form fast) or learned absolute embeddings")
    hook_sites: bool = field(True, "place hook sites in the forward pass (False only for benchmarks)")

    def validate(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "d_model", "d_mlp"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{self.key(name)}={getattr(self, name)} must be at least 1.")
        if self.d_model % self.n_head:
            raise ConfigError(
                f"{self.key('d_model')}={self.d_model} is not divisible by {self.key('n_head')}={self.n_head}; "
                "pick a head count that divides the width."
            )
        ATTENTION.get(self.attention)  # unknown kernel -> did-you-mean error


ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu}


def rotary_table(block_size: int, head_dim: int, base: float = 10000.0) -> torch.Tensor:
    """(block_size, head_dim // 2, 2): cos and sin of the angle t * base^(-2i / head_dim) by which
    position t turns channel pair i (channels 2i and 2i + 1) under rotary position encoding."""
    inv_freq = base ** (-torch.arange(0, head_dim - head_dim % 2, 2, dtype=torch.float32) / head_dim)
    angles = torch.arange(block_size, dtype=torch.float32)[:, None] * inv_freq[None, :]  # (T, Dh/2)
    return torch.stack((angles.cos(), angles.sin()), dim=-1)


def apply_rotary(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive channel pairs of x (..., Dh) by complex unit numbers ``turns`` (complex,
    broadcasting against (..., Dh // 2)): pair (a, b) becomes (a cos - b sin, a sin + b cos).
    A trailing odd channel, if any, is left unrotated.

    Pairs are read as complex numbers, so forward and backward are each one complex multiply
    over the tensor; half precision is rotated in float32 and rounded back once."""
    paired = 2 * turns.shape[-1]
    head = x[..., :paired] if x.dtype in (torch.float32, torch.float64) else x[..., :paired].float()
    if paired < x.shape[-1]:
        head = head.contiguous()  # an odd row width would split pairs across rows of the view
    rotated = torch.view_as_real(torch.view_as_complex(head.unflatten(-1, (paired // 2, 2))) * turns).flatten(-2)
    rotated = rotated.to(x.dtype)
    return rotated if paired == x.shape[-1] else torch.cat((rotated, x[..., paired:]), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.rope = cfg.positional == "rope"
        if self.rope:
            # A buffer, not a parameter: derived from the config, so kept out of checkpoints and
            # deltas. Real (cos, sin) pairs rather than complex, so model.to(dtype) casts it sanely.
            table = rotary_table(cfg.block_size, cfg.d_model // cfg.n_head)  # (T, Dh/2, 2)
            self.register_buffer("rope_table", table, persistent=False)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)
        self.kernel = ATTENTION.get(cfg.attention)
        self.hook_pattern = HookPoint()

    def forward(
        self,
        x: torch.Tensor,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
        mask: torch.Tensor | None = None,
    ):
        """x: (B, T, D); past: cached k, v (B, H, T_past, Dh); mask: optional boolean or additive
        mask broadcasting to (B, H, T, T_past + T), e.g. padding (the causal rule is always on)."""
        b, t, d = x.shape
        h, dh = self.n_head, d // self.n_head
        # Split as nanoGPT does: each backward is one concatenation into the projection's layout.
        qk, v = self.qkv(x).split((2 * d, d), dim=-1)  # (B, T, 2D), (B, T, D)
        qk = qk.view(b, t, 2 * h, dh)  # q's heads, then k's
        if self.rope:
            start = past[0].shape[2] if past is not None else 0
            turns = torch.view_as_complex(self.rope_table[start : start + t].float())[:, None]  # (T, 1, Dh/2)
            qk = apply_rotary(qk, turns)  # q and k in one call
        q, k = (z.transpose(1, 2) for z in qk.split(h, dim=2))  # 2 x (B, H, T, Dh)
        v = v.view(b, t, h, dh).transpose(1, 2)  # (B, H, T, Dh)
        if past is not None:
            k = torch.cat([past[0], k], dim=2)  # (B, H, T_past + T, Dh)
            v = torch.cat([past[1], v], dim=2)
        y = self.kernel(q, k, v, self.hook_pattern, mask)  # (B, H, T, Dh)
        y = y.transpose(1, 2).reshape(b, t, d)  # heads back side by side: (B, T, D)
        return self.out(y), (k, v)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.fc_in = nn.Linear(cfg.d_model, cfg.d_mlp)
        self.fc_out = nn.Linear(cfg.d_mlp, cfg.d_model)
        self.act = ACTIVATIONS[cfg.activation]
        self.hook_post = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(self.hook_post(self.act(self.fc_in(x))))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        # Modules are registered in forward order so site listings read top to bottom.
        self.hook_resid_pre = HookPoint()
        self.ln_attn = nn.LayerNorm(cfg.d_model)
        self.attn = Attention(cfg)
        self.hook_attn_out = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.ln_mlp = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)
        self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()
        self.sites = cfg.hook_sites

    def forward(self, x: torch.Tensor, past=None):
        if not self.sites:  # benchmark baseline: the same arithmetic with no site calls
            a, kv = self.attn(self.ln_attn(x), past)
            x = x + a
            return x + self.mlp(self.ln_mlp(x)), kv
        x = self.hook_resid_pre(x)
        a, kv = self.attn(self.ln_attn(x), past)
        x = self.hook_resid_mid(x + self.hook_attn_out(a))
        x = self.hook_resid_post(x + self.hook_mlp_out(self.mlp(self.ln_mlp(x))))
        return x, kv


class FinalNorm(nn.LayerNorm):
    def __init__(self, d: int) -> None:
        super().__init__(d)
        self.hook_normalized = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hook_normalized(super().forward(x))


class TinyLM(nn.Module):
    codec = CHAR_CODEC  # TinyLM reads taskloc's character vocabulary

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.d_model) if cfg.positional == "learned" else None
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_final = FinalNorm(cfg.d_model)
        self.unembed = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.apply(self._init)
        # GPT-2 scaling: residual-writing projections shrink with depth so the stream stays O(1).
        for name, p in self.named_parameters():
            if name.endswith(("attn.out.weight", "mlp.fc_out.weight")):
                nn.init.normal_(p, std=0.02 / (2 * cfg.n_layer) ** 0.5)
        name_sites(self)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None, return_cache: bool = False):
        """idx: (B, T) token ids. With ``cache`` (from a previous call) the T tokens continue those
        sequences. Returns logits (B, T, V), and the new cache when ``return_cache``."""
        _b, t = idx.shape
        start = cache[0][0].shape[2] if cache else 0
        if start + t > self.cfg.block_size:
            raise ConfigError(
                f"sequence of {start + t} tokens exceeds model.block_size={self.cfg.block_size}; "
                "shorten the prompt or raise block_size."
            )
        x = self.tok_emb(idx)  # (B, T, D)
        if self.pos_emb is not None:
            x = x + self.pos_emb(torch.arange(start, start + t, device=idx.device))
        new_cache: KVCache = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, cache[i] if cache else None)
            new_cache.append(kv)
        logits = self.unembed(self.ln_final(x))  # (B, T, V)
        return (logits, new_cache) if return_cache else logits

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, eos_id: int | None = None) -> torch.Tensor:
        """Greedy decoding with a KV cache. idx: (B, T) prompts of equal length. Returns the new
        tokens (B, <= max_new_tokens); a row that emitted ``eos_id`` is padded with eos_id."""
        max_new_tokens = min(max_new_tokens, self.cfg.block_size - idx.shape[1])
        logits, cache = self(idx, return_cache=True)
        out = []
        done = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
        for step in range(max_new_tokens):
            nxt = logits[:, -1].argmax(-1)  # (B,)
            if eos_id is not None:
                nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
                done |= nxt == eos_id
            out.append(nxt)
            if (eos_id is not None and bool(done.all())) or step == max_new_tokens - 1:
                break
            logits, cache = self(nxt[:, None], cache=cache, return_cache=True)
        return torch.stack(out, dim=1) if out else idx[:, :0]

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- LanguageModel (models/protocol.py) sizes and placement -----------------------------------

    @property
    def n_layer(self) -> int:
        return self.cfg.n_layer

    @property
    def d_model(self) -> int:
        return self.cfg.d_model

    @property
    def vocab_size(self) -> int:
        return self.cfg.vocab_size

    @property
    def max_context(self) -> int:
        return self.cfg.block_size

    @property
    def device(self) -> torch.device:
        return self.tok_emb.weight.device

    def site_names(self) -> list[str]:
        return site_names(self)
