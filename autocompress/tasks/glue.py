"""GLUE tasks: from a local GLUE folder (GLUE's own TSV layout) or from the Hugging Face hub."""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from urllib.parse import urlparse

import datasets

from .spec import DataError, TaskSpec, features_of

HUB_DATASET = "nyu-mll/glue"
ENV_DATA_DIR = "AUTOCOMPRESS_GLUE_DIR"


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


def default_data_dir() -> str | None:
    """The GLUE folder from $AUTOCOMPRESS_GLUE_DIR, or None."""
    return os.environ.get(ENV_DATA_DIR) or None


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
    return datasets.Dataset.from_dict(data, features=features_of(spec))


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
        out.append(split.cast(features_of(spec)))
    return out[0], out[1]


