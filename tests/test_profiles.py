"""The three device profiles: the measurement protocol's stopping rule, the predictors (fitting, held-out
error, roofline arithmetic), the dispatch that says how each latency is obtained, and provenance on every
figure shown (tables, JSON, CLI)."""
import json
import os
from pathlib import Path

import numpy as np
import pytest

from autocompress.hardware import HardwareProfile, Latency, ProfileError, describe, load_profile, obtain_latency, route
from autocompress.hardware.latency import ci_rel, median_ci, repeat
from autocompress.hardware.obtain import HERE, PREDICTED, source_graph
from autocompress.hardware.predictors import host_operators as H, roofline as R

from test_hardware import tiny_bert_like


@pytest.fixture(autouse=True)
def private_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOCOMPRESS_LOCK_FILE", str(tmp_path / "machine.lock"))


# ------------------------------------------------------------------ the protocol
class FakeClock:
    """A clock that each run advances by the next of a list of durations (ms)."""

    def __init__(self, durations_ms):
        self.t, self.durations = 0.0, iter(durations_ms)
        self.runs = 0

    def __call__(self):
        return self.t

    def run(self):
        self.runs += 1
        self.t += next(self.durations) / 1e3


def test_median_ci_is_the_order_statistics_interval():
    x = list(range(1, 101))        # n = 100: ranks floor(50 - 9.8) = 40 and ceil(1 + 50 + 9.8) = 61
    assert median_ci(x) == (40.0, 61.0)
    assert ci_rel(x) == pytest.approx((61 - 40) / 2 / 50.5)


def test_protocol_stops_as_soon_as_the_median_is_within_2_percent():
    rng = np.random.default_rng(0)
    durations = list(10 + rng.normal(0, 0.3, 2000))          # ~3% noise: the CI shrinks below 2% after a while
    clock = FakeClock(durations)
    times, why = repeat(clock.run, warmup=3, min_runs=10, max_runs=1000, max_seconds=1e9, ci_target=0.02,
                        clock=clock)
    n = len(times)
    assert why.startswith("median within ±2%") and clock.runs == n + 3
    assert ci_rel(times) <= 0.02 and ci_rel(times[:-1]) > 0.02     # not one run later, not one earlier
    assert times == pytest.approx(durations[3:3 + n])


def test_protocol_stops_at_the_time_cap_when_the_median_stays_unsure():
    clock = FakeClock([10.0, 30.0] * 1000)                   # bimodal: the median's CI never narrows
    times, why = repeat(clock.run, warmup=0, min_runs=10, max_runs=1000, max_seconds=1.0, ci_target=0.02,
                        clock=clock)
    assert why == "time cap (1 s)" and 1.0 - 1e-9 <= sum(times) / 1e3 <= 1.0 + 0.03
    clock = FakeClock([10.0, 30.0] * 1000)
    times, why = repeat(clock.run, warmup=0, min_runs=10, max_runs=25, max_seconds=1e9, ci_target=0.02, clock=clock)
    assert why == "run cap (25 runs)" and len(times) == 25


def test_reference_blocks_bracket_every_ten_timed_runs():
    order = []
    clock = FakeClock([5.0] * 200)

    def run():
        order.append("m")
        clock.run()

    def block():
        order.append("R")
        clock.t += 0.016                                     # a block takes time, outside the timed runs
        return [2.0, 2.1]

    ref_times = []
    times, why = repeat(run, warmup=2, min_runs=23, max_runs=23, max_seconds=1e9, ci_target=0.0, clock=clock,
                        reference=block, reference_times=ref_times)
    assert why == "run cap (23 runs)" and times == pytest.approx([5.0] * 23)
    assert "".join(order) == "mm" + "R" + "m" * 10 + "R" + "m" * 10 + "R" + "mmm" + "R"   # after warm-up, every 10, at the end
    assert ref_times == [2.0, 2.1] * 4


def test_a_figure_timed_beside_the_reference_is_scaled_to_nominal_speed(tmp_path):
    """The machine ran at half speed during the measurement: the reference took twice its nominal time,
    so the model's 10 ms are 5 ms at nominal speed; the raw figure and the factor stay in the detail."""
    from autocompress.hardware.latency import HostReference, _latency

    ref = HostReference(tmp_path / "ref.onnx", 1, nominal_ms=2.0, date="2026-01-01")
    profile = load_profile("laptop-cpu")
    times = [9.0, 10.0, 10.0, 11.0, 10.0]
    lat = _latency(profile, times, "CPUExecutionProvider", 1, {}, ref, [4.0, 4.1, 3.9, 4.0, 4.0])
    assert lat.median_ms == pytest.approx(5.0) and lat.p10_ms < lat.median_ms < lat.p90_ms
    assert lat.spread_ms == pytest.approx(0.5 * float(np.subtract(*np.percentile(times, [75, 25]))))
    assert lat.detail["raw_median_ms"] == pytest.approx(10.0)
    assert lat.detail["host_reference"]["factor"] == pytest.approx(0.5)
    text = describe(lat.to_dict())
    assert text.startswith("measured on") and "x0.500 to the host's nominal speed" in text and "nominal 2.00 ms" in text
    unscaled = _latency(profile, times, "CPUExecutionProvider", 1, {})
    assert unscaled.median_ms == 10.0 and "host_reference" not in unscaled.detail
    assert "nominal speed" not in describe(unscaled.to_dict())


def test_the_host_reference_is_timed_once_per_host_and_cached(tmp_path, monkeypatch):
    from autocompress import export
    from autocompress.hardware import latency as L

    monkeypatch.setenv("AUTOCOMPRESS_CALIBRATION_DIR", str(tmp_path))
    built = []
    monkeypatch.setattr(export, "export_anchor", lambda config, path, num_layers=None: built.append(num_layers) or _tiny(path))
    # steady windows (timings mocked: whether this busy machine is steady now is not what this test is about)
    monkeypatch.setattr(L, "reference_windows", lambda ref, **kw: [([2.0 * ref.threads] * 60, 1.0)] * 5)
    first, two = L.host_reference(1), L.host_reference(2)
    assert first.nominal_ms == 2.0 and first.path.is_file() and first.path.parent == tmp_path and first.established
    # one layer on one thread, three on more (a one-layer run is too short to follow a 2-thread model)
    assert built == [1, 3] and (first.layers, two.layers) == (1, 3) and two.path != first.path
    assert json.loads(two.path.with_suffix(".json").read_text())["layers"] == 3
    calls = []
    monkeypatch.setattr(L, "reference_windows", lambda *a, **k: calls.append(1))
    monkeypatch.setattr(L, "repeat", lambda *a, **k: calls.append(1))
    again = L.host_reference(1)
    assert again == first and L.host_reference(2) == two and not calls    # read from the cache, not timed again


def _tiny(path):
    from test_hardware import tiny_bert_like

    return Path(tiny_bert_like(path, hidden=32, layers=1))


# ------------------------------------------------------------------ host-operators predictor
def test_fit_recovers_nonnegative_constants_and_reports_leave_one_out():
    rng = np.random.default_rng(1)
    X = rng.uniform(1, 50, size=(6, 3))
    truth = np.array([1.1, 4.5, 0.7])
    c = H.fit_nonnegative(X, X @ truth)
    assert c == pytest.approx(truth, rel=1e-9)
    assert np.abs(H.leave_one_out(X, X @ truth)).max() < 1e-9     # an exact model predicts held-out points exactly


def test_fit_keeps_constants_nonnegative():
    X = np.array([[10.0, 1.0, 0.0], [20.0, 1.0, 0.0], [30.0, 1.0, 0.0]])
    y = np.array([10.0, 19.0, 31.0]) - 0.5                  # the unconstrained fit would want a negative 2nd constant
    c = H.fit_nonnegative(X, y)
    assert np.all(c >= 0) and c[2] == 0


def test_held_out_error_is_the_error_of_a_fit_without_that_anchor():
    rows = [{"name": n, "source": "s", "device_ms": d, "host_classes_ms": dict(zip(H.CLASSES, x))}
            for n, d, x in [("a", 342, (190, 26, 6)), ("b", 62, (64, 0.6, 18)), ("c", 40, (39, 0.6, 10.7)),
                            ("d", 192, (48, 33, 3.3)), ("e", 120, (90, 5, 5))]]
    calib = H.fit_calibration(rows)
    X = np.array([list(r["host_classes_ms"].values()) for r in rows])
    y = np.array([r["device_ms"] for r in rows])
    for i, r in enumerate(calib["anchors"]):
        keep = [j for j in range(len(rows)) if j != i]
        c = H.fit_nonnegative(X[keep], y[keep])           # fitted without anchor i ...
        assert r["loo_error"] == pytest.approx(X[i] @ c / y[i] - 1, abs=1e-4)   # ... and judged on it
    assert calib["loo_mean_abs_error"] == pytest.approx(np.mean([abs(r["loo_error"]) for r in calib["anchors"]]),
                                                        abs=1e-4)
    full = H.fit_nonnegative(X, y)
    assert [calib["constants"][k] for k in H.CLASSES] == pytest.approx(full, abs=1e-4)


def test_a_host_operators_figure_is_predicted_and_says_from_what():
    profile = load_profile("mobile-cpu")
    calib = {"constants": {"matmul": 1.0, "norm_act": 4.0, "other": 0.5}, "cpu": "Xeon", "date": "2026-01-01",
             "anchors": [{"name": "BERT-base", "device_ms": 342.0}, {"name": "MobileBERT", "device_ms": 62.0}],
             "loo_mean_abs_error": 0.25, "loo_max_abs_error": 0.5}
    host = Latency("mobile-cpu", 20.0, 2.0, 18.0, 24.0, 30, "measured", {"ci95_rel": 0.01})
    lat = H.from_host_timings(profile, calib, host, {"MatMul": 10.0, "LayerNormalization": 2.0, "Add": 4.0},
                                    {"MatMul", "LayerNormalization", "Add"})
    assert lat.how == "predicted" and lat.median_ms == pytest.approx(10 + 8 + 2)
    assert lat.spread_ms == pytest.approx(2.0 * 20 / 20)
    text = describe(lat.to_dict())
    assert text.startswith("predicted by host-operator map v1") and "measured" not in text
    assert "Pixel 4" in text and "BERT-base 342 ms" in text and "leave-one-out mean |error| 25%" in text
    q = H.from_host_timings(profile, calib, host, {"MatMulInteger": 5.0}, {"MatMulInteger", "DynamicQuantizeLinear"})
    assert "int8 graph" in q.detail["note"] and "extrapolation" in describe(q.to_dict())
    again = H.repredict(profile, lat.to_dict(), host_median_ms=40.0)   # twice as slow a host run
    assert again.median_ms == pytest.approx(2 * lat.median_ms) and "side-by-side" in again.detail["input"]


def test_calibration_is_cached_per_host(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOCOMPRESS_CALIBRATION_DIR", str(tmp_path))
    profile = load_profile("mobile-cpu")
    path = H.calibration_path(profile)
    assert path.parent == tmp_path and H.host_key(profile) in path.name
    other = HardwareProfile(**{**profile.__dict__, "predictor": {**profile.predictor, "host_threads": 2}})
    assert H.host_key(other) != H.host_key(profile)       # another protocol, another calibration
    path.write_text(json.dumps({"constants": {"matmul": 1, "norm_act": 1, "other": 1}, "anchors": []}))
    assert H.calibrate(profile)["constants"]["matmul"] == 1    # read, not recomputed


# ------------------------------------------------------------------ roofline predictor
def test_graph_costs_count_matmul_flops_and_weight_bytes(tmp_path):
    path = tiny_bert_like(tmp_path / "m.onnx", hidden=64, layers=3)
    costs = R.graph_costs(path, seq_len=16, float_bytes=2)
    mm = [i for i, op in enumerate(costs.ops) if op == "MatMul"]
    assert len(mm) == 3
    for i in mm:
        assert costs.flops[i] == 2 * 16 * 64 * 64                    # batch 1 x seq 16 x 64 -> 64
        assert costs.weight_bytes[i] == 64 * 64 * 2                   # fp16 weights
        assert costs.act_bytes[i] == 2 * (16 * 64 * 2)                # read x, write y
    g = costs.ops.index("Gather")                                     # a lookup reads the rows it gathers, not the table
    assert costs.weight_bytes[g] == 16 * 64 * 2


def test_roofline_sums_kernels_with_a_floor():
    costs = R.GraphCosts(flops=np.array([1e9, 0.0]), act_bytes=np.array([1e6, 1e3]), weight_bytes=np.array([1e6, 0.0]),
                         ops=["MatMul", "Add"])
    spec = {"peak_tflops": 100, "bandwidth_gbs": 1000}
    k = {"compute_efficiency": 0.5, "memory_efficiency": 1.0, "kernel_floor_us": 5.0}
    # MatMul at batch 2: 2e9 / 50e12 + (1e6 + 2e6) / 1e12 = 40 us + 3 us; Add: 2e3 B -> 2 ns, floored at 5 us
    assert R.roofline_ms(costs, 2, k, spec) == pytest.approx((43e-6 + 5e-6) * 1e3)


def test_roofline_figure_of_the_gpu_profile_is_predicted_at_both_shapes(tmp_path):
    profile = load_profile("server-gpu")
    if profile.available():
        pytest.skip("CUDA is present here: server-gpu is measured (see test_cuda_measurement)")
    path = tiny_bert_like(tmp_path / "m.onnx", hidden=64, layers=2)
    lat = obtain_latency(path, profile)
    assert lat.how == "predicted" and lat.detail["batch_size"] == 8
    (b1,) = lat.detail["other_shapes"]
    assert b1["batch_size"] == 1 and 0 < b1["median_ms"] <= lat.median_ms
    text = describe(lat.to_dict())
    assert text.startswith("predicted by roofline v1") and "A100" in text and "held-out error" in text
    assert "batch 1 x seq 128" in text and "measured" not in text


# ------------------------------------------------------------------ how each profile is obtained
def test_route_here_ray_or_predicted():
    laptop, mobile, gpu = (load_profile(n) for n in ("laptop-cpu", "mobile-cpu", "server-gpu"))
    assert route(laptop).kind == HERE
    assert route(mobile).kind == PREDICTED and "this machine is not the device" in route(mobile).text
    assert route(gpu).kind == (HERE if gpu.available() else PREDICTED)
    nothing = HardwareProfile("gpu-only", "d", "onnxruntime", "NoSuchExecutionProvider", 1)
    with pytest.raises(ProfileError, match="cannot be obtained here"):
        route(nothing)


def test_fp16_profile_times_the_fp32_graph_and_refuses_an_int8_one(tmp_path):
    from onnxruntime.quantization import quantize_dynamic

    gpu = load_profile("server-gpu")
    fp32 = tiny_bert_like(tmp_path / "m.onnx", hidden=64, layers=2)
    int8 = tmp_path / "m.int8.onnx"
    quantize_dynamic(fp32, str(int8))
    assert source_graph(int8, gpu, fp32) == tmp_path / "m.onnx"
    assert source_graph(fp32, gpu, None) == tmp_path / "m.onnx"
    with pytest.raises(ProfileError, match="fp32"):
        source_graph(int8, gpu, None)
    assert source_graph(int8, load_profile("laptop-cpu"), fp32) == int8    # CPU profiles time the shipped file


def test_laptop_figure_notes_threads_and_int8_instructions(tmp_path):
    from autocompress.hardware import cpu_info

    lat = obtain_latency(tiny_bert_like(tmp_path / "m.onnx", hidden=64, layers=2), "laptop-cpu", max_seconds=0.5)
    assert lat.how == "measured" and lat.detail["threads"] == min(4, os.cpu_count())
    assert lat.detail["int8_isa"] == cpu_info()["int8_isa"] and lat.detail["cores"] == os.cpu_count()


@pytest.mark.skipif("CUDAExecutionProvider" not in __import__("onnxruntime").get_available_providers(),
                    reason="no CUDA here: onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu on a "
                           "machine with an NVIDIA GPU to run it)")
def test_cuda_measurement(tmp_path):
    """On a CUDA machine the server GPU is measured: fp16 conversion, I/O bound on the device, both shapes."""
    path = tiny_bert_like(tmp_path / "m.onnx", hidden=256, layers=4)
    lat = obtain_latency(path, "server-gpu", max_seconds=2.0)
    assert lat.how == "measured" and lat.detail["provider"] == "CUDAExecutionProvider"
    assert lat.detail["precision"] == "fp16" and lat.detail["gpu"] and lat.detail["batch_size"] == 8
    assert lat.detail["other_shapes"][0]["batch_size"] == 1 and lat.n >= 10 and lat.median_ms > 0
    assert "fp16 conversion" in describe(lat.to_dict())


# ------------------------------------------------------------------ every figure shown carries its provenance
def _store_with_both_kinds(tmp_path):
    from autocompress.recipe import Recipe, Step
    from autocompress.store import Store

    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.create_run("r", task="sst2", model="m", device="mobile-cpu", budget_ms=50.0, space="", run_dir=str(tmp_path))
    measured = {"how": "measured", "n": 30, "spread_ms": 0.2, "p10_ms": 1, "p90_ms": 2,
                "detail": {"host": "box", "cpu": "Xeon", "provider": "CPUExecutionProvider", "threads": 2,
                           "batch_size": 1, "seq_len": 128}}
    predicted = {"how": "predicted", "n": 30, "spread_ms": 1.0, "p10_ms": 1, "p90_ms": 2,
                 "detail": {"predictor": "host-operator map v1", "device": "Pixel 4", "heldout_error": "37%",
                            "batch_size": 1, "seq_len": 128}}
    kd = Step("distill", {"steps": 5})
    for number, role, recipe, val, lap, mob, status, rec in [
            (0, "teacher", Recipe(), 0.9, 20.0, 60.0, "done", None),
            (1, "candidate", Recipe((Step("drop_layers", {"keep": 3}), kd)), 0.85, 10.0, 30.0, "done", 40.0),
            (2, "candidate", Recipe((kd,)), 0.5, 20.0, 61.0, "over_budget", None)]:
        tid = store.start_trial("r", number, role, recipe.to_json(), recipe.hash)
        store.add_metrics(tid, "val" if status == "done" else "untrained", {"main": val, "accuracy": val}, 100)
        store.add_latency(tid, {**measured, "profile": "laptop-cpu", "median_ms": lap})
        store.add_latency(tid, {**predicted, "profile": "mobile-cpu", "median_ms": mob})
        store.finish_trial(tid, status, seconds=1.0, size_mb=1.0, recovery_seconds=rec)
    store.finish_run("r", "done")
    return store


def test_tables_and_json_say_how_every_latency_was_obtained(tmp_path):
    from autocompress.report import front_data, tables

    data = front_data(_store_with_both_kinds(tmp_path), "r")
    for name, how in (("laptop-cpu", "measured"), ("mobile-cpu", "predicted")):
        d = data["devices"][name]
        assert d["obtained"]["how"] == how
        for m in d["front"] + [d["teacher"]]:
            assert m["latency"]["how"] == how and m["latency_obtained"].startswith(how)
    text = tables(data)
    lap, mob = text.split("\nmobile-cpu")
    assert "latency measured: measured on box (Xeon)" in lap and "predicted" not in lap.split("laptop-cpu", 1)[1]
    assert "latency predicted: predicted by host-operator map v1" in mob and " measured " not in mob.split("val =")[0]
    import re

    rows = [ln for ln in text.splitlines() if re.match(r"^  [* ]\s+\d+\s+[\d.]+\s", ln)]
    assert len(rows) == 4 and all(("measured" in ln) != ("predicted" in ln) for ln in rows)   # each row says which
    assert "latency = median ± half the interquartile range at the device's shape" in text and "at N" not in text
    # the over-budget candidate: counted, never on a front, its recovery time saved estimated from trial 1
    o = data["over_budget"]
    assert o == {"count": 1, "trials": [2], "with_recovery_steps": 1, "recovery_seconds_mean": 40.0,
                 "estimated_from": 1, "training_saved_seconds": 40.0}
    assert "1 candidate(s) over the 50 ms budget on mobile-cpu were not trained (trials 2): about 40 s" in text
    assert json.loads(json.dumps(data, default=str))["devices"]["mobile-cpu"]["front"][0]["latency"]["how"] == "predicted"


def test_plot_titles_say_how(tmp_path):
    from autocompress.plots import plot_png
    from autocompress.report import front_data

    data = front_data(_store_with_both_kinds(tmp_path), "r")
    assert plot_png(data, tmp_path / "f.png").stat().st_size > 5000


# ------------------------------------------------------------------ CLI: profiles and bench
def test_profiles_command_says_how_each_is_obtained(capsys):
    from autocompress.cli import main

    assert main(["profiles"]) == 0
    out = capsys.readouterr().out
    assert "laptop-cpu:" in out and "measured on this machine" in out
    laptop = out.split("laptop-cpu:")[1].split("mobile-cpu:")[0]
    assert "scaled to this host's nominal speed" in laptop           # its figures are, and it says so
    assert "mobile-cpu: Google Pixel 4" in out and "predicted by host-operator map v1" in out
    assert "server-gpu:" in out and "batch 8 x seq 128, batch 1 x seq 128" in out
    assert "held-out error on BERT-large" in out or "measured on this machine (CUDAExecutionProvider)" in out


def test_bench_an_onnx_file(tmp_path, capsys):
    from autocompress.cli import main

    path = tiny_bert_like(tmp_path / "m.onnx", hidden=64, layers=2)
    assert main(["bench", path, "--device", "laptop-cpu", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["how"] == "measured" and d["profile"] == "laptop-cpu" and d["obtained"].startswith("measured on")


@pytest.mark.parametrize("args, expected", [
    (["/no/such.onnx", "--device", "laptop-cpu"], "no such file or folder"),
    (["{tmp}", "--device", "laptop-cpu"], "without config.json"),
    (["{tmp}/notes.txt", "--device", "laptop-cpu"], "not an .onnx file"),
    (["{tmp}/broken.onnx", "--device", "laptop-cpu"], "not a readable ONNX model"),
    (["{tmp}/m.onnx", "--device", "toaster"], "unknown device 'toaster'"),
])
def test_bench_bad_input_is_one_line_exit_2(args, expected, tmp_path, capsys):
    from autocompress.cli import main

    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / "broken.onnx").write_bytes(b"not a protobuf at all \x00\xff")
    tiny_bert_like(tmp_path / "m.onnx", hidden=16, layers=1)
    code = main(["bench", *[a.format(tmp=tmp_path) for a in args]])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and expected in err and "Traceback" not in err


@pytest.mark.slow
def test_the_roofline_constants_in_the_yaml_are_its_fit():
    """The server-gpu YAML's constants and held-out error are what fitting the published figures gives."""
    spec = load_profile("server-gpu").predictor
    fit = R.calibrate_roofline(spec)
    for k, v in spec["constants"].items():
        assert fit["constants"][k] == pytest.approx(v, rel=0.02), k
    assert f"mean |error| {100 * fit['heldout_mean_abs_error']:.1f}%" in spec["heldout_error"]
    assert f"max {100 * fit['heldout_max_abs_error']:.0f}%" in spec["heldout_error"]


@pytest.mark.slow
def test_mobile_calibration_from_scratch(tmp_path, monkeypatch):
    """The whole calibration on this host: four anchors built from their configs, profiled, fitted."""
    monkeypatch.setenv("AUTOCOMPRESS_CALIBRATION_DIR", str(tmp_path))
    profile = load_profile("mobile-cpu")
    cal = H.calibrate(profile)
    assert [a["name"] for a in cal["anchors"]] == ["BERT-base", "MobileBERT", "MobileBERT-tiny", "MobileBERT w/o OPT"]
    by = {a["name"]: a for a in cal["anchors"]}
    assert by["BERT-base"]["host_ms"] > 2 * by["MobileBERT"]["host_ms"]        # 22.5 vs 5.7 GFLOPs
    assert by["MobileBERT w/o OPT"]["host_classes_ms"]["norm_act"] > 10 * by["MobileBERT"]["host_classes_ms"]["norm_act"]
    assert all(v >= 0 for v in cal["constants"].values()) and H.calibration_path(profile).is_file()


# ------------------------------------------------------------------ artifacts of several graphs: the expected latency
def _two_graph_artifact(tmp_path):
    """A manifest of two graphs (``pipeline.write``), as an artifact that runs its second graph on a share
    of the inputs writes it."""
    from autocompress import pipeline

    tiny_bert_like(tmp_path / "g0.onnx", hidden=64, layers=2)
    tiny_bert_like(tmp_path / "g1.onnx", hidden=64, layers=3)
    return pipeline.write(tmp_path, {"kind": "test", "rule": "entropy", "threshold": 0.3, "segments": [
        {"file": "g0.onnx", "fp32": "g0.onnx"}, {"file": "g1.onnx", "fp32": "g1.onnx"}]})


def test_an_artifact_of_several_graphs_gets_the_expected_latency_of_its_usage(tmp_path):
    from autocompress.hardware import expected
    from autocompress.pipeline import Usage

    manifest = _two_graph_artifact(tmp_path)
    gpu = load_profile("server-gpu")
    if gpu.available():
        pytest.skip("CUDA is present here: server-gpu is measured, not a deterministic prediction")
    usage = Usage((1.0, 0.4), "the validation inputs (10 rows)", "a stop rule, 0.3", {"left_at": [6, 4]})
    with pytest.raises(ValueError, match="usage"):
        obtain_latency(manifest, gpu)                       # which share runs each graph is not known
    lat = obtain_latency(manifest, gpu, usage=usage)
    g0, g1 = (obtain_latency(tmp_path / f"g{i}.onnx", gpu) for i in (0, 1))
    assert lat.how == "predicted" and lat.median_ms == pytest.approx(g0.median_ms + 0.4 * g1.median_ms)
    d = lat.detail
    assert d["expected"] and d["reach"] == [1.0, 0.4] and d["expected_how"] == "a stop rule, 0.3"
    assert d["segment_ms"] == [round(g0.median_ms, 4), round(g1.median_ms, 4)] and d["segment_how"] == ["predicted"] * 2
    assert d["left_at"] == [6, 4] and Usage.from_detail(d) == Usage((1.0, 0.4), usage.over, usage.how)
    (b1,) = d["other_shapes"]                               # the other shape weighted alike
    assert b1["median_ms"] == pytest.approx(g0.detail["other_shapes"][0]["median_ms"]
                                            + 0.4 * g1.detail["other_shapes"][0]["median_ms"])
    text = describe(lat.to_dict())
    assert text.startswith("expected over the validation inputs (10 rows) (a stop rule, 0.3): sum of the graphs' "
                           "latencies") and "[100%, 40%]" in text and "each graph predicted by roofline v1" in text
    with pytest.raises(ValueError, match="2 segment latencies for 3"):
        expected([g0, g1], Usage((1.0, 0.5, 0.2), "x"))


def test_an_expected_figure_stored_before_expected_how_still_describes():
    old = {"how": "predicted", "n": 0, "median_ms": 3.0,
           "detail": {"predictor": "roofline v1", "expected": True, "expected_over": "the validation inputs (64 rows)",
                      "reach": [1.0, 0.5], "segment_ms": [2.0, 2.0], "exit_rule": "entropy 0.3"}}
    assert describe(old) == ("expected over the validation inputs (64 rows) (entropy 0.3): sum of the graphs' latencies "
                             "[2.00, 2.00] ms weighted by the share of inputs running each [100%, 50%]; each graph "
                             "predicted by roofline v1")


def test_side_by_side_times_an_artifact_graph_by_graph_with_its_stored_usage(tmp_path):
    from autocompress.hardware import obtain_side_by_side
    from autocompress.pipeline import Usage

    manifest = _two_graph_artifact(tmp_path)
    single = tiny_bert_like(tmp_path / "single.onnx", hidden=64, layers=1)
    quick = HardwareProfile("quick-cpu", "this CPU, one thread", "onnxruntime", "CPUExecutionProvider", 1,
                            seq_len=32, max_seconds=0.3)
    usage = Usage((1.0, 0.25), "the validation inputs (8 rows)", "a stop rule")
    with pytest.raises(ValueError, match="share of the inputs"):
        obtain_side_by_side({"pipe": manifest, "one": single}, quick)     # no stored figure says the usage
    stored = {"pipe": obtain_latency(manifest, quick, usage=usage).to_dict()}
    again = obtain_side_by_side({"pipe": manifest, "one": single}, quick, stored=stored)
    assert set(again) == {"pipe", "one"}
    d = again["pipe"].detail
    assert d["expected"] and d["reach"] == [1.0, 0.25] and len(d["segment_ms"]) == 2
    assert "side by side with 3 models" in d["protocol"]
    assert again["pipe"].median_ms == pytest.approx(d["segment_ms"][0] + 0.25 * d["segment_ms"][1], abs=2e-4)  # (rounded)


def test_a_target_of_the_users_own_keeps_its_settings_under_a_bundled_name(tmp_path):
    """`search --device my.yaml` where my.yaml is named laptop-cpu: the search times on that file's
    profile (its protocol), not on the bundled laptop-cpu, and on every other bundled profile once."""
    from autocompress.hardware import list_profiles, with_bundled

    mine = tmp_path / "my.yaml"
    mine.write_text("name: laptop-cpu\ndescription: mine\nruntime: onnxruntime\nprovider: CPUExecutionProvider\n"
                    "max_threads: 2\nmax_seconds: 1.5\nmin_runs: 7\n")
    profiles = with_bundled(load_profile(str(mine)))
    assert [p.name for p in profiles][0] == "laptop-cpu" and sorted(p.name for p in profiles) == list_profiles()
    assert (profiles[0].max_seconds, profiles[0].min_runs, profiles[0].description) == (1.5, 7, "mine")
    assert profiles[1:] == tuple(load_profile(n) for n in list_profiles() if n != "laptop-cpu")
