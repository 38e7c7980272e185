"""report.html: one self-contained page (CSS and figures inline) built from results.json."""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from ..errors import RunDirError
from ..io.atomic import write_text
from .figures import render

CSS = """
body{font:15px/1.5 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
main{max-width:1080px;margin:0 auto;padding:24px 28px 60px}
h1{font-size:26px;margin:8px 0 2px} h2{font-size:20px;margin:36px 0 8px;border-bottom:2px solid #dde1e7;padding-bottom:4px}
h3{font-size:16px;margin:18px 0 6px} .sub{color:#5c6675;margin:0 0 18px}
table{border-collapse:collapse;width:100%;background:#fff;margin:8px 0 16px;font-size:13.5px}
th,td{border-bottom:1px solid #e4e7ec;padding:6px 8px;text-align:left;vertical-align:top}
th{background:#eef1f5;font-weight:600} td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.badge{display:inline-block;padding:2px 9px;border-radius:11px;font-weight:600;font-size:12.5px;white-space:nowrap}
.supported,.pass{background:#d8f3e3;color:#136c3a} .not-supported,.fail{background:#fbdcdc;color:#9b1c1c}
.inconclusive{background:#fdf0c8;color:#7a5a00}
.figs{display:grid;grid-template-columns:repeat(auto-fit,minmax(470px,1fr));gap:14px}
figure{margin:0;background:#fff;border:1px solid #e4e7ec;border-radius:8px;padding:10px}
figure img{width:100%;height:auto} figcaption{font-size:13px;color:#4a5363;margin-top:4px}
.note{background:#fff;border-left:4px solid #8aa4c8;padding:6px 12px;margin:8px 0;font-size:14px}
.muted{color:#6b7482;font-size:13px} details{margin-top:4px} summary{cursor:pointer}
"""


def _fmt(x: Any) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.3g}" if abs(x) < 1e-3 and x != 0 else f"{x:.3f}"
    return html.escape(str(x))


def _interval(record: dict[str, Any]) -> str:
    lo, hi = record["interval"]
    level = record.get("level")
    tag = f"<br><span class='muted'>{level:.0%}</span>" if isinstance(level, (int, float)) else ""
    return f"[{_fmt(lo)}, {_fmt(hi)}]{tag}"


def _verdict_table(claims: list[dict[str, Any]]) -> str:
    if not claims:
        return '<p class="muted">This run tested no claims.</p>'
    rows = []
    for c in sorted(claims, key=lambda c: c["id"]):  # C0..C6 in order, whichever study ran first
        cls = c["verdict"].replace(" ", "-")
        # the badge reads at a glance; why it was given (numbers, then the rule) opens on a click
        reason = f"<i>{html.escape(c['reason'])}</i><br>" if c.get("reason") else ""
        rows.append(
            f"<tr><td><a href='#claim-{html.escape(c['id'])}'><b>{html.escape(c['id'])}</b></a><br>"
            f"<span class='muted'>{html.escape(c['study'])}</span></td><td>{html.escape(c['statement'])}</td>"
            f"<td>{html.escape(c['measure'])}: <b>{_fmt(c['value'])}</b></td>"
            f"<td class='num'>{_interval(c)}</td>"
            f"<td>{html.escape(c['control'])}</td>"
            f"<td><span class='badge {cls}'>{html.escape(c['verdict'])}</span>"
            f"<details><summary class='muted'>why</summary><span class='muted'>{reason}rule: {html.escape(c['rule'])}</span>"
            "</details></td></tr>"
        )
    head = "<tr><th>claim</th><th>statement</th><th>measured figure</th><th>interval</th><th>control</th><th>verdict</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def _precondition_table(checks: list[dict[str, Any]]) -> str:
    if not checks:
        return ""
    rows = "".join(
        f"<tr><td><b>{html.escape(p['id'])}</b><br><span class='muted'>{html.escape(p['study'])}</span></td>"
        f"<td>{html.escape(p['statement'])}</td><td>{html.escape(p['measure'])}: <b>{_fmt(p['value'])}</b></td>"
        f"<td class='num'>{_interval(p)}</td><td>{html.escape(p['control'])}</td>"
        f"<td><span class='badge {p['check']}'>{html.escape(p['check'])}</span><details><summary class='muted'>rule</summary>"
        f"<span class='muted'>{html.escape(p['rule'])}</span></details></td></tr>"
        for p in checks)
    head = "<tr><th>precondition</th><th>statement</th><th>measured figure</th><th>interval</th><th>for reference</th><th>check</th></tr>"
    return ("<h2>Preconditions</h2><p class='muted'>Checks that make the verdicts meaningful; a claim whose study "
            f"requires a failed precondition is reported as inconclusive.</p><table>{head}{rows}</table>")


def table_html(t: dict[str, Any]) -> str:
    """A table spec ({title, columns, rows}) as HTML; numbers right-aligned."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in t["columns"])
    body = "".join(
        "<tr>" + "".join(f"<td class='num'>{_fmt(v)}</td>" if isinstance(v, (int, float)) else f"<td>{_fmt(v)}</td>" for v in row) + "</tr>"
        for row in t["rows"]
    )
    title = f"<h3>{html.escape(t['title'])}</h3>" if t.get("title") else ""
    return f"{title}<table><tr>{head}</tr>{body}</table>"


def figure_html(spec: dict[str, Any]) -> str:
    """A figure spec drawn inline (PNG) with its caption."""
    data = base64.b64encode(render(spec)).decode()
    cap = f"<figcaption>{html.escape(spec.get('caption', ''))}</figcaption>" if spec.get("caption") else ""
    return f"<figure><img alt='{html.escape(spec['title'])}' src='data:image/png;base64,{data}'>{cap}</figure>"


def _claims_section() -> str:
    from ..claims import CLAIMS, claim_rules

    rules = claim_rules()
    items = []
    for c in CLAIMS:
        tested = "".join(f"<li><code>{html.escape(study)}</code> — {html.escape(what)}.<br><span class='muted'>rule: "
                         f"{html.escape(rule)}</span></li>" for study, what, rule in rules.get(c.id, []))
        items.append(f"<h3 id='claim-{c.id}'>{c.id}. {html.escape(c.title)}</h3><p>{html.escape(c.asserts)}</p>"
                     f"<p class='muted'>Source: {html.escape(c.source)} How its authors measured it: {html.escape(c.how_measured)}</p>"
                     f"<ul>{tested or '<li class=muted>no study tests it yet</li>'}</ul>")
    return "<h2 id='claims'>The claims</h2>" + "".join(items)


def build_html(document: dict[str, Any]) -> str:
    parts = [f"<h1>taskloc report</h1><p class='sub'>preset <b>{html.escape(document['preset'])}</b> · "
             f"seed {document['config']['seed']} · taskloc {html.escape(document['taskloc_version'])}"
             + (f" · model <code>{html.escape(document['config']['model_path'])}</code>" if document["config"].get("model_path") else "")
             + "</p>",
             "<h2>Verdicts</h2>", "<p class='muted'>What each claim asserts, its source and the rule that decides it: <a href='#claims'>the claims</a> "
             "below (the same text as <code>taskloc claims</code> and docs/claims.md).</p>",
             _verdict_table(document["claims"]), _precondition_table(document.get("preconditions", []))]
    for name, result in document["studies"].items():
        parts.append(f"<h2>Study: {html.escape(name)}</h2>")
        parts.extend(f"<div class='note'>{html.escape(n)}</div>" for n in result.get("notes", []))
        if result.get("figures"):
            parts.append("<div class='figs'>" + "".join(figure_html(f) for f in result["figures"]) + "</div>")
        parts.extend(table_html(t) for t in result.get("tables", []))
    parts.append(_claims_section())
    body = "\n".join(parts)
    return page("taskloc report", body)


def page(title: str, body: str) -> str:
    """One self-contained page in the report's style (every taskloc HTML output is built here)."""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{CSS}</style>"
            f"</head><body><main>{body}</main></body></html>\n")


def write_report(run_dir: Path, document: dict[str, Any]) -> Path:
    path = Path(run_dir) / "report.html"
    write_text(path, build_html(document))
    return path


def read_results(run_dir: Path) -> dict[str, Any]:
    """A run directory's results.json, checked to be one."""
    results = Path(run_dir) / "results.json"
    if not results.is_file():
        raise RunDirError(f"{run_dir} has no results.json; give a finished run directory (made by `taskloc run`).")
    try:
        document = json.loads(results.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunDirError(f"{results} is not valid JSON ({exc}); rerun `taskloc run` to rewrite it.") from None
    expected = {"taskloc_version", "preset", "config", "claims", "studies"}
    if not isinstance(document, dict) or not expected <= set(document):
        raise RunDirError(f"{results} is not a taskloc results file (it needs the keys {sorted(expected)}); "
                          "rerun `taskloc run` to rewrite it.")
    return document


def rebuild_report(run_dir: Path) -> Path:
    return write_report(Path(run_dir), read_results(run_dir))
