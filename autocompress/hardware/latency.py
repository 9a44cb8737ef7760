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
profile without the flag is measured as timed. The nominal is established only when windows of reference
runs are steady, and checked against each measurement's interleaved median: ``reference`` keeps that
record (the policy, the cache file, its history); the timing stays here.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import fileio, locks, pipeline
from . import reference as book
from .figure import Latency
from .host import Share, pinned, unpinned, where
from .reference import HostReference, ci_rel, median_ci  # noqa: F401  (re-exported: the protocol's statistics)

Profile = Any    # a ``profiles.HardwareProfile``: received, never imported (only its attributes are read here)
_ORT_DTYPES = {
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(bool)": np.bool_,
}
# Only one measurement at a time per machine, never beside training (locks.measuring): see autocompress/locks.py.


# ------------------------------------------------------------------ the protocol
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


def inputs(session: Any, batch: int, seq: int) -> dict[str, np.ndarray]:
    """Fixed synthetic feeds of shape [batch, seq] for every input of an ONNX Runtime session: token ids,
    a full attention mask, zeros for the rest; a [batch, seq, hidden] float input (a hidden state a graph
    hands on to the next) gets random values. Seeded: every call feeds the same values."""
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


# ------------------------------------------------------------------ host speed: the interleaved reference
def _reference_runner(ref: HostReference) -> Callable[[], Any]:
    session = pipeline.session(ref.path, threads=ref.threads, cpus=ref.cpus)
    return _runner(session, inputs(session, 1, 128), "CPUExecutionProvider")


def reference_blocks(ref: HostReference, runs: int = 8, settle: int = 3) -> Callable[[], list[float]]:
    """A block of ``runs`` runs of the host reference, timed after the first ``settle``: what ran before
    (a large fp32 model drops the clock for a while, and has the caches) slows the first runs after it, by
    a different amount for each model; the settled runs measure the machine, not its last model."""
    run = _reference_runner(ref)

    def block() -> list[float]:
        out = []
        for i in range(runs):
            t0 = time.perf_counter()
            run()
            if i >= settle:
                out.append((time.perf_counter() - t0) * 1e3)
        return out

    return block


def reference_windows(ref: HostReference, *, windows: int = book.WINDOWS, runs: int = book.WINDOW_RUNS,
                      gap_s: float = book.GAP_S, warmup: int = 20) -> list[book.Window]:
    """``windows`` windows of ``runs`` reference runs each (the first after ``warmup`` runs), ``gap_s``
    apart, holding the machine: each window's times (ms) and this process's CPU share meanwhile (its CPU
    time over wall time x threads: about 1 where it had its CPUs, less where other work took them)."""
    run, out = _reference_runner(ref), []
    for i in range(windows):
        if i:
            time.sleep(gap_s)
        with locks.measuring(), pinned(ref.cpus):
            cpu0, wall0 = time.process_time(), time.perf_counter()
            times, _ = repeat(run, warmup=warmup if i == 0 else 3, min_runs=runs, max_runs=runs, max_seconds=0.0,
                              ci_target=0.0)
            out.append((times, (time.process_time() - cpu0) / ((time.perf_counter() - wall0) * ref.threads)))
    return out


_PROCESS_ONLY: dict[str, tuple[HostReference, float]] = {}    # record path -> (a reference never steady, when)


def host_reference(threads: int, cpus: tuple[int, ...] | None = None, *, fresh: bool = False,
                   log: Callable[[str], None] | None = None) -> HostReference:
    """This host's reference at ``threads`` threads (pinned to ``cpus`` if given): the cached one where
    nothing since says it was timed under load or in an unusual moment (``reference.trouble``); one whose
    quiet observations since put the host's typical speed elsewhere is re-based on them
    (``reference.pooled``); otherwise (or ``fresh``) built if need be and established now. The one it
    replaces is kept in the record's history (``reference``)."""
    from .. import export                         # (torch: imported when a reference is first built)

    onnx_path, meta, layers, info = book.locate(threads, cpus)
    with locks.file_lock(meta):
        old = book.load(meta)
        why = "established again on request" if fresh else "none cached" if old is None else book.trouble(old)
        if not why and onnx_path.is_file():
            return HostReference(onnx_path, threads, old["nominal_ms"], old["date"], layers, cpus, old["id"])
        if not fresh and old is not None and onnx_path.is_file() and not book.poisoned(old) and book.drifted(old):
            ref = HostReference(onnx_path, threads, book.pooled(old), time.strftime("%Y-%m-%d"), layers, cpus,
                                book.new_id())              # re-based on what the host did since: no new timing
            fileio.write_json(meta, book.record(book.rebased(old), ref.id, 0, info, old, why))
            if log:
                log(f"host reference ({threads} thread(s)): nominal re-based: {why}")
            return ref
        memo = _PROCESS_ONLY.get(str(meta))
        if memo and not fresh and time.time() - memo[1] < book.RETRY_S:
            return memo[0]
        if not onnx_path.is_file():
            why = why or "its ONNX file was missing"
            tmp = export.export_anchor(book.REFERENCE_CONFIG, meta.with_suffix(".tmp.onnx"), num_layers=layers)
            tmp.replace(onnx_path)
        ref, verdict, tries = _establish(HostReference(onnx_path, threads, 0.0, time.strftime("%Y-%m-%d"), layers, cpus))
        if verdict.ok:
            fileio.write_json(meta, book.record(verdict, ref.id, tries, info, old, why))
            _PROCESS_ONLY.pop(str(meta), None)
            return ref
        _PROCESS_ONLY[str(meta)] = (ref, time.time())
        if log:
            log(f"host reference ({threads} thread(s)): not established after {tries} tries ({verdict.why}): used by "
                "this process only, not cached; the figures it scales say so")
        return ref


def _establish(ref: HostReference) -> tuple[HostReference, book.Verdict, int]:
    """Windows of reference runs until they are steady (``reference.judge``), TRIES times at most with
    pauses between; the reference with the steadiest try's nominal (``established`` if it was steady)."""
    best = None
    for attempt in range(book.TRIES):
        if attempt:
            time.sleep(book.PAUSES_S[attempt - 1])
        verdict = book.judge(reference_windows(ref))
        best = verdict if best is None or book.steadier(verdict, best) else best
        if verdict.ok:
            break
    return replace(ref, nominal_ms=best.nominal_ms, id=book.new_id(), established=best.ok), best, attempt + 1


def check_reference(threads: int, cpus: tuple[int, ...] | None = None) -> tuple[str, str]:
    """The cached reference at ``threads`` timed again now, briefly, against its nominal: ("holds" | "does
    not hold" | "unsure" | "none", in words; ``reference.holds_now``). Caches nothing."""
    ref = book.cached(threads, cpus)
    if ref is None:
        return "none", "no reference cached (established on first use)"
    now = book.judge(reference_windows(ref, windows=book.CHECK_WINDOWS, runs=book.CHECK_RUNS))
    return book.holds_now(book.load(ref.meta), now)


def _observed(ref: HostReference | None, ref_times: list[float], share: Share) -> HostReference | None:
    """A measurement's interleaved median kept beside the cached nominal (``reference.note``), with this
    process's CPU share while it timed; where the observations say that nominal was timed under load or in
    a moment unlike the host's usual (or another process replaced it), the reference is established again
    or re-based now (or read) and the figure is scaled to it."""
    if ref is None or not ref_times or not book.note(ref, float(np.median(ref_times)), share.value(ref.threads)):
        return ref
    return host_reference(ref.threads, ref.cpus)



def _bracketing(enabled: bool, provider: str, threads: int,
                cpus: tuple[int, ...] | None) -> tuple[HostReference | None, Callable[[], list[float]] | None]:
    """The host reference and its block runner where a CPU measurement is to be scaled; (None, None) otherwise."""
    ref = host_reference(threads, cpus) if enabled and provider == "CPUExecutionProvider" else None
    return ref, (reference_blocks(ref) if ref else None)


def measure_latency(
    onnx_path: str | os.PathLike,
    profile: Profile,
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
    results, share = [], Share()
    with locks.measuring(), pinned(cpus), share.timing():
        for batch, seq in profile.shapes:
            run = _runner(session, inputs(session, batch, seq), provider)
            ref_times: list[float] = []
            times, stop = repeat(run, warmup=warmup, min_runs=min_runs, max_runs=max_runs, max_seconds=max_seconds,
                                 ci_target=ci_target, reference=reference, reference_times=ref_times)
            results.append((batch, seq, times, ref_times, stop))
    del session, reference
    ref = _observed(ref, [t for r in results for t in r[3]], share)
    (batch, seq, times, ref_times, stop), rest = results[0], results[1:]
    extra = {"warmup": warmup, "protocol": f"sequential; stopped at: {stop}", "ci95_rel": round(ci_rel(times), 4)}
    if rest:
        extra["other_shapes"] = [{"batch_size": b, "seq_len": s, "median_ms": _stats(t)[0] * (ref.factor(r) if ref else 1),
                                  "n": len(t), "ci95_rel": round(ci_rel(t), 4)} for b, s, t, r, _ in rest]
    return _latency(profile, times, provider, threads, extra, ref, ref_times, cpus)


def _latency(profile: Profile, times_ms: list[float], provider: str, threads: int, extra: dict,
             ref: HostReference | None = None, ref_times: list[float] | None = None,
             cpus: tuple[int, ...] | None = None) -> Latency:
    """The figure from a run's times: as timed, or (with the reference's times) scaled to nominal speed."""
    factor = ref.factor(ref_times) if ref else 1.0
    median, iqr, p10, p90 = (v * factor for v in _stats(times_ms))
    detail = {**where(provider, threads, cpus), "batch_size": profile.batch_size, "seq_len": profile.seq_len, **extra}
    if ref:
        detail.update(ref.detail(ref_times, median / factor))
    return Latency(profile.name, median, iqr, p10, p90, len(times_ms), "measured", detail)


def measure_side_by_side(
    onnx_paths: dict[Any, str | os.PathLike],
    profile: Profile,
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
    share = Share()
    with locks.measuring(), pinned(cpus):
        for _ in range(rounds):
            for k, path in onnx_paths.items():
                with unpinned(cpus):
                    session = profile.session(path, threads=threads, cpus=cpus)
                run = _runner(session, inputs(session, profile.batch_size, profile.seq_len), profile.provider)
                with share.timing():
                    times[k] += repeat(run, warmup=warmup, min_runs=runs_per_round, max_runs=runs_per_round,
                                       max_seconds=0.0, ci_target=0.0, reference=reference,
                                       reference_times=ref_times[k])[0]
                del run, session
    ref = _observed(ref, [t for r in ref_times.values() for t in r], share)
    extra = {"warmup": warmup, "protocol": f"side by side with {len(onnx_paths)} models, {rounds} interleaved rounds"}
    return {k: _latency(profile, t, profile.provider, threads, extra, ref, ref_times[k], cpus) for k, t in times.items()}


# ------------------------------------------------------------------ per operator (what predictors map from)
def profile_operators(onnx_path: str | os.PathLike, profile: Profile, *, threads: int = 1,
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
        feeds = inputs(session, profile.batch_size, profile.seq_len)
        share = Share()
        with locks.measuring(), pinned(cpus), share.timing():
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
    ref = _observed(ref, ref_times, share)
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
