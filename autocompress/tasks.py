"""Tasks: GLUE (local GLUE folder or the HF hub) or your own files (CSV, TSV, JSON lines); splits; metrics.

Every Dataset returned has the columns ``text_a`` (str), ``text_b`` (str; pair tasks
only) and ``label`` (int, an index into ``TaskSpec.labels``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
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
    metric: str  # "accuracy" | "f1" (of class 1, GLUE's) | "macro_f1" | "matthews"
    dev_file: str = "dev.tsv"
    labels: tuple[str, ...] = ()  # label names, by id (the model config's id2label)

    @property
    def label_names(self) -> tuple[str, ...]:
        return self.labels or tuple(f"LABEL_{i}" for i in range(self.num_labels))


_ENTAIL2 = ("entailment", "not_entailment")
TASKS: dict[str, TaskSpec] = {
    "sst2": TaskSpec("sst2", "SST-2", "sst2", "sentence", None, 2, "accuracy", labels=("negative", "positive")),
    "cola": TaskSpec("cola", "CoLA", "cola", "sentence", None, 2, "matthews", labels=("unacceptable", "acceptable")),
    "mrpc": TaskSpec("mrpc", "MRPC", "mrpc", "sentence1", "sentence2", 2, "f1",
                     labels=("not_equivalent", "equivalent")),
    "qqp": TaskSpec("qqp", "QQP", "qqp", "question1", "question2", 2, "f1", labels=("not_duplicate", "duplicate")),
    "qnli": TaskSpec("qnli", "QNLI", "qnli", "question", "sentence", 2, "accuracy", labels=_ENTAIL2),
    "rte": TaskSpec("rte", "RTE", "rte", "sentence1", "sentence2", 2, "accuracy", labels=_ENTAIL2),
    "mnli": TaskSpec("mnli", "MNLI", "mnli", "premise", "hypothesis", 3, "accuracy",
                     dev_file="dev_matched.tsv", labels=("entailment", "neutral", "contradiction")),
}
METRICS = ("accuracy", "f1", "matthews")   # what --metric offers for your own data (f1 = macro F1 there)

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
    dev: datasets.Dataset  # the official GLUE dev set (or your --dev file): only to re-score the final front
    source: str  # "local:/path/to/glue", "hub:nyu-mll/glue" or "files:train=...,dev=..."


@dataclass(frozen=True)
class FileTask:
    """Your own labelled text: a train and a dev file (CSV, TSV or JSON lines) and the columns holding the
    text, the optional second text and the label. The paths are absolute (the CLI resolves them), so
    trial workers, whose working directory is elsewhere, read the very same files."""

    train: str
    dev: str
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    metric: str = "accuracy"    # accuracy | f1 (macro over classes) | matthews (multi-class R_K)

    @property
    def name(self) -> str:
        """A task name from the train file (its folder's name when the file is just train.*)."""
        path = Path(self.train)
        stem = path.parent.name if path.stem.lower() == "train" and path.parent.name else path.stem
        return re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._")[:40] or "data"

    def fingerprint(self) -> str:
        """The files' contents and how they are read: the teacher cache key for this data."""
        h = hashlib.sha256(json.dumps([self.text_column, self.text_pair_column, self.label_column,
                                       self.metric]).encode())
        for path in (self.train, self.dev):
            h.update(Path(path).read_bytes())
        return h.hexdigest()[:16]

    def describe(self) -> str:
        cols = f"text={self.text_column}" + (f", pair={self.text_pair_column}" if self.text_pair_column else "")
        return f"files:train={self.train},dev={self.dev} ({cols}, label={self.label_column})"


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
    spec = dict(meta["spec"], labels=tuple(meta["spec"].get("labels") or ()))     # JSON keeps tuples as lists
    return TaskData(TaskSpec(**spec), *splits, meta["source"])


def get_task(name: str) -> TaskSpec:
    """Look a task up by name, case-insensitively ("SST-2", "sst-2" and "sst2" all work)."""
    key = name.strip().lower().replace("-", "").replace("_", "")
    if key not in TASKS:
        raise DataError(f"unknown task {name!r}: known tasks are {', '.join(TASKS)}")
    return TASKS[key]


def default_data_dir() -> str | None:
    """The GLUE folder from $AUTOCOMPRESS_GLUE_DIR, or None."""
    return os.environ.get(ENV_DATA_DIR) or None


def default_val_size(train_rows: int) -> int:
    """Rows carved from train for validation when none is asked for: min(1000, 10% of train), at least 1."""
    return max(1, min(1000, train_rows // 10))


def load_task(task: str | FileTask, data_dir: str | os.PathLike | None = None, *,
              val_size: int | None = None, seed: int = 0) -> TaskData:
    """Load a GLUE task (local folder if given or set in the env, else the hub) or your own files, and
    carve the validation split from train: ``val_size`` rows (default ``default_val_size``), at most half
    of train so that the teacher never learns from less than the search validates on."""
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
                        f"training rows: give at most {n // 2} (half), or leave it out for min(1000, 10% of train)")
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


# ---------------------------------------------------------------- your own files
FILE_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}


def _load_files(task: FileTask) -> tuple[TaskSpec, datasets.Dataset, datasets.Dataset]:
    """Read --train and --dev; label names are the train file's labels (numeric order when all are
    integers, else alphabetical); a dev label the train file lacks is an error."""
    if task.metric not in METRICS:
        raise DataError(f"--metric {task.metric!r}: choose one of {', '.join(METRICS)}")
    columns = {"--text-column": task.text_column, "--label-column": task.label_column}
    if task.text_pair_column:
        columns["--text-pair-column"] = task.text_pair_column
    train = _read_rows(task.train, "--train", columns)
    dev = _read_rows(task.dev, "--dev", columns)
    seen = {label for _, label, _ in train}
    if len(seen) < 2:
        raise DataError(f"--train {task.train}: every row has the label {next(iter(seen))!r}; a classifier "
                        "needs at least two labels")
    numeric = all(re.fullmatch(r"[-+]?\d+", label) for label in seen)
    names = tuple(sorted(seen, key=(lambda x: int(x)) if numeric else None))
    ids = {name: i for i, name in enumerate(names)}
    for _, label, line in dev:
        if label not in ids:
            raise DataError(f"--dev {task.dev} line {line}: label {label!r} does not occur in --train "
                            f"(its labels: {', '.join(names)}); a model can only predict labels it was trained on")
    spec = TaskSpec(task.name, "", "", task.text_column, task.text_pair_column, len(names),
                    "macro_f1" if task.metric == "f1" else task.metric, labels=names)
    return spec, _dataset(spec, train, ids), _dataset(spec, dev, ids)


def _dataset(spec: TaskSpec, rows: list, ids: dict[str, int]) -> datasets.Dataset:
    data = {"text_a": [r[0]["a"] for r in rows]}
    if spec.text_b is not None:
        data["text_b"] = [r[0]["b"] for r in rows]
    data["label"] = [ids[r[1]] for r in rows]
    return datasets.Dataset.from_dict(data, features=_features(spec))


def _read_rows(path: str, option: str, columns: dict[str, str]) -> list[tuple[dict[str, str], str, int]]:
    """One file's rows as ({"a": text, "b": pair text}, label name, line number)."""
    fmt = FILE_FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise DataError(f"{option} {path}: unknown file type {Path(path).suffix or '(none)'!r}; give a "
                        ".csv, .tsv or .jsonl file")
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise DataError(f"{option} {path}: cannot read it ({e.strerror or e})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{option} {path}: not UTF-8 text (byte 0x{raw[e.start]:02x} on line {line}); "
                        "save the file as UTF-8") from None
    if not text.strip():
        raise DataError(f"{option} {path} is empty")
    records = (_json_records(text, option, path) if fmt == "jsonl"
               else _table_records(text, fmt, option, path, columns))
    keys = {"a": columns["--text-column"], "b": columns.get("--text-pair-column"), "label": columns["--label-column"]}
    rows = []
    for line, record in records:
        for opt, col in columns.items():
            if col not in record:
                have = ", ".join(map(repr, record)) or "none"
                raise DataError(f"{option} {path} line {line}: no column {col!r} (columns: {have}); "
                                f"name the right one with {opt}")
        label = record[keys["label"]]
        if isinstance(label, bool) or not isinstance(label, (str, int)):
            raise DataError(f"{option} {path} line {line}: label {label!r} is neither a string nor an integer")
        label = str(label).strip()
        if not label:
            raise DataError(f"{option} {path} line {line}: the label ({keys['label']!r}) is empty")
        texts = {}
        for k in ("a", "b"):
            if keys[k] is not None:
                value = record[keys[k]]
                if not isinstance(value, str):
                    raise DataError(f"{option} {path} line {line}: {keys[k]!r} is {value!r}, not a text")
                texts[k] = value
        rows.append((texts, label, line))
    if not rows:
        raise DataError(f"{option} {path} has no rows, only " + ("a header" if fmt != "jsonl" else "blank lines"))
    return rows


def _table_records(text: str, fmt: str, option: str, path: str, columns: dict[str, str]):
    """CSV (quoted fields allowed) or TSV (one row per line, no quoting, as GLUE's files): the first line
    names the columns; yields (line number, {column: value})."""
    quoting = csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t" if fmt == "tsv" else ",", quoting=quoting)
    try:
        header = next(reader)
        for opt, col in columns.items():
            if col not in header:
                raise DataError(f"{option} {path} has no column {col!r} (its header: {', '.join(map(repr, header))}); "
                                f"name the right one with {opt}")
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise DataError(f"{option} {path} line {reader.line_num}: {len(row)} field(s) where the header has "
                                f"{len(header)}" + ("; quote fields that contain commas" if fmt == "csv" else ""))
            yield reader.line_num, dict(zip(header, row))
    except csv.Error as e:
        raise DataError(f"{option} {path} line {reader.line_num}: not valid {fmt.upper()} ({e})") from None


def _json_records(text: str, option: str, path: str):
    """JSON lines (one object per line); a .json file holding one array of objects works too."""
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{option} {path} line {e.lineno}: not valid JSON ({e.msg})") from None
        numbered = list(enumerate(items, 1))
    else:
        numbered = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    numbered.append((number, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise DataError(f"{option} {path} line {number}: not valid JSON ({e.msg})") from None
    for number, item in numbered:
        if not isinstance(item, dict):
            raise DataError(f"{option} {path} line {number}: expected an object like {{\"text\": ..., "
                            f"\"label\": ...}}, got {type(item).__name__}")
        yield number, item


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
    """accuracy (all tasks), and the task's own metric: f1 of class 1 (GLUE's MRPC, QQP), macro_f1 (the
    unweighted mean of each class's F1, over the classes that occur in labels or predictions: your own
    data's f1), matthews (Matthews correlation; for more than two classes Gorodkin's R_K, which is the
    usual MCC for two). "main" = the task's metric.

    preds may be class ids or a 2-D array of logits (argmaxed).
    """
    p, y = np.asarray(preds), np.asarray(labels).astype(np.int64)
    if p.ndim == 2:
        p = p.argmax(axis=-1)
    p = p.astype(np.int64)
    if p.shape != y.shape or y.size == 0:
        raise ValueError(f"preds and labels must be non-empty and the same length "
                         f"(got {p.shape} and {y.shape})")
    k = int(max(spec.num_labels, p.max() + 1, y.max() + 1))
    cm = np.zeros((k, k), dtype=np.float64)          # rows: true class, columns: predicted class
    np.add.at(cm, (y, p), 1)
    tp, true, pred = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
    f1 = np.divide(2 * tp, true + pred, out=np.zeros(k), where=(true + pred) > 0)   # per class
    out = {"accuracy": float(tp.sum() / y.size)}
    if spec.metric == "f1":
        out["f1"] = float(f1[1]) if k > 1 else 0.0
    elif spec.metric == "macro_f1":
        out["macro_f1"] = float(f1[(true + pred) > 0].mean())
    elif spec.metric == "matthews":
        n, correct = float(y.size), float(tp.sum())
        denom = np.sqrt((n * n - (pred ** 2).sum()) * (n * n - (true ** 2).sum()))
        out["matthews"] = float((correct * n - (pred * true).sum()) / denom) if denom else 0.0
    out["main"] = out[spec.metric]
    return out


def stored_task(task: str, settings: dict) -> tuple[tuple[str, ...], str, bool]:
    """(label names, metric, takes text pairs) of a stored run's task: what the run recorded, or for runs
    made before runs recorded them (GLUE tasks only), GLUE's own."""
    glue = TASKS.get(task)
    labels = tuple(settings.get("labels") or (glue.label_names if glue else ()))
    metric = settings.get("metric") or (glue.metric if glue else "accuracy")
    pair = settings.get("pair", glue is not None and glue.text_b is not None)
    return labels, metric, bool(pair)
