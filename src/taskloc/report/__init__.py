from .html import build_html, rebuild_report, write_report

__all__ = ["build_html", "rebuild_report", "write_report"]
