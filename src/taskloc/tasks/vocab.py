"""Character-level vocabulary shared by every task: two special ids, then printable ASCII."""
from __future__ import annotations

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
