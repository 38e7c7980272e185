"""Terminal rendering of a core-overlap report: the Jaccard matrix as a table, then the groups."""
from __future__ import annotations

from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table

from .cores import CoreReport


def _label(path: str) -> str:
    p = Path(path)
    return p.stem if p.suffix == ".safetensors" else p.name


def print_cores(report: CoreReport, console: Console | None = None) -> None:
    if console is None:
        console = Console()
        if not console.is_terminal:  # piped or captured: a fixed width so the table stays whole
            console = Console(width=120)
    names = [_label(m) for m in report.models]
    console.print(f"[bold]cores[/bold]: top {report.p:g}% of |model - base| per model, base {report.base}; "
                  f"{report.n:,} entries per model", highlight=False)
    table = Table(box=box.SIMPLE_HEAD, title=f"Jaccard overlap of the cores (tau {report.tau:g})")
    table.add_column("model")
    table.add_column("core size", justify="right")
    for name in names:
        table.add_column(name, justify="right")
    for i, name in enumerate(names):
        cells = [("-" if i == j else (f"[bold]{x:.3f}[/bold]" if x >= report.tau else f"{x:.3f}")) for j, x in enumerate(report.jaccard[i])]
        table.add_row(name, f"{report.sizes[i]:,}", *cells)
    console.print(table)
    for g, members in enumerate(report.groups, start=1):
        console.print(f"group {g}: {', '.join(names[i] for i in members)}", highlight=False)
