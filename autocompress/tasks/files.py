"""Your own labelled text: a train and a dev file (CSV, TSV or JSON lines)."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import datasets

from .spec import METRICS, DataError, TaskSpec, features_of


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
    return datasets.Dataset.from_dict(data, features=features_of(spec))


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


