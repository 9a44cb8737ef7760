"""``roofline``: the server GPU where no CUDA device is here.

Per operator of the candidate's graph:
``max(floor, flops / (peak * compute_efficiency) + bytes / (bandwidth * memory_efficiency))``, summed
over the operators that launch a kernel; FLOPs and bytes come from the graph itself (run once at
batch 1 to learn every tensor's shape; bytes at the profile's precision). ``compute_efficiency`` is at
most 1 (a fraction of the datasheet peak); ``memory_efficiency`` may exceed 1: the reference runtime
(TensorRT) fuses bias, activation, softmax and layer norm into few kernels and so moves fewer bytes
than the unfused ONNX graph counts. The floor is the per-kernel launch cost small models at batch 1 sit
on. The three constants are fitted to published figures of one architecture (BERT-base) and checked
on another (BERT-large); they do not depend on this host, so they live in the YAML, and
``calibrate_roofline`` recomputes them.
"""
from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..figure import Latency
from ..latency import inputs
from .base import Log, Predictor, PredictorError, anchor_points

ROOFLINE_CONSTANTS = ("compute_efficiency", "memory_efficiency", "kernel_floor_us")


class Roofline(Predictor):
    kind = "roofline"

    @classmethod
    def check(cls, spec: dict) -> dict:
        for key in ("peak_tflops", "bandwidth_gbs"):
            if not isinstance(spec.get(key), (int, float)) or spec[key] <= 0:
                raise PredictorError(f"'{key}' must be a positive number (the device's published peak)")
        consts = spec.get("constants")
        if not isinstance(consts, dict) or set(consts) != set(ROOFLINE_CONSTANTS) or not all(
                isinstance(v, (int, float)) and v > 0 for v in consts.values()):
            raise PredictorError(f"'constants' must give positive {', '.join(ROOFLINE_CONSTANTS)} "
                                 "(recompute them with hardware.predictors.roofline.calibrate_roofline)")
        if not any(a.get("use", "fit") == "fit" for a in spec["anchors"]):
            raise PredictorError("at least one anchor must have use: fit")
        return spec

    def predict(self, onnx_path: str | os.PathLike, log: Log | None = None) -> Latency:
        return predict(onnx_path, self.profile)

    def refit(self, log: Log | None = None) -> dict:
        """The constants fitted again from the published figures, with the error on every anchor."""
        return calibrate_roofline(self.spec, log=log)

    def describe_state(self) -> str:
        return f"calibrated on {self.spec.get('calibrated_on')}; held-out error {self.spec.get('heldout_error')}"


# ------------------------------------------------------------------ what a graph costs
@dataclass
class GraphCosts:
    """Per operator that launches a kernel, at batch 1: FLOPs, bytes that scale with the batch
    (activations), bytes that do not (weights)."""

    flops: np.ndarray
    act_bytes: np.ndarray
    weight_bytes: np.ndarray
    ops: list[str]

    @property
    def kernels(self) -> int:
        return len(self.ops)


_VIEW_OPS = frozenset({"Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Shape", "Size", "Constant",
                       "ConstantOfShape", "Range", "Dropout"})
_FLOPS_PER_ELEMENT = {"Softmax": 5, "LayerNormalization": 8, "Gelu": 8, "Erf": 8, "Tanh": 4, "Sqrt": 1,
                      "ReduceMean": 1, "Pow": 1}


def _nbytes(shape: tuple, dtype: np.dtype, float_bytes: int) -> float:
    n = float(np.prod(shape)) if len(shape) else 1.0
    return n * (float_bytes if np.issubdtype(dtype, np.floating) else np.dtype(dtype).itemsize)


def graph_costs(onnx_path: str | os.PathLike, seq_len: int, float_bytes: int = 2) -> GraphCosts:
    """FLOPs and bytes of every kernel of an ONNX graph at batch 1 and ``seq_len``: the graph is run once
    on the CPU with every intermediate tensor as an output, to learn their shapes (not timed)."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    graph = model.graph
    tensors: dict[str, tuple[tuple, np.dtype]] = {}
    constant = set()
    for init in graph.initializer:
        arr = numpy_helper.to_array(init)
        tensors[init.name] = (arr.shape, arr.dtype)
        constant.add(init.name)
    have = {o.name for o in graph.output}
    for node in graph.node:
        for out in node.output:
            if out and out not in have:
                vi = onnx.ValueInfoProto()
                vi.name = out
                graph.output.append(vi)
                have.add(out)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feeds = inputs(session, 1, seq_len)
    for name, value in feeds.items():
        tensors[name] = (value.shape, value.dtype)
    for out, value in zip([o.name for o in session.get_outputs()], session.run(None, feeds)):
        value = np.asarray(value)
        tensors[out] = (value.shape, value.dtype)
    flops, act, weight, ops = [], [], [], []
    for node in graph.node:
        if node.op_type == "Constant" or all(i in constant for i in node.input if i):
            constant.update(node.output)           # folded before anything runs
            continue
        outs = [tensors[o] for o in node.output if o in tensors]
        if node.op_type in _VIEW_OPS or not outs or not any(np.issubdtype(d, np.floating) for _, d in outs):
            continue                               # views and shape arithmetic launch no real kernel
        out_shape = outs[0][0]
        if node.op_type in ("MatMul", "Gemm", "FusedMatMul"):
            a_shape = tensors[node.input[0]][0]
            trans_a = any(at.name == "transA" and at.i for at in node.attribute)
            k = a_shape[-2] if trans_a else a_shape[-1]
            f = 2.0 * float(np.prod(out_shape)) * k
        else:
            f = _FLOPS_PER_ELEMENT.get(node.op_type, 1) * float(np.prod(out_shape))
        w = a = 0.0
        for i, name in enumerate(node.input):
            if not name or name not in tensors:
                continue
            shape, dtype = tensors[name]
            if node.op_type == "Gather" and i == 0:   # a lookup reads only the rows it gathers
                shape, dtype = out_shape, outs[0][1]
            if name in constant:
                w += _nbytes(shape, dtype, float_bytes)
            else:
                a += _nbytes(shape, dtype, float_bytes)
        a += sum(_nbytes(s, d, float_bytes) for s, d in outs)
        flops.append(f)
        act.append(a)
        weight.append(w)
        ops.append(node.op_type)
    return GraphCosts(np.array(flops), np.array(act), np.array(weight), ops)


def roofline_ms(costs: GraphCosts, batch: int, constants: dict, spec: dict) -> float:
    """Predicted milliseconds of one run at ``batch`` (costs were taken at batch 1)."""
    peak = spec["peak_tflops"] * 1e12 * constants["compute_efficiency"]
    bw = spec["bandwidth_gbs"] * 1e9 * constants["memory_efficiency"]
    t = costs.flops * batch / peak + (costs.weight_bytes + costs.act_bytes * batch) / bw
    return float(np.sum(np.maximum(t, constants["kernel_floor_us"] * 1e-6))) * 1e3


def _roofline_grid(costs: GraphCosts, batch: int, spec: dict, ce: np.ndarray, me: np.ndarray, fl: np.ndarray) -> np.ndarray:
    """roofline_ms over a grid of constants at once (arrays broadcast against each other)."""
    peak = spec["peak_tflops"] * 1e12 * ce[..., None]
    bw = spec["bandwidth_gbs"] * 1e9 * me[..., None]
    t = costs.flops * batch / peak + (costs.weight_bytes + costs.act_bytes * batch) / bw
    return np.sum(np.maximum(t, fl[..., None] * 1e-6), axis=-1) * 1e3


def anchor_costs(spec: dict, *, log: Log | None = None) -> dict[tuple[str, int], tuple[GraphCosts, GraphCosts, int]]:
    """For each anchor and sequence length: the costs of its graph with 1 and 2 layers, and its real
    depth. Costs add up over operators and every layer is the same, so a graph of L layers costs
    c1 + (L - 1) * (c2 - c1) exactly: only two small graphs need exporting."""
    import transformers

    from ... import export                        # (torch: imported when anchors are built)

    out = {}
    with tempfile.TemporaryDirectory(prefix="autocompress-anchors-") as tmp:
        for i, a in enumerate(spec["anchors"]):
            depth = transformers.AutoConfig.for_model(**a["config"]).num_hidden_layers
            paths = []
            for L in (1, 2):
                if log:
                    log(f"roofline anchor {a['name']}: exporting a {L}-layer graph")
                paths.append(export.export_anchor(a["config"], Path(tmp) / f"a{i}-{L}.onnx", num_layers=L))
            for seq in sorted(a["ms"]):
                out[(a["name"], seq)] = (graph_costs(paths[0], seq), graph_costs(paths[1], seq), depth)
    return out


def _anchor_ms(c1: GraphCosts, c2: GraphCosts, depth: int, batch: int, predict) -> Any:
    one, two = predict(c1, batch), predict(c2, batch)
    return one + (depth - 1) * (two - one)


def fit_roofline(spec: dict, costs: dict) -> dict:
    """The constants minimising the squared log error on the ``use: fit`` anchors (a coarse-to-fine
    grid in log space), and the errors on every anchor (fit and held-out)."""
    points = anchor_points(spec)
    fit = [p for p in points if p[0].get("use", "fit") == "fit"]
    floor_, ceil_ = np.log([0.01, 0.05, 0.1]), np.log([1.0, 50.0, 100.0])   # compute <= peak; see the module doc
    lo, hi = floor_.copy(), ceil_.copy()
    best = None
    for _ in range(5):
        axes = [np.exp(np.linspace(l, h, 25)) for l, h in zip(lo, hi)]
        ce, me, fl = np.meshgrid(*axes, indexing="ij")
        err = np.zeros(ce.shape)
        for a, seq, batch, ms in fit:
            c1, c2, depth = costs[(a["name"], seq)]
            pred = _anchor_ms(c1, c2, depth, batch, lambda c, b: _roofline_grid(c, b, spec, ce, me, fl))
            err += (np.log(pred) - math.log(ms)) ** 2
        idx = np.unravel_index(np.argmin(err), err.shape)
        best = np.log([ce[idx], me[idx], fl[idx]])
        step = (hi - lo) / 24 * 2
        lo, hi = np.maximum(best - step, floor_), np.minimum(best + step, ceil_)
    constants = dict(zip(ROOFLINE_CONSTANTS, [round(float(v), 4) for v in np.exp(best)]))
    rows = []
    for a, seq, batch, ms in points:
        c1, c2, depth = costs[(a["name"], seq)]
        pred = _anchor_ms(c1, c2, depth, batch, lambda c, b: roofline_ms(c, b, constants, spec))
        rows.append({"name": a["name"], "use": a.get("use", "fit"), "seq_len": seq, "batch_size": batch,
                     "device_ms": ms, "predicted_ms": round(pred, 3), "error": round(pred / ms - 1, 4)})
    held = [abs(r["error"]) for r in rows if r["use"] == "heldout"]
    fitted = [abs(r["error"]) for r in rows if r["use"] == "fit"]
    return {"constants": constants, "anchors": rows,
            "fit_mean_abs_error": round(float(np.mean(fitted)), 4),
            "heldout_mean_abs_error": round(float(np.mean(held)), 4) if held else None,
            "heldout_max_abs_error": round(float(np.max(held)), 4) if held else None}


def calibrate_roofline(spec: dict, *, log: Log | None = None) -> dict:
    """Fit a roofline spec's constants from scratch (host-independent: the YAML keeps the result)."""
    return fit_roofline(spec, anchor_costs(spec, log=log))


def predict(onnx_path: str | os.PathLike, profile) -> Latency:
    """The device latency of a candidate's graph by the roofline, at every shape of the profile."""
    spec = profile.predictor
    float_bytes = 2 if profile.precision == "fp16" else 4
    by_seq: dict[int, GraphCosts] = {}
    figures = []
    for batch, seq in profile.shapes:
        costs = by_seq.setdefault(seq, graph_costs(onnx_path, seq, float_bytes))
        figures.append((batch, seq, roofline_ms(costs, batch, spec["constants"], spec), costs.kernels))
    (batch, seq, ms, kernels), rest = figures[0], figures[1:]
    k = spec["constants"]
    detail = {"predictor": f"{spec['name']} (compute efficiency {k['compute_efficiency']:g}, memory efficiency "
                           f"{k['memory_efficiency']:g}, kernel floor {k['kernel_floor_us']:g} us)",
              "device": profile.device or profile.name,
              "input": f"the graph's FLOPs and bytes per operator ({kernels} kernels, "
                       f"{'fp16' if float_bytes == 2 else 'fp32'})",
              "calibrated_on": spec.get("calibrated_on", ""), "heldout_error": spec.get("heldout_error", ""),
              "batch_size": batch, "seq_len": seq, "precision": profile.precision}
    if rest:
        detail["other_shapes"] = [{"batch_size": b, "seq_len": s, "median_ms": m} for b, s, m, _ in rest]
    return Latency(profile.name, ms, 0.0, ms, ms, 0, "predicted", detail)
