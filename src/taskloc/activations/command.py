"""`taskloc activations MODEL --prompts FILE.jsonl`: the body of the verb and its three outputs -
rich tables on the terminal, and with ``--out DIR`` activations.json (every number) and
activations.html (figures drawn by report.figures, laid out by report.html's page).

Everything the user gives is checked (prompts file, sites, options, the model) before the first
forward pass, and both files are written atomically at the end, so bad input leaves no file.
"""
from __future__ import annotations

import html
import math
import re
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from ..errors import ConfigError
from ..io.atomic import json_safe, write_json, write_text
from ..metrics import _check_convention
from ..models import load_model
from ..report.figures import bars_figure, lines_figure
from ..report.html import figure_html, page, table_html
from .analysis import HEADLINE, analyse
from .profile import DEFAULT_SITES, check_sites, profile_activations
from .prompts import read_prompts


def run_activations(model: Path, prompts: Path, *, sites: list[str] | None = None, out: Path | None = None,
                    device: str = "auto", convention: str = "taskloc", batch_size: int = 16, levels: int = 8,
                    all_tokens: bool = True, permutations: int = 1000, level: float = 0.95,
                    allow_pickle: bool = False) -> dict[str, Any]:
    _check_convention(convention)
    if permutations < 100:
        raise ConfigError(f"--permutations {permutations}: use at least 100 for a p-value worth reading.")
    if out is not None and out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; pass a directory (it will hold activations.json and activations.html).")
    data = read_prompts(prompts)
    loaded = load_model(model, device, allow_pickle=allow_pickle)
    names = check_sites(loaded, sites or DEFAULT_SITES)
    profile = profile_activations(loaded, data, names, convention=convention, batch_size=batch_size,
                                  max_levels=levels, all_tokens=all_tokens)
    doc = json_safe(analyse(profile, level=level, n_perm=permutations))
    print_tables(doc)
    if out is not None:
        write_json(out / "activations.json", doc)
        write_text(out / "activations.html", render_html(doc))
    return doc


# -- terminal --------------------------------------------------------------------------------------


def _num(x: float | None, fmt: str = ".3g") -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)


def _interval(rec: dict[str, Any]) -> str:
    return f"{_num(rec['mean'], '.4g')} [{_num(rec['lo'], '.4g')}, {_num(rec['hi'], '.4g')}]"


def _difference(rec: dict[str, Any]) -> str:
    """A difference with its Welch interval, and its achieved coverage where that is below nominal (*)."""
    short = f" *{_num(rec['achieved'], '.2f')}" if rec["short"] else ""
    return f"{_num(rec['diff'], '+.4g')} [{_num(rec['lo'], '+.3g')}, {_num(rec['hi'], '+.3g')}]{short}"


def _headline(doc: dict[str, Any]) -> list[str]:
    known = doc["metrics"]
    return [m for m in HEADLINE if m in known] + (["eff_rank_norm"] if "eff_rank_norm" in known else ["eff_rank"])


def print_tables(doc: dict[str, Any], console: Console | None = None) -> None:
    if console is None:
        console = Console(stderr=True)
        if not console.is_terminal:  # piped or captured: a fixed width so tables stay whole
            console = Console(stderr=True, width=140)
    p = doc["prompts"]
    levels = ", ".join(f"{lv['level']} (n={lv['n']})" for lv in p["levels"])
    console.print(f"[bold]activations[/bold] {doc['model']['kind']} model {doc['model']['source']}: {p['n']} prompts, "
                  f"levels {levels}; convention {doc['convention']}", highlight=False)
    for table in (_spearman_table(doc), _levels_table(doc), _localisation_table(doc)):
        console.print(table)
    console.print(f"[dim]intervals: {doc['interval']['method']}, nominal {doc['interval']['nominal']:.0%}; "
                  f"{doc['interval']['basis']}. {doc['spearman']['note']}.[/dim]", highlight=False)


def _spearman_table(doc: dict[str, Any]) -> Table:
    metrics = _headline(doc)
    t = Table(title="Spearman rho with difficulty, last prompt token (p)", title_justify="left", box=box.SIMPLE_HEAD)
    t.add_column("site", no_wrap=True)
    for m in metrics:
        t.add_column(m, justify="right")
    for s in doc["sites"]:
        t.add_row(s["site"], *(f"{_num(s['modes']['last'][m]['spearman']['rho'], '+.2f')} ({_num(s['modes']['last'][m]['spearman']['p'], '.2g')})"
                               for m in metrics))
    return t


def _levels_table(doc: dict[str, Any]) -> Table:
    metric = _headline(doc)[0]
    levels = [lv["level"] for lv in doc["prompts"]["levels"]]
    t = Table(title=f"{metric} by difficulty, last prompt token: mean [{doc['interval']['nominal']:.0%} t-interval over prompts]",
              title_justify="left", box=box.SIMPLE_HEAD)
    t.add_column("site", no_wrap=True)
    for name in levels:
        t.add_column(f"difficulty {name}", justify="right")
    for s in doc["sites"]:
        t.add_row(s["site"], *(_interval(rec) for rec in s["modes"]["last"][metric]["by_level"]))
    return t


def _localisation_table(doc: dict[str, Any]) -> Table:
    t = Table(title=f"Localisation, last prompt token: {doc['localisation']['compares'] or 'one level only, nothing to compare'}",
              title_justify="left", box=box.SIMPLE_HEAD)
    for col in ("site", "shift (RMS d)", "null", "top dims (d)"):
        t.add_column(col, justify="left" if col in ("site", "top dims (d)") else "right", no_wrap=col == "site")
    by_name = {s["site"]: s for s in doc["sites"]}
    for name in doc["localisation"]["ranking"].get("last", []):
        loc = by_name[name]["localisation"]["last"]
        dims = ", ".join(f"{d['dim']} ({d['d']:+.2f})" for d in loc["top_dims"])
        t.add_row(name, _num(loc["shift"]), _num(loc["null_rms"]), dims)
    return t


# -- HTML ------------------------------------------------------------------------------------------


def _short(site: str) -> str:
    """blocks.3.hook_resid_post -> L3 resid_post; ln_final.hook_normalized -> ln_final.normalized."""
    return re.sub(r"^blocks\.(\d+)\.", r"L\1 ", site).replace("hook_", "")


def _kinds(doc: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Sites grouped by kind (blocks.*.hook_resid_post), so each curve runs over layers of one kind."""
    out: dict[str, list[dict[str, Any]]] = {}
    for s in doc["sites"]:
        out.setdefault(re.sub(r"^blocks\.\d+\.", "blocks.*.", s["site"]), []).append(s)
    return out


def figures(doc: dict[str, Any], mode: str = "last") -> list[dict[str, Any]]:
    where = doc["modes"][mode]
    out = []
    for kind, sites in _kinds(doc).items():
        layered = all(s["layer"] is not None for s in sites)
        x = [s["layer"] for s in sites] if layered else list(range(len(sites)))
        for metric in _headline(doc):
            series = []
            for i, lv in enumerate(doc["prompts"]["levels"]):
                recs = [s["modes"][mode][metric]["by_level"][i] for s in sites]
                series.append({"label": f"difficulty {lv['level']}", "x": x, "y": [r["mean"] for r in recs],
                               "lo": [r["lo"] for r in recs], "hi": [r["hi"] for r in recs]})
            out.append(lines_figure(f"{metric}-{mode}-{kind}", f"{metric} by difficulty: {kind}", "layer" if layered else "site",
                                    metric, series,
                                    caption=f"Mean over prompts at {where}, with {doc['interval']['nominal']:.0%} t-interval "
                                            "bands over prompts (exact for normal per-prompt values; the note gives the coverage "
                                            "measured at these sizes)."))
    cats = [_short(s["site"]) for s in doc["sites"]]
    out.append(bars_figure(f"spearman-{mode}", "Spearman rho with difficulty", cats,
                           [{"label": m, "values": [s["modes"][mode][m]["spearman"]["rho"] for s in doc["sites"]]}
                            for m in _headline(doc)], "rho", ylim=(-1, 1),
                           caption=f"Rank correlation over prompts at {where}; p-values in the table (uncorrected)."))
    if doc["localisation"]["compares"]:
        locs = [s["localisation"][mode] for s in doc["sites"]]
        out.append(bars_figure(f"shift-{mode}", "How far each site moves between the extreme levels", cats,
                               [{"label": "shift (RMS standardised difference)", "values": [loc["shift"] for loc in locs]},
                                {"label": "no-change null", "values": [loc["null_rms"] for loc in locs]}], "RMS d",
                               caption=f"{doc['localisation']['compares']}; above the null: the site's hidden state moves."))
    return out


def _tables(doc: dict[str, Any], mode: str) -> list[dict[str, Any]]:
    metrics = _headline(doc)
    rho = {"title": "Spearman rho with difficulty (p, uncorrected)", "columns": ["site", *metrics],
           "rows": [[s["site"], *(f"{_num(s['modes'][mode][m]['spearman']['rho'], '+.3f')} (p={_num(s['modes'][mode][m]['spearman']['p'], '.2g')})"
                                  for m in metrics)] for s in doc["sites"]]}
    tables = [rho]
    if doc["localisation"]["compares"]:
        tables.append({"title": f"Change from the lowest to the highest level (highest - lowest, {doc['interval']['nominal']:.0%} Welch "
                                f"t-interval; *x: its measured coverage x is below nominal at these sizes)",
                       "columns": ["site", *metrics],
                       "rows": [[s["site"], *(_difference(s['modes'][mode][m]['change']) for m in metrics)] for s in doc["sites"]]})
        by_name = {s["site"]: s for s in doc["sites"]}
        tables.append({"title": "Localisation: sites ranked by shift, with their most-changed hidden dimensions",
                       "columns": ["site", "shift", "null", "top dimensions (d)"],
                       "rows": [[name, by_name[name]["localisation"][mode]["shift"], by_name[name]["localisation"][mode]["null_rms"],
                                 ", ".join(f"{d['dim']} ({d['d']:+.2f})" for d in by_name[name]["localisation"][mode]["top_dims"])]
                                for name in doc["localisation"]["ranking"][mode]]})
    if doc["prompts"]["labels"]["familiar"] and doc["prompts"]["labels"]["unfamiliar"]:
        tables.append({"title": f"Unfamiliar minus familiar ({doc['interval']['nominal']:.0%} Welch t-interval; *x: measured coverage "
                                "x below nominal)", "columns": ["site", *metrics],
                       "rows": [[s["site"], *(_difference(s['modes'][mode][m]['by_label']['unfamiliar_minus_familiar'])
                                              for m in metrics)] for s in doc["sites"]]})
    return tables


def render_html(doc: dict[str, Any]) -> str:
    p = doc["prompts"]
    parts = [f"<h1>taskloc activations</h1><p class='sub'>{html.escape(doc['model']['kind'])} model "
             f"<code>{html.escape(doc['model']['source'])}</code> · {p['n']} prompts from <code>{html.escape(p['path'])}</code> · "
             f"convention <b>{html.escape(doc['convention'])}</b></p>",
             table_html({"title": "Difficulty levels", "columns": ["level", "prompts", "difficulty min", "difficulty max"],
                         "rows": [[lv["level"], lv["n"], lv["difficulty_min"], lv["difficulty_max"]] for lv in p["levels"]]}),
             f"<div class='note'>Intervals: {html.escape(doc['interval']['method'])}, nominal {doc['interval']['nominal']:.0%}; "
             f"{html.escape(doc['interval']['basis'])}. {html.escape(doc['spearman']['note'])}.</div>"]
    for mode in doc["sites"][0]["modes"]:
        parts.append(f"<h2>{html.escape(doc['modes'][mode][0].upper() + doc['modes'][mode][1:])}</h2>")
        parts.append("<div class='figs'>" + "".join(figure_html(f) for f in figures(doc, mode)) + "</div>")
        parts.extend(table_html(t) for t in _tables(doc, mode))
    parts.append("<h2>Metrics</h2>" + table_html({"title": "", "columns": ["metric", "definition"],
                                                   "rows": [[k, v] for k, v in doc["metrics"].items()]}))
    return page("taskloc activations", "\n".join(parts))

