"""Metrics, progress bars and (later) the run report."""

from veripo.report.html import write_report
from veripo.report.metrics import MetricsLogger

__all__ = ["MetricsLogger", "write_report"]
