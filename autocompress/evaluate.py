"""Scoring models on tokenised rows: an artifact (ONNX Runtime: what is timed and shipped) or a PyTorch
model (training, the teacher). A score names its split and its number of examples."""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

import numpy as np
import torch

from . import arch, pipeline
from .features import batches
from .pipeline import Usage
from .tasks import TaskSpec, compute_metrics


def predict_onnx(path: str | os.PathLike, features, *, pad_id: int = 0, batch_size: int = 64,
                 threads: int | None = None) -> np.ndarray:
    """Logits of an artifact (one ONNX graph, or a pipeline run with its exit rule) on tokenised rows."""
    return pipeline.open(path).predict(features, pad_id=pad_id, batch_size=batch_size, threads=threads)[0]


@torch.no_grad()
def predict_torch(model, features, *, pad_id: int = 0, batch_size: int = 64) -> np.ndarray:
    model.eval()
    out = None
    for idx, arrays in batches(features, batch_size, pad_id):
        logits = model(**arch.inputs(model, {k: torch.from_numpy(v) for k, v in arrays.items()})).logits.float().numpy()
        if out is None:
            out = np.zeros((len(features), logits.shape[1]), dtype=np.float32)
        out[idx] = logits
    return out


@dataclass
class Score:
    """A score that names its split and number of examples."""

    split: str
    n: int
    metrics: dict[str, float]

    @property
    def main(self) -> float:
        return self.metrics["main"]


def score(spec: TaskSpec, logits: np.ndarray, labels, split: str) -> Score:
    labels = np.asarray(labels)
    return Score(split, len(labels), compute_metrics(spec, logits.argmax(-1), labels))


def score_artifact(path: str | os.PathLike, spec: TaskSpec, features, labels, split: str, *, pad_id: int = 0,
                   threads: int | None = None) -> tuple[Score, Usage | None]:
    """The score of the very file that ships, and how much of it the inputs ran (``pipeline.Usage``;
    None for a single graph): what an input-dependent artifact's expected latency is weighted by."""
    logits, usage = pipeline.open(path).predict(features, pad_id=pad_id, threads=threads)
    return score(spec, logits, labels, split), usage


# ---------------------------------------------------------------- how much a score on n rows can be trusted
Z95 = 1.959964            # two-sided 95%
BOOTSTRAP = 1000          # resamples


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for a proportion (95% by default): better than p ± z·se at small n or p
    near 0 or 1."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _resampled(spec: TaskSpec, preds: np.ndarray, labels: np.ndarray, other: np.ndarray | None = None,
               reps: int = BOOTSTRAP, seed: int = 0) -> np.ndarray:
    """The task's metric over ``reps`` bootstrap resamples of the rows (paired: minus ``other``'s on the
    same resample, where given)."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    out = np.empty(reps)
    for i in range(reps):
        idx = rng.integers(0, n, n)
        value = compute_metrics(spec, preds[idx], labels[idx])["main"]
        out[i] = value - (compute_metrics(spec, other[idx], labels[idx])["main"] if other is not None else 0.0)
    return out


@dataclass
class Margin:
    """Whether a model beats a trivial answer by more than the noise of its score at the split's size."""

    method: str          # which interval
    n: int
    score: float         # the model's score (task's metric)
    baseline: float      # the trivial answer's score
    lower: float         # the lower end of the 95% interval (of the score; of score - baseline for a bootstrap)
    needed: float        # how far above the baseline a score must be at this n to pass (in the metric's units)
    passed: bool

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def beats_trivial(spec: TaskSpec, preds, labels, answer: int) -> Margin:
    """Does a model with ``preds`` beat always answering ``answer``, beyond the noise at this n? For
    accuracy, the lower end of Wilson's 95% interval of its accuracy must be above the trivial answer's;
    for other metrics (F1, Matthews), the lower end of a paired bootstrap 95% interval of the difference
    (1000 resamples of the rows) must be above 0."""
    p, y = np.asarray(preds).astype(np.int64), np.asarray(labels).astype(np.int64)
    n = len(y)
    const = np.full(n, answer, dtype=np.int64)
    score_, base = compute_metrics(spec, p, y)["main"], compute_metrics(spec, const, y)["main"]
    if spec.metric == "accuracy":
        lower = wilson(int((p == y).sum()), n)[0]
        k = next((k for k in range(n + 1) if wilson(k, n)[0] > base), n)       # fewest right answers that pass
        return Margin("Wilson 95% interval of the accuracy", n, score_, base, lower, k / n - base, lower > base)
    diffs = _resampled(spec, p, y, const)
    spread = float(np.std(_resampled(spec, p, y)))
    lower = float(np.quantile(diffs, 0.025))
    return Margin(f"paired bootstrap 95% interval of the difference ({BOOTSTRAP} resamples)", n, score_, base,
                  lower, Z95 * spread, lower > 0)


def resolution(spec: TaskSpec, preds, labels) -> float:
    """How far apart (in the metric's units) two models' scores on these rows must be to differ at 95%:
    1.96 x the standard error of a difference of two such scores (independent errors assumed, so it
    errs on the wide side for models that err alike): sqrt(2 p (1 - p) / n) for an accuracy, with p
    Agresti-Coull's (k + 1.92) / (n + 3.84) so that a perfect score does not claim perfect resolution;
    the bootstrap spread of the score x sqrt(2) for other metrics."""
    p, y = np.asarray(preds).astype(np.int64), np.asarray(labels).astype(np.int64)
    if spec.metric == "accuracy":
        n = len(y)
        acc = (float((p == y).sum()) + Z95 ** 2 / 2) / (n + Z95 ** 2)
        return Z95 * math.sqrt(2 * acc * (1 - acc) / n)
    return Z95 * math.sqrt(2) * float(np.std(_resampled(spec, p, y)))
