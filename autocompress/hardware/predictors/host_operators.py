"""``host-operators``: the mobile-class CPU, predicted from operator timings on this host.

What is measured here is the candidate's graph on this host's CPU with ONNX Runtime's profiler, split
by operator class: dense matrix products (``matmul``), normalisation/activation/softmax (``norm_act``,
cheap on x86 with ONNX Runtime's fused kernels, dear on a phone) and everything else (``other``). The
device's latency is mapped as
``device_ms = c_matmul * host_matmul + c_norm_act * host_norm_act + c_other * host_other`` with
non-negative constants fitted (least squares on relative error) to published measurements of
reference architectures on the device (the anchors, with sources, in the profile's YAML). The anchors
are built here from their configs with random weights (latency does not depend on weights), exported
like any candidate and profiled on this host: the map is a property of this host and is calibrated
once per host and cached (``paths.calibration_dir()``). Its held-out error is leave-one-out over the
anchors. A fit whose held-out error is far above what this map reaches on a steady host is calibrated
again, and refused (used by this process only, with a warning in its figures) if it stays there. A
calibration records the host reference its timings were scaled to. When that reference is re-established
(``hardware.reference``), the map is re-based instead of calibrated again. Host timings are scaled by
``nominal / interleaved median``, and the constants are a non-negative least-squares fit with no intercept.
A new nominal therefore multiplies every anchor's scaled times by ``new / old``, and the refit constants
by ``old / new``, with the same held-out errors. So ``rebase`` is exact, and the nominal cancels out of
every prediction: ``c * raw * nominal / median``. The same holds for anchors scaled to different
references: they are re-based onto the last one.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ... import fileio, locks, paths
from .. import latency, reference
from ..figure import Latency
from ..host import cpu_info
from .base import QUANTIZED_OPS, Log, Predictor, PredictorError, anchor_points

CALIBRATION_VERSION = 3   # 2: host timings scaled to the host's nominal speed; 3: to an established one, recorded
# A fit is refused above either of these held-out (leave-one-out) errors. Refits on this host gave a mean of
# 18-30% (max 40-69%); the one calibrated while the machine was busy, 36% (max 83%): each threshold sits
# between, nearer the poisoned value, so that a usual fit is not refused for its noise.
FIT_MEAN_MAX, FIT_MAX_MAX, REDO = 0.34, 0.80, 2     # REDO: calibrations again (the best kept) before refusing
MATMUL_OPS = frozenset({"MatMul", "FusedMatMul", "Gemm", "FusedGemm", "MatMulInteger", "MatMulIntegerToFloat",
                        "DynamicQuantizeMatMul", "QGemm", "QLinearMatMul", "Attention", "QAttention",
                        "MultiHeadAttention", "Conv", "ConvInteger", "QLinearConv", "MatMulNBits"})
NORM_ACT_OPS = frozenset({"LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization",
                          "SkipSimplifiedLayerNormalization", "EmbedLayerNormalization", "BiasGelu", "Gelu",
                          "FastGelu", "QuickGelu", "Erf", "Tanh", "Sigmoid", "Softmax", "QLinearSoftmax"})
CLASSES = ("matmul", "norm_act", "other")


class HostOperators(Predictor):
    kind = "host-operators"

    @classmethod
    def check(cls, spec: dict) -> dict:
        spec = dict(spec)
        threads = spec.setdefault("host_threads", 1)
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise PredictorError(f"'host_threads' must be a positive integer, got {threads!r}")
        return spec

    def predict(self, onnx_path: str | os.PathLike, log: Log | None = None) -> Latency:
        return predict(onnx_path, self.profile, log=log)

    def prepare(self, log: Log | None = None, fresh: bool = False) -> None:
        calibrate(at_anchors(self.profile), log=log, fresh=fresh)

    def calibration(self, log: Log | None = None, fresh: bool = False) -> dict:
        """The map's constants and anchors on this host (calibrated now if not cached)."""
        return calibrate(at_anchors(self.profile), log=log, fresh=fresh)

    def repredict_side_by_side(self, srcs: dict[Any, os.PathLike], stored: dict[Any, dict]) -> dict[Any, Latency]:
        """The stored predictions redone from one side-by-side host measurement (their operator mix from
        the ``stored`` figure); graphs with no stored host-operators prediction are left out."""
        keys = [k for k in srcs if stored.get(k, {}).get("how") == "predicted" and "host_ms" in stored[k]["detail"]]
        # as the predictions' host timings: scaled to the host's nominal speed; one thread is noisier per run
        # than the profiles measured here, so twice the rounds
        host = latency.measure_side_by_side({k: srcs[k] for k in keys}, self.profile,
                                            threads=self.spec["host_threads"], rounds=6, drift_reference=True)
        return {k: repredict(self.profile, stored[k], host[k].median_ms) for k in keys}

    def host_threads(self) -> int:
        return self.spec["host_threads"]

    def describe_state(self) -> str:
        cal = cached_calibration(self.profile)
        if cal is None:
            return "not yet calibrated on this host (done on first use, a few minutes, then cached)"
        state = (f"calibrated on this host on {cal['date']} on {len(cal['anchors'])} published figures, "
                 f"leave-one-out mean |error| {100 * cal['loo_mean_abs_error']:.0f}% "
                 f"(max {100 * cal['loo_max_abs_error']:.0f}%)")
        used, ref = cal.get("host_reference"), reference.cached(*_reference_threads(self.profile))
        if used and (ref is None or ref.id != used["id"]):
            state += "; fitted at an older host reference: re-based to the new one on first use (no new timing)"
        return state

    def check_state(self, references: dict) -> tuple[str, str]:
        cal = cached_calibration(self.profile)
        if cal is None:
            return "none", "not calibrated on this host yet (done on first use)"
        used, ref = cal.get("host_reference") or {}, reference.cached(*_reference_threads(self.profile))
        fit = (f"fitted on {cal['date']}, leave-one-out mean |error| {100 * cal['loo_mean_abs_error']:.0f}% "
               f"(max {100 * cal['loo_max_abs_error']:.0f}%), at the host reference {used.get('id', '?')}")
        if ref is not None and ref.id != used.get("id"):
            fit += f" (re-based to the host reference {ref.id} on use)"
        status = references.get(_reference_threads(self.profile), "none")
        if status == "does not hold":
            return status, f"{fit}: does NOT hold: its host reference does not"
        if status != "holds":
            return status, f"{fit}: {status}: as its host reference is"
        return "holds", f"{fit}: holds (its host reference holds)"


# ------------------------------------------------------------------ fitting
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


# ------------------------------------------------------------------ calibration, cached per host
def host_key(profile) -> str:
    """What a host-operators calibration depends on: this CPU, ONNX Runtime's version, the spec."""
    import onnxruntime as ort

    info = cpu_info()
    spec = profile.predictor
    blob = json.dumps({"v": CALIBRATION_VERSION, "cpu": info["cpu"], "isa": info["int8_isa"], "ort": ort.__version__,
                       "threads": spec["host_threads"], "anchors": spec["anchors"], "shape": profile.shapes[0],
                       **({"pinned": True} if profile.pin_threads else {})},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def calibration_path(profile) -> Path:
    return paths.calibration_dir() / f"{profile.name}-{host_key(profile)}.json"


def cached_calibration(profile) -> dict | None:
    path = calibration_path(profile)
    return json.loads(path.read_text()) if path.is_file() else None


_PROCESS_ONLY: dict[str, dict] = {}       # calibration path -> a calibration refused (not cached)


def _reference_threads(profile) -> tuple[int, tuple[int, ...] | None]:
    """The threads (and CPUs) of the host reference that scales this predictor's host timings."""
    threads = profile.predictor["host_threads"]
    return threads, profile.cpus(threads)


def calibrate(profile, *, log: Log | None = None, fresh: bool = False) -> dict:
    """The host-operators map for ``profile`` on this host: from the cache (where it was fitted at the
    host's reference of now), else calibrated now (each anchor built from its config, exported, profiled
    here), again while its held-out error is above FIT_MEAN_MAX / FIT_MAX_MAX (REDO times, the best
    kept), and cached; refused (not cached, kept for this process, its figures warn) where the best is
    still above, or its timings were scaled to a provisional reference. One process at a time."""
    path = calibration_path(profile)
    with locks.file_lock(path):
        if not fresh:
            calib = _usable(profile, path, log)
            if calib is not None:
                return calib
        best, trouble = None, ""
        for attempt in range(1 + REDO):
            calib = _calibrate_once(profile, log)
            if best is None or (not _trouble(calib), -calib["loo_mean_abs_error"]) > \
                    (not _trouble(best), -best["loo_mean_abs_error"]):
                best = calib
            trouble = _trouble(best)
            if not trouble:
                break
            if log and attempt < REDO:
                log(f"{profile.name}: {trouble}: calibrating again ({attempt + 2}/{1 + REDO})")
        best["attempts"] = attempt + 1
        if trouble:
            best["refused"] = trouble
            _PROCESS_ONLY[str(path)] = best
            if log:
                log(f"{profile.name}: calibration refused ({trouble}): not cached, used by this process only")
            return best
        _PROCESS_ONLY.pop(str(path), None)
        fileio.write_json(path, best)
        return best


def _usable(profile, path: Path, log: Log | None) -> dict | None:
    """The cached calibration (or this process's refused one), re-based to the host's reference of now
    when it was fitted at an older one (``rebase``: exact, no new timing; the cache is updated); None
    where there is none."""
    cached = path.is_file()
    calib = json.loads(path.read_text()) if cached else _PROCESS_ONLY.get(str(path))
    if calib is None or not calib.get("host_reference"):       # (none recorded: written by hand)
        return calib
    used, ref = calib["host_reference"], latency.host_reference(*_reference_threads(profile))
    if ref.id == used["id"]:
        return calib
    calib = rebase(calib, ref)
    if log:
        log(f"{profile.name}: its map was fitted to host timings scaled to the reference {used['id']} (nominal "
            f"{used['nominal_ms']:.2f} ms); this host's is now {ref.id} ({ref.nominal_ms:.2f} ms): constants "
            f"re-based by x{used['nominal_ms'] / ref.nominal_ms:.3f} (exact: the map is linear in the scaled timings)")
    if cached and not _trouble(calib):
        fileio.write_json(path, calib)
    else:
        _PROCESS_ONLY[str(path)] = calib
    return calib


def _scale_row(row: dict, k: float, was: str) -> dict:
    """An anchor's host timings multiplied by ``k`` (scaled to another nominal), saying from which."""
    return dict(row, host_ms=round(row["host_ms"] * k, 3), rebased_from=was,
                host_classes_ms={c: round(v * k, 3) for c, v in row["host_classes_ms"].items()},
                **({"host_ops_ms": {o: round(v * k, 3) for o, v in row["host_ops_ms"].items()}}
                   if "host_ops_ms" in row else {}))


def rebase(calib: dict, ref) -> dict:
    """``calib`` as if its anchors' timings had been scaled to the reference ``ref`` (``id``, ``nominal_ms``,
    ``established``): timings x new/old nominal, constants x old/new; fitted values and held-out errors
    unchanged (see the module's docstring)."""
    used = calib["host_reference"]
    k = ref.nominal_ms / used["nominal_ms"]
    return dict(calib, constants={c: round(v / k, 5) for c, v in calib["constants"].items()},
                anchors=[_scale_row(r, k, used["id"]) for r in calib["anchors"]],
                host_reference={"id": ref.id, "nominal_ms": round(ref.nominal_ms, 4),
                                "established": bool(ref.established and used.get("established", True)),
                                "rebased_from": used["id"]})


def _trouble(calib: dict) -> str:
    """Why a calibration may not be cached ("" where it may)."""
    if calib["loo_mean_abs_error"] > FIT_MEAN_MAX or calib["loo_max_abs_error"] > FIT_MAX_MAX:
        return (f"its leave-one-out mean |error| {100 * calib['loo_mean_abs_error']:.0f}% (max "
                f"{100 * calib['loo_max_abs_error']:.0f}%) is above {100 * FIT_MEAN_MAX:.0f}% (max "
                f"{100 * FIT_MAX_MAX:.0f}%), what this map reaches on a steady host")
    ref = calib.get("host_reference")
    if ref is None:
        return "its anchors were scaled to different host references (one was re-established meanwhile)"
    if ref.get("established") is False:
        return "its host timings were scaled to a provisional host reference (the host was unsteady)"
    return ""


def _calibrate_once(profile, log: Log | None) -> dict:
    from ... import export                        # (torch: imported when anchors are built)

    spec = profile.predictor
    points = anchor_points(spec)
    if any((seq, b) != (profile.seq_len, profile.batch_size) for _, seq, b, _ in points):
        raise PredictorError(f"profile {profile.name}: host-operators anchors must be at the profile's shape "
                             f"(batch {profile.batch_size}, seq {profile.seq_len})")
    t0 = time.time()
    rows, refs, row_refs = [], {}, []
    with tempfile.TemporaryDirectory(prefix="autocompress-anchors-") as tmp:
        for i, (anchor, _, _, device_ms) in enumerate(points):
            if log:
                log(f"calibrating {profile.name} on this host: anchor {i + 1}/{len(points)} {anchor['name']}")
            onnx_path = export.export_anchor(anchor["config"], Path(tmp) / f"anchor{i}.onnx")
            lat, op_ms = latency.profile_operators(onnx_path, profile, threads=spec["host_threads"])
            onnx_path.unlink()
            ref = lat.detail.get("host_reference") or {}
            refs[ref.get("id")] = {"id": ref.get("id"), "nominal_ms": ref.get("nominal_ms"),
                                   "established": ref.get("established", True)}
            row_refs.append(ref.get("id"))
            rows.append({"name": anchor["name"], "source": anchor["source"], "device_ms": device_ms,
                         "host_ms": round(lat.median_ms, 3), "host_ci95_rel": lat.detail["ci95_rel"],
                         "host_classes_ms": dict(zip(CLASSES, np.round(op_classes(op_ms), 3).tolist())),
                         "host_ops_ms": {k: round(v, 3) for k, v in op_ms.items()}})
    last = refs[row_refs[-1]] if row_refs else None
    if len(refs) > 1 and all(r["nominal_ms"] for r in refs.values()):
        # the reference was re-established between anchors: each anchor's timings re-based onto the last one
        rows = [_scale_row(row, last["nominal_ms"] / refs[rid]["nominal_ms"], rid) if rid != last["id"] else row
                for row, rid in zip(rows, row_refs)]
        last = dict(last, established=all(r["established"] for r in refs.values()))
    elif len(refs) > 1:
        last = None
    calib = fit_calibration(rows)
    calib.update(profile=profile.name, predictor=spec["name"], host_key=host_key(profile),
                 cpu=cpu_info()["cpu"], host_threads=spec["host_threads"], host_reference=last,
                 date=time.strftime("%Y-%m-%d"), seconds=round(time.time() - t0, 1))
    return calib


# ------------------------------------------------------------------ predicting
def _detail(profile, calib: dict) -> dict:
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
            "batch_size": profile.batch_size, "seq_len": profile.seq_len, "constants": calib["constants"],
            **({"warning": f"calibration refused ({calib['refused']}): not cached, used by this process only"}
               if calib.get("refused") else {})}


def predict(onnx_path: str | os.PathLike, profile, *, log: Log | None = None) -> Latency:
    """The device latency of a candidate, mapped from its operator timings on this host."""
    import onnx

    calib = calibrate(at_anchors(profile), log=log)
    host, op_ms = latency.profile_operators(onnx_path, profile, threads=profile.predictor["host_threads"])
    lat = from_host_timings(profile, calib, host, op_ms,
                            {n.op_type for n in onnx.load(str(onnx_path), load_external_data=False).graph.node})
    (_, seq, batch, _), *_ = anchor_points(profile.predictor)
    if (batch, seq) != (profile.batch_size, profile.seq_len):
        lat.detail["shape_note"] = (f"the anchors are at batch {batch} x seq {seq}: the per-class constants fitted "
                                    f"there are applied to this host's operator times at batch "
                                    f"{profile.batch_size} x seq {profile.seq_len} (an extrapolation)")
    return lat


def at_anchors(profile):
    """The profile at its anchors' shape (where its calibration was fitted; one shape for all anchors):
    a profile asked for another length (``at_length``) predicts with the calibration of its own shape."""
    (_, seq, batch, _), *_ = anchor_points(profile.predictor)
    if (batch, seq) == (profile.batch_size, profile.seq_len):
        return profile
    from dataclasses import replace

    return replace(profile, batch_size=batch, seq_len=seq, extra_shapes=())


def from_host_timings(profile, calib: dict, host: Latency, op_ms: dict[str, float], graph_ops: set[str]) -> Latency:
    """The device figure from the host's whole-run figure and its per-operator times (``profile_operators``)."""
    c = np.array([calib["constants"][k] for k in CLASSES])
    classes = op_classes(op_ms)
    median = float(classes @ c)
    scale = median / host.median_ms if host.median_ms > 0 else 1.0
    detail = _detail(profile, calib)
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


def repredict(profile, stored: dict, host_median_ms: float) -> Latency:
    """A stored host-operators prediction again, its host class times rescaled to a new whole-model host
    median (from a side-by-side measurement), so that figures re-timed together keep their ratios."""
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
