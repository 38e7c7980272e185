"""Synthetic tasks and task files. ``get_task("add")`` or ``get_task("jsonl:path/to/file.jsonl")``."""
from __future__ import annotations

from . import synthetic  # noqa: F401  (registers the built-in tasks)
from .base import TASKS, Example, Task
from .jsonl import JsonlTask
from .codec import CHAR_CODEC, TokenizerCodec, codec_of
from .vocab import EOS, PAD, VOCAB_SIZE, decode, encode

encode_batch = CHAR_CODEC.encode_batch  # TinyLM's packing of (prompt, target) pairs

JSONL_PREFIX = "jsonl:"


def get_task(name: str) -> Task:
    if name.startswith(JSONL_PREFIX):
        return JsonlTask(name[len(JSONL_PREFIX) :])
    return TASKS.get(name)()


def task_names() -> list[str]:
    return TASKS.names()


__all__ = ["TASKS", "Example", "Task", "JsonlTask", "get_task", "task_names", "encode", "decode",
           "encode_batch", "codec_of", "TokenizerCodec", "EOS", "PAD", "VOCAB_SIZE"]
