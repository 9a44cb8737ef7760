"""Compression methods on a tiny BERT: layer dropping, head and FFN pruning, distillation, config checks."""
import pytest
import torch

from autocompress.checkpoint import count_params
from autocompress.arch import inputs as arch_inputs
from autocompress.methods.base import RecipeError, get_method
from autocompress.methods.distillation import kd_loss
from autocompress.methods.pruning import _gated_importance, encoder_layers, layers_to_keep
from autocompress.recipe import Recipe, Step


def apply(name, model, ctx, **params):
    m = get_method(name)
    return m.fn(model, m.config(params), ctx)


@torch.no_grad()
def logits(model, batch):
    model.eval()
    return model(**arch_inputs(model, batch)).logits


@pytest.fixture
def batch(tiny_transfer):
    """16 rows of different lengths (padded to the longest)."""
    b = tiny_transfer.collate(list(range(16)))
    assert (b["attention_mask"] == 0).any()          # really padded
    return b


def layer_state(layer):
    return {k: v.clone() for k, v in layer.state_dict().items()}


# ---------------------------------------------------------------- drop_layers
def test_drop_layers_top_keeps_first_layers(tiny_bert, tiny_ctx, batch):
    before = [layer_state(l) for l in encoder_layers(tiny_bert)]
    n_before = count_params(tiny_bert)
    out = apply("drop_layers", tiny_bert, tiny_ctx, keep=2)
    layers = encoder_layers(out)
    assert len(layers) == 2
    assert out.config.num_hidden_layers == 2
    assert count_params(out) < n_before
    per_layer = sum(p.numel() for p in layers[0].parameters())
    assert n_before - count_params(out) == 2 * per_layer
    for i in range(2):
        after = layers[i].state_dict()
        assert after.keys() == before[i].keys()
        assert all(torch.equal(after[k], before[i][k]) for k in after)
    assert logits(out, batch).shape == (16, 2)


def test_drop_layers_alternate_keeps_last(tiny_bert, tiny_ctx):
    last = layer_state(encoder_layers(tiny_bert)[3])
    first = layer_state(encoder_layers(tiny_bert)[0])
    out = apply("drop_layers", tiny_bert, tiny_ctx, keep=2, strategy="alternate")
    layers = encoder_layers(out)
    assert len(layers) == 2 and out.config.num_hidden_layers == 2
    assert all(torch.equal(layers[0].state_dict()[k], first[k]) for k in first)
    assert all(torch.equal(layers[1].state_dict()[k], last[k]) for k in last)


@pytest.mark.parametrize("n,keep,expected", [(4, 2, [0, 3]), (4, 3, [0, 2, 3]), (6, 3, [0, 2, 5]), (6, 1, [5]),
                                             (12, 4, [0, 4, 7, 11])])
def test_layers_to_keep_alternate(n, keep, expected):
    assert layers_to_keep(n, keep, "alternate") == expected
    assert layers_to_keep(n, keep, "top") == list(range(keep))


@pytest.mark.parametrize("keep", [4, 7])
def test_drop_layers_keep_all_is_identity(tiny_bert, tiny_ctx, batch, keep):
    ref = logits(tiny_bert, batch)
    out = apply("drop_layers", tiny_bert, tiny_ctx, keep=keep)
    assert len(encoder_layers(out)) == 4 and out.config.num_hidden_layers == 4
    assert torch.equal(logits(out, batch), ref)


# ---------------------------------------------------------------- prune_heads
def test_prune_heads_half(tiny_bert, tiny_ctx, tiny_transfer):
    n_before = count_params(tiny_bert)
    out = apply("prune_heads", tiny_bert, tiny_ctx, ratio=0.5)
    for layer in encoder_layers(out):
        sa = layer.attention.self
        assert sa.query.out_features == sa.key.out_features == sa.value.out_features == 16
        assert sa.query.in_features == 32
        assert layer.attention.output.dense.in_features == 16
        assert layer.attention.output.dense.out_features == 32
        assert sa.num_attention_heads == 2 and sa.all_head_size == 16
        assert len(sa.kept_heads) == 2
        assert sa.kept_heads == sorted(sa.kept_heads) and set(sa.kept_heads) <= set(range(4))
    assert count_params(out) < n_before
    # forward on batches whose lengths differ (and differ between batches)
    for b in tiny_transfer.batches(8, 4, seed=3):
        y = logits(out, b)
        assert y.shape == (len(b["labels"]), 2) and torch.isfinite(y).all()
    lone = tiny_transfer.collate([5])
    assert logits(out, lone).shape == (1, 2)


def test_prune_heads_keeps_top_scored(tiny_bert, tiny_ctx):
    cfg = get_method("prune_heads").config({"ratio": 0.5})
    targets = [(l.attention.output.dense, 4) for l in encoder_layers(tiny_bert)]
    scores = _gated_importance(tiny_bert, tiny_ctx, cfg.score_batches, cfg.batch_size, targets)
    out = get_method("prune_heads").fn(tiny_bert, cfg, tiny_ctx)
    for layer, s in zip(encoder_layers(out), scores):
        expected = sorted(torch.argsort(s, descending=True)[:2].tolist())
        assert layer.attention.self.kept_heads == expected
        assert min(s[h] for h in expected) >= max(s[h] for h in range(4) if h not in expected)


def test_prune_heads_keeps_the_right_weights(tiny_bert, tiny_ctx, batch):
    """The kept heads' q/k/v rows and output columns are the original ones (no re-indexing mistakes)."""
    orig = [layer_state(l) for l in encoder_layers(tiny_bert)]
    out = apply("prune_heads", tiny_bert, tiny_ctx, ratio=0.5)
    for layer, st in zip(encoder_layers(out), orig):
        kept = layer.attention.self.kept_heads
        rows = torch.cat([torch.arange(h * 8, (h + 1) * 8) for h in kept])
        sa = layer.attention.self
        for name in ("query", "key", "value"):
            assert torch.equal(getattr(sa, name).weight, st[f"attention.self.{name}.weight"][rows])
            assert torch.equal(getattr(sa, name).bias, st[f"attention.self.{name}.bias"][rows])
        assert torch.equal(layer.attention.output.dense.weight, st["attention.output.dense.weight"][:, rows])


def test_prune_heads_zero_ratio_is_identity(tiny_bert, tiny_ctx, batch):
    ref = logits(tiny_bert, batch)
    out = apply("prune_heads", tiny_bert, tiny_ctx, ratio=0.0)
    assert torch.equal(logits(out, batch), ref)
    assert all(l.attention.self.num_attention_heads == 4 for l in encoder_layers(out))


def test_prune_heads_removes_dead_heads(tiny_bert, tiny_ctx, batch):
    """A head whose value rows and output columns are zero contributes nothing: it is the one removed."""
    dead = {0: 1, 1: 3, 2: 0, 3: 2}                   # layer -> head made useless
    with torch.no_grad():
        for i, layer in enumerate(encoder_layers(tiny_bert)):
            cols = slice(dead[i] * 8, (dead[i] + 1) * 8)
            layer.attention.self.value.weight[cols] = 0
            layer.attention.self.value.bias[cols] = 0
            layer.attention.output.dense.weight[:, cols] = 0
    ref = logits(tiny_bert, batch)
    out = apply("prune_heads", tiny_bert, tiny_ctx, ratio=0.25)        # 3 of 4 heads stay
    for i, layer in enumerate(encoder_layers(out)):
        assert layer.attention.self.kept_heads == [h for h in range(4) if h != dead[i]]
    # removing heads that contributed nothing leaves the function unchanged
    assert torch.allclose(logits(out, batch), ref, atol=1e-5)


def test_prune_heads_twice_records_original_indices(tiny_bert, tiny_ctx):
    out = apply("prune_heads", tiny_bert, tiny_ctx, ratio=0.25)
    first = [l.attention.self.kept_heads for l in encoder_layers(out)]
    out = apply("prune_heads", out, tiny_ctx, ratio=0.5)          # 3 -> round(1.5) = 2 heads
    for layer, prev in zip(encoder_layers(out), first):
        kept = layer.attention.self.kept_heads
        assert len(kept) == 2 and set(kept) <= set(prev)


# ---------------------------------------------------------------- prune_ffn
def test_prune_ffn_half(tiny_bert, tiny_ctx, batch):
    orig = [layer_state(l) for l in encoder_layers(tiny_bert)]
    cfg = get_method("prune_ffn").config({"ratio": 0.5, "multiple": 16})
    targets = [(l.output.dense, 64) for l in encoder_layers(tiny_bert)]
    scores = _gated_importance(tiny_bert, tiny_ctx, cfg.score_batches, cfg.batch_size, targets)
    out = get_method("prune_ffn").fn(tiny_bert, cfg, tiny_ctx)
    for layer, st, s in zip(encoder_layers(out), orig, scores):
        assert layer.intermediate.dense.out_features == 32
        assert layer.output.dense.in_features == 32 and layer.output.dense.out_features == 32
        kept = sorted(torch.argsort(s, descending=True)[:32].tolist())    # the top-scored neurons
        assert torch.equal(layer.intermediate.dense.weight, st["intermediate.dense.weight"][kept])
        assert torch.equal(layer.output.dense.weight, st["output.dense.weight"][:, kept])
    y = logits(out, batch)
    assert y.shape == (16, 2) and torch.isfinite(y).all()


def test_prune_ffn_rounds_to_multiple(tiny_bert, tiny_ctx):
    out = apply("prune_ffn", tiny_bert, tiny_ctx, ratio=0.3, multiple=16)    # 64 * 0.7 = 44.8 -> 48
    assert {l.intermediate.dense.out_features for l in encoder_layers(out)} == {48}


def test_prune_ffn_zero_ratio_is_identity(tiny_bert, tiny_ctx, batch):
    ref = logits(tiny_bert, batch)
    out = apply("prune_ffn", tiny_bert, tiny_ctx, ratio=0.0)
    assert torch.equal(logits(out, batch), ref)
    assert all(l.intermediate.dense.out_features == 64 for l in encoder_layers(out))


# ---------------------------------------------------------------- distill
def test_distill_reduces_kd_loss(tiny_bert, tiny_ctx, tiny_transfer):
    cfg = get_method("distill").config({"steps": 20, "batch_size": 8, "lr": 5e-4})
    fixed = [tiny_transfer.collate(list(range(i, i + 16))) for i in range(0, 64, 16)]

    def loss(model):
        with torch.no_grad():
            model.eval()
            return sum(kd_loss(model(**arch_inputs(model, b)).logits, b["teacher_logits"], b["labels"],
                               cfg.temperature, cfg.alpha).item() for b in fixed) / len(fixed)

    emb = tiny_bert.bert.embeddings.word_embeddings.weight.detach().clone()
    other = {k: v.detach().clone() for k, v in tiny_bert.named_parameters()}
    before = loss(tiny_bert)
    out = get_method("distill").fn(tiny_bert, cfg, tiny_ctx)
    after = loss(out)
    assert after < before * 0.8, (before, after)
    assert not out.training
    assert torch.equal(out.bert.embeddings.word_embeddings.weight, emb)          # frozen
    changed = [k for k, v in out.named_parameters() if not torch.equal(v, other[k])]
    assert "classifier.weight" in changed and any("encoder.layer" in k for k in changed)
    assert "bert.embeddings.word_embeddings.weight" not in changed
    assert all(p.requires_grad for p in out.parameters())                        # restored


def test_distill_works_on_pruned_model(tiny_bert, tiny_ctx, batch):
    model = Recipe((Step("drop_layers", {"keep": 2}), Step("prune_heads", {"ratio": 0.5}),
                    Step("prune_ffn", {"ratio": 0.5}),
                    Step("distill", {"steps": 3, "batch_size": 8}))).apply_torch(tiny_bert, tiny_ctx)
    assert logits(model, batch).shape == (16, 2)


# ---------------------------------------------------------------- invalid configs
@pytest.mark.parametrize("method,params,word", [
    ("prune_heads", {"ratio": 1.0}, "ratio"),
    ("prune_heads", {"ratio": -0.1}, "ratio"),
    ("prune_ffn", {"ratio": 1.0}, "ratio"),
    ("prune_ffn", {"ratio": -0.1}, "ratio"),
    ("prune_ffn", {"ratio": 0.5, "multiple": 0}, "multiple"),
    ("drop_layers", {"keep": 0}, "keep"),
    ("drop_layers", {"keep": 2.5}, "keep"),
    ("drop_layers", {"keep": 2, "strategy": "bottom"}, "strategy"),
    ("distill", {"steps": 0}, "steps"),
    ("distill", {"steps": 10, "alpha": 1.5}, "alpha"),
    ("distill", {"steps": 10, "lr": 0}, "lr"),
    ("prune_heads", {"ratio": 0.5, "heads": 2}, "heads"),        # unknown parameter
    ("distill", {}, "steps"),                                     # missing required parameter
    ("quantize_int8", {"per_channel": "yes"}, "per_channel"),
])
def test_invalid_config_names_parameter(method, params, word):
    with pytest.raises(RecipeError, match=word):
        get_method(method).config(params)
    with pytest.raises(RecipeError, match=word):
        Recipe((Step(method, params),))


def test_unknown_method():
    with pytest.raises(RecipeError, match="prune_everything") as e:
        Recipe((Step("prune_everything", {}),))
    assert "prune_heads" in str(e.value)            # lists the known ones
    with pytest.raises(RecipeError):
        get_method("prune_everything")


def test_registry_stages():
    assert {n: get_method(n).stage for n in ("drop_layers", "prune_heads", "prune_ffn", "distill", "quantize_int8")} \
        == {"drop_layers": "structure", "prune_heads": "structure", "prune_ffn": "structure", "distill": "recovery",
            "quantize_int8": "onnx"}
    assert get_method("distill").kind == "torch" and get_method("quantize_int8").kind == "onnx"


def test_distillation_stops_on_a_non_finite_loss(tiny_bert, tiny_transfer):
    """A NaN loss is an error with its reason (the trial fails and the search goes on), not a model of NaNs."""
    import dataclasses

    import torch

    from autocompress.methods.base import Context

    broken = dataclasses.replace(tiny_transfer, teacher_logits=torch.full_like(tiny_transfer.teacher_logits, float("nan")))
    with pytest.raises(FloatingPointError, match="distill: the loss became nan at step 1 of 5"):
        get_method("distill").fn(tiny_bert, get_method("distill").config({"steps": 5}), Context(broken))
