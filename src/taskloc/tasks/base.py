"""The Task interface and its registry."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..registry import Registry


@dataclass(frozen=True)
class Example:
    prompt: str
    target: str
    level: int


class Task(Protocol):
    name: str
    description: str
    levels: tuple[int, ...]  # every level the task can emit; training uses a prefix of them

    def sample(self, n: int, rng: np.random.Generator, level: int) -> list[Example]:
        """n deterministic (given rng) examples at difficulty ``level``."""
        ...

    def score(self, prediction: str, example: Example) -> bool:
        """True when the prediction solves the example (exact match for every built-in task)."""
        ...


TASKS: Registry[type] = Registry("task")


class ExactMatchTask:
    """Mixin: scoring by exact string match, the rule every built-in task uses."""

    def score(self, prediction: str, example: Example) -> bool:
        return prediction == example.target
