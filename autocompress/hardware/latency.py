"""Latency measurement: the only place in the project that times things.

Protocol: build the profile's ONNX Runtime session, feed fixed inputs of the profile's shape,
warm up, then time single runs until the interquartile spread is small relative to the median
(or a run/time cap is reached), all while holding the machine exclusively.
"""

from __future__ import annotations

import fcntl
import os
import platform
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from autocompress.hardware.profiles import HardwareProfile

_ORT_DTYPES = {
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(bool)": np.bool_,
}


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
    """How a latency was obtained, in one line (tables, JSON, plots and model cards all use this):
    ``measured on HOST (CPU), PROVIDER, N thread(s), n=40, IQR 0.31 ms`` or ``predicted by MODEL ...``."""
    d = lat.get("detail") or {}
    if lat.get("how") == "measured":
        where = d.get("host", "?") + (f" ({d['cpu']})" if d.get("cpu") else "")
        return (f"measured on {where}, {d.get('provider', '?')}, {d.get('threads', '?')} thread(s), "
                f"batch {d.get('batch_size', '?')} x seq {d.get('seq_len', '?')}, n={lat.get('n')}, "
                f"IQR {lat.get('spread_ms', 0):.2f} ms")
    model = d.get("predictor", "an unnamed model")
    extra = "".join(f", {k.replace('_', ' ')} {d[k]}" for k in ("device", "calibrated_on", "heldout_error") if d.get(k))
    return f"predicted by {model}{extra}"


def ratio(baseline: Latency, other: Latency) -> float:
    """Speed-up of `other` over `baseline` (> 1 means `other` is faster)."""
    return baseline.median_ms / other.median_ms


def lock_file() -> Path:
    return Path(os.environ.get("AUTOCOMPRESS_LOCK_FILE") or Path(tempfile.gettempdir()) / "autocompress-machine.lock")


@contextmanager
def _flock(mode: int) -> Iterator[None]:
    path = lock_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh.fileno(), mode)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


@contextmanager
def exclusive_machine() -> Iterator[None]:
    """Hold the machine alone (for measuring): waits for every shared/exclusive holder."""
    with _flock(fcntl.LOCK_EX):
        yield


@contextmanager
def shared_machine() -> Iterator[None]:
    """Hold the machine for work that may run side by side (training/evaluation), but not beside a measurement."""
    with _flock(fcntl.LOCK_SH):
        yield


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _inputs(session: Any, profile: HardwareProfile) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    shape = (profile.batch_size, profile.seq_len)
    feeds = {}
    for inp in session.get_inputs():
        dtype = _ORT_DTYPES.get(inp.type, np.int64)
        if inp.name == "attention_mask":
            value = np.ones(shape)
        elif inp.name == "input_ids":
            value = rng.integers(1000, 5000, size=shape)
        else:  # token_type_ids and anything else
            value = np.zeros(shape)
        feeds[inp.name] = value.astype(dtype)
    return feeds


def _stats(times_ms: list[float]) -> tuple[float, float, float, float]:
    """median, IQR, p10, p90."""
    p10, p25, p50, p75, p90 = np.percentile(times_ms, [10, 25, 50, 75, 90])
    return float(p50), float(p75 - p25), float(p10), float(p90)


def measure_latency(
    onnx_path: str | os.PathLike,
    profile: HardwareProfile,
    *,
    warmup: int = 5,
    min_runs: int = 20,
    max_runs: int = 200,
    max_seconds: float = 4.0,
    rel_spread: float = 0.05,
) -> Latency:
    """Measure single-run latency of an ONNX model on `profile`, holding the machine exclusively."""
    session = profile.session(onnx_path)
    feeds = _inputs(session, profile)
    times_ms: list[float] = []
    with exclusive_machine():
        for _ in range(warmup):
            session.run(None, feeds)
        start = time.perf_counter()
        while True:
            t0 = time.perf_counter()
            session.run(None, feeds)
            times_ms.append((time.perf_counter() - t0) * 1e3)
            n = len(times_ms)
            if n < min_runs:
                continue
            median, iqr, _, _ = _stats(times_ms)
            if iqr <= rel_spread * median or n >= max_runs or time.perf_counter() - start > max_seconds:
                break
    return _latency(profile, times_ms, {"warmup": warmup, "protocol": "sequential"})


def _latency(profile: HardwareProfile, times_ms: list[float], extra: dict) -> Latency:
    median, iqr, p10, p90 = _stats(times_ms)
    detail = {
        "host": platform.node(),
        "cpu": _cpu_model(),
        "threads": profile.threads,
        "provider": profile.provider,
        "batch_size": profile.batch_size,
        "seq_len": profile.seq_len,
        **extra,
    }
    return Latency(profile.name, median, iqr, p10, p90, len(times_ms), "measured", detail)


def measure_side_by_side(
    onnx_paths: dict[Any, str | os.PathLike],
    profile: HardwareProfile,
    *,
    warmup: int = 5,
    rounds: int = 3,
    runs_per_round: int = 10,
) -> dict[Any, Latency]:
    """Time several models in interleaved rounds (A B C, A B C, ...), so that slow phases of a shared
    machine hit them all alike and their ratios hold. Only one session lives at a time (an idle
    session's thread pool still spins for a moment and would steal the cores from the next one), and
    each turn warms up again. Returns one Latency per key."""
    times: dict[Any, list[float]] = {k: [] for k in onnx_paths}
    with exclusive_machine():
        for _ in range(rounds):
            for k, path in onnx_paths.items():
                session = profile.session(path)
                feeds = _inputs(session, profile)
                for _ in range(warmup):
                    session.run(None, feeds)
                for _ in range(runs_per_round):
                    t0 = time.perf_counter()
                    session.run(None, feeds)
                    times[k].append((time.perf_counter() - t0) * 1e3)
                del session
    extra = {"warmup": warmup, "protocol": f"side by side with {len(onnx_paths)} models, {rounds} interleaved rounds"}
    return {k: _latency(profile, t, extra) for k, t in times.items()}


def time_call(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """Run ``fn`` once: (its result, wall-clock milliseconds). The latency of one call as a user meets it
    (``autocompress predict``), not a measurement under the protocol above."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, (time.perf_counter() - t0) * 1e3
