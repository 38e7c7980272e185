"""A task read from a JSONL file: one {"prompt", "target", "level"} object per line."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ..errors import DataError
from .base import ExactMatchTask, Example
from .vocab import CHARS


class JsonlTask(ExactMatchTask):
    description = "examples read from a JSONL file"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.name = f"jsonl:{path}"
        self.by_level, self.outside_vocab = load_examples(self.path)
        self.levels = tuple(sorted(self.by_level))
        # The file's content, not just its name, identifies the task: an edited file must not
        # reuse a model cached for the old one.
        self.digest = hashlib.sha256(self.path.read_bytes()).hexdigest()[:16]

    def sample(self, n: int, rng: np.random.Generator, level: int) -> list[Example]:
        pool = self.by_level.get(level)
        if not pool:
            raise DataError(f"{self.path} has no examples at level {level}; it has levels {list(self.levels)}.")
        return [pool[i] for i in rng.integers(0, len(pool), size=n)]


def load_examples(path: Path) -> tuple[dict[int, list[Example]], str | None]:
    """Examples by level, and where the first character outside TinyLM's vocabulary is (None if
    nowhere): such a file suits a model with its own tokenizer (--model), not TinyLM."""
    if not path.is_file():
        raise DataError(f"task file {path} does not exist; give the path of a JSONL file.")
    by_level: dict[int, list[Example]] = {}
    outside: str | None = None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise DataError(f"task file {path} is not UTF-8 text; save it as UTF-8 JSONL.") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where} is not valid JSON ({exc.msg}); write one JSON object per line.") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str) or not isinstance(obj.get("target"), str):
            raise DataError(f'{where} needs string fields "prompt" and "target" (and an integer "level").')
        level = obj.get("level", 1)
        if not isinstance(level, int) or isinstance(level, bool) or level < 1:
            raise DataError(f'{where}: "level" must be a positive integer, got {level!r}.')
        if not obj["prompt"] or not obj["target"]:
            raise DataError(f'{where}: "prompt" and "target" must be non-empty strings.')
        if outside is None:
            bad = next((ch for ch in obj["prompt"] + obj["target"] if ch not in CHARS), None)
            outside = None if bad is None else f"{where}: character {bad!r}"
        by_level.setdefault(level, []).append(Example(obj["prompt"], obj["target"], level))
    if not by_level:
        raise DataError(f"task file {path} is empty; it needs one JSON object per line.")
    return by_level, outside
