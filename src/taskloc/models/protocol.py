"""LanguageModel: what every model taskloc trains, scores or probes offers, TinyLM and a wrapped
Hugging Face model (``taskloc.hf.HFModel``) alike.

Code that takes "a model" is typed ``LanguageModel`` and never branches on the class: sizes,
codec, device, hook sites, forward, greedy decoding and the parameter count are all here.
``isinstance(model, LanguageModel)`` checks that the members exist without evaluating them, so a
model whose ``codec`` would raise (an HF folder without tokenizer files) still is one.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol, Self, runtime_checkable

import torch
from torch import nn

from .codec import Codec

_ProtocolMeta = type(Protocol)


class _StaticProtocolMeta(_ProtocolMeta):
    """isinstance() as Python 3.12 does it: members are looked up statically. Python 3.11's
    check calls hasattr, which runs properties, so a raising ``codec`` would escape isinstance."""

    def __instancecheck__(cls, instance: object) -> bool:
        if not getattr(cls, "_is_runtime_protocol", False):
            return super().__instancecheck__(instance)
        missing = object()
        return all(inspect.getattr_static(instance, name, missing) is not missing for name in _MEMBERS)


@runtime_checkable
class LanguageModel(Protocol, metaclass=_StaticProtocolMeta):
    """A causal language model with taskloc's named hook sites (see ``taskloc.hooks``)."""

    @property
    def n_layer(self) -> int:
        """Number of transformer blocks (``blocks.0`` .. ``blocks.{n_layer-1}``)."""

    @property
    def d_model(self) -> int:
        """Width of the residual stream (the last dimension at ``blocks.*.hook_resid_*``)."""

    @property
    def vocab_size(self) -> int:
        """Rows of the unembedding: the last dimension of the logits."""

    @property
    def max_context(self) -> int | None:
        """Longest sequence the model reads (prompt + generated tokens); None when unknown."""

    @property
    def codec(self) -> Codec:
        """How (prompt, target) text becomes this model's token ids."""

    @property
    def device(self) -> torch.device: ...

    def site_names(self) -> list[str]:
        """Every hook site, in forward order."""

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        """idx: (B, T) token ids -> logits (B, T, V), one full pass, no cache."""

    def generate(self, idx: torch.Tensor, max_new_tokens: int, eos_id: int | None = None) -> torch.Tensor:
        """Greedy decoding with a KV cache; see ``greedy_decode`` for the contract."""

    def num_params(self) -> int:
        """Parameters counted once per storage (tied weights once)."""

    # The torch.nn.Module surface that training, checkpoints and deltas use (both models are modules).
    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True) -> Iterator[tuple[str, nn.Parameter]]: ...

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any: ...

    def train(self, mode: bool = True) -> Self: ...

    def eval(self) -> Self: ...


_MEMBERS = ("n_layer", "d_model", "vocab_size", "max_context", "codec", "device", "site_names",
            "__call__", "generate", "num_params",
            "parameters", "named_parameters", "state_dict", "load_state_dict", "train", "eval")

# Runs the model on new tokens, continuing from its cache (None: start afresh); returns the logits
# of those tokens (B, T, V) and the cache to pass next time.
Step = Callable[[torch.Tensor, object | None], tuple[torch.Tensor, object]]


def greedy_decode(step: Step, idx: torch.Tensor, max_new_tokens: int, eos_id: int | None = None) -> torch.Tensor:
    """Greedy decoding: the prompt runs once, then one token per step against the cache.

    idx: (B, T) prompts of equal length. Returns the new tokens (B, n) with n <= max_new_tokens,
    fewer only when every row has emitted ``eos_id``; a row that emitted it is padded with it.
    Callers clip ``max_new_tokens`` to their context first.
    """
    if max_new_tokens <= 0:
        return idx[:, :0]
    logits, cache = step(idx, None)
    out = []
    done = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
    for i in range(max_new_tokens):
        nxt = logits[:, -1].argmax(-1)  # (B,)
        if eos_id is not None:
            nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
            done |= nxt == eos_id
        out.append(nxt)
        if (eos_id is not None and bool(done.all())) or i == max_new_tokens - 1:
            break
        logits, cache = step(nxt[:, None], cache)
    return torch.stack(out, dim=1)  # (B, n)
