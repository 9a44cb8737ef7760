"""The store: runs, trials, metrics, latencies and artifacts in SQL; the only package that speaks SQL.

``tables`` (the SQL models and the plain records handed out), ``urls`` (where a store is, and checking it
can be written), ``store`` (``Store``: one object per database).
"""
from .store import Store  # noqa: F401
from .tables import ArtifactRecord, RunRecord, TrialRecord, TrialResult, failure_summary, first_line  # noqa: F401
from .urls import StoreError, absolute_url, check_url, default_url, sqlite_file, writable_folder  # noqa: F401
