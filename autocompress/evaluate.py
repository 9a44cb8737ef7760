"""Scoring models on tokenised rows: an artifact (ONNX Runtime: what is timed and shipped) or a PyTorch
model (training, the teacher). A score names its split and its number of examples."""
from __future__ import annotations

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
