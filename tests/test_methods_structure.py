"""Unstructured pruning, low-rank factorization, embedding factorization and cross-layer sharing, on a
tiny model of every supported layout: declared shapes and parameter counts, identity settings, save ->
load, ONNX export, and what each buys (zipped size, file size)."""
import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch.nn.utils import prune

from autocompress import arch
from autocompress.checkpoint import count_params, load_model, save_model, size_mb, zipped_mb
from autocompress.export import export_onnx
from autocompress.methods.base import RecipeError, get_method
from autocompress.finalize import finalize
from autocompress.methods.factorization import FactorizedEmbedding, LowRankLinear, low_rank_linear
from autocompress.methods.sharing import layer_groups
from autocompress.methods.sparsity import encoder_linears, sparsity
from autocompress.recipe import Recipe, Step

from conftest import LAYOUTS, TINY_LAYERS, TINY_VOCAB


def apply(name, model, ctx=None, **params):
    m = get_method(name)
    return m.fn(model, m.config(params), ctx)


@torch.no_grad()
def logits(model, batch):
    model.eval()
    return model(**arch.inputs(model, batch)).logits


@pytest.fixture
def batch(tiny_transfer):
    return tiny_transfer.collate(list(range(16)))


def reloaded_logits(model, batch, path):
    return logits(load_model(save_model(model, None, path)), batch)


def ort_logits(path, model, batch):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {k: batch[k].numpy() for k in arch.input_names(model)})[0]


def linear_shapes(model):
    return [{role: (arch.get(l, p).in_features, arch.get(l, p).out_features) for role, p in arch.linear_paths(model).items()}
            for l in arch.layers(model)]


# ---------------------------------------------------------------- magnitude_prune
@pytest.mark.parametrize("model_type", LAYOUTS)
def test_magnitude_prune(model_type, tiny_model, batch, tmp_path):
    model = tiny_model(model_type)
    ref, n = logits(model, batch), count_params(model)
    assert get_method("magnitude_prune").config({"sparsity": 0.0}).is_identity(TINY_LAYERS)
    same = apply("magnitude_prune", model, sparsity=0.0)
    assert not prune.is_pruned(same) and torch.equal(logits(same, batch), ref)

    out = apply("magnitude_prune", model, sparsity=0.6)
    assert abs(sparsity(out) - 0.6) <= 0.01
    assert len(encoder_linears(out)) == 6 * TINY_LAYERS
    cut = torch.cat([m.weight_orig[m.weight_mask == 0] for m in encoder_linears(out)]).abs()
    kept = torch.cat([m.weight_orig[m.weight_mask == 1] for m in encoder_linears(out)]).abs()
    assert cut.max() <= kept.min()                                         # one global threshold
    assert not prune.is_pruned(arch.word_embeddings(out))                  # only the encoder's Linears
    with pytest.raises(ValueError, match="finalize"):
        save_model(out, None, tmp_path / "masked")
    with pytest.raises(ValueError, match="finalize"):
        export_onnx(out, tmp_path / "masked.onnx")
    pruned = logits(out, batch)
    assert not torch.allclose(pruned, ref, atol=1e-3)

    out = finalize(out)
    assert not prune.is_pruned(out)
    assert not [k for k in out.state_dict() if k.endswith(("_orig", "_mask"))]
    assert abs(sparsity(out) - 0.6) <= 0.01 and count_params(out) == n   # dense shapes: same parameter count
    assert torch.equal(logits(out, batch), pruned)
    assert torch.allclose(reloaded_logits(out, batch, tmp_path / "ckpt"), pruned, atol=1e-6)


def test_masks_hold_through_distillation_and_go_with_finalize(tiny_bert, tiny_ctx, batch):
    out = apply("magnitude_prune", tiny_bert, sparsity=0.5)
    masks = {id(m): m.weight_mask.clone() for m in encoder_linears(out)}
    orig = {id(m): m.weight_orig.detach().clone() for m in encoder_linears(out)}
    out = apply("distill", out, tiny_ctx, steps=5, batch_size=8, lr=1e-2)
    assert prune.is_pruned(out)
    assert any(not torch.equal(m.weight_orig, orig[id(m)]) for m in encoder_linears(out))   # it trained
    out = finalize(out)
    for m in encoder_linears(out):
        assert not hasattr(m, "weight_mask") and isinstance(m.weight, torch.nn.Parameter)
        assert (m.weight[masks[id(m)] == 0] == 0).all()                    # pruned weights stayed zero
    assert abs(sparsity(out) - 0.5) <= 0.01


@pytest.fixture(scope="module")
def dense_onnx(tiny_bert_factory, tmp_path_factory):
    """The unchanged tiny BERT, exported (what sparse and shared models are compared with)."""
    return export_onnx(tiny_bert_factory(), tmp_path_factory.mktemp("dense") / "dense.onnx")


def test_sparse_model_zips_smaller_but_is_no_smaller_unzipped(tiny_bert, dense_onnx, tmp_path):
    dense = dense_onnx
    sparse = export_onnx(finalize(apply("magnitude_prune", tiny_bert, sparsity=0.8)), tmp_path / "sparse.onnx")
    assert abs(size_mb(sparse) - size_mb(dense)) < 0.02 * size_mb(dense)     # zeros are stored like any float
    assert zipped_mb(sparse) < 0.6 * zipped_mb(dense)                         # ... and deflate well


def test_zipped_mb_is_the_size_of_a_zip_archive(tmp_path):
    import zipfile

    f = tmp_path / "w.bin"
    f.write_bytes(np.random.default_rng(0).standard_normal(50_000).astype(np.float32).tobytes()
                  + bytes(200_000))
    archive = tmp_path / "w.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.write(f, arcname=f.name)
    assert zipped_mb(f) == pytest.approx(archive.stat().st_size / 1e6, abs=2e-4)
    assert zipped_mb(f) < 0.8 * size_mb(f)


# ---------------------------------------------------------------- low_rank
@pytest.mark.parametrize("model_type", LAYOUTS)
def test_low_rank(model_type, tiny_model, batch, tmp_path):
    model = tiny_model(model_type)
    ref, n, shapes = logits(model, batch), count_params(model), linear_shapes(model)
    dense_linears = sum((i * o + o) for layer in shapes for i, o in layer.values())
    cfg = get_method("low_rank").config({"rank_ratio": 1.0, "targets": "all"})
    assert cfg.is_identity(TINY_LAYERS)
    same = apply("low_rank", model, rank_ratio=1.0, targets="all")
    assert torch.equal(logits(same, batch), ref) and count_params(same) == n

    cfg = get_method("low_rank").config({"rank_ratio": 0.25, "targets": "all"})
    out = apply("low_rank", model, rank_ratio=0.25, targets="all")
    for layer in arch.layers(out):
        for role, path in arch.linear_paths(out).items():
            m = arch.get(layer, path)
            assert isinstance(m, LowRankLinear) and m.rank == 8                # 25% of 32, a multiple of 8
            assert m.down.weight.shape == (8, m.in_features) and m.up.weight.shape == (m.out_features, 8)
            assert m.down.bias is None and m.up.bias is not None
    assert linear_shapes(out) == shapes                                       # same interface per role
    factorized = sum(cfg.rank(min(i, o)) * (i + o) + o for layer in shapes for i, o in layer.values())
    assert count_params(out) == n - dense_linears + factorized < n
    factored = logits(out, batch)
    assert torch.allclose(reloaded_logits(out, batch, tmp_path / "ckpt"), factored, atol=1e-6)


def test_low_rank_targets_only_the_chosen_linears(tiny_bert):
    out = apply("low_rank", tiny_bert, rank_ratio=0.5, targets="ffn")
    for layer in arch.layers(out):
        assert all(isinstance(m, LowRankLinear) for m in arch.ffn_linears(out, layer).values())
        assert all(type(m) is torch.nn.Linear for m in arch.attention_linears(out, layer).values())


def test_low_rank_at_full_rank_computes_the_same_function():
    torch.manual_seed(0)
    linear = torch.nn.Linear(24, 40)
    x = torch.randn(5, 24)
    full = low_rank_linear(linear, 24)
    assert torch.allclose(full(x), linear(x), atol=1e-5)
    half = low_rank_linear(linear, 12)
    best = torch.linalg.matrix_norm(linear.weight - half.dense_weight())          # Eckart-Young: the best rank 12
    s = torch.linalg.svdvals(linear.weight.detach())
    assert best.item() == pytest.approx(s[12:].square().sum().sqrt().item(), rel=1e-4)


def test_structured_pruning_after_low_rank(tiny_bert, tiny_ctx, batch, tmp_path):
    r = Recipe((Step("low_rank", {"rank_ratio": 0.5, "targets": "all"}), Step("prune_heads", {"ratio": 0.5}),
                Step("prune_ffn", {"ratio": 0.5, "multiple": 8})))
    out = r.apply_torch(tiny_bert, tiny_ctx)
    layer = arch.layers(out)[0]
    assert arch.attention_linears(out, layer)["query"].out_features == 2 * arch.head_size(out, layer)
    assert arch.ffn_linears(out, layer)["ffn_in"].out_features == 32
    assert torch.allclose(reloaded_logits(out, batch, tmp_path / "ckpt"), logits(out, batch), atol=1e-6)


def test_factorizing_after_magnitude_pruning_is_refused(tiny_bert):
    out = apply("magnitude_prune", tiny_bert, sparsity=0.5)
    for method, params in (("low_rank", {"rank_ratio": 0.5}), ("share_layers", {"groups": 2})):
        with pytest.raises(RecipeError, match=f"{method} cannot follow magnitude_prune"):
            apply(method, out, **params)


# ---------------------------------------------------------------- factorize_embeddings
@pytest.mark.parametrize("model_type", LAYOUTS)
def test_factorize_embeddings(model_type, tiny_model, batch, tmp_path):
    model = tiny_model(model_type)
    n, width = count_params(model), arch.word_embeddings(model).embedding_dim
    out = apply("factorize_embeddings", model, dim=8)
    emb = arch.word_embeddings(out)
    assert isinstance(emb, FactorizedEmbedding) and emb.embedding_dim == width
    assert arch.vocab_weight(out).shape == (TINY_VOCAB, 8) and emb.project.weight.shape == (width, 8)
    assert count_params(out) == n - TINY_VOCAB * width + TINY_VOCAB * 8 + 8 * width
    factored = logits(out, batch)
    assert torch.allclose(reloaded_logits(out, batch, tmp_path / "ckpt"), factored, atol=1e-6)
    with pytest.raises(RecipeError, match=f"dim must be below the embedding width {width}"):
        apply("factorize_embeddings", tiny_model(model_type), dim=width)


def test_embedding_factorization_at_full_width_is_exact(tiny_bert, batch):
    from autocompress.methods.factorization import factorized_embedding

    ref = logits(tiny_bert, batch)
    arch.set_word_embeddings(tiny_bert, factorized_embedding(arch.word_embeddings(tiny_bert), 32))
    assert torch.allclose(logits(tiny_bert, batch), ref, atol=1e-5)


def test_distillation_keeps_the_factorized_vocabulary_matrix_frozen(tiny_bert, tiny_ctx):
    out = apply("factorize_embeddings", tiny_bert, dim=8)
    table = arch.vocab_weight(out).detach().clone()
    projection = arch.word_embeddings(out).project.weight.detach().clone()
    out = apply("distill", out, tiny_ctx, steps=3, batch_size=8, lr=1e-2)
    assert torch.equal(arch.vocab_weight(out), table)                      # V x E: frozen, as V x H was
    assert not torch.equal(arch.word_embeddings(out).project.weight, projection)   # E x H: trained
    assert arch.vocab_weight(out).requires_grad                             # and unfrozen afterwards


# ---------------------------------------------------------------- share_layers
@pytest.mark.parametrize("model_type", LAYOUTS)
def test_share_layers(model_type, tiny_model, batch, tmp_path):
    model = tiny_model(model_type)
    ref, n = logits(model, batch), count_params(model)
    per_layer = sum(m.weight.numel() + m.bias.numel() for m in
                    [arch.get(arch.layers(model)[0], p) for p in arch.linear_paths(model).values()])
    assert get_method("share_layers").config({"groups": TINY_LAYERS}).is_identity(TINY_LAYERS)
    same = apply("share_layers", model, groups=TINY_LAYERS)
    assert torch.equal(logits(same, batch), ref) and count_params(same) == n

    layers = arch.layers(model)
    query = [arch.attention_linears(model, l)["query"].weight.detach().clone() for l in layers]
    out = apply("share_layers", model, groups=2, what="all", init="mean")
    assert count_params(out) == n - 2 * per_layer                            # 4 layers, 2 weight sets
    layers = arch.layers(out)
    for a, b in ((0, 1), (2, 3)):
        for role, path in arch.linear_paths(out).items():
            assert arch.get(layers[a], path).weight is arch.get(layers[b], path).weight
    assert arch.get(layers[1], arch.layout(out).query).weight is not arch.get(layers[2], arch.layout(out).query).weight
    assert torch.allclose(arch.attention_linears(out, layers[0])["query"].weight, (query[0] + query[1]) / 2)
    shared = logits(out, batch)
    path = save_model(out, None, tmp_path / "ckpt")
    again = load_model(path)
    assert torch.allclose(logits(again, batch), shared, atol=1e-6)
    assert count_params(again) == count_params(out)                          # still tied after loading
    q = arch.layout(again).query
    assert arch.get(arch.layers(again)[0], q).weight is arch.get(arch.layers(again)[1], q).weight


def test_share_layers_groups_and_init(tiny_bert):
    assert layer_groups(6, 4) == [range(0, 2), range(2, 4), range(4, 5), range(5, 6)]
    assert layer_groups(4, 1) == [range(0, 4)] and layer_groups(3, 5) == [range(0, 1), range(1, 2), range(2, 3)]
    first_ffn = arch.ffn_linears(tiny_bert, arch.layers(tiny_bert)[0])["ffn_in"]
    query = arch.attention_linears(tiny_bert, arch.layers(tiny_bert)[2])["query"]
    out = apply("share_layers", tiny_bert, groups=1, what="ffn")             # init: first by default
    layers = arch.layers(out)
    assert all(arch.ffn_linears(out, l)["ffn_in"] is first_ffn for l in layers)
    assert arch.attention_linears(out, layers[2])["query"] is query            # attention untouched


def test_share_layers_refuses_layers_of_different_shapes(tiny_bert, tiny_ctx):
    from autocompress.methods.pruning import prune_ffn_neurons

    prune_ffn_neurons(tiny_bert, arch.layers(tiny_bert)[1], list(range(32)))
    with pytest.raises(RecipeError, match="layers 0-1 have ffn_in parts of different shapes"):
        apply("share_layers", tiny_bert, groups=2, what="ffn", init="mean")


def test_shared_model_onnx_file_stores_shared_weights_once(tiny_bert, dense_onnx, tmp_path):
    dense = dense_onnx
    linear_bytes = 4 * sum(p.numel() for m in encoder_linears(tiny_bert) for p in m.parameters())
    out = apply("share_layers", tiny_bert, groups=1, what="all")
    shared = export_onnx(out, tmp_path / "shared.onnx")
    # 3 of the 4 layers' Linears are gone from the file (the exporter alone would keep a copy per layer)
    assert size_mb(shared) * 1e6 < size_mb(dense) * 1e6 - 0.7 * linear_bytes
    assert zipped_mb(shared) < zipped_mb(dense)


def test_shared_weights_stay_quantizable(tmp_path):
    """Weights above the exporter's folding limit (8,192 elements) that several layers share must
    still reach int8 quantization as initializers (not behind a Transpose per layer)."""
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=TINY_VOCAB, hidden_size=96, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=128, max_position_embeddings=64, num_labels=2)
    model = apply("share_layers", transformers.BertForSequenceClassification(config).eval(), groups=1)
    fp32 = export_onnx(model, tmp_path / "shared.onnx")
    int8 = Recipe((Step("quantize_int8"),)).apply_onnx(fp32, tmp_path)
    graph = onnx.load(str(fp32)).graph
    weights = {t.name for t in graph.initializer}
    assert not [n for n in graph.node if n.op_type == "Transpose" and n.input[0] in weights]
    big_fp32 = [t.name for t in onnx.load(str(int8)).graph.initializer
                if t.data_type == onnx.TensorProto.FLOAT and np.prod(t.dims) >= 96 * 96]
    assert big_fp32 == []                                                    # every shared MatMul weight is int8


# ---------------------------------------------------------------- all four, exported, on every layout
COMBINED = Recipe((Step("share_layers", {"groups": 2, "what": "ffn"}),
                   Step("low_rank", {"rank_ratio": 0.5, "targets": "attention"}),
                   Step("factorize_embeddings", {"dim": 16}),
                   Step("magnitude_prune", {"sparsity": 0.5}),
                   Step("distill", {"steps": 2, "batch_size": 8})))


@pytest.mark.parametrize("model_type", LAYOUTS)
def test_all_four_methods_export_to_onnx(model_type, tiny_model, tiny_ctx, batch, tmp_path):
    """One model carrying every module these methods make (factorized Linears and embeddings, shared
    Linears, pruned weights), exported: ONNX Runtime's logits match PyTorch's, and every weight is
    stored once (initializer bytes within the model's own parameter bytes)."""
    out = finalize(COMBINED.apply_torch(tiny_model(model_type), tiny_ctx))
    ref = logits(out, batch)
    path = export_onnx(out, tmp_path / "model.onnx")
    assert np.allclose(ort_logits(path, out, batch), ref.numpy(), atol=1e-4)
    stored = sum(numpy_helper.to_array(t).nbytes for t in onnx.load(str(path)).graph.initializer)
    assert stored <= 4 * count_params(out) + 4096
    assert torch.allclose(reloaded_logits(out, batch, tmp_path / "ckpt"), ref, atol=1e-6)


# ---------------------------------------------------------------- recipes and configs
def test_labels_and_json_round_trip():
    r = Recipe((Step("share_layers", {"groups": 2, "what": "attention"}), Step("low_rank", {"rank_ratio": 0.25}),
                Step("factorize_embeddings", {"dim": 128}), Step("magnitude_prune", {"sparsity": 0.5}),
                Step("distill", {"steps": 300})))
    assert r.short() == "share attention in 2 · rank 25% ffn · emb 128 · sparse 50% · kd 300"
    assert get_method("share_layers").label(get_method("share_layers").config({"groups": 1, "init": "mean"})) \
        == "share all in 1 mean"
    again = Recipe.from_json(r.to_json())
    assert again.to_json() == r.to_json() and again.hash == r.hash
    params = {s["method"]: s["params"] for s in json.loads(r.to_json())["steps"]}
    assert params["low_rank"] == {"rank_ratio": 0.25, "targets": "ffn", "multiple": 8}
    assert params["share_layers"] == {"groups": 2, "what": "attention", "init": "first"}
    assert all(get_method(s.method).stage == "structure" for s in r.structure_steps) and len(r.structure_steps) == 4


@pytest.mark.parametrize("method,params,word", [
    ("magnitude_prune", {"sparsity": 1.0}, "sparsity"),
    ("magnitude_prune", {"sparsity": -0.1}, "sparsity"),
    ("low_rank", {"rank_ratio": 0.0}, "rank_ratio"),
    ("low_rank", {"rank_ratio": 1.5}, "rank_ratio"),
    ("low_rank", {"rank_ratio": 0.5, "targets": "embeddings"}, "targets"),
    ("low_rank", {"rank_ratio": 0.5, "multiple": 0}, "multiple"),
    ("factorize_embeddings", {"dim": 0}, "dim"),
    ("factorize_embeddings", {"dim": 64.0}, "dim"),
    ("share_layers", {"groups": 0}, "groups"),
    ("share_layers", {"groups": 2, "what": "layernorm"}, "what"),
    ("share_layers", {"groups": 2, "init": "random"}, "init"),
])
def test_invalid_configs_name_the_parameter(method, params, word):
    with pytest.raises(RecipeError, match=f"{method}: {word}"):
        get_method(method).config(params)


def test_low_rank_rank_rounding():
    cfg = get_method("low_rank").config({"rank_ratio": 0.3})
    assert cfg.rank(384) == 112 and cfg.rank(10) == 8 and cfg.rank(4) == 4
    assert get_method("low_rank").config({"rank_ratio": 0.01}).rank(384) == 8
