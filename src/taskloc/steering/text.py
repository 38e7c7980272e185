"""Text <-> token ids for steering, through each model's own codec (TinyLM: characters; an HF
model: its tokenizer), so extraction, generation and calibration encode text one way."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..models import LanguageModel
from ..models.codec import TokenizerCodec


def prompt_ids(model: LanguageModel, prompt: str) -> list[int]:
    """The ids the model reads for ``prompt`` alone (with the tokenizer's leading special tokens)."""
    inputs, _, mask = model.codec.encode_batch([(prompt, "")])  # an empty answer: inputs are the prompt
    n = int(mask[0].nonzero()[-1]) + 1
    return inputs[0, :n].tolist()


def eos_id(model: LanguageModel) -> int:
    codec = model.codec
    if isinstance(codec, TokenizerCodec):
        return codec.stop
    from ..tasks.vocab import EOS

    return EOS


def decode_ids(model: LanguageModel, ids: Sequence[int]) -> str:
    """Generated ids -> text, cut at the first stop token."""
    stop = eos_id(model)
    ids = list(ids)
    if stop in ids:
        ids = ids[: ids.index(stop)]
    codec = model.codec
    if isinstance(codec, TokenizerCodec):
        return codec.tokenizer.decode(ids, skip_special_tokens=True)
    from ..tasks.vocab import decode

    return decode(ids)


def generated_length(ids: Sequence[int], stop: int) -> int:
    """Tokens the model produced for one row: up to and including its first stop token."""
    ids = list(ids)
    return ids.index(stop) + 1 if stop in ids else len(ids)


def group_by_length(rows: list[list[int]]) -> list[tuple[list[int], torch.Tensor]]:
    """Rows of equal length batched together (greedy decoding takes equal-length prompts):
    [(row indices, ids (B, T))], in order of first appearance."""
    groups: dict[int, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(len(row), []).append(i)
    return [(idx, torch.tensor([rows[i] for i in idx], dtype=torch.long)) for idx in groups.values()]
