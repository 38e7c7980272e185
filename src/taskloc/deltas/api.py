"""The importable entry points: on state dicts in memory (for studies) and on checkpoint paths
(for the CLI verbs ``delta`` and ``graft``)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Union

import torch

from ..errors import CheckpointError, ConfigError
from ..io import MemoryCheckpoint, fingerprint, open_checkpoint
from ..io.atomic import json_safe, write_json, write_text
from .analysis import GRID, DeltaReport, analyse
from .patch import GraftResult, PatchSink, graft
from .selection import MaskSink, TopK, parse_top
from .sources import CheckpointPair, DictSource, pair_source

TopLike = Union[str, float, int, TopK]


def as_top(top: TopLike) -> TopK:
    """"1%" / 0.01 (a fraction, float) / 1000 (a count, int) / TopK -> TopK."""
    if isinstance(top, TopK):
        return top
    if isinstance(top, bool):
        raise ConfigError(f"top={top!r} is not a size.")
    if isinstance(top, int):
        if top < 0:
            raise ConfigError(f"top={top} must not be negative.")
        return TopK(count=top, text=str(top))
    if isinstance(top, float):
        if not 0.0 <= top <= 1.0:
            raise ConfigError(f"top={top} as a float is a fraction of all entries and must lie in [0, 1].")
        return TopK(fraction=top, text=f"{100 * top:g}%")
    return parse_top(top)


def delta_stats(base_sd: Mapping[str, torch.Tensor], tuned_sd: Mapping[str, torch.Tensor], *,
                top: TopLike | None = None, grid: Sequence[float] = GRID, device: str = "cpu",
                rank_max_dim: int | None = None) -> DeltaReport:
    """Full delta analysis of two state dicts (same names, shapes, dtypes), tensor by tensor."""
    source = CheckpointPair(MemoryCheckpoint(base_sd, "<base>"), MemoryCheckpoint(tuned_sd, "<tuned>"))
    return analyse(source, top=as_top(top) if top is not None else None, grid=grid, device=device, rank_max_dim=rank_max_dim)


def global_topk_mask(deltas: Mapping[str, torch.Tensor], top: TopLike, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Boolean masks (one per floating tensor, its shape) of the exact global top-k entries by
    |delta|; ties at the threshold go to earlier tensors (dict order), then lower flat indices."""
    source = DictSource(deltas)
    sink = MaskSink({n: source.shapes[n] for n in source.names})
    analyse(source, top=as_top(top), sink=sink, grid=(), device=device, rank_max_dim=0)
    return sink.masks()


def concentration_curve(tensors: Union[Mapping[str, torch.Tensor], Sequence[torch.Tensor]],
                        grid: Sequence[float] = GRID) -> dict[str, list[float]]:
    """Exact share of sum |x| ("l1") and of sum x^2 ("energy") held by the top ``grid`` fractions of
    all entries of ``tensors`` together (Lorenz-interpolated), streamed tensor by tensor."""
    named = tensors if isinstance(tensors, Mapping) else {str(i): t for i, t in enumerate(tensors)}
    report = analyse(DictSource(named), grid=grid, rank_max_dim=0)
    return {"grid": list(grid), "l1": report.total.curve_l1, "energy": report.total.curve_energy}


def delta_checkpoints(base: Path, tuned: Path, *, top: TopLike = "1%", patch: Path | None = None,
                      json_out: Path | None = None, html_out: Path | None = None, device: str = "auto",
                      allow_pickle: bool = False, rank_max_dim: int | None = None) -> DeltaReport:
    """``taskloc delta``: stream two checkpoints, report, and optionally write the patch, JSON, HTML."""
    top_k = as_top(top)
    outputs = [p for p in (patch, json_out, html_out) if p is not None]
    _check_outputs(outputs, [Path(base), Path(tuned)])
    if patch is not None and Path(patch).suffix != ".safetensors":
        raise ConfigError(f"--patch {patch} must end in .safetensors.")
    base_ckpt = open_checkpoint(base, allow_pickle=allow_pickle)
    tuned_ckpt = open_checkpoint(tuned, allow_pickle=allow_pickle)
    source = pair_source(base_ckpt, tuned_ckpt)
    fps = {"base": fingerprint(base_ckpt), "tuned": fingerprint(getattr(tuned_ckpt, "store", tuned_ckpt))}
    sink = PatchSink(Path(patch), source.shapes, source.dtypes, source.names) if patch is not None else None
    try:
        report = analyse(source, top=top_k, sink=sink, device=device, rank_max_dim=rank_max_dim)
        report.base.update(format=base_ckpt.format, fingerprint=fps["base"])
        report.tuned.update(format=tuned_ckpt.format, fingerprint=fps["tuned"])
        if sink is not None:
            sel = report.selection
            sink.write({
                "base_fingerprint": fps["base"], "tuned_fingerprint": fps["tuned"], "k": str(sel.k if sel else 0),
                "n": str(report.total.n), "fraction": repr(sel.k / report.total.n if sel and report.total.n else 0.0),
                "top": top_k.text, "selection": sel.rule if sel else "", "threshold": repr(sel.threshold if sel else None),
                "base_path": str(base), "tuned_path": str(tuned),
            })
    finally:
        if sink is not None:
            sink.close()
        base_ckpt.close()
        tuned_ckpt.close()
    if json_out is not None:
        write_json(Path(json_out), json_safe(report.to_json()))
    if html_out is not None:
        from .html import render_html

        write_text(Path(html_out), render_html(report))
    return report


def graft_checkpoint(base: Path, patch: Path, out: Path, *, scale: float = 1.0, allow_pickle: bool = False,
                     allow_fingerprint_mismatch: bool = False) -> GraftResult:
    """``taskloc graft``: write base + scale * patch to ``out`` in the base's layout."""
    _check_outputs([Path(out)], [Path(base), Path(patch)])
    with open_checkpoint(base, allow_pickle=allow_pickle) as base_ckpt:
        return graft(base_ckpt, Path(patch), Path(out), scale=scale, allow_fingerprint_mismatch=allow_fingerprint_mismatch)


def _check_outputs(outputs: list[Path], inputs: list[Path]) -> None:
    resolved_inputs = {p.expanduser().resolve() for p in inputs}
    seen = set()
    for out in outputs:
        r = Path(out).expanduser().resolve()
        if r in resolved_inputs:
            raise CheckpointError(f"output {out} is also an input; choose another path.")
        if r in seen:
            raise ConfigError(f"output {out} is given twice; give each output its own path.")
        seen.add(r)
