"""Saving and rebuilding pruned models, ONNX export, int8 quantization, and ONNX/PyTorch prediction."""
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from autocompress.checkpoint import count_params, load_model, save_model, size_mb, structure_record
from autocompress.evaluate import predict_onnx, predict_torch
from autocompress.export import export_onnx
from autocompress.methods.base import Context
from autocompress.methods.pruning import encoder_layers
from autocompress.recipe import Recipe, Step

PRUNE = Recipe((Step("drop_layers", {"keep": 3}), Step("prune_heads", {"ratio": 0.5}),
                Step("prune_ffn", {"ratio": 0.5})))


def layer_shapes(model):
    return [{k: tuple(v.shape) for k, v in layer.state_dict().items()} for layer in encoder_layers(model)]


def padded(features, pad_id=0):
    width = max(len(f["input_ids"]) for f in features)
    return {k: np.array([f[k] + [pad if k == "input_ids" else 0] * (width - len(f[k])) for f in features],
                        dtype=np.int64)
            for k, pad in (("input_ids", pad_id), ("attention_mask", 0), ("token_type_ids", 0))}


@pytest.fixture(scope="module")
def pruned(tiny_bert_factory, tiny_transfer):
    """drop_layers(3) + prune_heads(0.5) + prune_ffn(0.5) of the tiny BERT (do not mutate)."""
    return PRUNE.apply_torch(tiny_bert_factory(), Context(tiny_transfer)).eval()


@pytest.fixture(scope="module")
def onnx_files(pruned, tmp_path_factory):
    """The pruned model exported once (fp32) and quantized (int8), each in its own folder."""
    fp32_dir = tmp_path_factory.mktemp("fp32")
    fp32 = export_onnx(pruned, fp32_dir / "model.onnx")
    int8_dir = tmp_path_factory.mktemp("int8")
    int8 = Recipe(PRUNE.steps + (Step("quantize_int8"),)).apply_onnx(fp32, int8_dir)
    return fp32, int8


def ort_logits(path, arrays):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(["logits"], {i.name: arrays[i.name] for i in s.get_inputs()})[0]


@torch.no_grad()
def torch_logits(model, arrays):
    return model(**{k: torch.from_numpy(v) for k, v in arrays.items()}).logits.numpy()


# ---------------------------------------------------------------- checkpoint
def test_save_and_load_pruned(pruned, tmp_path, tiny_transfer):
    path = save_model(pruned, None, tmp_path / "ckpt")
    assert (path / "model.safetensors").is_file()
    cfg = json.loads((path / "config.json").read_text())
    rec = cfg["autocompress_structure"]
    assert len(rec["layers"]) == 3
    assert all(len(r["heads"]) == 2 and r["ffn_in"]["out"] == 32 and r["query"]["out"] == 16 for r in rec["layers"])
    assert rec == structure_record(pruned)
    assert [r["heads"] for r in rec["layers"]] == [l.attention.self.kept_heads for l in encoder_layers(pruned)]

    loaded = load_model(path)
    assert not loaded.training
    assert loaded.config.num_hidden_layers == 3
    assert layer_shapes(loaded) == layer_shapes(pruned)
    assert count_params(loaded) == count_params(pruned)
    assert structure_record(loaded) == rec                                # kept_heads restored too
    arrays = padded(tiny_transfer.features[:12])
    assert np.allclose(torch_logits(loaded, arrays), torch_logits(pruned, arrays), atol=1e-6)
    # a saved-and-loaded model saves again to the same shape
    again = load_model(save_model(loaded, None, tmp_path / "again"))
    assert np.allclose(torch_logits(again, arrays), torch_logits(pruned, arrays), atol=1e-6)


def test_save_and_load_unpruned(tiny_bert, tmp_path, tiny_transfer):
    path = save_model(tiny_bert, None, tmp_path / "plain")
    loaded = load_model(path)
    assert layer_shapes(loaded) == layer_shapes(tiny_bert)
    arrays = padded(tiny_transfer.features[:8])
    assert np.allclose(torch_logits(loaded, arrays), torch_logits(tiny_bert.eval(), arrays), atol=1e-6)


def test_load_rejects_missing_weights(pruned, tmp_path):
    from safetensors.torch import load_file, save_file

    path = save_model(pruned, None, tmp_path / "broken")
    state = load_file(str(path / "model.safetensors"))
    del state[next(k for k in state if "intermediate.dense.weight" in k)]
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="does not match its structure: missing"):
        load_model(path)


# ---------------------------------------------------------------- export
def test_export_is_single_file(onnx_files):
    fp32, _ = onnx_files
    assert sorted(p.name for p in fp32.parent.iterdir()) == ["model.onnx"]
    m = onnx.load(str(fp32), load_external_data=False)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in m.graph.initializer)
    assert [i.name for i in m.graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [o.name for o in m.graph.output] == ["logits"]


@pytest.mark.parametrize("batch,seq", [(1, 5), (3, 9), (6, 30)])
def test_export_matches_torch_with_dynamic_axes(onnx_files, pruned, feature_rows, batch, seq):
    fp32, _ = onnx_files
    rows = feature_rows(batch, seed=batch, min_len=2, max_len=seq)
    rows[0] = feature_rows(1, seed=99, min_len=seq, max_len=seq)[0]          # the longest row sets the width
    arrays = padded(rows)
    assert arrays["input_ids"].shape == (batch, seq)
    got, ref = ort_logits(fp32, arrays), torch_logits(pruned, arrays)
    assert got.shape == (batch, 2)
    np.testing.assert_allclose(got, ref, atol=1e-4)


def test_export_keeps_attention_implementation(onnx_files, pruned, tiny_bert):
    """Export switches to eager attention for the trace and back afterwards."""
    assert tiny_bert.config._attn_implementation == "sdpa"                  # what the model was built with
    assert pruned.config._attn_implementation == "sdpa"                     # ... and still has after export


# ---------------------------------------------------------------- quantization
def test_int8_is_smaller_and_close(onnx_files, feature_rows):
    fp32, int8 = onnx_files
    assert int8.name == "model.1.quantize_int8.onnx"
    assert int8.stat().st_size < fp32.stat().st_size
    assert size_mb(int8) < size_mb(fp32)
    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeLinear"}
    assert not {n.op_type for n in onnx.load(str(fp32)).graph.node} & {"MatMulInteger", "DynamicQuantizeLinear"}
    rows = feature_rows(64, seed=7)
    a, b = predict_onnx(fp32, rows), predict_onnx(int8, rows)
    # measured here: logits ~0.7 in size, max difference 0.065, argmax agreement 61/64
    assert np.abs(a - b).max() < 0.15
    assert np.abs(a - b).mean() < 0.05
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.9
    assert not np.array_equal(a, b)                       # it really is another model


def test_apply_onnx_without_onnx_steps_returns_input(onnx_files, tmp_path):
    fp32, _ = onnx_files
    assert PRUNE.apply_onnx(fp32, tmp_path) == fp32
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- evaluate
def test_predict_onnx_and_torch_agree(onnx_files, pruned, feature_rows):
    fp32, _ = onnx_files
    rows = feature_rows(40, seed=11, min_len=1, max_len=40)
    a = predict_torch(pruned, rows, batch_size=16)
    b = predict_onnx(fp32, rows, batch_size=16)
    assert a.shape == b.shape == (40, 2)
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_padding_does_not_change_logits(onnx_files, pruned, feature_rows):
    """A row's logits are the same whether it is batched with longer rows or alone."""
    fp32, _ = onnx_files
    rows = feature_rows(12, seed=5, min_len=2, max_len=40)
    assert len({len(r["input_ids"]) for r in rows}) > 3
    together_t = predict_torch(pruned, rows, batch_size=64)
    together_o = predict_onnx(fp32, rows, batch_size=64)
    alone_t = np.concatenate([predict_torch(pruned, [r]) for r in rows])
    alone_o = np.concatenate([predict_onnx(fp32, [r]) for r in rows])
    np.testing.assert_allclose(together_t, alone_t, atol=1e-5)
    np.testing.assert_allclose(together_o, alone_o, atol=1e-4)
    np.testing.assert_allclose(together_o, alone_t, atol=1e-4)
    # and the order of the output follows the input, not the length-sorted batches
    rev = predict_torch(pruned, rows[::-1], batch_size=5)
    np.testing.assert_allclose(rev[::-1], together_t, atol=1e-5)
