"""The findings the README quotes are generated from a committed results file, never typed by hand."""
from pathlib import Path

from taskloc.report.markdown import quoted_findings, refresh_findings, summary_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_readme_quotes_the_summary_of_a_committed_run():
    readme = ROOT / "README.md"
    blocks = quoted_findings(readme.read_text())
    assert blocks, "README.md quotes no findings block"
    for path, _ in blocks:
        assert (ROOT / path).is_file(), f"README quotes {path}, which is not committed"
    assert refresh_findings(readme) == readme.read_text(), \
        "README findings are stale: regenerate with taskloc.report.markdown.refresh_findings('README.md')"


def test_summary_lists_claims_preconditions_and_notes():
    doc = {"taskloc_version": "0", "preset": "quick", "config": {"seed": 0},
           "preconditions": [{"id": "base-competent", "measure": "weakest cell", "value": 0.5, "interval": [0.4, 0.6],
                              "check": "fail"}],
           "claims": [{"id": "C0", "statement": "a | b", "measure": "m", "value": 0.25, "interval": [0.1, 0.4], "level": 0.95,
                       "verdict": "supported"}, {"id": "C0", "statement": "s", "measure": "m", "value": None,
                                                 "interval": [None, None], "verdict": "inconclusive"}],
           "studies": {"weight-delta": {"notes": ["a note"]}}}
    text = summary_markdown(doc)
    assert "| base-competent | weakest cell: 0.5 | [0.4, 0.6] (–) | fail |" not in text
    assert "| base-competent | weakest cell: 0.5 | [0.4, 0.6] | fail |" in text
    assert "| C0 | a / b | m: 0.25 | [0.1, 0.4] (95%) | **supported** |" in text
    assert "| C0 | s | m: – | – | **inconclusive** |" in text
    assert "- `weight-delta`: a note" in text
