"""A shipped model made of several ONNX graphs run one after another, each input going only as far as it
needs: early exit's segments. One folder holds the graphs and ``manifest.json``; the manifest is the
artifact the store records (its sha256), and it carries the sha256 of every graph it names, so anything
that reads the folder through ``read`` reads the very files that were timed and scored.

Manifest (JSON)::

    {"kind": "early_exit", "version": 1,
     "segments": [{"file": "segment0/model.onnx", "fp32": "segment0/model.fp32.onnx",
                   "sha256": "...", "fp32_sha256": "...", ...}, ...],     # paths relative to the manifest
     "rule": "entropy", "threshold": 0.3,  # the exit rule (``ExitRule``)
     "reach": [1.0, 0.41, 0.17],           # share of the inputs that run each segment (written once scored)
     "reach_over": "the validation inputs (1000 rows)", "left_at": [590, 240, 170],
     ...}                                  # the rest belongs to the writer (early exit: exits_after, num_layers)

Segment 0 takes the model's token inputs; each later one takes ``hidden_in`` (the hidden state the one
before handed on as ``hidden_out``) and ``attention_mask``; each gives ``logits`` (its exit's, or the
model's own for the last). ``Pipeline`` runs them with the rule, each row only as far as it needs.

Its **expected latency** on a device is ``sum_i reach_i x latency(segment i)`` (``expected``); the
latency module (``hardware.obtain``) obtains each segment's figure the way the profile says.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

MANIFEST = "manifest.json"
VERSION = 1


def is_pipeline(path: str | os.PathLike | None) -> bool:
    return path is not None and Path(path).suffix == ".json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write(folder: str | os.PathLike, manifest: dict[str, Any]) -> Path:
    """Write ``folder/manifest.json`` atomically, with the sha256 of every segment's files filled in."""
    folder = Path(folder)
    m = json.loads(json.dumps(manifest))
    m.setdefault("version", VERSION)
    for seg in m["segments"]:
        seg["sha256"] = _sha256(folder / seg["file"])
        seg["fp32_sha256"] = _sha256(folder / seg["fp32"])
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".manifest-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(m, f, indent=1)
    os.replace(tmp, folder / MANIFEST)
    return folder / MANIFEST


def update(path: str | os.PathLike, **fields) -> Path:
    """Add or replace top-level fields of a manifest (the reach, once it is measured)."""
    path = Path(path)
    m = json.loads(path.read_text())
    m.update(json.loads(json.dumps(fields)))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".manifest-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(m, f, indent=1)
    os.replace(tmp, path)
    return path


def read(path: str | os.PathLike, verify: bool = True) -> dict[str, Any]:
    """The manifest with absolute ``file``/``fp32`` paths; with ``verify``, every graph's sha256 is
    checked against it (a ValueError names the one that changed or is missing). The fp32 forms are
    checked where they are present: a shipped folder holds the final graphs only."""
    path = Path(path)
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable pipeline manifest ({e})") from None
    if m.get("version") != VERSION or not m.get("segments"):
        raise ValueError(f"{path} is not a pipeline manifest of version {VERSION}")
    for seg in m["segments"]:
        for key, sha in (("file", "sha256"), ("fp32", "fp32_sha256")):
            seg[key] = str(path.parent / seg[key])
            if not verify or (key == "fp32" and not Path(seg[key]).is_file()):
                continue
            if not Path(seg[key]).is_file():
                raise ValueError(f"{seg[key]} is missing: {path} names it")
            if _sha256(Path(seg[key])) != seg[sha]:
                raise ValueError(f"{seg[key]} does not match the sha256 recorded in {path}")
    return m


def relative_files(path: str | os.PathLike) -> list[tuple[str, str]]:
    """(path relative to the manifest's folder, recorded sha256) of each final graph: what ships."""
    m = json.loads(Path(path).read_text())
    return list(dict.fromkeys((s["file"], s["sha256"]) for s in m["segments"]))


def files(path: str | os.PathLike) -> list[Path]:
    """What is shipped: the manifest and each segment's final graph (not the fp32 forms kept beside
    them for fp16 profiles, unless a segment ships its fp32 form)."""
    return [Path(path)] + [Path(path).parent / rel for rel, _ in relative_files(path)]


def reach(path: str | os.PathLike) -> tuple[list[float], str]:
    """(share of the inputs that run each segment, what it was measured on); a ValueError if the
    manifest has not been scored yet."""
    m = read(path, verify=False)
    if "reach" not in m:
        raise ValueError(f"{path}: no reach recorded yet (score the pipeline on the validation inputs first)")
    return [float(r) for r in m["reach"]], str(m.get("reach_over", "?"))


def expected(segment_latencies: list, reach_: list[float], over: str, extra: dict | None = None):
    """The expected latency of a pipeline: ``sum_i reach_i x latency_i`` for the median (and likewise
    for the spread and percentiles, and the profile's other shapes: weighted sums of the segments'
    figures, an approximation; at a batch above 1 a segment runs when any row of the batch reaches it,
    on fewer rows, and the per-row reach stands for that). Its
    ``how`` is the segments' (all obtained the same way on one profile); its ``detail`` keeps where and
    how they were obtained and adds ``expected_over`` (what the reach was measured on), ``reach``,
    ``segment_ms`` and whatever ``extra`` says (early exit: the exit rates)."""
    from .hardware.latency import Latency

    if len(segment_latencies) != len(reach_):
        raise ValueError(f"{len(segment_latencies)} segment latencies for {len(reach_)} reach values")
    lats = segment_latencies
    first = lats[0]

    def weighted(attr: str) -> float:
        return float(sum(r * getattr(lat, attr) for r, lat in zip(reach_, lats)))

    per_figure = {"host_ms", "host_n", "host_ci95_rel", "host_classes_ms", "constants", "other_shapes", "ci95_rel",
                  "timed_before_training"}
    detail = {k: v for k, v in first.detail.items() if k not in per_figure}
    detail.update(expected=True, expected_over=over, reach=[round(r, 4) for r in reach_],
                  segment_ms=[round(lat.median_ms, 4) for lat in lats],
                  segment_how=[lat.how for lat in lats], **(extra or {}))
    shapes = [[(o["batch_size"], o["seq_len"]) for o in lat.detail.get("other_shapes") or []] for lat in lats]
    if shapes[0] and all(s == shapes[0] for s in shapes):
        detail["other_shapes"] = []
        for i, (b, q) in enumerate(shapes[0]):
            figures = [lat.detail["other_shapes"][i] for lat in lats]
            detail["other_shapes"].append({"batch_size": b, "seq_len": q, "median_ms": float(
                sum(r * f["median_ms"] for r, f in zip(reach_, figures)))})
    return Latency(first.profile, weighted("median_ms"), weighted("spread_ms"), weighted("p10_ms"),
                   weighted("p90_ms"), min(lat.n for lat in lats), first.how, detail)


# ---------------------------------------------------------------- the exit rule and running a pipeline
RULES = ("entropy", "patience")


def normalized_entropy(logits: np.ndarray) -> np.ndarray:
    """Entropy of softmax(logits) per row, divided by log(number of labels): 0 (certain) .. 1 (uniform)."""
    z = logits - logits.max(-1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(-1, keepdims=True)
    return -(p * np.log(np.clip(p, 1e-12, None))).sum(-1) / np.log(logits.shape[-1])


class ExitRule:
    """When an input leaves at an exit. ``entropy``: its normalised entropy there is below ``threshold``
    (DeeBERT; threshold 0 never exits). ``patience``: ``threshold`` exits in a row after the first have
    agreed with the one before (PABEE: an input leaves at the exit where the count reaches it).
    ``state`` carries the patience count and the last prediction per row (one ``step`` per exit)."""

    def __init__(self, rule: str, threshold: float):
        if rule not in RULES:
            raise ValueError(f"exit rule must be one of {', '.join(RULES)}, got {rule!r}")
        self.rule, self.threshold = rule, float(threshold)

    def start(self, n: int) -> dict[str, np.ndarray]:
        return {"count": np.zeros(n, dtype=np.int64), "last": np.full(n, -1, dtype=np.int64)}

    def step(self, logits: np.ndarray, state: dict[str, np.ndarray]) -> np.ndarray:
        """Which rows leave at this exit (updates ``state`` for the rows that stay: index it yourself)."""
        if self.rule == "entropy":
            return normalized_entropy(logits) < self.threshold
        pred = logits.argmax(-1)
        state["count"] = np.where(pred == state["last"], state["count"] + 1, 0)
        state["last"] = pred
        return state["count"] >= self.threshold


class Pipeline:
    """A manifest's graphs loaded in ONNX Runtime, run in order with its exit rule: each batch goes
    through segment 0; the rows that leave at its exit keep its logits, the others go on (only they run
    the next segment, from the hidden state the segment handed on); the last segment answers the rest."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None, verify: bool = True):
        import onnxruntime as ort

        self.manifest = read(path, verify=verify)
        self.rule = ExitRule(self.manifest["rule"], self.manifest["threshold"])
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or min(4, os.cpu_count() or 1)
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.sessions = [ort.InferenceSession(s["file"], opts, providers=["CPUExecutionProvider"])
                         for s in self.manifest["segments"]]
        self.first_inputs = [i.name for i in self.sessions[0].get_inputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(logits [B, labels], segment index each row left at [B]) for one padded batch."""
        n = len(feeds["input_ids"])
        rows = np.arange(n)                          # rows still running
        mask = feeds["attention_mask"]
        state = self.rule.start(n)
        logits_out, where = None, np.full(n, len(self.sessions) - 1, dtype=np.int64)
        hidden = None
        for j, session in enumerate(self.sessions):
            if j == 0:
                inputs = {k: v for k, v in feeds.items() if k in self.first_inputs}
            else:
                inputs = {"hidden_in": hidden, "attention_mask": mask[rows]}
            outs = dict(zip([o.name for o in session.get_outputs()], session.run(None, inputs)))
            logits = outs["logits"]
            if logits_out is None:
                logits_out = np.zeros((n, logits.shape[1]), dtype=np.float32)
            if j == len(self.sessions) - 1:
                logits_out[rows] = logits
                break
            leave = self.rule.step(logits, state)
            logits_out[rows[leave]] = logits[leave]
            where[rows[leave]] = j
            stay = ~leave
            rows, hidden = rows[stay], outs["hidden_out"][stay]
            state = {k: v[stay] for k, v in state.items()}
            if len(rows) == 0:
                break
        return logits_out, where


def predict(path: str | os.PathLike, features, *, pad_id: int = 0, batch_size: int = 64,
            threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(logits, segment each row left at) of a pipeline on tokenised rows (``evaluate.encode``)."""
    from .evaluate import _batches

    pipe = Pipeline(path, threads=threads)
    logits = where = None
    for idx, arrays in _batches(features, batch_size, pad_id):
        lg, w = pipe.run(arrays)
        if logits is None:
            logits = np.zeros((len(features), lg.shape[1]), dtype=np.float32)
            where = np.zeros(len(features), dtype=np.int64)
        logits[idx], where[idx] = lg, w
    return logits, where


def reach_of(where: np.ndarray, n_segments: int) -> list[float]:
    """Share of the rows that ran each segment, from the segment each row left at."""
    return [float(np.mean(where >= j)) for j in range(n_segments)]


def record_reach(path: str | os.PathLike, where: np.ndarray, over: str) -> Path:
    """Write into the manifest the share of the scored inputs that ran each segment (``where``: the
    segment each row left at, from ``predict``) and what they were (``over``): what its expected latency
    weighs the segments by."""
    n_seg = len(read(path, verify=False)["segments"])
    return update(path, reach=reach_of(where, n_seg), reach_over=over,
                  left_at=[int(c) for c in np.bincount(where, minlength=n_seg)])
