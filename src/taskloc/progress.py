"""Rich progress bars with ETA for every long loop. Quiet when TASKLOC_QUIET is set (tests).

Bars nest: a bar opened while another is live (a fine-tune inside a study's loop) is added to
the same display as a second line instead of starting a second live display.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)
_live: Progress | None = None


def _columns() -> tuple:
    return (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"))


@contextlib.contextmanager
def progress_bar(description: str, total: int, completed: int = 0) -> Iterator[Callable[..., None]]:
    """Yields ``advance(n=1, **fields)``; ``fields`` (e.g. loss=0.12) are shown after the bar."""
    global _live
    if os.environ.get("TASKLOC_QUIET"):
        yield lambda n=1, **fields: None
        return
    owner = _live is None
    bar = Progress(*_columns(), console=console) if owner else _live
    if owner:
        bar.start()
        _live = bar
    task = bar.add_task(description, total=total, completed=completed, info="")

    def advance(n: int = 1, **fields: float) -> None:
        info = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
        bar.update(task, advance=n, info=info)

    try:
        yield advance
    finally:
        if owner:
            bar.stop()
            _live = None
        else:
            bar.remove_task(task)  # an inner loop's line disappears when it is done
