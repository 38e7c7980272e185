"""A results summary in Markdown, generated from results.json alone (`taskloc report RUN --markdown`).

The README quotes this summary from a committed run between two markers naming that run's
results file; a test regenerates it and compares, so the findings quoted are never typed by hand.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

START = "<!-- findings: {path} -->"
END = "<!-- /findings -->"


def _num(x: Any) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.3g}" if isinstance(x, float) else str(x)


def _interval(record: dict[str, Any]) -> str:
    lo, hi = record["interval"]
    if lo is None or hi is None:
        return "–"
    level = record.get("level")
    tag = f" ({level:.0%})" if isinstance(level, (int, float)) else ""
    return f"[{_num(lo)}, {_num(hi)}]{tag}"


def _cell(text: str) -> str:
    return text.replace("|", "/").replace("\n", " ")


def summary_markdown(document: dict[str, Any]) -> str:
    """The verdict table, the preconditions and each study's notes, from a results document."""
    cfg = document["config"]
    lines = [f"Run: preset `{document['preset']}`, seed {cfg['seed']}, taskloc {document['taskloc_version']}"
             + (f", model `{cfg['model_path']}`" if cfg.get("model_path") else "") + ".", ""]
    checks = document.get("preconditions", [])
    if checks:
        lines += ["| precondition | measured | interval | check |", "|---|---|---|---|"]
        lines += [f"| {p['id']} | {_cell(p['measure'])}: {_num(p['value'])} | {_interval(p)} | {p['check']} |" for p in checks]
        lines.append("")
    claims = document.get("claims", [])
    if claims:
        lines += ["| claim | statement | measured | interval | verdict |", "|---|---|---|---|---|"]
        lines += [f"| {c['id']} | {_cell(c['statement'])} | {_cell(c['measure'])}: {_num(c['value'])} | {_interval(c)} | **{c['verdict']}** |"
                  for c in claims]
        lines.append("")
    for name, result in document.get("studies", {}).items():
        for note in result.get("notes", []):
            lines.append(f"- `{name}`: {_cell(note)}")
    return "\n".join(lines).rstrip() + "\n"


def quoted_findings(readme: str) -> list[tuple[str, str]]:
    """(results path, quoted text) for every findings block in a README."""
    pattern = re.compile(re.escape(START).replace(r"\{path\}", r"(?P<path>[^ ]+)") + r"\n(?P<body>.*?)" + re.escape(END), re.S)
    return [(m.group("path"), m.group("body")) for m in pattern.finditer(readme)]


def refresh_findings(readme_path: Path) -> str:
    """The README with every findings block regenerated from the results file it names."""
    import json

    readme_path = Path(readme_path)
    text = readme_path.read_text()
    for path, body in quoted_findings(text):
        document = json.loads((readme_path.parent / path).read_text())
        text = text.replace(f"{START.format(path=path)}\n{body}{END}", f"{START.format(path=path)}\n{summary_markdown(document)}{END}")
    return text
