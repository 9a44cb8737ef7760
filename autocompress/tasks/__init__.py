"""Tasks: GLUE (local GLUE folder or the HF hub) or your own files (CSV, TSV, JSON lines); splits; metrics.

Every Dataset returned has the columns ``text_a`` (str), ``text_b`` (str; pair tasks
only) and ``label`` (int, an index into ``TaskSpec.labels``).
"""
from __future__ import annotations

import dataclasses
import json
import os

import datasets

from .. import fileio
from .files import FileTask, _load_files
from .glue import ENV_DATA_DIR, HUB_DATASET, _load_hub, _load_local, default_data_dir, hub_unreachable  # noqa: F401
from .split import carve
from .spec import (METRICS, TASKS, DataError, TaskData, TaskSpec, compute_metrics, default_val_size,  # noqa: F401
                   get_task, stored_task)


def load_task(task: str | FileTask, data_dir: str | os.PathLike | None = None, *,
              val_size: int | None = None, seed: int = 0) -> TaskData:
    """Load a GLUE task (local folder if given or set in the env, else the hub) or your own files, and
    carve the validation split from train like dev (``split.carve``): ``val_size`` rows (default
    ``default_val_size``), at most half of train so that the teacher never learns from less than the
    search validates on."""
    if isinstance(task, FileTask):
        spec, train, dev = _load_files(task)
        source = task.describe()
    else:
        spec = get_task(task)
        data_dir = data_dir if data_dir is not None else default_data_dir()
        if data_dir is not None:
            folder = os.path.abspath(os.fspath(data_dir))
            train, dev = _load_local(spec, folder)
            source = f"local:{folder}"
        else:
            train, dev = _load_hub(spec)
            source = f"hub:{HUB_DATASET}"
    n = len(train)
    if val_size is None:
        val_size = default_val_size(n)
    if val_size <= 0:
        raise DataError(f"--val-size must be at least 1 (got {val_size})")
    if n < 2:
        raise DataError(f"{spec.name} has {n} training row(s): at least 2 are needed to carve a validation split")
    if val_size > n // 2:
        raise DataError(f"--val-size {val_size} would leave the teacher {n - val_size} of the {n} {spec.name} "
                        f"training rows: give at most {n // 2} (half), or leave it out for the default (10% of train, at least 20% up to 500 rows, at most 1000)")
    rest, val, how = carve(train, dev, val_size, seed)
    if len(rest) < val_size:
        raise DataError(f"--val-size {val_size}: after carving val like dev, {len(rest)} of the {n} {spec.name} "
                        "training rows would be left to the teacher (the others are val, or parts or copies of val inputs); "
                        "give a smaller --val-size")
    return TaskData(spec, rest, val, dev, source, how.to_dict())


def save_task_data(data: TaskData, folder: str | os.PathLike) -> str:
    """Keep the task's splits (as carved) in the run folder: trial workers, possibly on other machines
    sharing the folder, and resumed searches read exactly these rows, not the original files."""
    folder = os.path.abspath(os.fspath(folder))
    if os.path.isfile(os.path.join(folder, "task.json")):
        return folder
    datasets.disable_progress_bars()
    with fileio.folder(folder, keep_existing=True) as tmp:
        for split in ("train", "val", "dev"):
            getattr(data, split).save_to_disk(str(tmp / split))
        fileio.write_json(tmp / "task.json", {"spec": dataclasses.asdict(data.spec), "source": data.source,
                                              "carve": data.carve})
    return folder


def load_task_data(folder: str | os.PathLike) -> TaskData:
    """The splits saved by ``save_task_data``."""
    folder = os.fspath(folder)
    try:
        with open(os.path.join(folder, "task.json")) as f:
            meta = json.load(f)
    except OSError as e:
        raise DataError(f"the run's task data is missing ({e.strerror}: {folder}); is the run folder shared "
                        "with every machine of the cluster?") from None
    splits = [datasets.load_from_disk(os.path.join(folder, split)) for split in ("train", "val", "dev")]
    spec = dict(meta["spec"], labels=tuple(meta["spec"].get("labels") or ()))     # JSON keeps tuples as lists
    return TaskData(TaskSpec(**spec), *splits, meta["source"], meta.get("carve"))


