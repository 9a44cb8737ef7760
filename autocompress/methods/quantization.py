"""Quantization with ONNX Runtime (the survey's first family): each method turns the exported fp32 ONNX
file into a lower-precision one. They are alternatives — a recipe holds at most one of them
(``exclusive="precision"``, checked when the recipe is built).

- ``quantize_int8``: dynamic int8 — weights int8 per output channel, activations quantized on the fly.
  On CPUs with int8 dot-product instructions it is the cheapest speed-up, and on MiniLM the closest to
  fp32 of the int8 variants.
- ``quantize_static``: static int8 in ONNX Runtime's QDQ format, activation ranges calibrated on
  training rows of the transfer set (never validation rows) with MinMax, Entropy or Percentile.
- ``quantize_fp16``: float16 weights and arithmetic, for GPU profiles. ONNX Runtime's CPU provider has
  few float16 kernels and wraps the others in casts: on a CPU profile fp16 is *slower* than fp32.
- ``quantize_mixed``: dynamic int8 everywhere except the ``keep_fp32`` MatMuls whose quantization, measured
  one node at a time on transfer rows, moves the logits most.

Int8 weights are ~4x smaller than fp32 (embedding tables included: every variant quantizes them),
fp16 ~2x.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import random
import tempfile
from dataclasses import dataclass
from typing import ClassVar
from pathlib import Path

import numpy as np

from .base import Context, TransferSet, check, register

PRECISION = "precision"      # the exclusive group of the quantization methods
CALIBRATIONS = ("minmax", "entropy", "percentile")


@contextlib.contextmanager
def _quiet():
    """ONNX Runtime's quantizers log advice (pre-processing, per-channel) through the root logger, and
    its calibrators print their progress."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def _check_bool(value, method: str, name: str) -> None:
    check(isinstance(value, bool), method, f"{name} must be true or false, got {value!r}")


def _check_count(value, method: str, name: str, low: int) -> None:
    check(isinstance(value, int) and not isinstance(value, bool) and value >= low, method,
          f"{name} must be an integer >= {low}, got {value!r}")


def _needs_rows(ctx: Context | None, method: str) -> TransferSet:
    if ctx is None or ctx.transfer is None or not len(ctx.transfer):
        raise ValueError(f"{method} needs training rows (the transfer set): pass a Context to Recipe.apply_onnx")
    return ctx.transfer


def calibration_indices(transfer: TransferSet, rows: int, seed: int) -> list[int]:
    """``rows`` transfer-set rows (all of them where it has fewer), drawn with ``seed``, in order."""
    return sorted(random.Random(seed).sample(range(len(transfer)), min(rows, len(transfer))))


def _io(path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """The model's input names, and the names of the nodes that write its outputs (the classifier)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    return ([i.name for i in model.graph.input if i.name not in inits],
            [n.name for n in model.graph.node if outputs & set(n.output)])


# ---------------------------------------------------------------- int8 dynamic
@dataclass(frozen=True)
class DynamicInt8:
    per_channel: bool = True    # per-tensor loses far more accuracy on MiniLM
    reduce_range: bool = False
    fuse_attention: bool = True  # ONNX Runtime's fused kernels first (export.fuse_for_ort): QAttention, 5-10% faster

    VERSION: ClassVar[int] = 2   # 2: fuse_attention (recipes stored before it was there did not fuse)

    # for the contract suite (methods/base.py): int8 has no identity; TOLERANCE: max |logit change| on the
    # tiny model (logits up to ~1.4; measured 0.04)
    EXAMPLE: ClassVar[dict] = {"per_channel": True}
    IDENTITY: ClassVar[dict | None] = None
    TOLERANCE: ClassVar[float] = 0.15

    def __post_init__(self):
        _check_bool(self.per_channel, "quantize_int8", "per_channel")
        _check_bool(self.reduce_range, "quantize_int8", "reduce_range")
        _check_bool(self.fuse_attention, "quantize_int8", "fuse_attention")

    @classmethod
    def upgrade(cls, params: dict, version: int) -> dict:
        """A version-1 step (a recipe stored before fusion existed) quantized the graph as exported."""
        return {"fuse_attention": False, **params}


@register("quantize_int8", "onnx", DynamicInt8, label=lambda c: "int8", exclusive=PRECISION)
def quantize_int8(src: str | os.PathLike, dst: str | os.PathLike, cfg: DynamicInt8, ctx=None):
    """Int8 dynamic quantization with ONNX Runtime (MatMul and fused attention weights, the embedding tables)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from .. import export

    with _quiet(), tempfile.TemporaryDirectory(prefix="autocompress-fuse-") as tmp:
        extra = {}
        if cfg.fuse_attention:
            fused = Path(tmp) / "fused.onnx"
            export.fuse_for_ort(src, fused)
            # the rewritten graph keeps no type for some weights: the quantizer is told they are float
            src, extra = fused, {"extra_options": {"DefaultTensorType": onnx.TensorProto.FLOAT}}
        quantize_dynamic(str(src), str(dst), per_channel=cfg.per_channel, reduce_range=cfg.reduce_range,
                         weight_type=QuantType.QInt8, **extra)
    return dst


# ---------------------------------------------------------------- int8 static (QDQ, calibrated)
@dataclass(frozen=True)
class StaticInt8:
    calibration: str = "minmax"   # minmax | entropy | percentile (ONNX Runtime's calibrators)
    per_channel: bool = True      # weights per output channel
    rows: int = 128               # transfer-set rows the activation ranges are calibrated on

    EXAMPLE: ClassVar[dict] = {"calibration": "minmax", "rows": 16}    # for the contract suite (methods/base.py)
    IDENTITY: ClassVar[dict | None] = None
    TOLERANCE: ClassVar[float] = 0.2                                     # measured 0.09

    def __post_init__(self):
        check(self.calibration in CALIBRATIONS, "quantize_static",
              f"calibration must be one of {', '.join(CALIBRATIONS)}, got {self.calibration!r}")
        _check_bool(self.per_channel, "quantize_static", "per_channel")
        _check_count(self.rows, "quantize_static", "rows", 1)


class TransferReader:
    """ONNX Runtime's calibration feed (a ``CalibrationDataReader``): training rows of the transfer set,
    one row per run, each padded (and masked) to ``width``: the histogram calibrators (Entropy,
    Percentile) stack the outputs of all runs, so their shapes must agree."""

    def __init__(self, rows: list[dict[str, list[int]]], input_names: list[str], pad_id: int, width: int):
        self.rows, self.names, self.width = rows, list(input_names), width
        self.pad = {"input_ids": pad_id}
        self.position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= len(self.rows):
            return None
        row = self.rows[self.position]
        self.position += 1
        extra = self.width - len(row["input_ids"])
        return {k: np.array([row[k] + [self.pad.get(k, 0)] * extra], dtype=np.int64) for k in self.names}

    def rewind(self) -> None:
        self.position = 0


CALIBRATION_CHUNK = 32


def calibration_readers(transfer: TransferSet, indices: list[int], input_names: list[str]) -> list[TransferReader]:
    """The rows ``indices`` of the transfer set as readers of ``CALIBRATION_CHUNK`` rows, all padded to the
    longest row: ORT's calibrators keep every run's tensors until a ``collect_data`` call ends, so
    feeding chunk by chunk bounds the memory (ranges and histograms merge across calls)."""
    rows = [transfer.features[i] for i in indices]
    width = max(len(r["input_ids"]) for r in rows)
    return [TransferReader(rows[i:i + CALIBRATION_CHUNK], input_names, transfer.pad_id, width)
            for i in range(0, len(rows), CALIBRATION_CHUNK)]


def _calibrator_options(calibration: str) -> dict:
    """ONNX Runtime's calibrator settings, with one change: its Entropy defaults (128 histogram bins
    for 128 quantized bins) leave a single candidate threshold, the full range, so "entropy" would
    be MinMax under another name; 2048 bins (TensorRT's choice) give the KL search room."""
    return {"minmax": {},
            "entropy": {"num_bins": 2048, "num_quantized_bins": 128},
            "percentile": {}}[calibration]                 # ORT's: 2048 bins, 99.999th percentile


@register("quantize_static", "onnx", StaticInt8, exclusive=PRECISION,
          label=lambda c: f"int8 static {c.calibration}" + ("" if c.per_channel else " per-tensor"))
def quantize_static(src: str | os.PathLike, dst: str | os.PathLike, cfg: StaticInt8, ctx: Context | None = None):
    """Int8 static quantization (ONNX Runtime QDQ), activation ranges calibrated on transfer-set rows.

    Every MatMul and Gemm is quantized (weights int8, activations uint8: ONNX Runtime's advice for x86, where
    int8 activations leave per-channel MatMuls unfused and slower than fp32); the embedding tables are
    then quantized weight-only (int8 rows gathered, then dequantized), as in ``quantize_int8`` — QDQ
    would dequantize a whole table on every run. The classifier stays fp32: QDQ would round the logits
    themselves to 8 bits, and a histogram of a few hundred logits misleads Entropy calibration (on the
    tiny test model it clipped every logit to one value). ORT's pre-processing (``quant_pre_process``) is not
    run: its symbolic shape inference fails on these exports, and without it, it changed neither
    the accuracy nor the latency of the MiniLM teacher."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic
    from onnxruntime.quantization import quantize_static as ort_quantize_static
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    transfer = _needs_rows(ctx, "quantize_static")
    inputs, last = _io(src)
    readers = calibration_readers(transfer, calibration_indices(transfer, cfg.rows, ctx.seed), inputs)
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[cfg.calibration]
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    with _quiet(), tempfile.TemporaryDirectory(prefix="calibration-", dir=Path(dst).parent) as tmp:
        calibrator = create_calibrator(Path(src), ["MatMul", "Gemm"], augmented_model_path=f"{tmp}/augmented.onnx",
                                       calibrate_method=method, extra_options=_calibrator_options(cfg.calibration))
        for reader in readers:
            calibrator.collect_data(reader)
        save_tensors_data(calibrator.compute_data(), f"{tmp}/ranges.json")
        del calibrator
        ort_quantize_static(str(src), f"{tmp}/qdq.onnx", None, quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=["MatMul", "Gemm"], per_channel=cfg.per_channel,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=method, calibration_cache_path=f"{tmp}/ranges.json",
                            nodes_to_exclude=last)
        quantize_dynamic(f"{tmp}/qdq.onnx", str(dst), op_types_to_quantize=["Gather"], weight_type=QuantType.QInt8,
                         nodes_to_exclude=_gathers_into_qdq(f"{tmp}/qdq.onnx"))
    return dst


def _gathers_into_qdq(path: str) -> list[str]:
    """Gathers whose output the static pass already quantizes (a factorized embedding's V x E table feeds
    the quantized E x H MatMul): ONNX Runtime's weight-only Gather pass cannot add its own dequantization
    there (it asserts), so these tables stay fp32 (V x E is small next to V x H)."""
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    quantized = {n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    return [n.name for n in graph.node if n.op_type == "Gather" and n.output[0] in quantized]


# ---------------------------------------------------------------- fp16
FP16_CPU_NOTE = ("fp16 is for GPU profiles: ONNX Runtime's CPU provider has few float16 kernels and casts "
                 "around the others, so on a CPU it is slower than fp32 (only the file is halved)")


@dataclass(frozen=True)
class Float16:
    """No parameters: inputs and outputs keep their types (int64 ids in, float32 logits out)."""

    EXAMPLE: ClassVar[dict] = {}                       # for the contract suite (methods/base.py)
    IDENTITY: ClassVar[dict | None] = None
    TOLERANCE: ClassVar[float] = 0.01                  # measured 0.002


@register("quantize_fp16", "onnx", Float16, label=lambda c: "fp16", exclusive=PRECISION, cpu_note=FP16_CPU_NOTE)
def quantize_fp16(src: str | os.PathLike, dst: str | os.PathLike, cfg: Float16, ctx=None):
    """Float16 weights and arithmetic for GPU profiles (on a CPU profile it is slower than fp32)."""
    from .. import export

    with _quiet():
        return export.to_fp16(src, dst)


# ---------------------------------------------------------------- mixed precision
@dataclass(frozen=True)
class MixedInt8:
    keep_fp32: int = 4    # the most sensitive weight MatMuls (or Gemms) left in fp32 (all where there are fewer)
    rows: int = 64        # transfer-set rows on which each MatMul's sensitivity is measured

    EXAMPLE: ClassVar[dict] = {"keep_fp32": 2, "rows": 16}    # for the contract suite (methods/base.py)
    IDENTITY: ClassVar[dict | None] = None
    TOLERANCE: ClassVar[float] = 0.15                         # measured 0.03

    def __post_init__(self):
        _check_count(self.keep_fp32, "quantize_mixed", "keep_fp32", 0)
        _check_count(self.rows, "quantize_mixed", "rows", 1)


def weight_matmuls(path: str | os.PathLike) -> list[str]:
    """The matrix products that dynamic int8 quantizes, in graph order: MatMuls whose second input is a
    float weight (the encoder's Linears) and Gemms (the exporter's form of the pooler and classifier).
    Named as ONNX Runtime's dynamic quantizer matches ``nodes_to_quantize``/``nodes_to_exclude``: it first
    rewrites each Gemm as a MatMul named ``<gemm>_MatMul`` (plus an Add)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    floats = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    return [n.name + ("_MatMul" if n.op_type == "Gemm" else "") for n in model.graph.node
            if n.name and n.op_type in ("MatMul", "Gemm") and n.input[1] in floats]


def _kl(p_logits: np.ndarray, q_logits: np.ndarray) -> np.ndarray:
    """KL(softmax(p) || softmax(q)) per row."""
    def log_softmax(x):
        x = x.astype(np.float64)
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    lp, lq = log_softmax(p_logits), log_softmax(q_logits)
    return (np.exp(lp) * (lp - lq)).sum(-1)


def sensitivity(src: str | os.PathLike, ctx: Context, rows: int, cache_dir: str | os.PathLike) -> dict:
    """Measure, for every weight MatMul (and Gemm) of ``src``, how far its logits move from fp32 when *only that
    node* is int8 (ONNX Runtime dynamic quantization with ``nodes_to_quantize=[node]``), on ``rows``
    transfer-set rows: the mean KL divergence from the fp32 model's own predictions, and the share of
    rows whose predicted class flips. Ranked most sensitive first (by KL: one node flips almost no row,
    so accuracy alone ties most nodes, while the KL divergence is continuous and weighs a logit change
    by how much it changes the predicted distribution).

    Cached in ``cache_dir`` by the fp32 file's sha256 and the rows, so a candidate is measured once."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from ..evaluate import predict_onnx

    transfer = _needs_rows(ctx, "quantize_mixed")
    indices = calibration_indices(transfer, rows, ctx.seed)
    digest = hashlib.sha256(Path(src).read_bytes()).hexdigest()
    cache = Path(cache_dir) / f"sensitivity-{digest[:16]}-{len(indices)}rows-seed{ctx.seed}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    features = [transfer.features[i] for i in indices]
    threads = torch.get_num_threads()       # what the trial was granted (Ray sets it per trial)
    reference = predict_onnx(src, features, pad_id=transfer.pad_id, threads=threads)
    nodes = []
    cache.parent.mkdir(parents=True, exist_ok=True)
    with _quiet(), tempfile.TemporaryDirectory(prefix="sensitivity-", dir=cache.parent) as tmp:
        for name in weight_matmuls(src):
            one = Path(tmp) / "one.onnx"
            quantize_dynamic(str(src), str(one), per_channel=True, weight_type=QuantType.QInt8,
                             op_types_to_quantize=["MatMul", "Gemm"], nodes_to_quantize=[name])
            logits = predict_onnx(one, features, pad_id=transfer.pad_id, threads=threads)
            nodes.append({"node": name, "kl": float(_kl(reference, logits).mean()),
                          "flips": float((logits.argmax(-1) != reference.argmax(-1)).mean())})
    nodes.sort(key=lambda n: -n["kl"])
    record = {"model_sha256": digest, "rows": len(indices), "seed": ctx.seed,
              "how": "int8 dynamic per-channel on one node at a time; kl = mean KL(fp32 || quantized) over the rows",
              "nodes": nodes}
    part = cache.with_suffix(".part")
    part.write_text(json.dumps(record, indent=1))
    part.replace(cache)
    return record


@register("quantize_mixed", "onnx", MixedInt8, exclusive=PRECISION,
          label=lambda c: f"int8 mixed ({c.keep_fp32} fp32)")
def quantize_mixed(src: str | os.PathLike, dst: str | os.PathLike, cfg: MixedInt8, ctx: Context | None = None):
    """Int8 dynamic quantization except the ``keep_fp32`` most sensitive MatMuls (measured), left in fp32.

    Dynamic rather than static int8: on MiniLM it is both closer to fp32 and faster than static QDQ
    (``benchmarks/quantization.py``), and a node's sensitivity then depends on that node alone (its
    weights, and its input quantized row by row), with no calibration to redo (or to confound the
    ranking) for each of MiniLM's 38 nodes. With ``keep_fp32: 0`` the result is ``quantize_int8``'s."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    keep = []
    if cfg.keep_fp32:
        keep = [n["node"] for n in sensitivity(src, ctx, cfg.rows, Path(dst).parent)["nodes"][:cfg.keep_fp32]]
    with _quiet():
        quantize_dynamic(str(src), str(dst), per_channel=True, weight_type=QuantType.QInt8, nodes_to_exclude=keep)
    return dst
