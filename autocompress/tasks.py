"""GLUE tasks: specs, loading (local GLUE folder or the HF hub) and metrics.

Every Dataset returned has the columns ``text_a`` (str), ``text_b`` (str; pair tasks
only) and ``label`` (int).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from urllib.parse import urlparse

import datasets
import numpy as np

HUB_DATASET = "nyu-mll/glue"
ENV_DATA_DIR = "AUTOCOMPRESS_GLUE_DIR"


class DataError(Exception):
    """A user-facing problem with task data; str(e) is one line saying what is wrong and what to do."""


@dataclass(frozen=True)
class TaskSpec:
    name: str
    glue_dir: str
    hub_config: str
    text_a: str  # hub column of the first sentence
    text_b: str | None  # hub column of the second sentence (None: single-sentence task)
    num_labels: int
    metric: str  # "accuracy" | "f1" | "matthews"
    dev_file: str = "dev.tsv"


TASKS: dict[str, TaskSpec] = {
    "sst2": TaskSpec("sst2", "SST-2", "sst2", "sentence", None, 2, "accuracy"),
    "cola": TaskSpec("cola", "CoLA", "cola", "sentence", None, 2, "matthews"),
    "mrpc": TaskSpec("mrpc", "MRPC", "mrpc", "sentence1", "sentence2", 2, "f1"),
    "qqp": TaskSpec("qqp", "QQP", "qqp", "question1", "question2", 2, "f1"),
    "qnli": TaskSpec("qnli", "QNLI", "qnli", "question", "sentence", 2, "accuracy"),
    "rte": TaskSpec("rte", "RTE", "rte", "sentence1", "sentence2", 2, "accuracy"),
    "mnli": TaskSpec("mnli", "MNLI", "mnli", "premise", "hypothesis", 3, "accuracy",
                     dev_file="dev_matched.tsv"),
}

_NLI2 = {"entailment": 0, "not_entailment": 1}
_NLI3 = {"entailment": 0, "neutral": 1, "contradiction": 2}


@dataclass(frozen=True)
class _Layout:
    """Where text_a / text_b / label sit in a GLUE TSV: header names, or indices if no header."""
    a: str | int
    b: str | int | None
    label: str | int
    labels: dict[str, int] | None = None  # string labels -> ids; None: labels are ints
    ncols: int | None = None  # column count for header-less files


_LAYOUTS: dict[str, _Layout] = {
    "sst2": _Layout("sentence", None, "label"),
    "cola": _Layout(3, None, 1, ncols=4),
    "mrpc": _Layout("#1 String", "#2 String", "Quality"),
    "qqp": _Layout("question1", "question2", "is_duplicate"),
    "qnli": _Layout("question", "sentence", "label", _NLI2),
    "rte": _Layout("sentence1", "sentence2", "label", _NLI2),
    "mnli": _Layout("sentence1", "sentence2", "gold_label", _NLI3),
}


@dataclass
class TaskData:
    spec: TaskSpec
    train: datasets.Dataset  # GLUE train minus the carved validation rows
    val: datasets.Dataset  # carved from GLUE train with a fixed seed: used by the search
    dev: datasets.Dataset  # the official GLUE dev set: only to re-score the final front
    source: str  # "local:/path/to/glue" or "hub:nyu-mll/glue"


def save_task_data(data: TaskData, folder: str | os.PathLike) -> str:
    """Keep the task's splits (as carved) in the run folder: trial workers, possibly on other machines
    sharing the folder, and resumed searches read exactly these rows, not the original files."""
    import dataclasses
    import json
    import shutil
    import tempfile

    folder = os.path.abspath(os.fspath(folder))
    if os.path.isfile(os.path.join(folder, "task.json")):
        return folder
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    tmp = tempfile.mkdtemp(dir=os.path.dirname(folder), prefix=".tmp-data-")
    datasets.disable_progress_bars()
    try:
        for split in ("train", "val", "dev"):
            getattr(data, split).save_to_disk(os.path.join(tmp, split))
        with open(os.path.join(tmp, "task.json"), "w") as f:
            json.dump({"spec": dataclasses.asdict(data.spec), "source": data.source}, f, indent=2)
        os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def load_task_data(folder: str | os.PathLike) -> TaskData:
    """The splits saved by ``save_task_data``."""
    import json

    folder = os.fspath(folder)
    try:
        with open(os.path.join(folder, "task.json")) as f:
            meta = json.load(f)
    except OSError as e:
        raise DataError(f"the run's task data is missing ({e.strerror}: {folder}); is the run folder shared "
                        "with every machine of the cluster?") from None
    splits = [datasets.load_from_disk(os.path.join(folder, split)) for split in ("train", "val", "dev")]
    return TaskData(TaskSpec(**meta["spec"]), *splits, meta["source"])


def get_task(name: str) -> TaskSpec:
    """Look a task up by name, case-insensitively ("SST-2", "sst-2" and "sst2" all work)."""
    key = name.strip().lower().replace("-", "").replace("_", "")
    if key not in TASKS:
        raise DataError(f"unknown task {name!r}: known tasks are {', '.join(TASKS)}")
    return TASKS[key]


def default_data_dir() -> str | None:
    """The GLUE folder from $AUTOCOMPRESS_GLUE_DIR, or None."""
    return os.environ.get(ENV_DATA_DIR) or None


def load_task(name: str, data_dir: str | os.PathLike | None = None, *,
              val_size: int = 1000, seed: int = 0) -> TaskData:
    """Load a GLUE task (local folder if given or set in the env, else the hub) and carve val from train."""
    spec = get_task(name)
    data_dir = data_dir if data_dir is not None else default_data_dir()
    if data_dir is not None:
        folder = os.path.abspath(os.fspath(data_dir))
        train, dev = _load_local(spec, folder)
        source = f"local:{folder}"
    else:
        train, dev = _load_hub(spec)
        source = f"hub:{HUB_DATASET}"
    if val_size <= 0:
        raise DataError(f"val_size must be > 0 (got {val_size})")
    if val_size >= len(train):
        raise DataError(f"val_size {val_size} must be smaller than the {len(train)} "
                        f"{spec.glue_dir} training rows; pass a smaller validation size")
    split = train.train_test_split(test_size=val_size, seed=seed, shuffle=True)
    return TaskData(spec, split["train"], split["test"], dev, source)


def _features(spec: TaskSpec) -> datasets.Features:
    cols = {"text_a": datasets.Value("string")}
    if spec.text_b is not None:
        cols["text_b"] = datasets.Value("string")
    cols["label"] = datasets.Value("int64")
    return datasets.Features(cols)


def _load_local(spec: TaskSpec, folder: str) -> tuple[datasets.Dataset, datasets.Dataset]:
    task_dir = os.path.join(folder, spec.glue_dir)
    paths = [os.path.join(task_dir, f) for f in ("train.tsv", spec.dev_file)]
    if not all(os.path.isfile(p) for p in paths):
        raise DataError(f"no {spec.glue_dir} files in {folder} (expected {paths[0]} and "
                        f"{spec.dev_file}); point --data-dir at a GLUE folder")
    return _read_tsv(spec, paths[0]), _read_tsv(spec, paths[1])


def _read_tsv(spec: TaskSpec, path: str) -> datasets.Dataset:
    """Read one GLUE TSV (no quoting); rows with the wrong column count or label are skipped."""
    layout = _LAYOUTS[spec.name]
    with open(path, encoding="utf-8-sig", newline="") as f:
        lines = [line.rstrip("\r\n").split("\t") for line in f]
    if layout.ncols is None:  # header line names the columns
        header, lines = (lines[0] if lines else []), lines[1:]
        missing = [c for c in (layout.a, layout.b, layout.label) if c is not None and c not in header]
        if missing:
            raise DataError(f"{path} lacks the column(s) {', '.join(map(str, missing))}; "
                            f"expected GLUE's {spec.glue_dir} layout")
        ncols = len(header)
        ia, il = header.index(layout.a), header.index(layout.label)
        ib = header.index(layout.b) if layout.b is not None else None
    else:
        ncols, ia, ib, il = layout.ncols, layout.a, layout.b, layout.label
    data: dict[str, list] = {"text_a": [], "text_b": [], "label": []}
    if ib is None:
        del data["text_b"]
    for row in lines:
        if len(row) != ncols:
            continue
        raw = row[il].strip()
        if layout.labels is not None:
            label = layout.labels.get(raw)
        else:
            label = int(raw) if raw.lstrip("-").isdigit() else None
        if label is None or not 0 <= label < spec.num_labels:
            continue
        data["text_a"].append(row[ia])
        if ib is not None:
            data["text_b"].append(row[ib])
        data["label"].append(label)
    if not data["label"]:
        raise DataError(f"no usable rows in {path}; expected GLUE's {spec.glue_dir} TSV layout")
    return datasets.Dataset.from_dict(data, features=_features(spec))


def hub_unreachable() -> bool:
    """True if offline mode is asked for or the hub host does not answer within 3 s."""
    if any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
           for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return True
    if os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy"):
        return False  # a direct probe says nothing behind a proxy
    from huggingface_hub import constants
    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=3).close()
        return False
    except OSError:
        return True


def _load_hub(spec: TaskSpec) -> tuple[datasets.Dataset, datasets.Dataset]:
    msg = (f"could not load GLUE {spec.name} from the hub (offline?): pass --data-dir PATH "
           f"to a local GLUE folder (or set {ENV_DATA_DIR})")
    # Fail fast when offline, unless datasets itself runs offline (then it tries its cache quickly).
    if hub_unreachable() and not datasets.config.HF_HUB_OFFLINE:
        raise DataError(msg)
    dev_split = "validation_matched" if spec.name == "mnli" else "validation"
    try:
        ds = datasets.load_dataset(HUB_DATASET, spec.hub_config)
        splits = [ds["train"], ds[dev_split]]
    except Exception as e:  # anything: network, cache, auth, missing split
        raise DataError(msg) from e
    rename = {spec.text_a: "text_a", "label": "label"}
    if spec.text_b is not None:
        rename[spec.text_b] = "text_b"
    out = []
    for split in splits:
        split = split.select_columns(list(rename)).rename_columns(
            {k: v for k, v in rename.items() if k != v})
        out.append(split.cast(_features(spec)))
    return out[0], out[1]


def compute_metrics(spec: TaskSpec, preds, labels) -> dict[str, float]:
    """accuracy (all tasks), f1 of class 1 (mrpc, qqp), matthews (cola), and "main" = the task's metric.

    preds may be class ids or a 2-D array of logits (argmaxed).
    """
    p, y = np.asarray(preds), np.asarray(labels).astype(np.int64)
    if p.ndim == 2:
        p = p.argmax(axis=-1)
    p = p.astype(np.int64)
    if p.shape != y.shape or y.size == 0:
        raise ValueError(f"preds and labels must be non-empty and the same length "
                         f"(got {p.shape} and {y.shape})")
    out = {"accuracy": float((p == y).mean())}
    tp = float(np.sum((p == 1) & (y == 1)))
    tn = float(np.sum((p != 1) & (y != 1)))
    fp = float(np.sum((p == 1) & (y != 1)))
    fn = float(np.sum((p != 1) & (y == 1)))
    if spec.metric == "f1":
        denom = 2 * tp + fp + fn
        out["f1"] = 2 * tp / denom if denom else 0.0
    elif spec.metric == "matthews":
        denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
        out["matthews"] = float((tp * tn - fp * fn) / denom) if denom else 0.0
    out["main"] = out[spec.metric]
    return out
