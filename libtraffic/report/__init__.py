"""Tuning report: an experiment folder's results files -> PNG figures + one self-contained HTML.

    python -m libtraffic.report --exp_id 70709

Reads only libtraffic/cache/<exp_id>/ (never Ray objects), so it also works on a finished or an
interrupted experiment; hyper_tune.py calls it at the end of every run.
"""

from libtraffic.report.report import PANELS, REPORT_FILE, write_report

__all__ = ["PANELS", "REPORT_FILE", "write_report"]
