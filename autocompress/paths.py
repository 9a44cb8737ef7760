"""Where things live: the cache (teachers, calibrations, recovered models), the runs folder, and the
environment variables that move them. Every other module asks here."""
from __future__ import annotations

import os
from pathlib import Path

ENV_CACHE = "AUTOCOMPRESS_CACHE"                  # the cache root (default ~/.cache/autocompress)
ENV_CALIBRATION = "AUTOCOMPRESS_CALIBRATION_DIR"  # per-host calibrations (default CACHE/calibration)
ENV_RUNS = "AUTOCOMPRESS_RUNS"                    # the default runs folder (default ./runs)
ENV_LOCK = "AUTOCOMPRESS_LOCK_FILE"               # the machine lock (default in the temp folder)
# variables whose paths a user may give relatively: the CLI makes them absolute before workers inherit them
PATH_VARIABLES = (ENV_CACHE, ENV_LOCK, ENV_CALIBRATION)


def cache_root() -> Path:
    return Path(os.environ.get(ENV_CACHE, Path.home() / ".cache" / "autocompress"))


def teachers_dir() -> Path:
    return cache_root() / "teachers"


def calibration_dir() -> Path:
    """Where per-host calibrations (and the host references) are kept."""
    env = os.environ.get(ENV_CALIBRATION)
    return Path(env) if env else cache_root() / "calibration"


def default_runs_dir() -> str:
    return os.environ.get(ENV_RUNS, "runs")


def prefix_dir(teacher_path: str | os.PathLike, key: str) -> Path:
    """Where a recovered (trained) model of a recipe prefix is kept: beside the teacher it was distilled
    from (the teacher's folder is what every worker of a cluster reads, and it outlives the run)."""
    return Path(teacher_path) / "prefixes" / key
