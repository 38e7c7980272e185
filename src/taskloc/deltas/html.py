"""A self-contained HTML page for a DeltaReport: figures as inline base64 PNGs (matplotlib)."""
from __future__ import annotations

import base64
import html
import io

from .analysis import DeltaReport


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return f'<img alt="figure" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _figures(report: DeltaReport) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g, x = report.total, [100 * q for q in report.grid]
    out = []
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.plot(x, g.curve_energy, "o-", label="delta: energy")
    ax.plot(x, g.null_energy, "o--", color="C0", alpha=0.5, label="dense Gaussian null: energy")
    ax.plot(x, g.curve_l1, "s-", color="C1", label="delta: L1 mass")
    ax.plot(x, g.null_l1, "s--", color="C1", alpha=0.5, label="dense Gaussian null: L1 mass")
    ax.set(xscale="log", xlabel="top k% of entries (by |delta|)", ylabel="share held", ylim=(0, 1.02),
           title="concentration of the delta (all tensors)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    out.append(_png(fig))
    plt.close(fig)
    for key in ("layer", "kind"):
        rows = report.profile[key]
        labels = [str(r[key]) if r[key] is not None else "other" for r in rows]
        fig, ax = plt.subplots(figsize=(max(6.4, 0.45 * len(rows)), 3.6))
        pos = range(len(rows))
        width = 0.27
        ax.bar([p - width for p in pos], [r["param_share"] for r in rows], width, label="share of parameters")
        ax.bar(list(pos), [r["energy_share"] for r in rows], width, label="share of delta energy")
        if report.selection is not None:
            ax.bar([p + width for p in pos], [r["topk_share"] or 0 for r in rows], width, label="share of top-k entries")
        ax.set_xticks(list(pos), labels, rotation=45 if key == "kind" else 0, ha="right" if key == "kind" else "center")
        ax.set(title=f"where the delta lands, by {key}", ylabel="share")
        ax.legend(fontsize=8)
        out.append(_png(fig))
        plt.close(fig)
    return out


def render_html(report: DeltaReport) -> str:
    g, sel = report.total, report.selection
    rows = "".join(
        f"<tr><td>{html.escape(s.name)}</td><td>{s.kind}</td><td>{'' if s.layer is None else s.layer}</td>"
        f"<td>{s.n:,}</td><td>{s.energy / (g.energy or 1):.2%}</td><td>{'' if s.rel_norm is None else f'{s.rel_norm:.3g}'}</td>"
        f"<td>{s.gini:.3f}</td><td>{s.hoyer:.3f}</td><td>{'' if s.effective_rank is None else f'{s.effective_rank:.1f}'}</td></tr>"
        for s in sorted(report.tensors, key=lambda s: -s.energy)[:50]
    )
    selection = f"<p>Selection: {html.escape(sel.description)}; threshold |delta| = {sel.threshold}</p>" if sel else ""
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in report.notes)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>taskloc delta</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}} td,th{{padding:2px 8px;text-align:right}}
td:first-child{{text-align:left}} img{{max-width:100%}}</style></head><body>
<h1>taskloc delta</h1>
<p>{html.escape(str(report.base['path']))} &rarr; {html.escape(str(report.tuned['path']))}</p>
<p>{len(report.tensors)} tensors, {g.n:,} entries; Gini {g.gini:.3f} (dense null {g.null_gini:.3f}),
Hoyer {g.hoyer:.3f} (null {g.null_hoyer:.3f}); ||delta||/||base|| = {g.rel_norm}</p>
{selection}
{''.join(_figures(report))}
<h2>Tensors by delta energy</h2>
<table><tr><th>tensor</th><th>kind</th><th>layer</th><th>entries</th><th>energy</th><th>rel norm</th><th>Gini</th>
<th>Hoyer</th><th>eff. rank</th></tr>{rows}</table>
<h2>Notes</h2><ul>{notes}</ul>
</body></html>
"""
