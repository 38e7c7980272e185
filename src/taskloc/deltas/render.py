"""Terminal rendering of a DeltaReport: a short summary and four compact tables."""
from __future__ import annotations

from rich import box
from rich.console import Console
from rich.table import Table

from .analysis import DeltaReport, TensorStats
from .profile import group_label

SHOWN_TENSORS = 12
CURVE_COLUMN = 0.01  # the per-tensor table shows the top-1% energy share


def _pct(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}%"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def _short(name: str, width: int = 34) -> str:
    """Long tensor names keep their informative tail: model.layers.11.self_attn.q_proj.weight."""
    return name if len(name) <= width else "…" + name[-(width - 1):]


def print_report(report: DeltaReport, console: Console | None = None) -> None:
    if console is None:
        console = Console()
        if not console.is_terminal:  # piped or captured: a fixed width so tables stay whole
            console = Console(width=120)
    g, sel = report.total, report.selection
    console.print(f"[bold]delta[/bold] {report.base['path']} ({report.base.get('format', '?')}) -> "
                  f"{report.tuned['path']} ({report.tuned.get('format', '?')})", highlight=False)
    console.print(f"{len(report.tensors)} tensors, {g.n:,} entries, {_pct(g.n_changed / g.n if g.n else 0)} changed; "
                  f"||delta||/||base|| = {_num(g.rel_norm)}", highlight=False)
    console.print(f"Gini {g.gini:.3f} (dense Gaussian null {g.null_gini:.3f}), Hoyer {g.hoyer:.3f} (null {g.null_hoyer:.3f})",
                  highlight=False)
    if sel is not None:
        thr = "" if sel.threshold is None else (
            f"; threshold |delta| = {sel.threshold:.4g}" + (f", {sel.ties_taken:,} of {sel.ties_at_threshold:,} ties taken"
                                                            if sel.ties_at_threshold > 1 else ""))
        console.print(f"selection: {sel.description}{thr}", highlight=False)
    console.print(_curve_table(report))
    console.print(_tensor_table(report))
    console.print(_profile_table(report, "kind"))
    console.print(_profile_table(report, "layer"))
    for note in report.notes:
        console.print(f"[dim]note: {note}[/dim]", highlight=False)


def _curve_table(report: DeltaReport) -> Table:
    g = report.total
    t = Table(title="share held by the top k% of all entries (global)", title_justify="left", box=box.SIMPLE_HEAD, collapse_padding=True)
    for col in ("top k%", "energy", "null energy", "L1 mass", "null L1"):
        t.add_column(col, justify="right")
    for i, q in enumerate(report.grid):
        t.add_row(f"{100 * q:g}%", _pct(g.curve_energy[i]), _pct(g.null_energy[i]), _pct(g.curve_l1[i]), _pct(g.null_l1[i]))
    return t


def _tensor_table(report: DeltaReport) -> Table:
    changed = [s for s in report.tensors if s.energy > 0]
    stats = sorted(changed, key=lambda s: -s.energy)[:SHOWN_TENSORS]
    col = report.grid.index(CURVE_COLUMN) if CURVE_COLUMN in report.grid else None
    unchanged = len(report.tensors) - len(changed)
    title = f"top {len(stats)} of {len(changed)} changed tensors by delta energy" + (f" ({unchanged} unchanged)" if unchanged else "")
    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, collapse_padding=True)
    for name in ("tensor", "kind", "energy", "rel norm", "top1% E (null)", "Gini", "Hoyer", "eff. rank", "top-k"):
        t.add_column(name, justify="left" if name in ("tensor", "kind") else "right", no_wrap=True)
    total = report.total.energy or 1.0
    null_top = report.null_tensor["energy"][col] if col is not None else None
    for s in stats:
        t.add_row(_short(s.name), s.kind, _pct(s.energy / total), _num(s.rel_norm), _top_cell(s, col, null_top),
                  f"{s.gini:.3f}", f"{s.hoyer:.3f}", _rank_cell(s), "-" if s.selected is None else f"{s.selected:,}")
    return t


def _top_cell(s: TensorStats, col: int | None, null_top: float | None) -> str:
    if col is None:
        return "-"
    return f"{_pct(s.curve_energy[col])} ({_pct(null_top, 0)})"


def _rank_cell(s: TensorStats) -> str:
    rank = "-" if s.effective_rank is None else f"{s.effective_rank:.1f}"
    return rank if s.lora_rank is None else f"{rank} r={s.lora_rank}"


def _profile_table(report: DeltaReport, key: str) -> Table:
    t = Table(title=f"profile by {key}", title_justify="left", box=box.SIMPLE_HEAD, collapse_padding=True)
    for col in (key, "tensors", "params", "delta energy", "top-k entries", "rel norm"):
        t.add_column(col, justify="left" if col == key else "right")
    for row in report.profile[key]:
        t.add_row(group_label(key, row[key]), str(row["tensors"]), _pct(row["param_share"]), _pct(row["energy_share"]),
                  _pct(row["topk_share"]), _num(row["rel_norm"]))
    return t
