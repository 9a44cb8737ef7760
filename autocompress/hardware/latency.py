"""Latency measurement: the only place in the project that times things.

Protocol: build the profile's ONNX Runtime session (its provider, its threads; with ``pin_threads``,
each thread pinned to its own logical CPU), feed fixed inputs of the profile's shape, warm up, then
time single runs until the 95% confidence interval of the median is within the profile's target (2%
by default) or a time cap is reached, all while holding the machine exclusively (a file lock that
training and other measurements respect). On CUDA, inputs and outputs stay on the device (I/O
binding) and every run is synchronised before the clock stops.

Host timings that feed a prediction for another device (``profile_operators``, and the side-by-side
re-timing of predicted figures), and the measurements of a CPU profile that says ``nominal_speed: true``
(laptop-cpu), are bracketed by blocks of a fixed reference workload (``HostReference``: BERT layers of
MiniLM's width; a block after the warm-up, after every 10 timed runs and at the end), and scaled by
the reference's nominal time over its median during the measurement: the speed of this shared
machine drifts (by 5-10% between windows of a few seconds, in one process or across processes), a
model and the reference drift alike, and a figure should not follow this host's mood (a phone's
least of all). The raw median and the factor are kept in the detail, and ``describe`` shows them. A
profile without the flag is measured as timed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from autocompress import locks
from autocompress.hardware.profiles import HardwareProfile

_ORT_DTYPES = {
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(bool)": np.bool_,
}
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")  # x86 and ARM (dot product)


@dataclass
class Latency:
    profile: str
    median_ms: float
    spread_ms: float  # interquartile range p75 - p25
    p10_ms: float
    p90_ms: float
    n: int
    how: str = "measured"  # "measured" or "predicted"
    detail: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Latency":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def describe(lat: dict) -> str:
    text = _describe(lat)
    d = lat.get("detail") or {}
    if not d.get("expected"):
        return text
    reach = ", ".join(f"{100 * r:.0f}%" for r in d.get("reach") or [])
    segs = ", ".join(f"{ms:.2f}" for ms in d.get("segment_ms") or [])
    return (f"expected over {d.get('expected_over', '?')} (early exit, {d.get('exit_rule', '?')}): sum of the "
            f"segments' latencies [{segs}] ms weighted by the share of inputs reaching each [{reach}]; "
            f"each segment {text}")


def _describe(lat: dict) -> str:
    """How a latency was obtained, in one line (tables, JSON, plots and model cards all use this):
    ``measured on HOST (CPU), PROVIDER, N thread(s), batch 1 x seq 128, n=40, IQR 0.31 ms`` (then, where
    known: the Ray node, the confidence interval, the other shapes) or ``predicted by MODEL, device ...,
    from ..., calibrated on ..., held-out error ...``. A predicted figure never reads as measured."""
    d = lat.get("detail") or {}
    others = "".join(f"; batch {s['batch_size']} x seq {s['seq_len']}: {s['median_ms']:.2f} ms"
                     for s in d.get("other_shapes") or [])
    if lat.get("how") == "measured":
        chip = d.get("gpu") or d.get("cpu")
        where = d.get("host", "?") + (f" ({chip})" if chip else "")
        if d.get("ray_node_id"):
            where += f", Ray node {d['ray_node_id'][:12]} offering {d.get('ray_resource', '?')}"
        pins = f" pinned to CPU(s) {','.join(map(str, d['pinned_cpus']))}" if d.get("pinned_cpus") else ""
        threads = "" if d.get("gpu") else f"{d.get('threads', '?')} thread(s){pins}, "
        text = (f"measured on {where}, {d.get('provider', '?')}, {threads}"
                f"batch {d.get('batch_size', '?')} x seq {d.get('seq_len', '?')}, n={lat.get('n')}, "
                f"IQR {lat.get('spread_ms', 0):.2f} ms")
        if d.get("ci95_rel") is not None:
            text += f", median ±{100 * d['ci95_rel']:.1f}% (95% CI)"
        text += _drift(d)
        if d.get("precision") == "fp16":
            text += ", fp16 conversion of the fp32 graph"
        return text + _before_training(d) + others
    model = d.get("predictor", "an unnamed model")
    labels = {"device": "device", "input": "from", "calibrated_on": "calibrated on", "heldout_error": "held-out error",
              "note": "note"}
    extra = "".join(f", {label} {d[k]}" for k, label in labels.items() if d.get(k))
    return f"predicted by {model}{extra}{_before_training(d)}{others}"


def _drift(d: dict) -> str:
    """How a CPU figure was scaled to the host's nominal speed (``HostReference``), if it was."""
    ref = d.get("host_reference")
    if not ref:
        return ""
    return (f", x{ref['factor']:.3f} to the host's nominal speed (interleaved reference {ref['median_ms']:.2f} ms, "
            f"nominal {ref['nominal_ms']:.2f} ms)")


def _before_training(d: dict) -> str:
    return ", obtained on the untrained structure (same graph as shipped)" if d.get("timed_before_training") else ""


def ratio(baseline: Latency, other: Latency) -> float:
    """Speed-up of `other` over `baseline` (> 1 means `other` is faster)."""
    return baseline.median_ms / other.median_ms


# Only one measurement at a time per machine, never beside training: see autocompress/locks.py.
exclusive_machine = locks.measuring
shared_machine = locks.training


# ------------------------------------------------------------------ what the machine is
def cpu_info() -> dict[str, Any]:
    """This CPU's model name, core count, and the int8 dot-product instructions its flags list (what
    makes int8 inference fast: AVX-512 VNNI, AVX-VNNI, AMX on x86; dot product / i8mm on ARM)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("model name", "hardware") and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key in ("flags", "features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count() or 1, "int8_isa": [f for f in INT8_FLAGS if f in flags]}


def _gpu_name() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "-i", "0"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "CUDA device 0"
    except (OSError, subprocess.SubprocessError, IndexError):
        return "CUDA device 0"


# ------------------------------------------------------------------ the protocol
def median_ci(times: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """Distribution-free confidence interval of the median from order statistics: the ranks
    n/2 -/+ z*sqrt(n)/2 of the sorted sample (binomial, normal approximation)."""
    x = np.sort(np.asarray(times, dtype=float))
    n = len(x)
    z = {0.9: 1.645, 0.95: 1.96, 0.99: 2.576}[confidence]
    lo = max(int(math.floor(n / 2 - z * math.sqrt(n) / 2)), 1)
    hi = min(int(math.ceil(1 + n / 2 + z * math.sqrt(n) / 2)), n)
    return float(x[lo - 1]), float(x[hi - 1])


def ci_rel(times: list[float]) -> float:
    """Half the width of the median's 95% confidence interval, relative to the median."""
    lo, hi = median_ci(times)
    return (hi - lo) / 2 / float(np.median(times))


def repeat(run_once: Callable[[], Any], *, warmup: int, min_runs: int, max_runs: int, max_seconds: float,
           ci_target: float, clock: Callable[[], float] = time.perf_counter,
           reference: Callable[[], list[float]] | None = None, reference_times: list[float] | None = None,
           reference_every: int = 10) -> tuple[list[float], str]:
    """Time ``run_once`` after ``warmup`` untimed runs until the median's 95% CI is within
    ``ci_target`` of it (at least ``min_runs``), or ``max_runs``, or ``max_seconds`` have passed.
    Returns the times (ms) and why it stopped. With ``reference`` (a block of reference runs that
    returns its times), a block runs after the warm-up, after every ``reference_every`` timed runs and
    at the end, so that the reference's times (in ``reference_times``) bracket every timed run."""
    def block() -> None:
        if reference is not None:
            reference_times.extend(reference())

    for _ in range(warmup):
        run_once()
    block()
    times: list[float] = []
    start, why = clock(), ""
    while not why:
        t0 = clock()
        run_once()
        times.append((clock() - t0) * 1e3)
        if len(times) < min_runs:
            pass
        elif ci_rel(times) <= ci_target:
            why = f"median within ±{100 * ci_target:g}% (95% CI)"
        elif len(times) >= max_runs:
            why = f"run cap ({max_runs} runs)"
        elif clock() - start > max_seconds:
            why = f"time cap ({max_seconds:g} s)"
        if len(times) % reference_every == 0 or why:
            block()
    return times, why


def _inputs(session: Any, batch: int, seq: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    shape = (batch, seq)
    feeds = {}
    for inp in session.get_inputs():
        dtype = _ORT_DTYPES.get(inp.type, np.int64)
        if len(inp.shape) == 3 and np.issubdtype(dtype, np.floating):   # a hidden state handed on (a pipeline's segment)
            value = rng.standard_normal((batch, seq, int(inp.shape[2])))
        elif inp.name == "attention_mask":
            value = np.ones(shape)
        elif inp.name == "input_ids":
            value = rng.integers(1000, 5000, size=shape)
        else:  # token_type_ids and anything else
            value = np.zeros(shape)
        feeds[inp.name] = value.astype(dtype)
    return feeds


def _runner(session: Any, feeds: dict[str, np.ndarray], provider: str) -> Callable[[], Any]:
    """One inference, ready to be timed. On CUDA the inputs are copied to the device once and the
    outputs stay there (I/O binding); ``run_with_iobinding`` synchronises the device before it returns."""
    if provider != "CUDAExecutionProvider":
        return lambda: session.run(None, feeds)
    import onnxruntime as ort

    binding = session.io_binding()
    for name, value in feeds.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value, "cuda", 0))
    for out in session.get_outputs():
        binding.bind_output(out.name, "cuda", 0)

    def run():
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()

    return run


def _stats(times_ms: list[float]) -> tuple[float, float, float, float]:
    """median, IQR, p10, p90."""
    p10, p25, p50, p75, p90 = np.percentile(times_ms, [10, 25, 50, 75, 90])
    return float(p50), float(p75 - p25), float(p10), float(p90)


def _where(provider: str, threads: int, cpus: tuple[int, ...] | None = None) -> dict[str, Any]:
    if provider == "CUDAExecutionProvider":
        return {"host": platform.node(), "gpu": _gpu_name(), "provider": provider, "threads": threads}
    info = cpu_info()
    return {"host": platform.node(), "cpu": info["cpu"], "cores": info["cores"], "int8_isa": info["int8_isa"],
            "provider": provider, "threads": threads, **({"pinned_cpus": list(cpus)} if cpus else {})}


@contextmanager
def pinned(cpus: tuple[int, ...] | None) -> Iterator[None]:
    """The calling thread on ``cpus[0]`` meanwhile (sessions made with ``cpus`` pin their pool's threads
    to the others); nothing without ``cpus``. Its former affinity is restored after."""
    if not cpus:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpus[0]})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


# ------------------------------------------------------------------ host speed: the interleaved reference
REFERENCE_CONFIG = {"model_type": "bert", "hidden_size": 384, "num_attention_heads": 12, "intermediate_size": 1536}
REFERENCE_VERSION = 1


def reference_layers(threads: int) -> int:
    """Layers of the reference at ``threads`` threads. On one thread, one layer (3.7 ms here) followed the
    models best; on two, a one-layer run (2.3 ms) is so short that the thread pool's wake-ups weigh in it
    as they do not in a model's, and three layers followed them better: five processes on this host,
    each timing MiniLM fp32 / its int8 / the references in turns, spread 1.034 / 1.044 (max/min of model
    over reference) with one layer, 1.015 / 1.025 with three, against 1.052 / 1.061 as timed; on one
    thread, 1.008 / 1.024 with one layer, 1.022 / 1.031 with three."""
    return 1 if threads <= 1 else 3


@dataclass(frozen=True)
class HostReference:
    """A fixed workload timed in blocks between the timed runs of a CPU measurement: ``layers`` BERT
    layers of MiniLM's width (random weights; ``reference_layers``), batch 1 x seq 128, on the
    measurement's threads. ``nominal_ms`` is its median on this host, timed once per CPU, ONNX Runtime
    version and thread count, and cached with the predictors' calibrations (a re-timing would move
    every scaled figure by its own noise)."""

    path: Path
    threads: int
    nominal_ms: float
    date: str
    layers: int = 1
    cpus: tuple[int, ...] | None = None     # pinned as the measurements it brackets (timed so too)

    def runner(self) -> Callable[[], Any]:
        from .profiles import ort_session

        session = ort_session(self.path, threads=self.threads, cpus=self.cpus)
        return _runner(session, _inputs(session, 1, 128), "CPUExecutionProvider")

    def blocks(self, runs: int = 8, settle: int = 3) -> Callable[[], list[float]]:
        """A block of ``runs`` reference runs, timed after the first ``settle``: what ran before (a large
        fp32 model drops the clock for a while, and has the caches) slows the first runs after it, by
        a different amount for each model; the settled runs measure the machine, not its last model."""
        run = self.runner()

        def block() -> list[float]:
            out = []
            for i in range(runs):
                t0 = time.perf_counter()
                run()
                if i >= settle:
                    out.append((time.perf_counter() - t0) * 1e3)
            return out

        return block

    def factor(self, reference_times: list[float]) -> float:
        """What scales a figure timed beside these reference runs to this host's nominal speed."""
        return self.nominal_ms / float(np.median(reference_times))

    def detail(self, reference_times: list[float], raw_median_ms: float) -> dict:
        return {"raw_median_ms": round(raw_median_ms, 4),
                "host_reference": {"model": f"{self.layers} BERT layer(s) (hidden 384, 12 heads), batch 1 x seq 128",
                                   "nominal_ms": round(self.nominal_ms, 4),
                                   "median_ms": round(float(np.median(reference_times)), 4),
                                   "factor": round(self.factor(reference_times), 4)}}


def host_reference(threads: int, cpus: tuple[int, ...] | None = None) -> HostReference:
    """This host's reference at ``threads`` threads (pinned to ``cpus`` if given): built and timed on first
    use, then read from the cache."""
    import onnxruntime as ort

    from . import predictor

    info, layers = cpu_info(), reference_layers(threads)
    spec = {"v": REFERENCE_VERSION, "cpu": info["cpu"], "isa": info["int8_isa"], "ort": ort.__version__,
            "threads": threads, "config": REFERENCE_CONFIG}
    if layers != 1:      # (the one-layer reference's key predates the field: the mobile calibrations use it)
        spec["layers"] = layers
    if cpus:
        spec["cpus"] = list(cpus)
    blob = json.dumps(spec, sort_keys=True)
    key = hashlib.sha256(blob.encode()).hexdigest()[:16]
    folder = predictor.calibration_dir()
    onnx_path, meta = folder / f"host-reference-{key}.onnx", folder / f"host-reference-{key}.json"
    with predictor.locked(meta):
        if meta.is_file() and onnx_path.is_file():
            d = json.loads(meta.read_text())
            return HostReference(onnx_path, threads, d["nominal_ms"], d["date"], layers, cpus)
        if not onnx_path.is_file():
            tmp = predictor.build_anchor(REFERENCE_CONFIG, folder / f"host-reference-{key}.tmp.onnx", num_layers=layers)
            tmp.replace(onnx_path)
        ref = HostReference(onnx_path, threads, 0.0, time.strftime("%Y-%m-%d"), layers, cpus)
        with exclusive_machine(), pinned(cpus):
            times, _ = repeat(ref.runner(), warmup=20, min_runs=300, max_runs=2000, max_seconds=15.0, ci_target=0.005)
        ref = HostReference(onnx_path, threads, float(np.median(times)), ref.date, layers, cpus)
        meta.write_text(json.dumps({"nominal_ms": ref.nominal_ms, "n": len(times), "date": ref.date, "cpu": info["cpu"],
                                    "threads": threads, "layers": layers, "cpus": list(cpus) if cpus else None,
                                    "ci95_rel": round(ci_rel(times), 4)},
                                   indent=2))
        return ref


def _bracketing(enabled: bool, provider: str, threads: int,
                cpus: tuple[int, ...] | None) -> tuple[HostReference | None, Callable[[], list[float]] | None]:
    """The host reference and its block runner where a CPU measurement is to be scaled; (None, None) otherwise."""
    ref = host_reference(threads, cpus) if enabled and provider == "CPUExecutionProvider" else None
    return ref, (ref.blocks() if ref else None)


def measure_latency(
    onnx_path: str | os.PathLike,
    profile: HardwareProfile,
    *,
    warmup: int = 5,
    min_runs: int | None = None,
    max_runs: int = 1000,
    max_seconds: float | None = None,
    ci_target: float | None = None,
    threads: int | None = None,
    provider: str | None = None,
    drift_reference: bool | None = None,
) -> Latency:
    """Latency of an ONNX model on `profile`'s provider and threads, at every shape the profile reports
    (the primary one in the figure, the others in ``detail['other_shapes']``), holding the machine alone.
    With ``drift_reference`` (CPU only; by default the profile's ``nominal_speed``), scaled to the host's
    nominal speed by the bracketing reference."""
    drift_reference = profile.nominal_speed if drift_reference is None else drift_reference
    provider = provider or profile.provider
    threads = threads or profile.threads
    min_runs = profile.min_runs if min_runs is None else min_runs
    max_seconds = profile.max_seconds if max_seconds is None else max_seconds
    ci_target = profile.ci_target if ci_target is None else ci_target
    cpus = profile.cpus(threads) if provider == "CPUExecutionProvider" else None
    ref, reference = _bracketing(drift_reference, provider, threads, cpus)
    session = profile.session(onnx_path, threads=threads, provider=provider, cpus=cpus)
    results = []
    with exclusive_machine(), pinned(cpus):
        for batch, seq in profile.shapes:
            run = _runner(session, _inputs(session, batch, seq), provider)
            ref_times: list[float] = []
            times, stop = repeat(run, warmup=warmup, min_runs=min_runs, max_runs=max_runs, max_seconds=max_seconds,
                                 ci_target=ci_target, reference=reference, reference_times=ref_times)
            results.append((batch, seq, times, ref_times, stop))
    del session, reference
    (batch, seq, times, ref_times, stop), rest = results[0], results[1:]
    extra = {"warmup": warmup, "protocol": f"sequential; stopped at: {stop}", "ci95_rel": round(ci_rel(times), 4)}
    if rest:
        extra["other_shapes"] = [{"batch_size": b, "seq_len": s, "median_ms": _stats(t)[0] * (ref.factor(r) if ref else 1),
                                  "n": len(t), "ci95_rel": round(ci_rel(t), 4)} for b, s, t, r, _ in rest]
    return _latency(profile, times, provider, threads, extra, ref, ref_times, cpus)


def _latency(profile: HardwareProfile, times_ms: list[float], provider: str, threads: int, extra: dict,
             ref: HostReference | None = None, ref_times: list[float] | None = None,
             cpus: tuple[int, ...] | None = None) -> Latency:
    """The figure from a run's times: as timed, or (with the reference's times) scaled to nominal speed."""
    factor = ref.factor(ref_times) if ref else 1.0
    median, iqr, p10, p90 = (v * factor for v in _stats(times_ms))
    detail = {**_where(provider, threads, cpus), "batch_size": profile.batch_size, "seq_len": profile.seq_len, **extra}
    if ref:
        detail.update(ref.detail(ref_times, median / factor))
    return Latency(profile.name, median, iqr, p10, p90, len(times_ms), "measured", detail)


def measure_side_by_side(
    onnx_paths: dict[Any, str | os.PathLike],
    profile: HardwareProfile,
    *,
    warmup: int = 5,
    rounds: int = 3,
    runs_per_round: int = 10,
    threads: int | None = None,
    drift_reference: bool | None = None,
) -> dict[Any, Latency]:
    """Time several models in interleaved rounds (A B C, A B C, ...), so that slow phases of a shared
    machine hit them all alike and their ratios hold; with ``drift_reference`` (CPU only), each turn is
    bracketed by blocks of the host reference, which scale each model's figure for the drift during its
    own turns (by default where the profile says ``nominal_speed``). One model's session lives at a time,
    and each turn warms up again. The primary shape only. Returns one Latency per key."""
    threads = threads or profile.threads
    drift_reference = profile.nominal_speed if drift_reference is None else drift_reference
    cpus = profile.cpus(threads) if profile.provider == "CPUExecutionProvider" else None
    ref, reference = _bracketing(drift_reference, profile.provider, threads, cpus)
    times: dict[Any, list[float]] = {k: [] for k in onnx_paths}
    ref_times: dict[Any, list[float]] = {k: [] for k in onnx_paths}
    with exclusive_machine(), pinned(cpus):
        for _ in range(rounds):
            for k, path in onnx_paths.items():
                session = profile.session(path, threads=threads, cpus=cpus)
                run = _runner(session, _inputs(session, profile.batch_size, profile.seq_len), profile.provider)
                times[k] += repeat(run, warmup=warmup, min_runs=runs_per_round, max_runs=runs_per_round,
                                   max_seconds=0.0, ci_target=0.0, reference=reference, reference_times=ref_times[k])[0]
                del run, session
    extra = {"warmup": warmup, "protocol": f"side by side with {len(onnx_paths)} models, {rounds} interleaved rounds"}
    return {k: _latency(profile, t, profile.provider, threads, extra, ref, ref_times[k], cpus) for k, t in times.items()}


# ------------------------------------------------------------------ per operator (what predictors map from)
def profile_operators(onnx_path: str | os.PathLike, profile: HardwareProfile, *, threads: int = 1,
                      warmup: int = 5, min_runs: int | None = None, max_runs: int = 1000,
                      max_seconds: float | None = None, ci_target: float | None = None,
                      drift_reference: bool = True) -> tuple[Latency, dict[str, float]]:
    """Time an ONNX model on this host's CPU with ONNX Runtime's profiler on: the whole-run latency
    (same protocol as ``measure_latency``) and, per operator type, the median over the timed runs of
    the time its kernels took in one run (ms). Predictors map these to a device that is not here, so
    by default both are scaled to the host's nominal speed (``HostReference``): a phone's latency does
    not change with how busy this host happens to be, and the anchors were timed at that speed too."""
    import onnxruntime as ort

    min_runs = profile.min_runs if min_runs is None else min_runs
    cpus = profile.cpus(threads)
    ref, reference = _bracketing(drift_reference, "CPUExecutionProvider", threads, cpus)
    ref_times: list[float] = []
    max_seconds = profile.max_seconds if max_seconds is None else max_seconds
    ci_target = profile.ci_target if ci_target is None else ci_target
    with tempfile.TemporaryDirectory(prefix="autocompress-ortprof-") as tmp:
        opts = ort.SessionOptions()
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "ort")
        session = profile.session(onnx_path, threads=threads, provider="CPUExecutionProvider", options=opts, cpus=cpus)
        feeds = _inputs(session, profile.batch_size, profile.seq_len)
        with exclusive_machine(), pinned(cpus):
            times, stop = repeat(lambda: session.run(None, feeds), warmup=warmup, min_runs=min_runs,
                                 max_runs=max_runs, max_seconds=max_seconds, ci_target=ci_target,
                                 reference=reference, reference_times=ref_times)
        events = json.loads(Path(session.end_profiling()).read_text())
        del session, reference
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    timed = runs[-len(times):]                       # the warm-up runs come first
    per_run: list[dict[str, float]] = [{} for _ in timed]
    starts = [s for s, _ in timed]
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        i = int(np.searchsorted(starts, e["ts"], side="right")) - 1
        if i >= 0 and e["ts"] <= timed[i][1]:
            op = e.get("args", {}).get("op_name", "?")
            per_run[i][op] = per_run[i].get(op, 0.0) + e["dur"] / 1e3
    ops = sorted({op for r in per_run for op in r})
    factor = ref.factor(ref_times) if ref else 1.0
    op_ms = {op: factor * float(np.median([r.get(op, 0.0) for r in per_run])) for op in ops}
    lat = _latency(profile, times, "CPUExecutionProvider", threads,
                   {"warmup": warmup, "protocol": f"ONNX Runtime profiler on; stopped at: {stop}",
                    "ci95_rel": round(ci_rel(times), 4)}, ref, ref_times, cpus)
    return lat, op_ms


def time_call(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """Run ``fn`` once: (its result, wall-clock milliseconds). The latency of one call as a user meets it
    (``autocompress predict``), not a measurement under the protocol above."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, (time.perf_counter() - t0) * 1e3
