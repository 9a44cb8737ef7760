"""Shared pytest fixtures."""

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    """The real GLUE folder (SST-2, CoLA): $AUTOCOMPRESS_GLUE_DIR, else shared/glue beside the repo."""
    env = os.environ.get("AUTOCOMPRESS_GLUE_DIR")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "glue"
    if not (path / "SST-2" / "train.tsv").is_file():
        pytest.skip(f"no GLUE folder at {path}")
    return path
