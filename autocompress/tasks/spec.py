"""What a task is: its spec (columns, labels, metric), its splits, and its metrics."""
from __future__ import annotations

from dataclasses import dataclass

import datasets
import numpy as np


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


@dataclass
class TaskData:
    spec: TaskSpec
    train: datasets.Dataset  # GLUE train minus the carved validation rows
    val: datasets.Dataset  # carved from GLUE train with a fixed seed: used by the search
    dev: datasets.Dataset  # the official GLUE dev set (or your --dev file): only to re-score the final front
    source: str  # "local:/path/to/glue", "hub:nyu-mll/glue" or "files:train=...,dev=..."
    carve: dict | None = None  # how val was carved (``split.Carve``); None for splits saved before it was recorded


def get_task(name: str) -> TaskSpec:
    """Look a task up by name, case-insensitively ("SST-2", "sst-2" and "sst2" all work)."""
    key = name.strip().lower().replace("-", "").replace("_", "")
    if key not in TASKS:
        raise DataError(f"unknown task {name!r}: known tasks are {', '.join(TASKS)}")
    return TASKS[key]


def default_val_size(train_rows: int) -> int:
    """Rows carved from train for validation when none is asked for: 10% of train, but at least 20% of it
    up to 500 rows (on small data sets a tenth is too few to tell candidates apart: at 250 rows two
    accuracies near 85% must be 6 points apart to differ, at 500 rows 4.4), at most 1000; at least 1."""
    return max(1, min(1000, max(train_rows // 10, min(500, train_rows // 5))))


def features_of(spec: TaskSpec) -> datasets.Features:
    cols = {"text_a": datasets.Value("string")}
    if spec.text_b is not None:
        cols["text_b"] = datasets.Value("string")
    cols["label"] = datasets.Value("int64")
    return datasets.Features(cols)


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


def stored_task(task: str, *, labels: tuple[str, ...] | None = None, metric: str | None = None,
                pair: bool | None = None) -> tuple[tuple[str, ...], str, bool]:
    """(label names, metric, takes text pairs) of a stored run's task: what the run recorded (None or empty:
    not recorded), or for runs made before runs recorded them (GLUE tasks only), GLUE's own."""
    glue = TASKS.get(task)
    labels = tuple(labels or (glue.label_names if glue else ()))
    metric = metric or (glue.metric if glue else "accuracy")
    pair = pair if pair is not None else (glue is not None and glue.text_b is not None)
    return labels, metric, bool(pair)
