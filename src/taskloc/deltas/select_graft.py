"""``taskloc graft BASE TUNED --select RULE``: choose k entries of tuned - base by a selection
rule (masks.SELECTORS) and write base + scale * mask * (tuned - base) in the base's layout.

Unlike ``taskloc delta`` + ``graft PATCH``, which stream the exact magnitude top-k, this holds
both models in memory: the model-based rules (saliency, learned) run the base model on the
training pairs of ``--data`` anyway.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError, ConfigError
from ..io import open_checkpoint
from ..io.writers import check_output, write_like
from ..progress import progress_bar
from .api import TopLike, _check_outputs, as_top
from .masks import SELECTORS, Pairs, apply_mask, rule_scale, select
from .sources import pair_source


@dataclass
class SelectedGraft:
    out: Path
    rule: str
    k: int
    n: int
    scale: float  # the factor the kept deltas were grafted at


def read_pairs(path: Path) -> list[tuple[str, str]]:
    """(prompt, target) pairs of a JSONL file of {"prompt", "target"} objects, in file order
    (levels, when present, only group them)."""
    from ..tasks.jsonl import load_examples

    by_level, _ = load_examples(Path(path))
    return [(e.prompt, e.target) for level in sorted(by_level) for e in by_level[level]]


def graft_selected(base: Path, tuned: Path, out: Path, *, rule: str, top: TopLike = "1%", data: Path | None = None,
                   seed: int = 0, steps: int | None = None, scale: float = 1.0, device: str = "auto",
                   allow_pickle: bool = False) -> SelectedGraft:
    chosen = SELECTORS.get(rule)
    top_k = as_top(top)
    _check_outputs([Path(out)], [Path(base), Path(tuned)])
    if chosen.needs_model and data is None:
        raise ConfigError(f"--select {rule} runs the model on training examples: pass --data F.jsonl (one "
                          '{"prompt": ..., "target": ...} object per line, from the training split, never the evaluation split).')
    if not chosen.needs_model and (data is not None or steps is not None):
        raise ConfigError(f"--select {rule} reads no training data: drop --data and --steps (they serve saliency and learned).")
    pairs = read_pairs(data) if data is not None else None
    with open_checkpoint(base, allow_pickle=allow_pickle) as base_ckpt, open_checkpoint(tuned, allow_pickle=allow_pickle) as tuned_ckpt:
        if "taskloc_patch" in tuned_ckpt.metadata:
            raise CheckpointError(f"{tuned} is a patch, whose entries are already chosen; --select chooses from a tuned "
                                  "checkpoint: pass the tuned model, or drop --select to apply the patch.")
        check_output(base_ckpt, out)
        source = pair_source(base_ckpt, tuned_ckpt)
        base_sd, tuned_sd = {}, {}
        for name in source.names:
            item, shape = source.load(name), source.shapes[name]
            base_sd[name] = item.base.view(shape).clone()  # type: ignore[union-attr]
            tuned_sd[name] = (item.tuned if item.tuned is not None else item.base).view(shape).clone()  # type: ignore[union-attr]
        n = sum(t.numel() for t in base_sd.values())
        k = top_k.entries(n)
        mask = _select(rule, base_sd, tuned_sd, k, base=Path(base), pairs=pairs, seed=seed, steps=steps, device=device,
                       allow_pickle=allow_pickle)
        factor = scale * rule_scale(rule, k, n)
        if not math.isfinite(factor):
            raise ConfigError(f"--scale {scale} must be a finite number.")
        grafted = apply_mask(base_sd, tuned_sd, mask, factor)
        meta = {"taskloc_graft": json.dumps({"select": rule, "k": k, "n": n, "scale": factor, "seed": seed,
                                             "data": str(data) if data is not None else None, "tuned_path": str(tuned)})}
        with progress_bar("graft", total=len(base_ckpt.names())) as advance:
            write_like(base_ckpt, out, lambda name: grafted[name] if name in grafted else base_ckpt.get(name), meta,
                       on_tensor=advance)
    return SelectedGraft(Path(out), rule, k, n, factor)


def _select(rule: str, base_sd: dict[str, torch.Tensor], tuned_sd: dict[str, torch.Tensor], k: int, *, base: Path,
            pairs: Pairs | None, seed: int, steps: int | None, device: str, allow_pickle: bool) -> dict[str, torch.Tensor]:
    if not SELECTORS.get(rule).needs_model:
        return select(rule, base_sd, tuned_sd, k, seed=seed)
    from ..models import load_model

    model = load_model(base, device=device, dtype=torch.float32, allow_pickle=allow_pickle).model
    names = model_names(model.state_dict().keys(), list(base_sd), base)
    extra = {} if steps is None else {"steps": steps}
    mask = select(rule, {names[n]: t.float() for n, t in base_sd.items()}, {names[n]: t.float() for n, t in tuned_sd.items()},
                  k, model=model, data=pairs, seed=seed, **extra)
    return {n: mask[names[n]].cpu() for n in base_sd}


def model_names(model_keys, names: list[str], source: Path) -> dict[str, str]:
    """Checkpoint tensor name -> the name of the same tensor in the loaded model's state dict: the
    same name (TinyLM), or the one model name ending in "." + name (a wrapped HF model, whose
    weights live under ``hf.``)."""
    keys = list(model_keys)
    known = set(keys)
    out = {}
    for name in names:
        hits = [name] if name in known else [key for key in keys if key.endswith("." + name)]
        if len(hits) != 1:
            raise CheckpointError(f"tensor {name!r} of {source} is {'ambiguous' if hits else 'not found'} in the model loaded "
                                  "from it; saliency and learned selection need a checkpoint the model's own state dict matches.")
        out[name] = hits[0]
    return out
