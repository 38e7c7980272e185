"""The JSONL files the steering verbs read: pairs ({"prompt", "positive", "negative"} per line)
and prompts ({"prompt"} per line). Every problem is a DataError naming the file, the line and the
fix, raised before any model is loaded."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import DataError
from .extract import Pair, check_pairs

PAIR_FIELDS = ("prompt", "positive", "negative")


def _records(path: Path, what: str, example: str) -> list[tuple[int, dict]]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} file {path} does not exist; give a JSONL file with one {example} per line.")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise DataError(f"{path} line {n} is not JSON; each line must be an object like {example}.") from None
        if not isinstance(record, dict):
            raise DataError(f"{path} line {n} is not a JSON object; each line must be an object like {example}.")
        out.append((n, record))
    if not out:
        raise DataError(f"{what} file {path} is empty; give one {example} per line.")
    return out


def _text(path: Path, n: int, record: dict, key: str, example: str) -> str:
    value = record.get(key)
    if not isinstance(value, str) or not value:
        state = "is missing" if key not in record else "is empty" if value == "" else f"is not a string ({value!r})"
        raise DataError(f"{path} line {n}: field {key!r} {state}; each line must be an object like {example}.")
    return value


def read_pairs(path: Path) -> list[Pair]:
    example = '{"prompt": "...", "positive": "...", "negative": "..."}'
    pairs = [Pair(*(_text(path, n, r, k, example) for k in PAIR_FIELDS)) for n, r in _records(path, "pairs", example)]
    check_pairs(pairs, str(path))
    return pairs


def read_prompts(path: Path) -> list[str]:
    example = '{"prompt": "..."}'
    return [_text(path, n, r, "prompt", example) for n, r in _records(path, "prompts", example)]
