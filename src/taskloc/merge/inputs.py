"""The models of one merge: a base and task models (full checkpoints or PEFT LoRA adapters),
checked from headers before any data is read, and loaded one tensor name at a time."""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Union

import torch

from ..deltas.sources import DeltaSource, pair_source
from ..errors import CheckpointError, ConfigError
from ..io import Checkpoint, MemoryCheckpoint, open_checkpoint
from ..io.checkpoint import first_names

ModelLike = Union[str, Path, Checkpoint, Mapping[str, torch.Tensor]]


def as_checkpoint(model: ModelLike, label: str, allow_pickle: bool = False) -> Checkpoint:
    if isinstance(model, Checkpoint):
        return model
    if isinstance(model, Mapping):
        return MemoryCheckpoint(model, label)
    return open_checkpoint(model, allow_pickle=allow_pickle)


class MergeInputs:
    """A base and ``N`` task models of one architecture.

    ``sources[i]`` is the delta source of task i against the base (from deltas/sources, so a LoRA
    adapter reads as the model PEFT's merge_and_unload would give). ``floats`` are the tensors
    merged; the others (integer buffers) are copied from the base."""

    def __init__(self, base: Checkpoint, tasks: Sequence[Checkpoint]) -> None:
        if not tasks:
            raise ConfigError("give at least one model to merge after the base.")
        self.base, self.tasks = base, list(tasks)
        self.labels = [str(base.path)] + [str(t.path) for t in tasks]
        _refuse_repeats(self.labels, [base, *tasks])
        for task in tasks:
            if not task.is_delta:
                _check_architecture(base, task)
        self.sources: list[DeltaSource] = [pair_source(base, t) for t in tasks]
        self.names = base.names()
        self.floats = set(self.sources[0].names)

    @classmethod
    def open(cls, base: ModelLike, tasks: Sequence[ModelLike], allow_pickle: bool = False) -> MergeInputs:
        opened: list[Checkpoint] = []
        try:
            for i, model in enumerate([base, *tasks]):
                opened.append(as_checkpoint(model, "<base>" if i == 0 else f"<model {i}>", allow_pickle))
            return cls(opened[0], opened[1:])
        except BaseException:
            for c in opened:
                c.close()
            raise

    @property
    def n_tasks(self) -> int:
        return len(self.tasks)

    def load(self, name: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(base (n,), [task_i (n,)]) as float32 for reading only: they may map the files. A task
        that leaves the tensor as it is (a LoRA adapter not touching it) returns the base itself."""
        items = [s.load(name) for s in self.sources]
        base = items[0].base.float()  # type: ignore[union-attr]
        tasks = [base if item.tuned is None else item.tuned.float() for item in items]
        for label, x in zip(self.labels, [base, *tasks]):
            # a sum is NaN/Inf whenever an entry is, and costs no (n,) temporary; only an overflowing
            # sum of finite entries needs the exact check
            if not math.isfinite(float(x.sum())) and not bool(torch.isfinite(x).all()):
                raise CheckpointError(f"tensor {name!r} holds NaN or Inf in {label}; the weights are broken: fix or re-save them.")
        return base, tasks

    def prefetch(self, name: str) -> None:
        for s in self.sources:
            s.prefetch(name)

    def close(self) -> None:
        for c in [self.base, *self.tasks]:
            c.close()

    def __enter__(self) -> MergeInputs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _identity(c: Checkpoint) -> object:
    return ("memory", id(c)) if c.format == "memory" else Path(c.path).expanduser().resolve()


def _refuse_repeats(labels: list[str], models: list[Checkpoint]) -> None:
    seen: dict[object, int] = {}
    for i, model in enumerate(models):
        key = _identity(model)
        if key in seen:
            first = seen[key]
            role = "the base" if first == 0 else f"model {first}"
            raise ConfigError(f"{labels[i]} is given twice (as {role} and as model {i}); give each model once.")
        seen[key] = i


def _check_architecture(base: Checkpoint, task: Checkpoint) -> None:
    """Same model type (HF config), same tensor names, shapes and dtypes -- or one line naming the
    first tensor that differs."""
    base_type, task_type = _model_type(base), _model_type(task)
    if base_type and task_type and base_type != task_type:
        raise CheckpointError(f"{task.path} is a {task_type} model but the base {base.path} is a {base_type} model; merge models of one architecture.")
    base_names, task_names = base.names(), task.names()
    missing = [n for n in base_names if n not in set(task_names)]
    extra = [n for n in task_names if n not in set(base_names)]
    if missing:
        raise CheckpointError(f"{task.path} lacks {len(missing)} tensors of the base {base.path} ({first_names(missing)}); merge models of one architecture.")
    if extra:
        raise CheckpointError(f"{task.path} has {len(extra)} tensors the base {base.path} lacks ({first_names(extra)}); merge models of one architecture.")
    for name in base_names:
        if base.shape(name) != task.shape(name):
            raise CheckpointError(f"tensor {name!r} has shape {tuple(base.shape(name))} in the base {base.path} but "
                                  f"{tuple(task.shape(name))} in {task.path}; merge models of one architecture.")
        if base.dtype(name) != task.dtype(name):
            raise CheckpointError(f"tensor {name!r} is {str(base.dtype(name)).removeprefix('torch.')} in the base {base.path} but "
                                  f"{str(task.dtype(name)).removeprefix('torch.')} in {task.path}; save all models in one dtype first.")


def _model_type(c: Checkpoint) -> str | None:
    if c.format not in ("hf-folder", "hf-sharded"):
        return None
    config = Path(c.path) / "config.json"
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
