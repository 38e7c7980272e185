"""Entry points: merge checkpoints on disk into a model in the base's format (``taskloc merge``),
or models in memory into a state dict (studies). Both stream one tensor name at a time."""
from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..io import check_output, write_like
from ..progress import progress_bar
from .cores import DEFAULT_TAU, CoreReport
from .inputs import MergeInputs, ModelLike
from .methods import METHODS, CoreIsolation, MergeMethod
from .options import resolve_options


@dataclass
class MergeResult:
    method: str
    options: dict[str, Any]
    models: list[str]  # base first
    out: Path | None = None
    tensors: int = 0
    cores: CoreReport | None = None  # core_isolation: the overlap of the cores it used
    state_dict: dict[str, torch.Tensor] = field(default_factory=dict)  # merge_models only

    def describe_options(self) -> str:
        """``lambda=1, k=30, trim=tensor``: the options used, defaults included, under their flag names."""
        return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in _printable(self.options).items())


def build_method(method: str, inputs: MergeInputs, options: Mapping[str, Any] | None = None) -> MergeMethod:
    cls = METHODS.get(method)  # an unknown name raises with did-you-mean
    return cls(inputs, resolve_options(method, cls.defaults, dict(options or {})))


def merged_tensors(merger: MergeMethod) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, merged tensor in the base's dtype and shape), in the base's order."""
    inputs = merger.inputs
    for i, name in enumerate(inputs.names):
        if i + 1 < len(inputs.names):
            inputs.prefetch(inputs.names[i + 1])
        yield name, merged_tensor(merger, name)


def merged_tensor(merger: MergeMethod, name: str) -> torch.Tensor:
    inputs = merger.inputs
    if name not in inputs.floats:
        return inputs.base.get(name)  # integer buffers are the base's
    base, tasks = inputs.load(name)
    out = merger.tensor(name, base, tasks)  # (n,) float32
    if any(out.data_ptr() == x.data_ptr() for x in [base, *tasks]):
        out = out.clone()  # an input returned as is may map a file or be the caller's own tensor
    out = out.to(inputs.base.dtype(name))
    if not bool(torch.isfinite(out).all()):  # the inputs are finite: the merge overflowed the dtype
        raise CheckpointError(f"merging tensor {name!r} with {merger.name} overflows {str(out.dtype).removeprefix('torch.')} "
                              "(NaN or Inf); lower --lambda or the weights.")
    return out.view(inputs.base.shape(name))


def merge_checkpoints(base: ModelLike, models: Sequence[ModelLike], *, method: str, out: Path,
                      options: Mapping[str, Any] | None = None, allow_pickle: bool = False) -> MergeResult:
    """``taskloc merge``: write the merge to ``out`` in the base's layout (a .safetensors file for a
    single-file base, a folder with config and tokenizer for an HF folder). Nothing is left at
    ``out`` when anything fails."""
    out = Path(out)
    with MergeInputs.open(base, models, allow_pickle=allow_pickle) as inputs:
        merger = build_method(method, inputs, options)
        check_output(inputs.base, out)
        _refuse_output_in_inputs(out, inputs)
        merger.prepare()
        record = {"method": method, "options": _printable(merger.options), "models": inputs.labels}
        with progress_bar(f"merge ({method})", total=len(inputs.names)) as advance:
            write_like(inputs.base, out, lambda name: merged_tensor(merger, name),
                       metadata={"taskloc_merge": json.dumps(record, sort_keys=True)}, on_tensor=advance)
        return MergeResult(method, merger.options, inputs.labels, out=out, tensors=len(inputs.names), cores=_cores_of(merger))


def merge_models(base: ModelLike, models: Sequence[ModelLike], *, method: str,
                 options: Mapping[str, Any] | None = None) -> MergeResult:
    """Merge models given as state dicts (or checkpoints / paths) into a new state dict."""
    with MergeInputs.open(base, models) as inputs:
        merger = build_method(method, inputs, options)
        merger.prepare()
        state = dict(merged_tensors(merger))
        return MergeResult(method, merger.options, inputs.labels, tensors=len(state), cores=_cores_of(merger), state_dict=state)


def _cores_of(merger: MergeMethod) -> CoreReport | None:
    if not isinstance(merger, CoreIsolation):
        return None
    return merger.overlap.report(merger.inputs, getattr(merger, "regions", []), merger.options["p"], DEFAULT_TAU)


def _printable(options: Mapping[str, Any]) -> dict[str, Any]:
    return {("lambda" if k == "lambda_" else k): v for k, v in options.items() if k != "masks" and v is not None}


def _refuse_output_in_inputs(out: Path, inputs: MergeInputs) -> None:
    target = out.expanduser().resolve()
    for c in inputs.tasks:
        if c.format == "memory":
            continue
        src = Path(c.path).expanduser().resolve()
        if target == src or src in target.parents or target in src.parents:
            raise CheckpointError(f"--out {out} would overwrite or sit inside the input {c.path}; choose another path.")
