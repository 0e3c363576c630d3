"""A/B offline comparison of model bundles on the same raw rows: metrics, significance, report."""

from ctrzoo.compare.report import write_report
from ctrzoo.compare.run import compare, verdict

__all__ = ["compare", "verdict", "write_report"]
