"""The prompts file of `taskloc activations`: JSONL, one object per line with ``text`` (str),
``difficulty`` (a number) and an optional ``label`` ("familiar" or "unfamiliar").

Every line is checked before a model is loaded, so a bad file ends with one line naming the line
number and the field, and nothing is written.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError

LABELS = ("familiar", "unfamiliar")


@dataclass(frozen=True)
class Prompts:
    texts: list[str]
    difficulty: np.ndarray  # (N,) float64
    labels: list[str | None]  # one per prompt; None where the line has no label
    source: Path

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def has_labels(self) -> bool:
        return any(label is not None for label in self.labels)


def _where(path: Path, lineno: int) -> str:
    return f"{path}, line {lineno}"


def _difficulty(value: object, path: Path, lineno: int) -> float:
    # bool is an int in Python; true/false is not a difficulty
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(f"{_where(path, lineno)}: difficulty must be a number, got {json.dumps(value)}; "
                        'write e.g. "difficulty": 3.')
    if not math.isfinite(value):
        raise DataError(f"{_where(path, lineno)}: difficulty must be a finite number, got {value}.")
    return float(value)


def read_prompts(path: Path) -> Prompts:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"prompts file {path} does not exist; pass a JSONL file with one "
                        '{"text": ..., "difficulty": ...} object per line.')
    texts: list[str] = []
    difficulty: list[float] = []
    labels: list[str | None] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise DataError(f"prompts file {path} is not UTF-8 text; pass a JSONL file.") from None
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{_where(path, lineno)} is not JSON ({exc.msg}); each line must be one object like "
                            '{"text": "...", "difficulty": 1}.') from None
        if not isinstance(row, dict):
            raise DataError(f"{_where(path, lineno)} holds a JSON {type(row).__name__}, not an object with text and difficulty.")
        missing = [k for k in ("text", "difficulty") if k not in row]
        if missing:
            raise DataError(f"{_where(path, lineno)} is missing the field(s) {', '.join(missing)}; "
                            f"each line needs text and difficulty (label optional), it has: {', '.join(sorted(row)) or 'none'}.")
        if not isinstance(row["text"], str) or not row["text"]:
            raise DataError(f"{_where(path, lineno)}: text must be a non-empty string, got {json.dumps(row['text'])[:40]}.")
        label = row.get("label")
        if label is not None and label not in LABELS:
            raise DataError(f"{_where(path, lineno)}: label must be one of {', '.join(LABELS)}, got {json.dumps(label)[:40]}.")
        texts.append(row["text"])
        difficulty.append(_difficulty(row["difficulty"], path, lineno))
        labels.append(label)
    if not texts:
        raise DataError(f"prompts file {path} holds no prompts; write one JSON object per line with text and difficulty.")
    return Prompts(texts, np.asarray(difficulty, dtype=np.float64), labels, path)
