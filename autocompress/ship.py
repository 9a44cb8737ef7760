"""Pick a model for a device, ship it as a Hugging Face-style folder, and load such a folder to predict.

``choose`` picks a member of a device's Pareto front within a latency budget (and at or above a minimum
score) as the search picks: the fastest within a tolerance of the most accurate, judged on the dev set
where the front was re-scored on it. ``export`` writes the
folder: the very ONNX file that was timed and scored (its sha256 checked against the store while it is
copied), ``config.json`` with the task's label names, the tokenizer, ``recipe.json`` and a model card
(``README.md``). ``ShippedModel`` loads such a folder with ONNX Runtime and the tokenizer only.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import fileio, pipeline
from .pipeline import MODEL_FILE, PIPELINE_DIR   # noqa: F401  (a single graph; a pipeline of graphs)
from .search.settings import RunSettings


class PickError(Exception):
    """No model can be picked or loaded as asked; one line (exit code 2)."""


class IntegrityError(Exception):
    """The stored artifact is not the file the store recorded; one line (exit code 1)."""


@dataclass
class Choice:
    run: Any                    # store.RunRecord
    device: str
    budget_ms: float | None     # the budget applied (given, or the run's on its target device)
    min_score: float | None
    tolerance: float            # within this of the most accurate, the fastest
    split: str                  # what it was judged on: dev, or val where the front has no dev scores
    metric: str
    trial: Any                  # store.TrialRecord: the pick
    teacher: Any                # store.TrialRecord of the teacher baseline, if the run has one

    @property
    def latency_ms(self) -> float:
        return self.trial.latencies[self.device]["median_ms"]

    @property
    def score(self) -> float:
        return self.trial.accuracy(self.split)


def _latency(t, device: str) -> float:
    return t.latencies[device]["median_ms"]


def choose(store, run: str, device: str | None = None, budget_ms: float | None = None,
           min_score: float | None = None, tolerance: float | None = None) -> Choice:
    """The member of ``device``'s front (the run's target device by default) picked as the search picks
    (``pareto.best_within``): the fastest whose score is within ``tolerance`` (default: the run's, else one
    point) of the most accurate member within the budget (given, else the run's own when ``device`` is its
    target), among those scoring at least ``min_score``. Raises PickError naming the closest members."""
    from .search import pareto

    record = store.get_run(run)
    trials = store.trials(run)
    device = device or record.device
    devices = sorted({p for t in trials for p in t.latencies})
    if not devices:
        raise PickError(f"run {run} has no finished trial with a latency: there is nothing to pick")
    if device not in devices:
        raise PickError(f"run {run} has no latencies for device {device!r}: choose --device from {', '.join(devices)}")
    if budget_ms is None and device == record.device:
        budget_ms = record.budget_ms
    settings = RunSettings.from_dict(record.settings)
    _, metric, _ = settings.task_info(record.task)
    if tolerance is None:
        tolerance = settings.tolerance if settings.tolerance is not None else pareto.TOLERANCE
    members = pareto.front(trials, device, floor=settings.floor)
    if not members:
        raise PickError(f"run {run} has no {device} front: no candidate beat the trivial baseline")
    split = "dev" if all(m.accuracy("dev") is not None for m in members) else "val"
    fits = [m for m in members if (budget_ms is None or _latency(m, device) <= budget_ms)
            and (min_score is None or m.accuracy(split) >= min_score)]
    if not fits:
        raise PickError(_no_fit(run, device, members, split, metric, budget_ms, min_score))
    best = pareto.best_within(fits, device, None, split=split, tolerance=tolerance)
    teacher = next((t for t in trials if t.role == "teacher"), None)
    return Choice(record, device, budget_ms, min_score, tolerance, split, metric, best, teacher)


def _figures(t, device: str, split: str, metric: str) -> str:
    return f"trial {t.number} ({_latency(t, device):.2f} ms, {split} {metric} {t.accuracy(split):.4f})"


def _no_fit(run, device, members, split, metric, budget_ms, min_score) -> str:
    want = " and ".join(([f"latency <= {budget_ms:g} ms"] if budget_ms is not None else [])
                        + ([f"{split} {metric} >= {min_score:g}"] if min_score is not None else []))
    fastest = min(members, key=lambda t: (_latency(t, device), -t.accuracy(split)))
    best = max(members, key=lambda t: (t.accuracy(split), -_latency(t, device)))
    closest = (f"its only member is {_figures(best, device, split, metric)}" if fastest is best else
               f"the fastest is {_figures(fastest, device, split, metric)}, the most accurate "
               f"{_figures(best, device, split, metric)}")
    return (f"no member of run {run}'s {device} front has {want}: {closest}; "
            "raise --budget or lower --min-accuracy")


# ---------------------------------------------------------------- export
def export(store, choice: Choice, out: str | os.PathLike, command: str, log=None, typical: bool = True) -> Path:
    """Write the chosen model's folder at ``out`` (absent or empty). Built in a temporary folder beside it
    and moved into place at the end, so a failure leaves nothing half-written. ``typical``: where the pick's
    figure is at the profile's fixed shape, time the model at the task's input lengths too, for the card
    (``typical_latency``)."""
    from transformers import AutoTokenizer

    out = Path(out)
    run, trial = choice.run, choice.trial
    onnx = store.artifact(run.name, trial.number, "onnx")
    ckpt = store.artifact(run.name, trial.number, "checkpoint")
    if onnx is None or ckpt is None:
        raise IntegrityError(f"trial {trial.number} of run {run.name} has no stored "
                             f"{'ONNX file' if onnx is None else 'checkpoint'}: nothing to export")
    labels, metric, pair = RunSettings.from_dict(run.settings).task_info(run.task)
    artifact = pipeline.open(onnx.path, verify=False)     # what it is made of; every file is checked as it is copied
    with fileio.folder(out) as tmp:
        sha = None
        for src, name, recorded in artifact.files():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            got = _copy_verified(src, recorded or onnx.sha256, tmp / name, trial.number)
            sha = sha or got            # the first file is the one the store recorded (the graph, or the manifest)
        size = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())
        AutoTokenizer.from_pretrained(ckpt.path).save_pretrained(str(tmp))
        config = _config(Path(ckpt.path) / "config.json", choice, labels, pair)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        from .recipe import Recipe

        (tmp / "recipe.json").write_text(json.dumps(Recipe.from_json(trial.recipe).to_dict(), indent=2) + "\n")
        graphs = len(artifact.graphs())
        over = typical_latency(choice, tmp / MODEL_FILE, log) if typical and graphs == 1 else None
        (tmp / "README.md").write_text(model_card(choice, labels, metric, pair, sha, size, command,
                                                  pipeline_segments=graphs if artifact.input_dependent else None,
                                                  typical=over))
    return out


def typical_latency(choice: Choice, onnx_path: Path, log=None) -> dict | None:
    """What a typical input of the task costs on the pick's device, where the run timed that device at its
    fixed shape only: the model's expected latency over the mix of the validation inputs' token lengths the
    run recorded (``RunSettings.task_lengths``), timed now by the profile's own route
    (``hardware.obtain_over_lengths``; the fixed shape re-timed beside it), its measurements stopped at the
    profile's ``max_seconds`` shared among those shapes (one figure's time, not one per shape). None where
    the run's figure already is over the task's lengths, the run recorded no mix (made before runs did), or
    the profile cannot time this file now (an fp16 profile and a quantized graph, a cluster route that is
    gone, ...: a one-line warning, and the export goes on)."""
    settings = RunSettings.from_dict(choice.run.settings)
    figure = choice.trial.latencies.get(choice.device) or {}
    if not settings.task_lengths or (figure.get("detail") or {}).get("lengths"):
        return None
    from .hardware import load_profile, obtain_over_lengths
    from .lengths import LengthMix

    profile = next((p for p in settings.hardware_profiles() if p.name == choice.device), None)
    mix = LengthMix.from_dict(settings.task_lengths)
    if log:
        log(f"timing the model on {choice.device} at the task's input lengths for its card: {mix.describe()}")
    try:   # about one figure's time in all (the profile's cap shared by the shapes): a card, not a benchmark
        profile = profile or load_profile(choice.device)
        return obtain_over_lengths(onnx_path, profile, mix, log=log,
                                   max_seconds=profile.max_seconds / (1 + len(mix.lengths))).to_dict()
    except Exception as e:      # the card's extra figure never costs the export: any failure skips it, said once
        if log:
            log(f"warning: not timed at the task's input lengths ({type(e).__name__}: {e}); the card gives the "
                "run's figure only")
        return None


def _copy_verified(src: Path, expected: str | None, dst: Path, number: int) -> str:
    """Copy ``src`` to ``dst``, hashing the bytes copied; they must be the bytes the store recorded."""
    if not expected:
        raise IntegrityError(f"the store recorded no sha256 for {src}: it cannot be verified, so it is not exported")
    if not src.is_file():
        raise IntegrityError(f"{src} is gone: the ONNX file of trial {number} no longer exists")
    got = fileio.copy_hashed(src, dst)
    if got != expected:
        raise IntegrityError(f"{src} has sha256 {got[:16]}, not the {expected[:16]} the store recorded when "
                             f"trial {number} was timed and scored: the file changed since; nothing exported")
    return expected


def _config(path: Path, choice: Choice, labels: tuple[str, ...], pair: bool) -> dict:
    """The checkpoint's config with the task's label names; the PyTorch structure record (which describes
    the checkpoint, not the ONNX file) is left out, and what autocompress knows is added."""
    from .features import EVAL_MAX_LENGTH

    config = json.loads(path.read_text())
    outputs = len(config.get("id2label") or {}) or config.get("num_labels")
    if labels and outputs and len(labels) != outputs:
        raise IntegrityError(f"the model has {outputs} outputs but run {choice.run.name}'s task has {len(labels)} labels")
    names = labels or tuple(f"LABEL_{i}" for i in range(outputs or 2))
    for key in [k for k in config if k.startswith("autocompress_")]:   # records of the PyTorch checkpoint
        config.pop(key)
    config["id2label"] = {str(i): name for i, name in enumerate(names)}
    config["label2id"] = {name: i for i, name in enumerate(names)}
    config["autocompress"] = {"run": choice.run.name, "trial": choice.trial.number, "task": choice.run.task,
                              "device": choice.device, "pair": pair, "max_length": EVAL_MAX_LENGTH,
                              "recipe": json.loads(choice.trial.recipe)}
    return config


def _scores_rows(t, metric: str) -> list[str]:
    what = {"val": "val (carved from train; the search chose on it)",
            "dev": "dev (held out; the front re-scored on it after the search)"}
    rows = []
    for split in ("val", "dev"):
        m = t.metrics.get(split) if t else None
        if m:
            figures = ", ".join(f"{k} {v:.4f}" for k, v in m.items() if k not in ("n", "main"))
            rows.append(f"| {what[split]} | {m['n']} | {figures} |")
    return rows


def model_card(choice: Choice, labels: tuple[str, ...], metric: str, pair: bool, sha256: str, size_bytes: int,
               command: str, pipeline_segments: int | None = None, typical: dict | None = None) -> str:
    """The folder's README.md: what the model does, how well and how fast (with how each figure was
    obtained), how big, what was done to it, and the commands that made it."""
    from .features import EVAL_MAX_LENGTH
    from .hardware import describe
    from .recipe import Recipe

    run, t, teacher = choice.run, choice.trial, choice.teacher
    settings = RunSettings.from_dict(run.settings)
    recipe = Recipe.from_json(t.recipe)
    budget = f" within {choice.budget_ms:g} ms" if choice.budget_ms is not None else ""
    floor = f" with {choice.split} {metric} >= {choice.min_score:g}" if choice.min_score is not None else ""
    judged = ("the held-out dev set" if choice.split == "dev" else
              "the validation split: this run's front was not re-scored on the dev set (was the search interrupted?)")
    lines = ["---", "pipeline_tag: text-classification", "tags: [onnx, text-classification, autocompress]", "---", "",
             f"# {run.task}: {recipe.short()} (run {run.name}, trial {t.number})", "",
             f"Picked by autocompress for **{choice.device}**: the fastest member of run {run.name}'s Pareto front "
             f"for that device{budget}{floor} whose score is within {100 * choice.tolerance:g} point(s) of the most "
             f"accurate such member, judged on {judged}.", "",
             "## Task", "",
             f"- task: {run.task}, {'text pairs' if pair else 'single texts'}, labels: "
             + ", ".join(f"`{name}`" for name in labels),
             f"- data: {settings.data if settings.data is not None else 'not recorded'}",
             f"- metric: {metric}; base model: {run.model}", "",
             "## Scores of this very ONNX file", "",
             "| split | n | scores |", "|---|---|---|", *_scores_rows(t, metric), ""]
    if teacher is not None and teacher.number != t.number:
        lines += ["The teacher it was compressed from (fine-tuned, fp32, unchanged):", "",
                  "| split | n | scores |", "|---|---|---|", *_scores_rows(teacher, metric), ""]
    lines += ["## Latency on every profile", "",
              "| profile | median ms | vs teacher | how it was obtained |", "|---|---|---|---|"]
    for profile, lat in sorted(t.latencies.items()):
        base = teacher.latencies.get(profile) if teacher is not None else None
        speed = f"{base['median_ms'] / lat['median_ms']:.2f}x faster" if base and teacher.number != t.number else "-"
        mark = " (target)" if profile == run.device else ""
        lines.append(f"| {profile}{mark} | {lat['median_ms']:.2f} | {speed} | {describe(lat)} |")
    expected = sorted({(lat.get("detail") or {}).get("expected_over") for lat in t.latencies.values()
                       if (lat.get("detail") or {}).get("expected")})
    if expected:
        lines += ["", f"These latencies are **expected** latencies (early exit): the model stops at the first exit "
                      f"sure enough of its answer, so its latency depends on the input. Each figure is the sum over "
                      f"its segments of (share of {', '.join(expected)} that reached the segment) x (that segment's "
                      "latency); an input that runs every layer takes longer, one that leaves at the first exit less."]
    over = {p: (lat.get("detail") or {}) for p, lat in sorted(t.latencies.items()) if (lat.get("detail") or {}).get("lengths")}
    if over:
        d = next(iter(over.values()))
        lines += ["", f"On {', '.join(over)}, the median is the **expected latency over the task's inputs**: timed at "
                      f"{len(d['lengths']['lengths'])} representative token lengths of {d['lengths']['source']} "
                      f"({d['lengths']['n']} inputs), each weighted by the share of inputs it stands for; the budget and "
                      "the pick used it. At the fixed shape: "
                      + "; ".join(f"{p} {x['fixed']['median_ms']:.2f} ms (batch {x['fixed']['batch_size']} x seq "
                                  f"{x['fixed']['seq_len']})" for p, x in over.items()) + "."]
    if typical:
        lines += ["", f"**A typical input of the task** costs {typical['median_ms']:.2f} ms on {choice.device}, timed "
                      f"when this folder was written: {describe(typical)}. The search, the budget and the pick used "
                      f"the fixed shape's figure in the table above: the run timed {choice.device} at its fixed shape "
                      "(`search --lengths task` times at the task's lengths)."]
    example = '"first text", "second text"' if pair else '"a text"'
    zipped = getattr(t, "size_zip_mb", None)
    what = (f"`{PIPELINE_DIR}/`: {pipeline_segments} ONNX graphs run one after another and `manifest.json` "
            f"(sha256 `{sha256}`, as the store recorded it; it holds every graph's sha256), {size_bytes / 1e6:.2f} MB"
            if pipeline_segments else
            f"`model.onnx`: {size_bytes / 1e6:.2f} MB on disk (sha256 `{sha256}`, as the store recorded it)")
    lines += ["", "## Size", "", f"- {what}"]
    if zipped is not None:
        lines.append(f"- zipped: {zipped:.2f} MB")
    if t.n_params is not None:
        lines.append(f"- parameters: {t.n_params:,} (of the PyTorch model before export; quantization changes "
                     "their storage, not their count)")
    lines += ["", "## Recipe", "", recipe.describe(), "", "`recipe.json` holds it as data.", "",
              "## How it was made", "", "```",
              *([f"cd {settings.cwd}"] if settings.cwd else []),
              settings.command or "# the search command was not recorded (a run made before runs recorded it)",
              *([f"cd {os.getcwd()}"] if settings.cwd not in (None, os.getcwd()) else []),
              command, "```", "",
              "## Use it", ""]
    if pipeline_segments:
        lines += ["One ONNX graph cannot stop half-way, so this early-exit model is a pipeline of graphs that "
                  f"`manifest.json` describes (exit rule, segments). Run it with `autocompress predict DIR "
                  f"{example.replace(',', '')}`, or in Python:", "", "```python",
                  "from autocompress.ship import ShippedModel",
                  f"print(ShippedModel(\"DIR\").predict({example}))", "```", ""]
        return "\n".join(lines) + "\n"
    lines += ["With ONNX Runtime and the tokenizer:", "", "```python",
              "import numpy as np, onnxruntime as ort",
              "from transformers import AutoTokenizer",
              "",
              "tok = AutoTokenizer.from_pretrained(\"DIR\")",
              "session = ort.InferenceSession(\"DIR/model.onnx\")",
              "names = [i.name for i in session.get_inputs()]",
              f"enc = tok({example}, truncation=True, max_length={EVAL_MAX_LENGTH}, return_tensors=\"np\")",
              "logits = session.run([\"logits\"], {k: enc[k].astype(np.int64) for k in names})[0]",
              "```", "",
              "With Hugging Face Optimum (`pip install \"optimum-onnx[onnxruntime]\"`, which needs transformers < 5: "
              "an environment of its own):", "", "```python",
              "from optimum.onnxruntime import ORTModelForSequenceClassification",
              "model = ORTModelForSequenceClassification.from_pretrained(\"DIR\")",
              "```", "",
              f"Or: `autocompress predict DIR {example.replace(',', '')}`.", ""]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- loading a shipped folder
class ShippedModel:
    """A folder written by ``export``, loaded with ONNX Runtime and its tokenizer only."""

    def __init__(self, folder: str | os.PathLike, threads: int | None = None):
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise PickError(f"{folder} has no config.json: give a folder written by `autocompress pick`")
        try:
            self.artifact = pipeline.open_shipped(folder)
        except ValueError as e:
            raise PickError(f"{folder}: {e}") from None
        if self.artifact is None:
            raise PickError(f"{folder} has no {MODEL_FILE}: give a folder written by `autocompress pick`")
        from transformers import AutoTokenizer

        self.config = json.loads((folder / "config.json").read_text())
        id2label = self.config.get("id2label") or {}
        self.labels = [id2label[str(i)] for i in range(len(id2label))]
        info = self.config.get("autocompress") or {}
        self.pair = bool(info.get("pair", False))
        self.max_length = int(info.get("max_length", 128))
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.threads = threads or min(4, os.cpu_count() or 1)
        self.runner = self.artifact.runner(self.threads)
        self.inputs = self.runner.inputs

    def predict(self, text: str, pair: str | None = None) -> dict[str, Any]:
        """Label, its probability, every label's probability, what the input ran (a pipeline says, in
        its own words under ``ran``; empty for one graph), and the milliseconds ONNX Runtime took
        (``graph_ms``: the call less the tokenizer and Python around it), for one example."""
        enc = self.tokenizer(text, pair, truncation=True, max_length=self.max_length, return_tensors="np")
        ids = enc["input_ids"].astype(np.int64)
        feeds = {k: (enc[k].astype(np.int64) if k in enc else np.zeros_like(ids)) for k in self.inputs}
        t0 = time.perf_counter()
        batch, ran = self.runner.run(feeds)
        graph_ms = (time.perf_counter() - t0) * 1e3
        logits = batch[0].astype(np.float64)
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        i = int(probs.argmax())
        return {"label": self.labels[i] if i < len(self.labels) else str(i), "probability": float(probs[i]),
                "probabilities": {name: float(p) for name, p in zip(self.labels, probs)},
                "ran": self.runner.describe_row(ran[0]) if ran is not None else {},
                "graph_ms": graph_ms}
