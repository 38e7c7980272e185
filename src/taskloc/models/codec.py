"""How (prompt, target) text becomes token ids for a model.

TinyLM reads characters (``CHAR_CODEC``); a Hugging Face model reads its own tokenizer's ids
(``TokenizerCodec``). Both pack a batch the same way, so training and exact-match scoring are one
code path for every model: ``codec_of(model).encode_batch(pairs)``.
"""
from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any, Protocol

import torch

from ..errors import DataError
from ..tasks.vocab import EOS, PAD, VOCAB_SIZE, encode

if TYPE_CHECKING:
    from .protocol import LanguageModel


class Codec(Protocol):
    vocab_size: int
    fingerprint: str

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
    fingerprint = "char-v1"

    def encode_batch(self, pairs: list[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return pack([(encode(p), encode(t) + [EOS]) for p, t in pairs], PAD)


class TokenizerCodec:
    """A Hugging Face tokenizer. The answer's ids are the target's tokens *in context*: the tail
    of tokenize(prompt + target) after tokenize(prompt), as evaluation harnesses do, so a
    tokenizer that marks word starts (SentencePiece's "▁", a GPT-2 prefix space) gives the answer
    the ids the model would produce after that prompt. When the prompt's tokens are not a prefix
    of the joint tokens (a merge across the boundary), target is tokenized alone. The prompt
    starts with whatever special tokens the tokenizer itself puts first (Llama's BOS); the answer
    ends with its EOS (or SEP). Padding reuses the stop id, which every model can embed; padded
    positions are masked out of loss and scoring anyway."""

    def __init__(self, tokenizer: Any, source: str = "the model") -> None:
        stop = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
        if stop is None:
            raise DataError(f"the tokenizer of {source} defines no eos_token, so an answer has no end to score; "
                            "set eos_token in its tokenizer_config.json.")
        self.tokenizer, self.stop = tokenizer, int(stop)
        self.prefix = _leading_special_ids(tokenizer)
        self.vocab_size = len(tokenizer)

    def _ids(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def encode_batch(self, pairs: list[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        prompts = self._ids([p for p, _ in pairs])
        joint = self._ids([p + t for p, t in pairs])
        seqs = []
        for (_, target), p, j in zip(pairs, prompts, joint):
            answer = j[len(p):] if j[:len(p)] == p and len(j) > len(p) else self._ids([target])[0]
            seqs.append((self.prefix + p, answer + [self.stop]))
        return pack(seqs, self.stop)

    @property
    def fingerprint(self) -> str:
        """Identifies the encoding (vocabulary, special ids), for cache keys of trained artefacts."""
        probe = "A:12+34=\u2581 xy[Q]|z>"
        ids = self.tokenizer(probe, add_special_tokens=True)["input_ids"]
        blob = json.dumps([type(self.tokenizer).__name__, self.vocab_size, self.stop, self.prefix, ids])
        return "tok:" + hashlib.sha256(blob.encode()).hexdigest()[:16]


def _leading_special_ids(tokenizer: Any) -> list[int]:
    """The ids the tokenizer puts before a text on its own (e.g. [BOS] for Llama, [] for GPT-2)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for i in range(len(full) - len(plain) + 1):
        if full[i:i + len(plain)] == plain:
            return [int(x) for x in full[:i]]
    return []


def no_tokenizer_message(source: str) -> str:
    return (f"{source} has no tokenizer, so text cannot be encoded; "
            "add its tokenizer files (tokenizer.json, tokenizer_config.json) to the folder.")


CHAR_CODEC = CharCodec()


def codec_of(model: LanguageModel) -> Codec:
    """The codec a model reads (TinyLM: characters; an HF model: its tokenizer); the same as
    ``model.codec``, which ``LanguageModel`` requires. A model without a tokenizer raises there,
    never falling back to characters."""
    return model.codec
