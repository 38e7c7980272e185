"""Synthetic tasks and task files. ``get_task("add")`` or ``get_task("jsonl:path/to/file.jsonl")``."""
from __future__ import annotations

from . import synthetic  # noqa: F401  (registers the built-in tasks)
from .base import TASKS, Example, Task
from .jsonl import JsonlTask
from .vocab import EOS, PAD, VOCAB_SIZE, decode, encode

JSONL_PREFIX = "jsonl:"


def get_task(name: str) -> Task:
    if name.startswith(JSONL_PREFIX):
        return JsonlTask(name[len(JSONL_PREFIX) :])
    return TASKS.get(name)()


def task_names() -> list[str]:
    return TASKS.names()


__all__ = [
    "EOS",
    "PAD",
    "TASKS",
    "VOCAB_SIZE",
    "Example",
    "JsonlTask",
    "Task",
    "decode",
    "encode",
    "get_task",
    "task_names",
]
