"""The experiment report: one self-contained HTML page (and the same data as JSON)."""

from services.report.build import collect_report, render_html, write_report

__all__ = ["collect_report", "render_html", "write_report"]
