"""Tokenising task rows and scoring models on them (ONNX Runtime for candidates, PyTorch for training)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from . import arch
from .tasks import TaskSpec, compute_metrics

EVAL_MAX_LENGTH = 128


def encode(tokenizer, rows, max_length: int) -> list[dict[str, list[int]]]:
    """Tokenise a Dataset with columns text_a[, text_b]; returns one dict of id lists per row."""
    pair = "text_b" in rows.column_names
    enc = tokenizer(list(rows["text_a"]), list(rows["text_b"]) if pair else None, truncation=True,
                    max_length=max_length, return_token_type_ids=True)
    keys = ("input_ids", "attention_mask", "token_type_ids")
    return [{k: enc[k][i] for k in keys} for i in range(len(rows))]


def _batches(features, batch_size: int, pad_id: int):
    """Length-sorted batches (little padding); yields (row indices, padded int64 arrays)."""
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        width = max(len(features[i]["input_ids"]) for i in idx)
        arrays = {}
        for key, pad in (("input_ids", pad_id), ("attention_mask", 0), ("token_type_ids", 0)):
            arrays[key] = np.array([features[i][key] + [pad] * (width - len(features[i][key])) for i in idx],
                                   dtype=np.int64)
        yield idx, arrays


def predict_onnx(path: str | os.PathLike, features, *, pad_id: int = 0, batch_size: int = 64,
                 threads: int | None = None) -> np.ndarray:
    """Logits of an ONNX model (or of a pipeline manifest, run with its exit rule) on tokenised rows."""
    from . import pipeline

    if pipeline.is_pipeline(path):
        return pipeline.predict(path, features, pad_id=pad_id, batch_size=batch_size, threads=threads)[0]
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or min(4, os.cpu_count() or 1)
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    out = None
    for idx, arrays in _batches(features, batch_size, pad_id):
        logits = session.run(["logits"], {k: v for k, v in arrays.items() if k in names})[0]
        if out is None:
            out = np.zeros((len(features), logits.shape[1]), dtype=np.float32)
        out[idx] = logits
    return out


@torch.no_grad()
def predict_torch(model, features, *, pad_id: int = 0, batch_size: int = 64) -> np.ndarray:
    model.eval()
    out = None
    for idx, arrays in _batches(features, batch_size, pad_id):
        logits = model(**arch.inputs(model, {k: torch.from_numpy(v) for k, v in arrays.items()})).logits.float().numpy()
        if out is None:
            out = np.zeros((len(features), logits.shape[1]), dtype=np.float32)
        out[idx] = logits
    return out


@dataclass
class Score:
    """An accuracy that names its split and number of examples."""

    split: str
    n: int
    metrics: dict[str, float]

    @property
    def main(self) -> float:
        return self.metrics["main"]


def score(spec: TaskSpec, logits: np.ndarray, labels, split: str) -> Score:
    labels = np.asarray(labels)
    return Score(split, len(labels), compute_metrics(spec, logits.argmax(-1), labels))
