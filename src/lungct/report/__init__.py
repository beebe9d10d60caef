"""Report wing: the self-contained HTML report of a run folder."""

from lungct.report.document import render_report, write_report

__all__ = ["render_report", "write_report"]
