"""``sparsegap-report DIR``: tidy CSV, summary table and figures from run folders.

See ``sparsegap/report/__main__.py`` for the command line, ``collect`` for how run folders are read,
``aggregate`` for how replicas are pooled, ``figures`` for what is drawn.
"""

from sparsegap.report.collect import Job, all_rows, load_jobs, write_csv

__all__ = ["Job", "all_rows", "load_jobs", "write_csv"]
