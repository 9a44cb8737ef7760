"""Artifacts: what a candidate ships, and running it. One small base, two kinds:

- ``Graph``: one ONNX file (``model.onnx`` when shipped). It runs whole on every input.
- ``Pipeline``: several ONNX graphs run one after another, each input going only as far as it needs
  (early exit's segments). One folder holds the graphs and ``manifest.json``; the manifest is what the
  store records (its sha256), and it carries the sha256 of every graph it names, so whatever reads the
  folder through ``open`` reads the very files that were timed and scored.

``open(path)`` is the one place that tells the kinds apart. The rest of the project asks an artifact
what it is made of (``graphs``: each graph's shipped and fp32 forms, to be timed), what ships
(``files``), and to run it (``predict`` -> logits and its ``Usage``: the share of the inputs that ran
each graph; 1.0 for a single graph). An artifact whose graphs do not all run on every input has an
*expected* latency: the graphs' latencies weighted by that usage (``hardware.obtain`` combines them).

Manifest (JSON)::

    {"kind": "early_exit", "version": 1,
     "segments": [{"file": "segment0/model.onnx", "fp32": "segment0/model.fp32.onnx",
                   "sha256": "...", "fp32_sha256": "...", ...}, ...],     # paths relative to the manifest
     "rule": "entropy", "threshold": 0.3,  # the exit rule (``ExitRule``)
     "reach": [1.0, 0.41, 0.17],           # share of the validation inputs that ran each segment,
     "reach_over": "the validation inputs (1000 rows)", "left_at": [590, 240, 170],   # written once scored
     ...}                                  # the rest belongs to the writer (early exit: exits_after, num_layers)

Segment 0 takes the model's token inputs; each later one takes ``hidden_in`` (the hidden state the one
before handed on as ``hidden_out``) and ``attention_mask``; each gives ``logits`` (its exit's, or the
model's own for the last).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import fileio
from .features import batches

MANIFEST = "manifest.json"
VERSION = 1
MODEL_FILE = "model.onnx"          # a single graph, as shipped
PIPELINE_DIR = "pipeline"          # a pipeline, as shipped


# ---------------------------------------------------------------- ONNX Runtime sessions: the one helper
def session(onnx_path: str | os.PathLike, *, threads: int | None = None, provider: str = "CPUExecutionProvider",
            options: Any = None, cpus: tuple[int, ...] | None = None) -> "onnxruntime.InferenceSession":  # noqa: F821
    """An ONNX Runtime session: ``threads`` intra-op threads (default: up to 4 of this machine's), one
    inter-op thread, sequential execution, all graph optimisations; its pool threads spin only while a run
    is under way (so an idle session never takes the cores from the next one). With ``cpus``, the pool's
    threads are pinned to ``cpus[1:]``, one each; the calling thread, which runs a share of every
    operator, is left to the caller (``hardware.host.pinned``): ONNX Runtime leaves it to the application."""
    import onnxruntime as ort

    threads = threads or min(4, os.cpu_count() or 1)
    opts = options or ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.force_spinning_stop", "1")
    if cpus and threads > 1 and provider == "CPUExecutionProvider":
        if len(cpus) != threads:
            raise ValueError(f"{threads} threads need {threads} CPUs to be pinned to, got {cpus}")
        # one entry per pool thread, 1-based logical processor ids (ONNX Runtime's format)
        opts.add_session_config_entry("session.intra_op_thread_affinities", ";".join(str(c + 1) for c in cpus[1:]))
    providers = [provider] + (["CPUExecutionProvider"] if provider != "CPUExecutionProvider" else [])
    return ort.InferenceSession(str(onnx_path), sess_options=opts, providers=providers)


# ---------------------------------------------------------------- the base
@dataclass(frozen=True)
class Usage:
    """How much of an artifact an input runs: ``shares[i]``, the share of ``over`` (the inputs it was
    scored on) that ran graph i; ``how`` says, in the artifact's own words, what decided it."""

    shares: tuple[float, ...]
    over: str
    how: str = ""
    extra: dict = field(default_factory=dict)

    def to_detail(self) -> dict:
        return {"expected": True, "expected_over": self.over, "reach": [round(r, 4) for r in self.shares],
                "expected_how": self.how, **self.extra}

    @classmethod
    def from_detail(cls, d: dict) -> "Usage | None":
        if not d.get("expected") or "reach" not in d:
            return None
        return cls(tuple(float(r) for r in d["reach"]), str(d.get("expected_over", "?")),
                   str(d.get("expected_how") or d.get("exit_rule") or ""))


class Artifact:
    """What a candidate ships. ``path`` is what the store records (and hashes)."""

    kind = "artifact"

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def graphs(self) -> list[tuple[Path, Path | None]]:
        """Each graph to time: (its shipped form, its fp32 form where kept)."""
        raise NotImplementedError

    def files(self) -> list[tuple[Path, str, str | None]]:
        """What ships: (file, its name in the shipped folder, the sha256 the artifact records for it, or
        None where the store's record is the one to check)."""
        raise NotImplementedError

    def predict(self, features, *, pad_id: int = 0, batch_size: int = 64,
                threads: int | None = None) -> tuple[np.ndarray, Usage | None]:
        """Logits on tokenised rows, and the usage (None where every input runs everything)."""
        raise NotImplementedError

    def runner(self, threads: int | None = None) -> "Runner":
        raise NotImplementedError

    def note_usage(self, usage: Usage | None) -> None:
        """Keep the usage with the artifact's own description (documentation: nothing reads it back)."""

    @property
    def input_dependent(self) -> bool:
        return len(self.graphs()) > 1

    def size_bytes(self) -> int:
        return sum(src.stat().st_size for src, _, _ in self.files())


class Runner:
    """An artifact loaded for inference, one padded batch at a time: (logits [B, labels], what each row
    ran, in the artifact's words: None for a single graph)."""

    inputs: list[str]

    def run(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        raise NotImplementedError

    def describe_row(self, ran) -> dict[str, Any]:
        """What one row ran, for a user (``predict``): {} for a single graph."""
        return {}


def open(path: str | os.PathLike, verify: bool = True) -> Artifact:  # noqa: A001  (pipeline.open: the artifact at path)
    """The artifact at ``path``: a pipeline's manifest (``.json``) or one ONNX graph."""
    path = Path(path)
    if path.suffix == ".json":
        return Pipeline(path, verify=verify)
    return Graph(path)


def open_shipped(folder: str | os.PathLike) -> Artifact | None:
    """The artifact of a shipped folder (``ship.export`` wrote it), or None if it holds none."""
    folder = Path(folder)
    if (folder / PIPELINE_DIR / MANIFEST).is_file():
        return Pipeline(folder / PIPELINE_DIR / MANIFEST)
    if (folder / MODEL_FILE).is_file():
        return Graph(folder / MODEL_FILE)
    return None


def run_rows(artifact: Artifact, features, *, pad_id: int = 0, batch_size: int = 64, threads: int | None = None):
    """(logits, what each row ran: None for a single graph, else the index of the graph it left at) of an
    artifact on tokenised rows."""
    return _predict_batches(artifact.runner(threads), features, pad_id, batch_size)


def _predict_batches(runner: Runner, features, pad_id: int, batch_size: int):
    logits = ran = None
    for idx, arrays in batches(features, batch_size, pad_id):
        lg, r = runner.run({k: v for k, v in arrays.items() if k in runner.inputs})
        if logits is None:
            logits = np.zeros((len(features), lg.shape[1]), dtype=np.float32)
            ran = None if r is None else np.zeros(len(features), dtype=np.int64)
        logits[idx] = lg
        if r is not None:
            ran[idx] = r
    return logits, ran


# ---------------------------------------------------------------- one graph
class Graph(Artifact):
    kind = "graph"

    def graphs(self):
        return [(self.path, None)]

    def files(self):
        return [(self.path, MODEL_FILE, None)]

    def runner(self, threads: int | None = None) -> Runner:
        return _GraphRunner(self.path, threads)

    def predict(self, features, *, pad_id: int = 0, batch_size: int = 64, threads: int | None = None):
        return _predict_batches(self.runner(threads), features, pad_id, batch_size)[0], None


class _GraphRunner(Runner):
    def __init__(self, path: Path, threads: int | None):
        self.session = session(path, threads=threads)
        self.inputs = [i.name for i in self.session.get_inputs()]

    def run(self, feeds):
        return self.session.run(["logits"], feeds)[0], None


# ---------------------------------------------------------------- a pipeline of graphs (early exit)
def write(folder: str | os.PathLike, manifest: dict[str, Any]) -> Path:
    """Write ``folder/manifest.json`` atomically, with the sha256 of every segment's files filled in."""
    folder = Path(folder)
    m = json.loads(json.dumps(manifest))
    m.setdefault("version", VERSION)
    for seg in m["segments"]:
        seg["sha256"] = fileio.sha256_file(folder / seg["file"])
        seg["fp32_sha256"] = fileio.sha256_file(folder / seg["fp32"])
    return fileio.write_json(folder / MANIFEST, m, indent=1)


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
            if fileio.sha256_file(seg[key]) != seg[sha]:
                raise ValueError(f"{seg[key]} does not match the sha256 recorded in {path}")
    return m


def reach_of(where: np.ndarray, n_segments: int) -> list[float]:
    """Share of the rows that ran each segment, from the segment each row left at."""
    return [float(np.mean(where >= j)) for j in range(n_segments)]


class Pipeline(Artifact):
    kind = "pipeline"

    def __init__(self, path: str | os.PathLike, verify: bool = True):
        super().__init__(path)
        self.manifest = read(self.path, verify=verify)

    @property
    def segments(self) -> list[dict[str, Any]]:
        return self.manifest["segments"]

    @property
    def rule(self) -> "ExitRule":
        return ExitRule(self.manifest["rule"], self.manifest["threshold"])

    def graphs(self):
        return [(Path(s["file"]), Path(s["fp32"])) for s in self.segments]

    def files(self):
        raw = json.loads(self.path.read_text())
        rels = list(dict.fromkeys((s["file"], s["sha256"]) for s in raw["segments"]))
        return [(self.path, f"{PIPELINE_DIR}/{MANIFEST}", None)] + [
            (self.path.parent / rel, f"{PIPELINE_DIR}/{rel}", sha) for rel, sha in rels]

    def runner(self, threads: int | None = None) -> Runner:
        return _PipelineRunner(self, threads)

    def predict(self, features, *, pad_id: int = 0, batch_size: int = 64, threads: int | None = None):
        logits, where = _predict_batches(self.runner(threads), features, pad_id, batch_size)
        n = len(self.segments)
        usage = Usage(tuple(reach_of(where, n)), f"the validation inputs ({len(features)} rows)",
                      f"early exit, {self.manifest['rule']} {self.manifest['threshold']:g}",
                      {"left_at": [int(c) for c in np.bincount(where, minlength=n)],
                       "exits_after": self.manifest.get("exits_after")})
        return logits, usage

    def note_usage(self, usage: Usage | None) -> None:
        if usage is None:
            return
        m = json.loads(self.path.read_text())
        m.update(reach=list(usage.shares), reach_over=usage.over, left_at=usage.extra.get("left_at"))
        fileio.write_json(self.path, m, indent=1)


class _PipelineRunner(Runner):
    """A manifest's graphs loaded in ONNX Runtime, run in order with its exit rule: each batch goes
    through segment 0; the rows that leave at its exit keep its logits, the others go on (only they run
    the next segment, from the hidden state the segment handed on); the last segment answers the rest."""

    def __init__(self, pipe: Pipeline, threads: int | None):
        self.manifest = pipe.manifest
        self.rule = pipe.rule
        self.sessions = [session(s["file"], threads=threads) for s in pipe.segments]
        self.inputs = [i.name for i in self.sessions[0].get_inputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(logits [B, labels], segment index each row left at [B]) for one padded batch."""
        n = len(feeds["input_ids"])
        rows = np.arange(n)                          # rows still running
        mask = feeds["attention_mask"]
        state = self.rule.start(n)
        logits_out, where = None, np.full(n, len(self.sessions) - 1, dtype=np.int64)
        hidden = None
        for j, sess in enumerate(self.sessions):
            if j == 0:
                inputs = {k: v for k, v in feeds.items() if k in self.inputs}
            else:
                inputs = {"hidden_in": hidden, "attention_mask": mask[rows]}
            outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, inputs)))
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

    def describe_row(self, ran) -> dict[str, Any]:
        exits = self.manifest.get("exits_after") or []
        layers = exits[int(ran)] if int(ran) < len(exits) else self.manifest["num_layers"]
        return {"layers_run": layers, "note": f"{layers} layers"}


# ---------------------------------------------------------------- the exit rule
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
