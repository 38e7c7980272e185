"""Character-level vocabulary shared by every task: two special ids, then printable ASCII."""
from __future__ import annotations

import torch

from ..errors import DataError

PAD, EOS = 0, 1
CHARS = "".join(chr(c) for c in range(32, 127))  # printable ASCII, space to '~'
_ID = {ch: i + 2 for i, ch in enumerate(CHARS)}
VOCAB_SIZE = len(CHARS) + 2


def encode(text: str) -> list[int]:
    try:
        return [_ID[ch] for ch in text]
    except KeyError as exc:
        raise DataError(
            f"character {exc.args[0]!r} in {text[:40]!r} is outside taskloc's vocabulary "
            "(printable ASCII); remove it from the prompt or target."
        ) from None


def decode(ids: list[int]) -> str:
    """Token ids -> text, stopping at the first EOS; PAD is skipped."""
    out = []
    for i in ids:
        if i == EOS:
            break
        if i >= 2:
            out.append(CHARS[i - 2])
    return "".join(out)


def encode_batch(pairs: list[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pack (prompt, target) pairs for next-token training, right-padded.

    The sequence is prompt + target + EOS. Returns inputs (B, T) = sequence[:-1], labels (B, T) =
    sequence[1:], and loss_mask (B, T), True where the label is a target or EOS token, so the loss
    and exact-match scoring see only the answer. Right padding is harmless under causal attention:
    a pad can only be attended by positions after it, which are all masked out.
    """
    seqs = [(encode(p), encode(t) + [EOS]) for p, t in pairs]
    width = max(len(p) + len(t) for p, t in seqs) - 1
    inputs = torch.full((len(seqs), width), PAD, dtype=torch.long)
    labels = torch.full((len(seqs), width), PAD, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for row, (p, t) in enumerate(seqs):
        full = p + t
        n = len(full) - 1
        inputs[row, :n] = torch.tensor(full[:-1])
        labels[row, :n] = torch.tensor(full[1:])
        mask[row, len(p) - 1 : n] = True
    return inputs, labels, mask
