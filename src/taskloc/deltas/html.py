"""The `taskloc delta --html` page: a DeltaReport as figure specs and tables, drawn and laid out by
the report's own renderer and page (report.figures, report.html), so it reads like report.html."""
from __future__ import annotations

import html
from typing import Any

from ..report.figures import bars_figure, lines_figure
from ..report.html import figure_html, page, table_html
from .analysis import DeltaReport
from .profile import group_label

SHOWN_TENSORS = 50
HEADLINE_TOP = 0.01  # the summary quotes the share held by the top 1% of entries


def delta_figures(report: DeltaReport) -> list[dict[str, Any]]:
    """Concentration curves against the dense null, then the profile by module kind and by layer."""
    g, x = report.total, [100 * q for q in report.grid]
    curves = lines_figure(
        "concentration", "Concentration of the delta (all tensors)", "top k% of entries (by |delta|)", "share held",
        [{"label": "delta: energy", "x": x, "y": g.curve_energy, "color": "#1f6feb"},
         {"label": "dense Gaussian null: energy", "x": x, "y": g.null_energy, "color": "#1f6feb", "style": "--"},
         {"label": "delta: L1 mass", "x": x, "y": g.curve_l1, "color": "#d1495b"},
         {"label": "dense Gaussian null: L1 mass", "x": x, "y": g.null_l1, "color": "#d1495b", "style": "--"}],
        logx=True, ylim=(0, 1.02),
        caption="Share of sum(delta^2) and of sum|delta| held by the largest k% of entries; above the dashed "
                "null means more concentrated than a dense Gaussian update of the same per-tensor scale.")
    return [curves, _profile_figure(report, "kind", "module kind"), _profile_figure(report, "layer", "layer")]


def _profile_figure(report: DeltaReport, axis: str, title: str) -> dict[str, Any]:
    rows = report.profile[axis]
    groups = [{"label": "share of parameters", "values": [r["param_share"] for r in rows]},
              {"label": "share of delta energy", "values": [r["energy_share"] for r in rows]}]
    if report.selection is not None:
        groups.append({"label": "share of top-k entries", "values": [r["topk_share"] or 0.0 for r in rows]})
    return bars_figure(
        f"profile-{axis}", f"Where the delta lands: by {title}", [group_label(axis, r[axis]) for r in rows], groups,
        "share", caption=f"Energy (or top-k entries) above the parameter share: the delta favours that {title}.")


def render_html(report: DeltaReport) -> str:
    figures = [figure_html(spec) for spec in delta_figures(report)]
    parts = [
        "<h1>taskloc delta</h1>",
        f"<p class='sub'>{_checkpoint(report.base)} &rarr; {_checkpoint(report.tuned)}</p>",
        _summary(report),
        "<h2>Concentration and profile</h2>",
        "<div class='figs'>" + "".join(figures[:2]) + "</div>",
        "<div class='figs'>" + figures[2] + "</div>",  # alone, so a long row of layers gets the full width
        table_html(_profile_table(report, "kind")),
        table_html(_profile_table(report, "layer")),
        "<h2>Tensors</h2>",
        table_html(_tensor_table(report)),
        "<h2>Notes</h2>",
        *(f"<div class='note'>{html.escape(n)}</div>" for n in report.notes),
    ]
    return page("taskloc delta", "\n".join(parts))


def _checkpoint(side: dict) -> str:
    fmt = f" <span class='muted'>({html.escape(side['format'])})</span>" if side.get("format") else ""
    return f"<code>{html.escape(str(side['path']))}</code>{fmt}"


def _summary(report: DeltaReport) -> str:
    g, sel = report.total, report.selection
    rows: list[list[Any]] = [["Gini of |delta|", g.gini, g.null_gini], ["Hoyer sparsity", g.hoyer, g.null_hoyer]]
    if HEADLINE_TOP in report.grid:
        i = report.grid.index(HEADLINE_TOP)
        rows += [[f"energy share of the top {HEADLINE_TOP:.0%}", g.curve_energy[i], g.null_energy[i]],
                 [f"L1 share of the top {HEADLINE_TOP:.0%}", g.curve_l1[i], g.null_l1[i]]]
    changed = g.n_changed / g.n if g.n else 0.0
    facts = (f"{len(report.tensors):,} tensors, {g.n:,} entries, {changed:.1%} changed; "
             f"||delta|| / ||base|| = {'–' if g.rel_norm is None else f'{g.rel_norm:.3g}'}.")
    if sel is not None:
        facts += f" Selection: {html.escape(sel.description)}" + (
            "" if sel.threshold is None else f"; threshold |delta| = {sel.threshold:.4g}") + "."
    table = table_html({"title": "", "columns": ["measure", "delta", "dense Gaussian null"], "rows": rows})
    return f"<p>{facts}</p>{table}"


def _profile_table(report: DeltaReport, axis: str) -> dict[str, Any]:
    rows = [[group_label(axis, r[axis]), r["tensors"], r["n"], r["param_share"], r["energy_share"], r["topk_share"],
             r["rel_norm"]] for r in report.profile[axis]]
    return {"title": f"Profile by {axis}", "rows": rows,
            "columns": [axis, "tensors", "entries", "parameter share", "energy share", "top-k share", "rel norm"]}


def _tensor_table(report: DeltaReport) -> dict[str, Any]:
    total = report.total.energy or 1.0
    shown = sorted(report.tensors, key=lambda s: -s.energy)[:SHOWN_TENSORS]
    rows = [[s.name, s.kind, group_label("layer", s.layer), s.n, s.energy / total, s.rel_norm, s.gini, s.hoyer,
             s.effective_rank, s.selected] for s in shown]
    title = f"The {len(shown)} tensors with the most delta energy" + (
        f" (of {len(report.tensors)})" if len(report.tensors) > len(shown) else "")
    return {"title": title, "rows": rows, "columns": ["tensor", "kind", "layer", "entries", "energy share", "rel norm",
                                                      "Gini", "Hoyer", "eff. rank", "top-k entries"]}
