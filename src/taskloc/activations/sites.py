"""`taskloc sites MODEL`: every hook site of a model, its shape on one prompt, and sparsity
statistics of the last token's activation there (the C1 metrics)."""
from __future__ import annotations

from pathlib import Path

import torch
from rich.table import Table

from ..hooks import capture, site_names
from ..metrics import hoyer, topk_energy
from ..models import load_model
from ..progress import console


@torch.no_grad()
def describe_sites(path: Path, prompt: str, device: str = "auto", allow_pickle: bool = False) -> None:
    loaded = load_model(path, device, allow_pickle=allow_pickle)
    ids = loaded.encode(prompt)
    if not ids:
        from ..errors import DataError

        raise DataError("the prompt encodes to no tokens; pass a non-empty --prompt.")
    model = loaded.model
    device_ = next(model.parameters()).device
    names = site_names(model)
    with capture(model, names) as acts:
        model(torch.tensor([ids], device=device_))
    table = Table(title=f"{loaded.kind} model {loaded.source} — {len(names)} sites, prompt {prompt!r} ({len(ids)} tokens)")
    table.add_column("site", no_wrap=True, min_width=max(map(len, names)))
    for col in ("shape", "last-token |x| mean", "Hoyer", "top-5% energy"):
        table.add_column(col, justify="right")
    for name in names:
        x = acts[name]
        last = x[0, -1].float() if x.dim() == 3 else x[0, :, -1].float().flatten()  # (D,) or heads x keys
        table.add_row(name, "x".join(map(str, x.shape)), f"{last.abs().mean():.3g}",
                      f"{float(hoyer(last)):.3f}", f"{float(topk_energy(last, 0.05)):.3f}")
    console.print(table)
