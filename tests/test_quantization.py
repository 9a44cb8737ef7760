"""Quantization methods: int8 dynamic, int8 static (QDQ, calibrated on transfer rows), fp16, mixed precision.

Each output is checked against the fp32 export of the same model. Tolerances are relative to the
largest fp32 logit of the rows (the tiny BERT's reach ~2): 8-bit codes carry ~1% rounding error per
MatMul, which adds up over the tiny model's 24 quantized MatMuls (measured: 3-5% of the largest logit),
so int8 may move a logit by 10% of it; fp16's 11-bit mantissa (~0.05% per operation, measured 0.06%)
is allowed 0.5%. A broken scale or zero point moves logits by their own size.
"""
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import transformers

from autocompress import export
from autocompress.evaluate import predict_onnx
from autocompress.methods import quantization
from autocompress.methods.base import Context, RecipeError, get_method
from autocompress.recipe import Recipe, Step

INT8_TOL, FP16_TOL = 0.10, 0.005

VARIANTS = {      # id -> (step, relative tolerance); entropy calibration is in the slow test below (~1 min)
    "int8": (Step("quantize_int8"), INT8_TOL),
    "static-minmax": (Step("quantize_static", {"rows": 48}), INT8_TOL),
    "static-percentile": (Step("quantize_static", {"calibration": "percentile", "rows": 48}), INT8_TOL),
    "static-per-tensor": (Step("quantize_static", {"per_channel": False, "rows": 48}), INT8_TOL),
    "fp16": (Step("quantize_fp16"), FP16_TOL),
    "mixed": (Step("quantize_mixed", {"keep_fp32": 3, "rows": 32}), INT8_TOL),
}


@pytest.fixture(scope="module")
def fp32(tiny_bert_factory, tmp_path_factory):
    return export.export_onnx(tiny_bert_factory(), tmp_path_factory.mktemp("fp32") / "model.fp32.onnx")


@pytest.fixture(scope="module")
def rows(feature_rows):
    return feature_rows(48, seed=7)          # not transfer rows: scored like a validation split


@pytest.fixture(scope="module")
def module_ctx(tiny_transfer):
    return Context(tiny_transfer, seed=0)


@pytest.fixture(scope="module")
def outputs(fp32, module_ctx, tmp_path_factory):
    """Every variant applied once to the tiny BERT's fp32 export."""
    return {k: Recipe((step,)).apply_onnx(fp32, tmp_path_factory.mktemp(k), module_ctx)
            for k, (step, _) in VARIANTS.items()}


def weight_matmuls(model: onnx.ModelProto, dtype=onnx.TensorProto.FLOAT) -> list[onnx.NodeProto]:
    """Matrix products with a weight of ``dtype``: MatMuls, and the Gemms of the pooler and classifier
    (which dynamic int8 rewrites as MatMuls named ``<gemm>_MatMul``, quantized or kept)."""
    inits = {i.name for i in model.graph.initializer if i.data_type == dtype}
    return [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in inits]


def ops(path) -> dict[str, int]:
    import collections

    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)


@pytest.mark.parametrize("variant", VARIANTS)
def test_valid_onnx_close_to_fp32(variant, outputs, fp32, rows):
    step, tol = VARIANTS[variant]
    out = outputs[variant]
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    types = {i.name: i.type.tensor_type.elem_type for i in list(model.graph.input) + list(model.graph.output)}
    assert types == {"input_ids": onnx.TensorProto.INT64, "attention_mask": onnx.TensorProto.INT64,
                     "token_type_ids": onnx.TensorProto.INT64, "logits": onnx.TensorProto.FLOAT}
    ref, got = predict_onnx(fp32, rows), predict_onnx(out, rows)
    assert got.dtype == np.float32 and got.shape == ref.shape
    scale = np.abs(ref).max()
    assert np.abs(got - ref).max() <= tol * scale, (variant, np.abs(got - ref).max(), scale)
    assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.9
    assert not np.array_equal(got, ref)        # something was quantized


def test_each_variant_changed_the_graph(outputs, fp32):
    n_weights = len(weight_matmuls(onnx.load(str(fp32))))
    assert n_weights == 26             # 4 layers x (q, k, v, out, ffn in, ffn out), pooler, classifier
    int8 = ops(outputs["int8"])          # fused first: each layer's Q, K and V in one QAttention
    assert int8["QAttention"] == 4 and int8["MatMulInteger"] == n_weights - 4 * 3
    for k in ("static-minmax", "static-percentile", "static-per-tensor"):
        o = ops(outputs[k])
        assert o["QuantizeLinear"] > 0 and o["DequantizeLinear"] >= n_weights and "MatMulInteger" not in o
    fp16 = onnx.load(str(outputs["fp16"]))
    assert len(weight_matmuls(fp16, onnx.TensorProto.FLOAT16)) == n_weights
    assert not weight_matmuls(fp16)
    assert ops(outputs["mixed"])["MatMulInteger"] == n_weights - 3


def test_an_uncompressed_model_ships_with_fused_kernels(fp32, rows, tmp_path):
    """No ONNX step: what ships is the graph with ONNX Runtime's fused kernels (an Attention per layer,
    as Optimum's O2 ships it), its logits those of the export; the fp32 graph stays as exported (a GPU
    profile converts it to fp16). With an ONNX step, what ships is that step's output (int8 fuses itself)."""
    shipped = export.shipped_form(fp32, tmp_path, lambda src, dst: src)
    assert shipped == tmp_path / "model.fused.onnx"
    assert ops(shipped)["Attention"] == 4 and ops(shipped)["SkipLayerNormalization"] > 0 and "Attention" not in ops(fp32)
    np.testing.assert_allclose(predict_onnx(shipped, rows), predict_onnx(fp32, rows), atol=1e-5)
    int8 = export.shipped_form(fp32, tmp_path / "q", lambda src, dst: Recipe((Step("quantize_int8"),)).apply_onnx(src, dst))
    assert ops(int8)["QAttention"] == 4 and not (tmp_path / "q" / "model.fused.onnx").exists()


def test_a_fusion_that_fails_or_changes_the_logits_ships_the_export(fp32, tiny_bert_factory, tmp_path, monkeypatch):
    """Fusion only buys speed: a graph the fusions cannot handle, or whose fused logits differ from the
    export's, ships as exported."""
    import torch

    def broken(src, dst):
        raise ValueError("no pattern")

    monkeypatch.setattr(export, "fuse_for_ort", broken)
    assert export.shipped_form(fp32, tmp_path / "a", lambda src, dst: src) == fp32
    other = tiny_bert_factory()
    with torch.no_grad():
        other.classifier.bias.add_(1.0)                     # another model: other logits
    other_onnx = export.export_onnx(other, tmp_path / "other.onnx")

    def wrong(src, dst):
        Path(dst).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(other_onnx, dst)
        return {"attention": 4}

    monkeypatch.setattr(export, "fuse_for_ort", wrong)
    assert export.shipped_form(fp32, tmp_path / "b", lambda src, dst: src) == fp32
    assert not (tmp_path / "b" / "model.fused.onnx").exists()


def test_files_shrink_on_a_wider_model(tmp_path, tiny_transfer):
    """Weights dominate the file once the model is wide enough (hidden 256, vocab 4000): int8 ~4x smaller,
    fp16 ~2x. The tiny BERT is mostly graph, not weights."""
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=4000, hidden_size=256, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=1024, max_position_embeddings=64, num_labels=2)
    fp32 = export.export_onnx(transformers.BertForSequenceClassification(config).eval(), tmp_path / "wide.onnx")
    ctx = Context(tiny_transfer, seed=0)
    size = {}
    for name, step in {"int8": Step("quantize_int8"), "static": Step("quantize_static", {"rows": 16}),
                       "mixed": Step("quantize_mixed", {"keep_fp32": 0}), "fp16": Step("quantize_fp16")}.items():
        size[name] = Recipe((step,)).apply_onnx(fp32, tmp_path / name, ctx).stat().st_size / fp32.stat().st_size
    assert all(0.22 < size[k] < 0.29 for k in ("int8", "static", "mixed")), size
    assert 0.48 < size["fp16"] < 0.53, size


# ---------------------------------------------------------------- static calibration reads transfer rows only
def test_static_calibrates_on_transfer_rows_only(fp32, tiny_transfer, feature_rows, tmp_path, monkeypatch):
    fed = []
    original = quantization.TransferReader.get_next

    def spy(self):
        feed = original(self)
        if feed is not None:
            n = int(feed["attention_mask"].sum())
            fed.append(tuple(feed["input_ids"][0, :n].tolist()))
            assert (feed["attention_mask"][0, n:] == 0).all()           # padding is masked
        return feed

    monkeypatch.setattr(quantization.TransferReader, "get_next", spy)
    Recipe((Step("quantize_static", {"rows": 40}),)).apply_onnx(fp32, tmp_path, Context(tiny_transfer, seed=3))
    transfer = {tuple(r["input_ids"]) for r in tiny_transfer.features}
    others = {tuple(r["input_ids"]) for r in feature_rows(48, seed=7)}       # the validation-like rows
    assert len(fed) == 40 and len(set(fed)) == 40
    assert set(fed) <= transfer and not set(fed) & others
    # more rows than the transfer set has: all of them, once
    fed.clear()
    Recipe((Step("quantize_static", {"rows": 1000}),)).apply_onnx(fp32, tmp_path / "all", Context(tiny_transfer))
    assert sorted(fed) == sorted(tuple(r["input_ids"]) for r in tiny_transfer.features)


@pytest.mark.parametrize("method", ["quantize_static", "quantize_mixed"])
def test_methods_that_need_rows_say_so(method, fp32, tmp_path):
    with pytest.raises(ValueError, match=f"{method} needs training rows"):
        Recipe((Step(method, {"keep_fp32": 2} if method == "quantize_mixed" else {}),)).apply_onnx(fp32, tmp_path)


def test_calibration_method_changes_the_ranges(fp32, tiny_ctx, tmp_path):
    """The calibration parameter reaches ONNX Runtime: MinMax and Percentile give different scales."""
    from onnx import numpy_helper

    def scales(cal):
        out = Recipe((Step("quantize_static", {"calibration": cal, "rows": 48}),)).apply_onnx(fp32, tmp_path / cal, tiny_ctx)
        m = onnx.load(str(out))
        inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
        return {n.input[0]: float(inits[n.input[1]]) for n in m.graph.node if n.op_type == "QuantizeLinear"}

    a, b = scales("minmax"), scales("percentile")
    assert a.keys() == b.keys() and any(abs(a[k] - b[k]) > 1e-6 * abs(a[k]) for k in a)


# ---------------------------------------------------------------- mixed precision
def planted_bert(factory):
    """The tiny BERT with a planted sensitivity: layer 2's FFN output weights get a huge column (30, the
    others ~0.2) for a neuron that never fires (its FFN input bias is -40, so GELU gives 0). The fp32
    function barely changes, but int8 must spread 255 codes over +-30 in every output channel of that
    one MatMul, so its other weights round to 0 or +-0.24: quantizing that node hurts most."""
    model = factory()
    layer = model.bert.encoder.layer[2]
    with torch.no_grad():
        layer.intermediate.dense.bias[0] = -40.0
        layer.output.dense.weight[:, 0] = 30.0
    return model


@pytest.fixture(scope="module")
def planted(tiny_bert_factory, tmp_path_factory):
    fp32 = export.export_onnx(planted_bert(tiny_bert_factory), tmp_path_factory.mktemp("planted") / "model.fp32.onnx")
    model = onnx.load(str(fp32))
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    node = next(n.name for n in weight_matmuls(model) if np.isclose(inits[n.input[1]], 30.0).sum() == 32)
    return fp32, node


def test_mixed_keeps_the_planted_node_and_the_asked_count(planted, tiny_ctx, tmp_path):
    fp32, node = planted
    ranking = quantization.sensitivity(fp32, tiny_ctx, 32, tmp_path / "s")["nodes"]
    assert len(ranking) == 26 and ranking[0]["node"] == node
    assert ranking[0]["kl"] > 10 * ranking[1]["kl"]           # by far the most sensitive
    assert [r["kl"] for r in ranking] == sorted((r["kl"] for r in ranking), reverse=True)
    for keep in (0, 1, 5, 26, 30):
        out = Recipe((Step("quantize_mixed", {"keep_fp32": keep, "rows": 32}),)).apply_onnx(
            fp32, tmp_path / f"k{keep}", tiny_ctx)
        model = onnx.load(str(out))
        kept = {n.name for n in weight_matmuls(model)}
        assert len(kept) == min(keep, 26)
        assert ops(out)["MatMulInteger"] == 26 - min(keep, 26)
        assert kept == {r["node"] for r in ranking[:keep]}
        assert (node in kept) == (keep > 0)


def test_mixed_keeping_none_is_dynamic_int8(fp32, tiny_ctx, rows, tmp_path):
    a = Recipe((Step("quantize_mixed", {"keep_fp32": 0}),)).apply_onnx(fp32, tmp_path / "mixed", tiny_ctx)
    b = Recipe((Step("quantize_int8"),)).apply_onnx(fp32, tmp_path / "int8", tiny_ctx)
    np.testing.assert_array_equal(predict_onnx(a, rows), predict_onnx(b, rows))
    assert not list((tmp_path / "mixed").glob("sensitivity-*.json"))     # nothing to rank, nothing measured


def test_sensitivity_is_cached_per_model_file(planted, fp32, tiny_ctx, tmp_path, monkeypatch):
    """Measured once per fp32 file (by its hash): a second quantize_mixed in the same folder reads the cache
    (here doctored, to prove it is read); another model file gets its own ranking."""
    planted_fp32, node = planted
    step = Recipe((Step("quantize_mixed", {"keep_fp32": 1, "rows": 32}),))
    step.apply_onnx(planted_fp32, tmp_path, tiny_ctx)
    [cache] = tmp_path.glob("sensitivity-*.json")
    record = json.loads(cache.read_text())
    assert record["rows"] == 32 and record["nodes"][0]["node"] == node
    record["nodes"].reverse()
    cache.write_text(json.dumps(record))
    calls = []
    monkeypatch.setattr(quantization, "_kl", lambda *a: calls.append(1))   # any measurement would fail now
    out = step.apply_onnx(planted_fp32, tmp_path, tiny_ctx)
    assert {n.name for n in weight_matmuls(onnx.load(str(out)))} == {record["nodes"][0]["node"]} != {node}
    assert not calls
    monkeypatch.undo()
    step.apply_onnx(fp32, tmp_path, tiny_ctx)                  # another model: measured anew
    assert len(list(tmp_path.glob("sensitivity-*.json"))) == 2


# ---------------------------------------------------------------- registry, labels, recipes
def test_registry_labels_and_groups():
    assert {n: get_method(n).stage for n in ("quantize_int8", "quantize_static", "quantize_fp16", "quantize_mixed")} \
        == dict.fromkeys(("quantize_int8", "quantize_static", "quantize_fp16", "quantize_mixed"), "onnx")
    assert {get_method(n).exclusive for n in ("quantize_int8", "quantize_static", "quantize_fp16", "quantize_mixed")} \
        == {"precision"}
    assert get_method("quantize_fp16").cpu_note and "slower" in get_method("quantize_fp16").cpu_note
    assert not get_method("quantize_int8").cpu_note
    shorts = [Recipe((s,)).short() for s in (
        Step("quantize_int8"), Step("quantize_static"), Step("quantize_static", {"calibration": "entropy"}),
        Step("quantize_static", {"calibration": "percentile", "per_channel": False}), Step("quantize_fp16"),
        Step("quantize_mixed", {"keep_fp32": 6}))]
    assert shorts == ["int8", "int8 static minmax", "int8 static entropy", "int8 static percentile per-tensor",
                      "fp16", "int8 mixed (6 fp32)"]


@pytest.mark.parametrize("step", [
    Step("quantize_static", {"calibration": "percentile", "per_channel": False, "rows": 64}),
    Step("quantize_fp16"),
    Step("quantize_mixed", {"keep_fp32": 8, "rows": 16}),
])
def test_recipe_json_round_trip(step):
    r = Recipe((Step("drop_layers", {"keep": 4}), Step("distill", {"steps": 10}), step))
    back = Recipe.from_json(r.to_json())
    assert back.to_json() == r.to_json() and back.hash == r.hash and back.steps[-1].config == step.config
    assert back.to_dict()["steps"][-1] == {"method": step.method, "version": 1, "params": {**Step(step.method).to_dict()["params"],
                                                                           **step.params}}


@pytest.mark.parametrize("method,params,word", [
    ("quantize_static", {"calibration": "kl"}, "calibration"),
    ("quantize_static", {"calibration": "MinMax"}, "calibration"),
    ("quantize_static", {"per_channel": 1}, "per_channel"),
    ("quantize_static", {"rows": 0}, "rows"),
    ("quantize_static", {"rows": 12.5}, "rows"),
    ("quantize_static", {"activations": "int8"}, "activations"),     # unknown parameter
    ("quantize_mixed", {"keep_fp32": -1}, "keep_fp32"),
    ("quantize_mixed", {"keep_fp32": 0.25}, "keep_fp32"),
    ("quantize_mixed", {"keep_fp32": True}, "keep_fp32"),
    ("quantize_mixed", {"rows": 0}, "rows"),
    ("quantize_fp16", {"keep_io_types": False}, "keep_io_types"),
    ("quantize_int8", {"reduce_range": "no"}, "reduce_range"),
])
def test_invalid_parameters_name_the_parameter(method, params, word):
    with pytest.raises(RecipeError, match=word):
        Recipe((Step(method, params),))


@pytest.mark.parametrize("pair", [("quantize_int8", "quantize_static"), ("quantize_static", "quantize_fp16"),
                                  ("quantize_mixed", "quantize_int8"), ("quantize_int8", "quantize_int8")])
def test_two_quantization_steps_are_refused_before_any_work(pair):
    """Refused when the recipe is built (from steps or from JSON), so no trial ever starts on it."""
    with pytest.raises(RecipeError, match="at most one precision step") as e:
        Recipe((Step("prune_heads", {"ratio": 0.5}),) + tuple(Step(m) for m in pair))
    assert pair[0] in str(e.value) and pair[1] in str(e.value)
    with pytest.raises(RecipeError, match="at most one precision step"):
        Recipe.from_json(json.dumps({"version": 1, "steps": [{"method": m} for m in pair]}))


# ---------------------------------------------------------------- heavier: entropy, and the real MiniLM
@pytest.mark.slow
def test_entropy_calibration(outputs, fp32, module_ctx, rows, tmp_path):
    """ORT's Entropy calibrator with its own defaults would equal MinMax (one candidate threshold);
    ours searches thresholds, so the scales differ, and the model stays close to fp32."""
    out = Recipe((Step("quantize_static", {"calibration": "entropy", "rows": 48}),)).apply_onnx(fp32, tmp_path, module_ctx)
    ref, got = predict_onnx(fp32, rows), predict_onnx(out, rows)
    assert np.abs(got - ref).max() <= 0.25 * np.abs(ref).max()     # clipping outliers costs more on random weights
    assert not np.array_equal(got, predict_onnx(outputs["static-minmax"], rows))


@pytest.mark.slow
def test_packaged_minilm(tmp_path, tiny_transfer):
    """The real (packaged) MiniLM: every variant is a valid model with the same inputs and outputs,
    int8 ~4x and fp16 ~2x smaller, fp16 within fp16 rounding of fp32. (With a fresh random head the
    logits are tiny and nearly equal across rows, so int8's closeness is judged on the fine-tuned
    teacher instead: benchmarks/quantization.py, accuracy on SST-2.)"""
    from autocompress.teacher import DEFAULT_MODEL, resolve_model

    torch.manual_seed(0)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(resolve_model(DEFAULT_MODEL), num_labels=2)
    fp32 = export.export_onnx(model.eval(), tmp_path / "model.fp32.onnx")
    ctx = Context(tiny_transfer, seed=0)       # token ids < 200: valid for MiniLM's vocabulary too
    rows = [dict(r) for r in tiny_transfer.features[:32]]
    ref = predict_onnx(fp32, rows)
    for step, ratio in [(Step("quantize_int8"), 3.8), (Step("quantize_static", {"rows": 32}), 3.8),
                        (Step("quantize_mixed", {"keep_fp32": 4, "rows": 16}), 2.5), (Step("quantize_fp16"), 1.95)]:
        out = Recipe((step,)).apply_onnx(fp32, tmp_path / step.method, ctx)
        onnx.checker.check_model(str(out))
        got = predict_onnx(out, rows)
        assert got.shape == ref.shape and got.dtype == np.float32
        assert fp32.stat().st_size / out.stat().st_size > ratio, step
        if step.method == "quantize_fp16":
            assert np.abs(got - ref).max() <= FP16_TOL * np.abs(ref).max() + 1e-4


# ---------------------------------------------------------------- the front says fp16 does not pay on a CPU
def test_front_marks_fp16_on_cpu_devices_only(tmp_path):
    from autocompress import report
    from autocompress.store import Store

    store = Store(f"sqlite:///{tmp_path}/s.db")
    store.create_run("r", task="sst2", model="tiny", device="laptop-cpu", budget_ms=None, space="name: x\n",
                     settings={}, run_dir=str(tmp_path))
    for number, role, recipe, ms, mb in [(0, "teacher", Recipe(), (50.0, 10.0), 90.0),
                                         (1, "candidate", Recipe((Step("quantize_fp16"),)), (80.0, 4.0), 45.0)]:
        trial = store.start_trial("r", number, role, recipe.to_json(), recipe.hash)
        store.add_metrics(trial, "val", {"main": 0.9, "accuracy": 0.9}, 100)
        for profile, provider, median in (("laptop-cpu", "CPUExecutionProvider", ms[0]),
                                          ("server-gpu", "CUDAExecutionProvider", ms[1])):
            store.add_latency(trial, {"profile": profile, "median_ms": median, "spread_ms": 0.1, "p10_ms": median,
                                      "p90_ms": median, "n": 20, "how": "measured", "detail": {"provider": provider}})
        store.finish_trial(trial, "done", size_mb=mb, size_zip_mb=mb)
    data = report.front_data(store, "r")
    fp16 = {d: next(m for m in data["devices"][d]["front"] if m["trial"] == 1) for d in ("laptop-cpu", "server-gpu")}
    assert fp16["laptop-cpu"]["cpu_notes"] == [get_method("quantize_fp16").cpu_note]
    assert fp16["server-gpu"]["cpu_notes"] == []
    text = report.tables(data)
    cpu, gpu = text.split("\nserver-gpu")
    assert [line.endswith("fp16 ‡") for line in cpu.splitlines() if "fp16" in line and "‡ =" not in line] == [True]
    assert "fp16 ‡" not in gpu.split("\nval =")[0] and "fp16" in gpu
    assert f"‡ = on a CPU device: {get_method('quantize_fp16').cpu_note}" in text


@pytest.mark.parametrize("step", [Step("quantize_static", {"rows": 16}), Step("quantize_int8")],
                         ids=["static", "dynamic"])
def test_int8_after_factorized_embeddings(step, tiny_bert_factory, tiny_transfer, feature_rows, tmp_path):
    """Factorized embeddings (V x E table, then an E x H MatMul): int8 still builds and stays close to fp32
    (the default space combines them; static int8 once failed there inside ONNX Runtime's Gather pass)."""
    from autocompress.methods.factorization import EmbeddingFactorization, factorize_embeddings

    model = factorize_embeddings(tiny_bert_factory(), EmbeddingFactorization(dim=16))
    fp32 = export.export_onnx(model, tmp_path / "fact.onnx")
    out = Recipe((step,)).apply_onnx(fp32, tmp_path / "q", Context(tiny_transfer, seed=0))
    rows = feature_rows(48, seed=7)
    a, b = predict_onnx(fp32, rows), predict_onnx(out, rows)
    assert np.abs(a - b).max() <= INT8_TOL * np.abs(a).max() and (a.argmax(-1) == b.argmax(-1)).mean() >= 0.9
