"""How (prompt, target) text becomes token ids for a model.

TinyLM reads characters (``CHAR_CODEC``); a Hugging Face model reads its own tokenizer's ids
(``TokenizerCodec``). Both pack a batch the same way, so training and exact-match scoring are one
code path for every model: ``codec_of(model).encode_batch(pairs)``.
"""
from __future__ import annotations

from typing import Any, Protocol

import torch

from ..errors import DataError
from .vocab import EOS, PAD, VOCAB_SIZE, encode


class Codec(Protocol):
    vocab_size: int

    def encode_batch(self, pairs: list[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...


def pack(seqs: list[tuple[list[int], list[int]]], pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pack (prompt ids, answer ids ending in the stop token) for next-token training, right-padded.

    Returns inputs (B, T) = sequence[:-1], labels (B, T) = sequence[1:], and loss_mask (B, T), True
    where the label is an answer token (the stop token included), so the loss and exact-match
    scoring see only the answer. Right padding is harmless under causal attention: a pad can only
    be attended by positions after it, which are all masked out.
    """
    width = max(len(p) + len(t) for p, t in seqs) - 1
    inputs = torch.full((len(seqs), width), pad, dtype=torch.long)
    labels = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for row, (p, t) in enumerate(seqs):
        full = p + t
        n = len(full) - 1
        inputs[row, :n] = torch.tensor(full[:-1])
        labels[row, :n] = torch.tensor(full[1:])
        mask[row, len(p) - 1 : n] = True
    return inputs, labels, mask


class CharCodec:
    """taskloc's character vocabulary: PAD, EOS, then printable ASCII."""

    vocab_size = VOCAB_SIZE

    def encode_batch(self, pairs: list[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return pack([(encode(p), encode(t) + [EOS]) for p, t in pairs], PAD)


class TokenizerCodec:
    """A Hugging Face tokenizer. Prompt and target are tokenized separately (so the answer's tokens
    are exactly the target's, never merged with the prompt's last characters); the prompt starts
    with the tokenizer's BOS when it has one and the answer ends with its EOS."""

    def __init__(self, tokenizer: Any, source: str = "the model") -> None:
        stop = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
        if stop is None:
            raise DataError(f"the tokenizer of {source} defines no eos_token, so an answer has no end to score; "
                            "set eos_token in its tokenizer_config.json.")
        self.tokenizer, self.stop = tokenizer, int(stop)
        self.pad = int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else self.stop
        self.bos = [int(tokenizer.bos_token_id)] if tokenizer.bos_token_id is not None else []
        self.vocab_size = len(tokenizer)

    def encode_batch(self, pairs: list[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        prompts = self.tokenizer([p for p, _ in pairs], add_special_tokens=False)["input_ids"]
        targets = self.tokenizer([t for _, t in pairs], add_special_tokens=False)["input_ids"]
        return pack([(self.bos + p, t + [self.stop]) for p, t in zip(prompts, targets)], self.pad)


CHAR_CODEC = CharCodec()


def codec_of(model: Any) -> Codec:
    """The codec a model reads: its own ``codec`` attribute (HF models), else characters (TinyLM)."""
    return getattr(model, "codec", None) or CHAR_CODEC
