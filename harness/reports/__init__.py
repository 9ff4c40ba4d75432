"""Reports of a run: report.md, a self-contained report.html and timeline.png (`render`)."""

from .render import render_report

__all__ = ["render_report"]
