"""Deterministic batches and evaluation sets drawn from task mixtures.

A batch is a pure function of (seed, step): a resumed run sees exactly the batches the killed run
would have seen, with no sampler state to save.
"""
from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass

import numpy as np

from ..config import Config, field
from ..errors import ConfigError
from . import get_task
from .base import Example, Task


@dataclass
class DataConfig(Config):
    section = "data."
    tasks: list[str] = field(["add", "sort", "reverse", "hop", "copy", "trace", "arith"],
                             "task names (registry names or jsonl:PATH)")
    train_levels: list[int] = field([1, 2, 3], "difficulty levels seen in training (in-distribution)")
    ood_levels: list[int] = field([4, 5], "levels held out as out-of-distribution probes")
    weights: dict[str, float] = field({}, "relative sampling weight per task name (default 1): harder tasks can get more of the batch")

    def validate(self) -> None:
        if not self.tasks:
            raise ConfigError("data.tasks is empty; name at least one task (see `taskloc tasks`).")
        if not self.train_levels:
            raise ConfigError("data.train_levels is empty; give at least one level, e.g. [1, 2, 3].")
        unknown = sorted(set(self.weights) - set(self.tasks))
        if unknown:
            raise ConfigError(f"data.weights names {unknown}, which are not in data.tasks {self.tasks}.")
        if any(not w > 0 for w in self.weights.values()):
            raise ConfigError(f"data.weights={self.weights}: every weight must be positive.")
        overlap = set(self.train_levels) & set(self.ood_levels)
        if overlap:
            raise ConfigError(f"levels {sorted(overlap)} are in both data.train_levels and data.ood_levels; a level is one or the other.")

    def load_tasks(self) -> list[Task]:
        """Resolve every task name now, so a bad name or task file fails before any work starts."""
        tasks = [get_task(name) for name in self.tasks]
        for task in tasks:
            missing = [lv for lv in self.train_levels + self.ood_levels if lv not in task.levels]
            if missing and not task.name.startswith("jsonl:"):
                raise ConfigError(f"task {task.name!r} has no level(s) {missing}; its levels are {list(task.levels)}.")
        return tasks


def stable_int(text: str) -> int:
    """A process-independent integer for seeding (Python's hash() is salted per process)."""
    return zlib.crc32(text.encode())


class TaskMixture:
    """Mixture over (task, level) cells: tasks in proportion to their weights (default equal),
    levels uniform within a task."""

    def __init__(self, tasks: list[Task], levels: list[int], seed: int, weights: dict[str, float] | None = None) -> None:
        self.cells = [(t, lv) for t in tasks for lv in levels if lv in t.levels]
        if not self.cells:
            raise ConfigError("no (task, level) pair to train on: the tasks have none of the training levels.")
        self.seed = seed
        weights = weights or {}
        per_task = {t.name: sum(1 for c in self.cells if c[0] is t) for t in tasks}
        p = np.array([weights.get(t.name, 1.0) / per_task[t.name] for t, _ in self.cells])
        self.probs = p / p.sum()

    def batch(self, step: int, size: int) -> list[Example]:
        rng = np.random.default_rng([self.seed, step])
        counts = np.bincount(rng.choice(len(self.cells), size=size, p=self.probs), minlength=len(self.cells))
        out: list[Example] = []
        for (task, level), n in zip(self.cells, counts):
            if n:
                out.extend(task.sample(int(n), rng, level))
        return out

    def fingerprint(self) -> str:
        """Identifies the data: cells, seed, weights, and a sample of the examples themselves, so a
        changed task generator never reuses artefacts trained on the old one."""
        sample = [(e.prompt, e.target) for e in self.batch(0, 16)]
        blob = repr(([(t.name, lv) for t, lv in self.cells], self.seed, self.probs.round(12).tolist(), sample)).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def eval_examples(task: Task, level: int, n: int, seed: int) -> list[Example]:
    """A fixed evaluation set for one (task, level). Built-in tasks draw from large spaces, so it
    overlaps training only where the level's space is tiny (e.g. 1-digit addition)."""
    rng = np.random.default_rng([seed, stable_int(task.name), level, 7919])
    return task.sample(n, rng, level)


class ShuffledTargets:
    """Control mixture: the same prompts as ``inner``, but each batch's targets are permuted among
    its examples. Fine-tuning on it takes the same steps on the same inputs with no task signal,
    so its weight delta shows what optimisation noise alone looks like."""

    def __init__(self, inner: TaskMixture) -> None:
        self.inner = inner

    def batch(self, step: int, size: int) -> list[Example]:
        batch = self.inner.batch(step, size)
        order = np.random.default_rng([self.inner.seed, step, 104729]).permutation(len(batch))
        return [Example(e.prompt, batch[j].target, e.level) for e, j in zip(batch, order)]

    def fingerprint(self) -> str:
        return "shuffled-" + self.inner.fingerprint()
