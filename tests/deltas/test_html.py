"""`taskloc delta --html` is drawn by the report's renderer from figure specs, on the report's page."""
import base64

import torch
from safetensors.torch import save_file

from taskloc.cli import main
from taskloc.deltas import delta_stats
from taskloc.deltas.html import delta_figures, render_html
from taskloc.report import html as report_html


def _pair():
    g = torch.Generator().manual_seed(0)
    base = {f"blocks.{i}.mlp.fc_in.weight": torch.randn(16, 8, generator=g) for i in range(3)}
    base["tok_emb.weight"] = torch.randn(20, 8, generator=g)
    tuned = {n: t + 0.1 * torch.randn(t.shape, generator=g) for n, t in base.items()}
    tuned["blocks.2.mlp.fc_in.weight"][0, :4] += 5.0  # a few large entries: the top-k sits in block 2
    return base, tuned


def test_figure_specs_carry_the_reports_numbers():
    report = delta_stats(*_pair(), top="4")
    curves, by_kind, by_layer = delta_figures(report)
    assert curves["kind"] == "lines" and curves["logx"]
    assert [s["y"] for s in curves["series"]] == [report.total.curve_energy, report.total.null_energy,
                                                   report.total.curve_l1, report.total.null_l1]
    assert curves["series"][0]["x"] == [100 * q for q in report.grid]
    assert by_kind["categories"] == ["embed", "mlp_in"]
    assert by_layer["categories"] == ["block 0", "block 1", "block 2", "outside blocks"]
    topk = by_layer["groups"][2]
    assert topk["label"] == "share of top-k entries" and topk["values"] == [0.0, 0.0, 1.0, 0.0]
    assert [g["values"] for g in by_layer["groups"][:2]] == [[r["param_share"] for r in report.profile["layer"]],
                                                             [r["energy_share"] for r in report.profile["layer"]]]


def test_page_is_the_reports_page_with_every_figure_rendered_by_the_report(monkeypatch):
    report = delta_stats(*_pair(), top="4")
    drawn = []

    def fake_render(spec):
        drawn.append(spec["name"])
        return spec["name"].encode()

    monkeypatch.setattr(report_html, "render", fake_render)
    page = render_html(report)
    assert drawn == ["concentration", "profile-kind", "profile-layer"]
    for name in drawn:
        assert f"data:image/png;base64,{base64.b64encode(name.encode()).decode()}" in page
    assert page.startswith("<!doctype html>") and f"<style>{report_html.CSS}</style>" in page
    assert "<title>taskloc delta</title>" in page and "<h3>Profile by layer</h3>" in page
    assert page.count("<figure>") == 3 and page.count("<figcaption>") == 3


def test_cli_writes_the_page(tmp_path, capsys):
    base, tuned = _pair()
    save_file(base, str(tmp_path / "base.safetensors"))
    save_file(tuned, str(tmp_path / "tuned.safetensors"))
    main(["delta", str(tmp_path / "base.safetensors"), str(tmp_path / "tuned.safetensors"), "--html", str(tmp_path / "d.html")])
    page = (tmp_path / "d.html").read_text()
    pngs = [part.split("'", 1)[0] for part in page.split("data:image/png;base64,")[1:]]
    assert len(pngs) == 3 and all(base64.b64decode(p).startswith(b"\x89PNG") for p in pngs)
    assert "tuned.safetensors</code>" in page
