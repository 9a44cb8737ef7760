"""Latency predictors for profiles whose device is not at hand. Every figure they give is labelled
``predicted``, with the model, what it was calibrated on and its error on held-out published figures.

Two models, chosen by a profile's ``predictor.kind``:

``host-operators`` (the mobile-class CPU). What is measured here is the candidate's graph on this
host's CPU with ONNX Runtime's profiler, split by operator class: dense matrix products (``matmul``),
normalisation/activation/softmax (``norm_act``, cheap on x86 with ONNX Runtime's fused kernels, dear on
a phone) and everything else (``other``). The device's latency is mapped as
``device_ms = c_matmul * host_matmul + c_norm_act * host_norm_act + c_other * host_other`` with
non-negative constants fitted (least squares on relative error) to published measurements of
reference architectures on the device (the anchors, with sources, in the profile's YAML). The anchors
are built here from their configs with random weights (latency does not depend on weights), exported
like any candidate and profiled on this host: the map is a property of this host and is calibrated
once per host and cached (``calibration_dir()``). Its held-out error is leave-one-out over the anchors.

``roofline`` (the server GPU where no CUDA device is here). Per operator of the candidate's graph:
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

import fcntl
import hashlib
import inspect
import json
import math
import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

CALIBRATION_VERSION = 2   # 2: host timings scaled to the host's nominal speed
KINDS = ("host-operators", "roofline")
MATMUL_OPS = frozenset({"MatMul", "FusedMatMul", "Gemm", "FusedGemm", "MatMulInteger", "MatMulIntegerToFloat",
                        "DynamicQuantizeMatMul", "QGemm", "QLinearMatMul", "Attention", "QAttention",
                        "MultiHeadAttention", "Conv", "ConvInteger", "QLinearConv", "MatMulNBits"})
NORM_ACT_OPS = frozenset({"LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization",
                          "SkipSimplifiedLayerNormalization", "EmbedLayerNormalization", "BiasGelu", "Gelu",
                          "FastGelu", "QuickGelu", "Erf", "Tanh", "Sigmoid", "Softmax", "QLinearSoftmax"})
CLASSES = ("matmul", "norm_act", "other")
QUANTIZED_OPS = frozenset({"MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "DynamicQuantizeLinear",
                           "QGemm", "QLinearMatMul", "QAttention", "ConvInteger", "QLinearConv", "QuantizeLinear",
                           "DequantizeLinear", "MatMulNBits"})
ROOFLINE_CONSTANTS = ("compute_efficiency", "memory_efficiency", "kernel_floor_us")


class PredictorError(ValueError):
    """A predictor spec is invalid, or a prediction cannot be made (one line)."""


# ------------------------------------------------------------------ the spec in a profile's YAML
def check_spec(d: Any) -> dict:
    """Validate a profile's ``predictor:`` mapping; returns it with defaults filled in."""
    if not isinstance(d, dict):
        raise PredictorError(f"must be a mapping with a 'kind', got {type(d).__name__}")
    kind = d.get("kind")
    if kind not in KINDS:
        raise PredictorError(f"'kind' must be one of {', '.join(KINDS)}, got {kind!r}")
    anchors = d.get("anchors")
    if not isinstance(anchors, list) or len(anchors) < 2:
        raise PredictorError("'anchors' must list at least two published measurements (name, config, source, ms)")
    for a in anchors:
        if not isinstance(a, dict) or not {"name", "config", "source", "ms"} <= set(a):
            raise PredictorError(f"each anchor needs name, config, source and ms, got {a!r}")
        if not isinstance(a["config"], dict) or "model_type" not in a["config"]:
            raise PredictorError(f"anchor {a['name']!r}: 'config' must give a transformers model_type and its settings")
        ms = a["ms"]
        if not isinstance(ms, dict) or not ms or not all(
                isinstance(seq, int) and isinstance(row, dict) and row and
                all(isinstance(b, int) and isinstance(v, (int, float)) and v > 0 for b, v in row.items())
                for seq, row in ms.items()):
            raise PredictorError(f"anchor {a['name']!r}: 'ms' must map sequence length -> batch size -> milliseconds")
        if a.get("use", "fit") not in ("fit", "heldout"):
            raise PredictorError(f"anchor {a['name']!r}: 'use' must be fit or heldout, got {a.get('use')!r}")
    out = dict(d)
    out.setdefault("name", f"{kind} map")
    if kind == "host-operators":
        threads = out.setdefault("host_threads", 1)
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise PredictorError(f"'host_threads' must be a positive integer, got {threads!r}")
    else:
        for key in ("peak_tflops", "bandwidth_gbs"):
            if not isinstance(d.get(key), (int, float)) or d[key] <= 0:
                raise PredictorError(f"'{key}' must be a positive number (the device's published peak)")
        consts = d.get("constants")
        if not isinstance(consts, dict) or set(consts) != set(ROOFLINE_CONSTANTS) or not all(
                isinstance(v, (int, float)) and v > 0 for v in consts.values()):
            raise PredictorError(f"'constants' must give positive {', '.join(ROOFLINE_CONSTANTS)} "
                                 "(recompute them with hardware.predictor.calibrate_roofline)")
        if not any(a.get("use", "fit") == "fit" for a in anchors):
            raise PredictorError("at least one anchor must have use: fit")
    return out


def anchor_points(spec: dict) -> list[tuple[dict, int, int, float]]:
    """Every published figure of the spec: (anchor, seq_len, batch_size, device_ms)."""
    return [(a, seq, b, float(ms)) for a in spec["anchors"] for seq, row in sorted(a["ms"].items())
            for b, ms in sorted(row.items())]


# ------------------------------------------------------------------ reference architectures, built here
def build_anchor(config: dict, path: Path, num_layers: int | None = None) -> Path:
    """Export the architecture a config describes (random weights, 2 labels) to ONNX, as candidates are."""
    import torch
    import transformers

    from .. import export

    settings = {k: v for k, v in config.items() if k != "model_type"}
    if num_layers is not None:
        settings["num_hidden_layers"] = num_layers
    cfg = transformers.AutoConfig.for_model(config["model_type"], num_labels=2, **settings)
    torch.manual_seed(0)
    model = transformers.AutoModelForSequenceClassification.from_config(cfg).eval()
    takes = inspect.signature(model.forward).parameters
    names = ("input_ids", "attention_mask") + (("token_type_ids",) if "token_type_ids" in takes else ())
    return export.export_onnx(model, path, input_names=names)


# ------------------------------------------------------------------ host-operators: fitting
def op_classes(op_ms: dict[str, float]) -> np.ndarray:
    """Host milliseconds per operator class (matmul, norm_act, other)."""
    x = np.zeros(len(CLASSES))
    for op, ms in op_ms.items():
        x[0 if op in MATMUL_OPS else 1 if op in NORM_ACT_OPS else 2] += ms
    return x


def fit_nonnegative(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Constants c >= 0 minimising sum(((X c - y) / y)^2): least squares on relative error, the best
    over every subset of free constants (the rest held at 0), so none comes out negative."""
    X, y = np.asarray(X, float), np.asarray(y, float)
    A, b = X / y[:, None], np.ones(len(y))
    best, best_err = np.zeros(X.shape[1]), float(np.sum(b ** 2))
    for mask in range(1, 2 ** X.shape[1]):
        cols = [j for j in range(X.shape[1]) if mask >> j & 1]
        if len(cols) > len(y):
            continue
        sol, *_ = np.linalg.lstsq(A[:, cols], b, rcond=None)
        if np.any(sol < 0):
            continue
        c = np.zeros(X.shape[1])
        c[cols] = sol
        err = float(np.sum((A @ c - b) ** 2))
        if err < best_err - 1e-12:
            best, best_err = c, err
    return best


def leave_one_out(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Relative error on each anchor of the constants fitted on all the others."""
    X, y = np.asarray(X, float), np.asarray(y, float)
    errors = []
    for i in range(len(y)):
        keep = [j for j in range(len(y)) if j != i]
        c = fit_nonnegative(X[keep], y[keep])
        errors.append(float(X[i] @ c / y[i] - 1))
    return np.array(errors)


# ------------------------------------------------------------------ host-operators: calibration, cached per host
def calibration_dir() -> Path:
    """Where per-host calibrations are kept: $AUTOCOMPRESS_CALIBRATION_DIR, else the cache's calibration/."""
    env = os.environ.get("AUTOCOMPRESS_CALIBRATION_DIR")
    if env:
        return Path(env)
    from ..teacher import cache_root

    return cache_root() / "calibration"


def host_key(profile) -> str:
    """What a host-operators calibration depends on: this CPU, ONNX Runtime's version, the spec."""
    import onnxruntime as ort

    from .latency import cpu_info

    info = cpu_info()
    spec = profile.predictor
    blob = json.dumps({"v": CALIBRATION_VERSION, "cpu": info["cpu"], "isa": info["int8_isa"], "ort": ort.__version__,
                       "threads": spec["host_threads"], "anchors": spec["anchors"], "shape": profile.shapes[0],
                       **({"pinned": True} if profile.pin_threads else {})},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def calibration_path(profile) -> Path:
    return calibration_dir() / f"{profile.name}-{host_key(profile)}.json"


def cached_calibration(profile) -> dict | None:
    path = calibration_path(profile)
    return json.loads(path.read_text()) if path.is_file() else None


@contextmanager
def locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def calibrate_host_operators(profile, *, log: Callable[[str], None] | None = None, fresh: bool = False) -> dict:
    """The host-operators map for ``profile`` on this host: from the cache, else calibrated now (each
    anchor built from its config, exported, profiled here) and cached. One process at a time."""
    from .latency import profile_operators

    path = calibration_path(profile)
    with locked(path):
        if path.is_file() and not fresh:
            return json.loads(path.read_text())
        spec = profile.predictor
        points = anchor_points(spec)
        if any((seq, b) != (profile.seq_len, profile.batch_size) for _, seq, b, _ in points):
            raise PredictorError(f"profile {profile.name}: host-operators anchors must be at the profile's shape "
                                 f"(batch {profile.batch_size}, seq {profile.seq_len})")
        t0 = time.time()
        rows = []
        with tempfile.TemporaryDirectory(prefix="autocompress-anchors-") as tmp:
            for i, (anchor, _, _, device_ms) in enumerate(points):
                if log:
                    log(f"calibrating {profile.name} on this host: anchor {i + 1}/{len(points)} {anchor['name']}")
                onnx_path = build_anchor(anchor["config"], Path(tmp) / f"anchor{i}.onnx")
                lat, op_ms = profile_operators(onnx_path, profile, threads=spec["host_threads"])
                onnx_path.unlink()
                rows.append({"name": anchor["name"], "source": anchor["source"], "device_ms": device_ms,
                             "host_ms": round(lat.median_ms, 3), "host_ci95_rel": lat.detail["ci95_rel"],
                             "host_classes_ms": dict(zip(CLASSES, np.round(op_classes(op_ms), 3).tolist())),
                             "host_ops_ms": {k: round(v, 3) for k, v in op_ms.items()}})
        calib = fit_calibration(rows)
        from .latency import cpu_info

        calib.update(profile=profile.name, predictor=spec["name"], host_key=host_key(profile),
                     cpu=cpu_info()["cpu"], host_threads=spec["host_threads"],
                     date=time.strftime("%Y-%m-%d"), seconds=round(time.time() - t0, 1))
        tmp_path = path.with_suffix(".tmp")
        tmp_path.write_text(json.dumps(calib, indent=2))
        tmp_path.replace(path)
        return calib


def fit_calibration(rows: list[dict]) -> dict:
    """Constants from anchors' host class times and device figures, with each anchor's leave-one-out error."""
    X = np.array([[r["host_classes_ms"][c] for c in CLASSES] for r in rows])
    y = np.array([r["device_ms"] for r in rows])
    c = fit_nonnegative(X, y)
    loo = leave_one_out(X, y)
    for r, fitted, e in zip(rows, X @ c, loo):
        r["fitted_ms"] = round(float(fitted), 2)
        r["loo_error"] = round(float(e), 4)
    return {"constants": dict(zip(CLASSES, np.round(c, 5).tolist())), "anchors": rows,
            "loo_mean_abs_error": round(float(np.mean(np.abs(loo))), 4),
            "loo_max_abs_error": round(float(np.max(np.abs(loo))), 4)}


def _host_operators_detail(profile, calib: dict) -> dict:
    spec = profile.predictor
    names = ", ".join(f"{r['name']} {r['device_ms']:g} ms" for r in calib["anchors"])
    return {"predictor": f"{spec['name']} (c_matmul {calib['constants']['matmul']:.3g}, c_norm_act "
                         f"{calib['constants']['norm_act']:.3g}, c_other {calib['constants']['other']:.3g})",
            "device": profile.device or profile.name,
            "input": f"ONNX Runtime operator timings on this host ({calib['cpu']}, {spec['host_threads']} thread)",
            "calibrated_on": f"{len(calib['anchors'])} published figures ({names}) timed on this host "
                             f"on {calib['date']}",
            "heldout_error": f"leave-one-out mean |error| {100 * calib['loo_mean_abs_error']:.0f}% "
                             f"(max {100 * calib['loo_max_abs_error']:.0f}%)",
            "batch_size": profile.batch_size, "seq_len": profile.seq_len, "constants": calib["constants"]}


def predict_host_operators(onnx_path: str | os.PathLike, profile, *, log=None):
    """The device latency of a candidate, mapped from its operator timings on this host."""
    import onnx

    from .latency import profile_operators

    calib = calibrate_host_operators(profile, log=log)
    host, op_ms = profile_operators(onnx_path, profile, threads=profile.predictor["host_threads"])
    return _host_operators_latency(profile, calib, host, op_ms,
                                   {n.op_type for n in onnx.load(str(onnx_path), load_external_data=False).graph.node})


def _host_operators_latency(profile, calib: dict, host, op_ms: dict[str, float], graph_ops: set[str]):
    from .latency import Latency

    c = np.array([calib["constants"][k] for k in CLASSES])
    classes = op_classes(op_ms)
    median = float(classes @ c)
    scale = median / host.median_ms if host.median_ms > 0 else 1.0
    detail = _host_operators_detail(profile, calib)
    detail.update(host_ms=round(host.median_ms, 3), host_n=host.n, host_ci95_rel=host.detail.get("ci95_rel"),
                  host_classes_ms=dict(zip(CLASSES, np.round(classes, 3).tolist())))
    if host.detail.get("host_reference"):
        ref = host.detail["host_reference"]
        detail.update(host_reference=ref, input=detail["input"] + f", scaled x{ref['factor']:.3f} to the host's nominal "
                                                                  "speed by an interleaved reference")
    quantized = sorted(graph_ops & QUANTIZED_OPS)
    if quantized:
        detail["note"] = (f"int8 graph ({', '.join(quantized)}): the anchors are fp32, so this host's int8 "
                          "speed-up is assumed to carry over to the device (an extrapolation)")
    return Latency(profile.name, median, host.spread_ms * scale, host.p10_ms * scale, host.p90_ms * scale,
                   host.n, "predicted", detail)


def repredict_host_operators(profile, stored: dict, host_median_ms: float):
    """A stored host-operators prediction again, its host class times rescaled to a new whole-model host
    median (from a side-by-side measurement), so that figures re-timed together keep their ratios."""
    from .latency import Latency

    d = dict(stored["detail"])
    k = host_median_ms / d["host_ms"]
    classes = {c: v * k for c, v in d["host_classes_ms"].items()}
    consts = d["constants"]
    median = sum(consts[c] * classes[c] for c in CLASSES)
    d.update(host_ms=round(host_median_ms, 3), host_classes_ms={c: round(v, 3) for c, v in classes.items()},
             input=d["input"] + "; re-predicted from a side-by-side host measurement")
    s = median / stored["median_ms"]
    return Latency(stored["profile"], median, stored["spread_ms"] * s, stored["p10_ms"] * s, stored["p90_ms"] * s,
                   stored["n"], "predicted", d)


# ------------------------------------------------------------------ roofline: what a graph costs
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
    from .latency import _inputs

    feeds = _inputs(session, 1, seq_len)
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


def anchor_costs(spec: dict, *, log: Callable[[str], None] | None = None) -> dict[tuple[str, int], tuple[GraphCosts, GraphCosts, int]]:
    """For each anchor and sequence length: the costs of its graph with 1 and 2 layers, and its real
    depth. Costs add up over operators and every layer is the same, so a graph of L layers costs
    c1 + (L - 1) * (c2 - c1) exactly: only two small graphs need exporting."""
    out = {}
    with tempfile.TemporaryDirectory(prefix="autocompress-anchors-") as tmp:
        for i, a in enumerate(spec["anchors"]):
            import transformers

            depth = transformers.AutoConfig.for_model(**a["config"]).num_hidden_layers
            paths = []
            for L in (1, 2):
                if log:
                    log(f"roofline anchor {a['name']}: exporting a {L}-layer graph")
                paths.append(build_anchor(a["config"], Path(tmp) / f"a{i}-{L}.onnx", num_layers=L))
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


def calibrate_roofline(spec: dict, *, log=None) -> dict:
    """Fit a roofline spec's constants from scratch (host-independent: the YAML keeps the result)."""
    return fit_roofline(spec, anchor_costs(spec, log=log))


def predict_roofline(onnx_path: str | os.PathLike, profile):
    """The device latency of a candidate's graph by the roofline, at every shape of the profile."""
    from .latency import Latency

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


def predict(onnx_path: str | os.PathLike, profile, *, log=None):
    """Predict with the profile's predictor."""
    if profile.predictor["kind"] == "host-operators":
        return predict_host_operators(onnx_path, profile, log=log)
    return predict_roofline(onnx_path, profile)
