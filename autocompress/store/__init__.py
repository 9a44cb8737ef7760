"""The store: runs, trials, metrics, latencies and artifacts in SQL; the only package that speaks SQL.

``tables`` (the SQL models and the plain records handed out), ``urls`` (where a store is, and checking it
can be written), ``store`` (``Store``: one object per database).
"""
from .store import Store  # noqa: F401
from .tables import (INTERRUPTED, ArtifactRecord, RunRecord, TrialRecord, TrialResult, failure_summary,  # noqa: F401
                     first_line)
from .urls import StoreError, absolute_url, check_url, default_url, sqlite_file, writable_folder  # noqa: F401
