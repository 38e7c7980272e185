"""Figure specs and the one renderer that draws them.

A spec is plain JSON (the numbers to plot, not a picture), so a study keeps its figures in
results.json and ``taskloc report RUN_DIR`` redraws them; ``taskloc delta --html`` uses the same
specs. ``render`` draws any spec as PNG bytes with matplotlib, imported on the first call.
"""
from __future__ import annotations

import io
import textwrap
from typing import Any

import numpy as np

PALETTE = ["#1f6feb", "#d1495b", "#2a9d8f", "#e9a23b", "#7b4fb8", "#5c6b73", "#8ab17d", "#c06c84"]
STYLE = {
    "figure.dpi": 110, "font.size": 10, "axes.spines.top": False, "axes.spines.right": False,
    "axes.grid": True, "grid.alpha": 0.25, "axes.titleweight": "bold", "legend.frameon": False,
}


def lines_figure(name: str, title: str, xlabel: str, ylabel: str, series: list[dict], *, logx: bool = False,
                 ylim: tuple[float, float] | None = None, caption: str = "") -> dict[str, Any]:
    """Spec for a line plot; each series: {label, x, y, optional lo/hi (band), optional style
    ("-", "--", ":") and color}."""
    return {"kind": "lines", "name": name, "title": title, "xlabel": xlabel, "ylabel": ylabel,
            "series": series, "logx": logx, "ylim": list(ylim) if ylim else None, "caption": caption}


def heatmap_figure(name: str, title: str, rows: list[str], cols: list[str], values: list[list[float]], *,
                   caption: str = "", col_groups: dict[str, list[str]] | None = None, fmt: str = ".2f") -> dict[str, Any]:
    """Spec for a rows x cols grid of values in [0, 1], each cell labelled; col_groups names runs of columns."""
    return {"kind": "heatmap", "name": name, "title": title, "rows": rows, "cols": cols, "values": values,
            "caption": caption, "col_groups": col_groups, "fmt": fmt}


def bars_figure(name: str, title: str, categories: list[str], groups: list[dict], ylabel: str, *,
                caption: str = "", ylim: tuple[float, float] | None = None) -> dict[str, Any]:
    """Grouped bars; each group: {label, values, optional lo/hi (error bars), optional color}."""
    return {"kind": "bars", "name": name, "title": title, "categories": categories, "groups": groups,
            "ylabel": ylabel, "caption": caption, "ylim": list(ylim) if ylim else None}


def render(spec: dict[str, Any]) -> bytes:
    """PNG bytes of one spec."""
    plt = _pyplot()
    draw = {"lines": _lines, "heatmap": _heatmap, "bars": _bars}[spec["kind"]]
    fig = draw(plt, spec)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(STYLE)
    return plt


def _finite(values) -> bool:
    return bool(np.isfinite(np.asarray(values, dtype=float)).any())


def _lines(plt, spec: dict[str, Any]):
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    drawable = [s for s in spec["series"] if _finite(s["y"])]
    if not drawable:
        ax.text(0.5, 0.5, "no data to plot (see the study notes)", ha="center", va="center", transform=ax.transAxes)
        ax.set(title=spec["title"], xticks=[], yticks=[])
        return fig
    for i, s in enumerate(spec["series"]):
        if not _finite(s["y"]):
            continue
        color = s.get("color", PALETTE[i % len(PALETTE)])
        style = s.get("style", "-")
        ax.plot(s["x"], s["y"], style, color=color, label=s["label"], marker="o", markersize=3, linewidth=1.6)
        if s.get("lo") is not None and s.get("hi") is not None:
            # null (an interval with no data) becomes NaN: the band simply has a gap there.
            lo, hi = np.asarray(s["lo"], dtype=float), np.asarray(s["hi"], dtype=float)
            ax.fill_between(s["x"], lo, hi, color=color, alpha=0.15, linewidth=0)
    if spec.get("logx"):
        _log_x(ax)
    if spec.get("ylim"):
        ax.set_ylim(*spec["ylim"])
    else:
        _clip_wide_bands(ax, drawable)
    # long titles and axis labels are wrapped: unwrapped, the tight bounding box widens the image
    # and the whole figure (text included) is shrunk to fit its cell in the report
    ax.set(title=textwrap.fill(spec["title"], 60), xlabel=textwrap.fill(spec["xlabel"], 80),
           ylabel=textwrap.fill(spec["ylabel"], 45))
    if len(spec["series"]) > 1:
        ax.legend(loc="best", fontsize=8, ncol=2 if len(spec["series"]) > 5 else 1)
    return fig


def _log_x(ax) -> None:
    """A log x axis labelled at 1, 2 and 5 times each power of ten in plain numbers (2000, 0.05):
    matplotlib's default also labels minor ticks in scientific notation when a plot spans about
    one decade, and those labels ran into each other."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _clip_wide_bands(ax, series: list[dict]) -> None:
    """Keep the y axis on the lines: an interval band far wider than the lines' own spread (a
    near-zero denominator, few units) would otherwise squash every line flat. The view is held
    to the lines' range plus that range again on each side, and the clipping is said on the plot."""
    ys = np.concatenate([np.asarray(s["y"], dtype=float) for s in series])
    ys = ys[np.isfinite(ys)]
    bands = [np.asarray(s[key], dtype=float) for s in series for key in ("lo", "hi") if s.get(key) is not None]
    if not ys.size or not bands:
        return
    edges = np.concatenate(bands)
    edges = edges[np.isfinite(edges)]
    pad = max(float(ys.max() - ys.min()), 0.05 * max(abs(float(ys.max())), abs(float(ys.min())), 1e-9))
    low, high = float(ys.min()) - pad, float(ys.max()) + pad
    if edges.size and (edges.min() < low or edges.max() > high):
        ax.set_ylim(max(low, float(edges.min())), min(high, float(edges.max())))
        ax.text(0.99, 0.01, "bands clipped to the lines' range", transform=ax.transAxes, ha="right", va="bottom",
                fontsize=7, color="#6b7482")


def _heatmap(plt, spec: dict[str, Any]):
    values = np.asarray(spec["values"], dtype=float)
    rows, cols = spec["rows"], spec["cols"]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.8 * len(cols) + 2), max(2.5, 0.45 * len(rows) + 1.2)))
    im = ax.imshow(values, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(rows)), rows)
    ax.grid(False)
    for r in range(len(rows)):
        for c in range(len(cols)):
            v = values[r, c]
            if np.isfinite(v):
                ax.text(c, r, format(v, spec.get("fmt", ".2f")), ha="center", va="center", fontsize=8,
                        color="white" if v < 0.6 else "black")
    groups = spec.get("col_groups") or {}
    for name, members in groups.items():
        idx = [cols.index(m) for m in members if m in cols]
        if idx:
            # x in data units (centred over the group), y just above the axes whatever the row count
            ax.annotate(name, xy=((min(idx) + max(idx)) / 2, 1.0), xycoords=ax.get_xaxis_transform(), ha="center",
                        va="bottom", xytext=(0, 3), textcoords="offset points", fontsize=9, fontweight="bold",
                        annotation_clip=False)
            if min(idx) > 0:
                ax.axvline(min(idx) - 0.5, color="white", linewidth=2)
    ax.set_title(spec["title"], pad=20 if groups else 6)
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
    return fig


def _bars(plt, spec: dict[str, Any]):
    cats, groups = spec["categories"], spec["groups"]
    # about a third of an inch per category and bar: many layers widen the plot instead of
    # squeezing the bars (a full-width figure on the page); a few categories keep the usual size
    fig, ax = plt.subplots(figsize=(min(16.0, max(6.4, 0.12 * len(cats) * (len(groups) + 1))), 3.8))
    if not cats or not groups:
        ax.text(0.5, 0.5, "no data to plot (see the study notes)", ha="center", va="center", transform=ax.transAxes)
        ax.set(title=spec["title"], xticks=[], yticks=[])
        return fig
    width = 0.8 / max(1, len(groups))
    x = np.arange(len(cats))
    for i, g in enumerate(groups):
        vals = np.asarray(g["values"], dtype=float)
        err = None
        if g.get("lo") is not None:
            err = np.vstack([vals - np.asarray(g["lo"], float), np.asarray(g["hi"], float) - vals])
            err = np.nan_to_num(err, nan=0.0).clip(min=0)  # no interval: no error bar
        ax.bar(x + (i - (len(groups) - 1) / 2) * width, vals, width, yerr=err, capsize=2,
               color=g.get("color", PALETTE[i % len(PALETTE)]), label=g["label"])
    crowded = len(cats) * max(len(c) for c in cats) > 48
    ax.set_xticks(x, cats, rotation=30 if crowded else 0, ha="right" if crowded else "center")
    if spec.get("ylim"):
        ax.set_ylim(*spec["ylim"])
    ax.set(title=spec["title"], ylabel=spec["ylabel"])
    if len(groups) > 1:
        # Below the axes: keeps the plot full width and never covers a bar.
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.25 if crowded else -0.1),
                  ncol=min(len(groups), 2))
    return fig
