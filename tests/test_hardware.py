import fcntl
import os
import threading
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from autocompress.hardware import (HardwareProfile, Latency, ProfileError, describe, exclusive_machine, list_profiles,
                                   load_profile, measure_latency, measure_side_by_side, ratio, route, shared_machine)

VOCAB = 5000


def tiny_bert_like(path, hidden: int, layers: int) -> str:
    """input_ids/attention_mask [batch, seq] int64 -> Gather(embedding) * mask -> `layers` MatMul+Relu -> logits."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array((rng.standard_normal((VOCAB, hidden)) * 0.1).astype(np.float32), "emb"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "last_axis"),
    ]
    nodes = [
        helper.make_node("Gather", ["emb", "input_ids"], ["h0"]),
        helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask_f", "last_axis"], ["mask_3d"]),
        helper.make_node("Mul", ["h0", "mask_3d"], ["x0"]),
    ]
    for i in range(layers):
        w = (rng.standard_normal((hidden, hidden)) / np.sqrt(hidden)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [f"x{i}", f"w{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Relu", [f"m{i}"], [f"x{i + 1}"]))
    nodes.append(helper.make_node("Identity", [f"x{layers}"], ["logits"]))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", hidden])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


@pytest.fixture(autouse=True)
def private_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOCOMPRESS_LOCK_FILE", str(tmp_path / "machine.lock"))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx")
    # 128 * 128^2 * 2 = 4.2M MACs vs 128 * 512^2 * 4 = 134M MACs: 32x the compute.
    return tiny_bert_like(d / "small.onnx", hidden=128, layers=2), tiny_bert_like(d / "big.onnx", hidden=512, layers=4)


FAST = dict(warmup=2, min_runs=10, max_runs=60, max_seconds=1.0)
ONE = HardwareProfile("one-thread", "this CPU, one thread", "onnxruntime", "CPUExecutionProvider", 1)


# --- profiles ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list_profiles())
def test_every_bundled_profile_meets_the_invariants(name):
    """What any bundled profile must be, whatever its values: named as its file, obtainable on any machine
    (a CPU measured here, or a predictor), its primary shape first, CPU-only flags on CPU profiles only,
    a protocol that takes enough runs, and every published anchor with its source."""
    p = load_profile(name)
    assert p.name == name and p.description.strip() and p.device.strip()
    assert p.threads == max(1, min(p.max_threads, os.cpu_count()))
    assert p.shapes[0] == (p.batch_size, p.seq_len) and len(set(p.shapes)) == len(p.shapes)
    cpu = p.provider == "CPUExecutionProvider"
    assert (p.measure_here and cpu) or p.predictor, "no machine could obtain its latency without its device"
    assert route(p).text                                      # so route never refuses it here
    if p.measure_here and cpu:
        assert p.available()
    if not cpu:
        assert not p.nominal_speed and not p.pin_threads      # host speed and pinning are about this CPU
    assert p.min_runs >= 10 and 0 < p.ci_target <= 0.05 and p.max_seconds >= 1
    for a in (p.predictor or {}).get("anchors", []):
        assert a["source"].strip() and a["ms"], a["name"]


def test_load_profile_from_path(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("name: mine\ndescription: d\nruntime: onnxruntime\nprovider: CPUExecutionProvider\nmax_threads: 2\nseq_len: 64\n")
    p = load_profile(str(f))
    assert p == HardwareProfile("mine", "d", "onnxruntime", "CPUExecutionProvider", 2, 1, 64)
    assert p.measure_here and p.predictor is None and p.resource is None


@pytest.mark.parametrize(
    "yaml_text, field",
    [
        ("name: x\ndescription: d\nruntime: onnxruntime\nprovider: CPUExecutionProvider\n", "max_threads"),
        ("name: x\ndescription: d\nruntime: onnxruntime\nprovider: CPUExecutionProvider\nmax_threads: 1\nseq_len: -5\n", "seq_len"),
        ("name: x\ndescription: d\nruntime: onnxruntime\nprovider: CPUExecutionProvider\nmax_threads: 1\ncores: 8\n", "cores"),
        ("name: x\ndescription: d\nruntime: tflite\nprovider: CPUExecutionProvider\nmax_threads: 1\n", "runtime"),
        ("name: x\ndescription: d\nruntime: onnxruntime\nprovider: CPUExecutionProvider\nmax_threads: 1\nprecision: int4\n", "precision"),
        ("name: x\ndescription: d\nruntime: onnxruntime\nprovider: CPUExecutionProvider\nmax_threads: 1\nextra_shapes: [8]\n", "extra_shapes"),
        ("name: x\ndescription: d\nruntime: onnxruntime\nprovider: CPUExecutionProvider\nmax_threads: 1\nci_target: 2\n", "ci_target"),
        ("name: x\ndescription: d\nruntime: onnxruntime\nprovider: CPUExecutionProvider\nmax_threads: 1\nmin_runs: 0\n", "min_runs"),
        ("name: x\ndescription: d\nruntime: onnxruntime\nprovider: CPUExecutionProvider\nmax_threads: 1\nnominal_speed: yes please\n", "nominal_speed"),
        ("name: x\ndescription: d\nruntime: onnxruntime\nprovider: CPUExecutionProvider\nmax_threads: 1\npin_threads: 2\n", "pin_threads"),
        ("name: x\ndescription: d\nruntime: onnxruntime\nprovider: CPUExecutionProvider\nmax_threads: 1\npredictor: {kind: magic}\n", "predictor"),
    ],
)
def test_bad_profile_names_the_field(tmp_path, yaml_text, field):
    f = tmp_path / "bad.yaml"
    f.write_text(yaml_text)
    with pytest.raises(ProfileError, match=f"'{field}'"):
        load_profile(str(f))


def test_unknown_device_lists_known_ones():
    with pytest.raises(ProfileError) as e:
        load_profile("toaster")
    msg = str(e.value)
    assert "unknown device 'toaster'" in msg and "laptop-cpu" in msg and "mobile-cpu" in msg and ".yaml" in msg
    assert "\n" not in msg


def test_session_uses_profile_threads(models):
    small, _ = models
    sess = ONE.session(small)
    assert sess.get_session_options().intra_op_num_threads == 1
    assert sess.get_providers() == ["CPUExecutionProvider"]


# --- latency ----------------------------------------------------------------------------------


def test_measure_latency_stats(models):
    small, _ = models
    lat = measure_latency(small, ONE, **FAST)
    assert lat.n >= FAST["min_runs"] and lat.n <= FAST["max_runs"]
    assert 0 < lat.p10_ms <= lat.median_ms <= lat.p90_ms
    assert lat.spread_ms >= 0
    assert lat.how == "measured" and lat.profile == "one-thread"
    assert lat.detail["threads"] == 1 and lat.detail["host"]
    assert lat.detail["provider"] == "CPUExecutionProvider" and lat.detail["seq_len"] == 128
    assert lat.detail["ci95_rel"] >= 0 and "stopped at" in lat.detail["protocol"]
    assert isinstance(lat.detail["int8_isa"], list)
    assert "host_reference" not in lat.detail and "raw_median_ms" not in lat.detail     # as timed
    # scaled to the host's nominal speed where asked, or where the profile says so, and says by how much
    for scaled in (measure_latency(small, ONE, drift_reference=True, **FAST),
                   measure_latency(small, replace(ONE, nominal_speed=True), **FAST)):
        ref = scaled.detail["host_reference"]
        assert ref["factor"] == pytest.approx(ref["nominal_ms"] / ref["median_ms"], rel=1e-3)
        assert scaled.median_ms == pytest.approx(scaled.detail["raw_median_ms"] * ref["factor"], rel=1e-3)
        assert "to the host's nominal speed" in describe(scaled.to_dict())
    unasked = measure_latency(small, replace(ONE, nominal_speed=True), drift_reference=False, **FAST)
    assert "host_reference" not in unasked.detail


def test_min_runs_honoured_even_past_time_budget(models):
    _, big = models
    lat = measure_latency(big, ONE, warmup=1, min_runs=8, max_runs=8, max_seconds=0.0,
                          ci_target=1e-6)
    assert lat.n == 8


def test_bigger_model_is_slower(models):
    small, big = models
    profile = ONE
    fast, slow = measure_latency(small, profile, **FAST), measure_latency(big, profile, **FAST)
    assert slow.median_ms > 3 * fast.median_ms, (fast.median_ms, slow.median_ms)
    assert ratio(slow, fast) > 3


def test_side_by_side_times_every_model_alike(models):
    small, big = models
    lat = measure_side_by_side({"small": small, "big": big}, ONE, rounds=3, runs_per_round=4, drift_reference=True)
    assert set(lat) == {"small", "big"}
    for v in lat.values():
        assert v.n == 12 and v.how == "measured" and v.p10_ms <= v.median_ms <= v.p90_ms
        assert "side by side with 2 models" in v.detail["protocol"]
        assert v.median_ms == pytest.approx(v.detail["raw_median_ms"] * v.detail["host_reference"]["factor"], rel=1e-3)
    assert lat["big"].median_ms > 3 * lat["small"].median_ms


def _thread_cpus() -> dict[str, str]:
    """Each thread of this process: its allowed CPUs as Linux lists them (e.g. '0-1', '1')."""
    out = {}
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/status") as f:
            out[task] = next(line.split()[1] for line in f if line.startswith("Cpus_allowed_list"))
    return out


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="pinning two threads needs two CPUs this process may run on")
def test_a_pinned_profile_times_each_thread_on_its_own_cpu(models, monkeypatch):
    """While a pin_threads profile times, the calling thread runs on the first CPU and ONNX Runtime's pool
    thread on the second; afterwards the caller may run anywhere again; the figure lists the CPUs."""
    from autocompress.hardware import latency as L

    small, _ = models
    cpus = tuple(sorted(os.sched_getaffinity(0))[:2])
    two = replace(ONE, name="two-pinned", max_threads=2, pin_threads=True)
    assert two.cpus() == cpus and ONE.cpus() is None and replace(ONE, pin_threads=True).cpus(3 * os.cpu_count()) is None
    seen = []
    real_repeat = L.repeat

    def watching(run_once, **kw):
        out = real_repeat(run_once, **kw)
        seen.append((os.sched_getaffinity(0), _thread_cpus(), str(threading.get_native_id())))
        return out

    monkeypatch.setattr(L, "repeat", watching)
    before = os.sched_getaffinity(0)
    lat = measure_latency(small, two, **FAST)
    side = measure_side_by_side({"a": small}, two, rounds=1, runs_per_round=4)
    assert len(seen) == 2 and os.sched_getaffinity(0) == before        # restored after each
    for caller, threads, me in seen:
        assert caller == {cpus[0]}
        # no other thread shares the caller's CPU (a pool thread made by the pinned caller would inherit it)
        assert all(cpu != str(cpus[0]) for tid, cpu in threads.items() if tid != me), threads
    assert str(cpus[1]) in seen[0][1].values()            # the pool's thread, pinned by the session to its own CPU
    assert lat.detail["pinned_cpus"] == list(cpus) and side["a"].detail["pinned_cpus"] == list(cpus)
    assert f"2 thread(s) pinned to CPU(s) {cpus[0]},{cpus[1]}" in describe(lat.to_dict())
    seen.clear()
    free = measure_latency(small, replace(two, pin_threads=False), **FAST)
    assert "pinned_cpus" not in free.detail and "pinned" not in describe(free.to_dict())
    assert seen[0][0] == before


def test_pin_cpus_takes_the_first_allowed_cpus_or_none(monkeypatch):
    from autocompress.hardware import host

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {7, 3, 5})
    assert host.pin_cpus(2) == (3, 5) and host.pin_cpus(3) == (3, 5, 7)
    assert host.pin_cpus(4) is None                  # fewer CPUs than threads: not pinned


def test_latency_round_trip():
    lat = Latency("laptop-cpu", 3.5, 0.2, 3.1, 4.0, 42, "predicted", {"threads": 2, "host": "h"})
    d = lat.to_dict()
    assert d["median_ms"] == 3.5 and d["detail"] == {"threads": 2, "host": "h"}
    assert Latency.from_dict(d) == lat
    assert ratio(lat, Latency("laptop-cpu", 1.75, 0.1, 1.5, 2.0, 20)) == pytest.approx(2.0)


# --- machine lock -----------------------------------------------------------------------------

HOLD_SHARED = """
import sys, time
from autocompress.hardware import shared_machine
with shared_machine():
    print("held", flush=True)
    time.sleep(float(sys.argv[1]))
"""


def _probe(mode: int) -> bool:
    """Can the lock be taken in `mode` without waiting?"""
    with open(os.environ["AUTOCOMPRESS_LOCK_FILE"], "a") as fh:
        try:
            fcntl.flock(fh.fileno(), mode | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        return True


def test_exclusive_waits_for_shared_holder():
    hold_s = 1.5
    proc = subprocess.Popen([sys.executable, "-c", HOLD_SHARED, str(hold_s)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        t_held = time.monotonic()
        assert not _probe(fcntl.LOCK_EX)  # a measurement cannot start beside training
        with shared_machine():  # ...but another training can
            pass
        with exclusive_machine():
            waited = time.monotonic() - t_held
            assert _probe(fcntl.LOCK_SH) is False  # and while measuring, nobody else gets in
        assert waited > 0.5 * hold_s, waited
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()


def test_describe_says_how_a_latency_was_obtained():
    measured = {"how": "measured", "n": 40, "spread_ms": 0.31, "median_ms": 5.0,
                "detail": {"host": "box", "cpu": "Xeon", "provider": "CPUExecutionProvider", "threads": 2,
                           "batch_size": 1, "seq_len": 128}}
    assert describe(measured) == ("measured on box (Xeon), CPUExecutionProvider, 2 thread(s), batch 1 x seq 128, "
                                  "n=40, IQR 0.31 ms")
    predicted = {"how": "predicted", "n": 0, "median_ms": 9.0,
                 "detail": {"predictor": "mobile-cpu-v1", "device": "Pixel 4", "heldout_error": "12%"}}
    text = describe(predicted)
    assert text.startswith("predicted by mobile-cpu-v1") and "Pixel 4" in text and "measured" not in text


HOLD = """
import sys, time
from autocompress import locks
name, hold = sys.argv[1], float(sys.argv[2])
with (locks.training() if name.startswith("train") else locks.measuring()):
    print(name, "in", time.monotonic(), flush=True)
    time.sleep(hold)
print(name, "out", time.monotonic(), flush=True)
"""


def test_a_waiting_measurement_holds_off_new_trainers():
    """Writer preference: once a measurement waits for the trainers running now, a trainer that
    arrives later waits behind it (plain flock would let it in, and a stream of trainers would
    starve the measurement)."""
    procs = []

    def start(name, hold):
        p = subprocess.Popen([sys.executable, "-c", HOLD, name, str(hold)], stdout=subprocess.PIPE, text=True)
        procs.append(p)
        return p

    try:
        first = start("train1", 1.5)
        assert first.stdout.readline().startswith("train1 in")
        meter = start("measure", 0.5)
        time.sleep(0.5)                        # the measurement is now waiting for train1
        late = start("train2", 0.1)
        events = {}
        for p in (first, meter, late):
            out, _ = p.communicate(timeout=20)
            for line in out.splitlines():
                name, what, t = line.split()
                events[(name, what)] = float(t)
        assert events[("measure", "in")] >= events[("train1", "out")] - 0.05   # waited for the trainer
        assert events[("train2", "in")] >= events[("measure", "out")] - 0.05   # the late trainer waited for it
    finally:
        for p in procs:
            p.kill()
