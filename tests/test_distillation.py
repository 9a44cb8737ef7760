"""Distillation targets (logits, hidden states, attention, embeddings): identity, mapping, heads, projections,
training, checkpoints, labels, recipes — on tiny models of every supported layout."""
import copy
from contextlib import nullcontext

import pytest
import torch
import transformers
from safetensors.torch import load_file

from autocompress import arch
from autocompress.checkpoint import load_model, save_model
from autocompress.methods import distillation as D
from autocompress.methods.base import Context, RecipeError
from autocompress.features import TransferSet, augment
from autocompress.methods.pruning import prune_attention_heads
from autocompress.recipe import Recipe, Step

from conftest import LAYOUTS, make_features, tiny_config

TARGETS = ("hidden", "attention", "embeddings")


@pytest.fixture(scope="module")
def transfer():
    """Teacher logits that a student can move towards (as tiny_transfer), 64 rows of 3-24 tokens."""
    g = torch.Generator().manual_seed(1)
    return TransferSet(make_features(64, seed=1), torch.randint(0, 2, (64,), generator=g),
                       torch.tensor([2.0, -1.0]) + torch.randn(64, 2, generator=g))


@pytest.fixture
def teacher(tiny_bert):
    return tiny_bert


def ctx_for(transfer, teacher) -> Context:
    return Context(transfer, seed=0, teacher=lambda: teacher)


def structure(model, transfer, *steps) -> torch.nn.Module:
    return Recipe(tuple(Step(m, p) for m, p in steps)).apply_torch(model, Context(transfer))


def losses(student, teacher, cfg, batches, targets=None) -> dict[str, float]:
    """Each intermediate target's loss, averaged over ``batches`` (eval mode, as distillation computes them)."""
    targets = targets or D.Targets(cfg, student, teacher, D.target_widths(student, teacher, batches[0]))
    wants = {"output_hidden_states": True, "output_attentions": cfg.attention > 0}
    total: dict[str, float] = {}
    student.eval()
    with torch.no_grad(), D.attention_maps(student, teacher) if cfg.attention > 0 else nullcontext():
        for b in batches:
            got = targets(student(**arch.inputs(student, b), **wants), teacher(**arch.inputs(teacher, b), **wants),
                          b["attention_mask"])
            for k, v in got.items():
                total[k] = total.get(k, 0.0) + v.item() / len(batches)
    return total


def fixed_batches(transfer, n=4, size=16):
    return [transfer.collate(list(range(i * size, (i + 1) * size))) for i in range(n)]


# ---------------------------------------------------------------- identity and difference
@pytest.mark.parametrize("target", TARGETS)
def test_each_target_is_zero_for_the_teacher_itself_and_positive_otherwise(target, teacher, transfer):
    cfg = D.Distillation(steps=1, **{target: 1.0})
    batches = fixed_batches(transfer, n=2)
    same = copy.deepcopy(teacher)
    assert losses(same, teacher, cfg, batches)[target] == pytest.approx(0.0, abs=1e-7)
    changed = copy.deepcopy(teacher)
    with torch.no_grad():
        layer = arch.layers(changed)[0]
        arch.attention_linears(changed, layer)["query"].weight.mul_(3.0)       # layer 0's attention and output
        changed.base_model.embeddings.LayerNorm.weight.add_(0.5)              # the embedding output
    assert losses(changed, teacher, cfg, batches)[target] > 1e-3


def test_loss_functions_by_hand():
    s = torch.tensor([0.5, 0.5, 0.0]).view(1, 1, 1, 3)                         # [B=1, heads=1, T=1, keys=3]
    t = torch.tensor([0.25, 0.75, 0.0]).view(1, 1, 1, 3)
    mask = torch.ones(1, 1)
    expect = 0.25 * torch.log(torch.tensor(0.5)) + 0.75 * torch.log(torch.tensor(1.5))   # KL(t || s); 0 log 0 = 0
    assert D.attention_loss(s, t, mask).item() == pytest.approx(expect.item(), rel=1e-6)
    h_s, h_t = torch.zeros(1, 2, 4), torch.ones(1, 2, 4)
    assert D.hidden_loss(h_s, h_t, torch.tensor([[1.0, 0.0]])).item() == pytest.approx(1.0)
    h_s[0, 1] = 5.0                                                            # a padded token does not count
    assert D.hidden_loss(h_s, h_t, torch.tensor([[1.0, 0.0]])).item() == pytest.approx(1.0)


# ---------------------------------------------------------------- layer mapping
def test_mapping_follows_the_layers_drop_layers_kept(teacher, transfer):
    student = structure(copy.deepcopy(teacher), transfer, ("drop_layers", {"keep": 3, "strategy": "alternate"}))
    assert student.config.autocompress_layers == [0, 2, 3]
    assert D.layer_pairs(student, 4, "origin") == [(0, 0), (1, 2), (2, 3)]
    assert D.layer_pairs(student, 4, "uniform") == [(0, 0), (1, 1), (2, 3)]
    assert D.layer_pairs(student, 4, "last") == [(2, 3)]
    twice = structure(student, transfer, ("drop_layers", {"keep": 2, "strategy": "top"}))
    assert D.layer_pairs(twice, 4, "origin") == [(0, 0), (1, 2)]             # a second drop keeps the record


def test_origin_mapping_pairs_each_kept_layer_with_itself(teacher, transfer):
    """After dropping the top layer, the three kept layers compute exactly what they did in the teacher:
    paired by origin, hidden and attention losses are zero; paired uniformly (layer 2 with teacher layer 3), not."""
    student = structure(copy.deepcopy(teacher), transfer, ("drop_layers", {"keep": 3, "strategy": "top"}))
    batches = fixed_batches(transfer, n=2)
    origin = losses(student, teacher, D.Distillation(steps=1, hidden=1.0, attention=1.0), batches)
    uniform = losses(student, teacher, D.Distillation(steps=1, hidden=1.0, attention=1.0, mapping="uniform"), batches)
    assert origin["hidden"] == pytest.approx(0.0, abs=1e-7) and origin["attention"] == pytest.approx(0.0, abs=1e-7)
    assert uniform["hidden"] > 1e-3 and uniform["attention"] > 1e-4


def test_origin_mapping_needs_a_record_when_depths_differ(teacher, transfer):
    student = structure(copy.deepcopy(teacher), transfer, ("drop_layers", {"keep": 2}))
    del student.config.autocompress_layers
    with pytest.raises(RecipeError, match="mapping 'uniform'"):
        D.layer_pairs(student, 4, "origin")
    assert D.layer_pairs(student, 4, "uniform") == [(0, 1), (1, 3)]


# ---------------------------------------------------------------- heads
def test_pruned_heads_are_compared_with_the_teacher_heads_they_were(teacher, transfer):
    student = copy.deepcopy(teacher)
    first = arch.layers(student)[0]
    prune_attention_heads(student, first, [1, 3])
    assert D.head_map(student, teacher, 0, 0).tolist() == [1, 3]
    assert D.head_map(student, teacher, 1, 1).tolist() == [0, 1, 2, 3]      # an unpruned layer: head by head
    batches = fixed_batches(transfer, n=2)
    cfg = D.Distillation(steps=1, attention=1.0, mapping="last")
    targets = D.Targets(cfg, student, teacher, D.target_widths(student, teacher, batches[0]))
    targets.pairs, targets.heads = [(0, 0)], [D.head_map(student, teacher, 0, 0)]
    assert losses(student, teacher, cfg, batches, targets)["attention"] == pytest.approx(0.0, abs=1e-7)
    targets.heads = [torch.tensor([0, 1])]                                  # the wrong heads: not the same maps
    assert losses(student, teacher, cfg, batches, targets)["attention"] > 1e-3
    targets.heads = [None]                                                  # mean over heads: not zero either
    assert losses(student, teacher, cfg, batches, targets)["attention"] > 1e-4


def test_heads_of_unrelated_layers_with_other_counts_are_compared_on_their_mean(teacher):
    student = copy.deepcopy(teacher)
    prune_attention_heads(student, arch.layers(student)[3], [0, 2])
    student.config.autocompress_layers = [0, 1, 2, 3]
    assert D.head_map(student, teacher, 3, 2) is None                        # paired with a layer it was not


# ---------------------------------------------------------------- projections
def test_a_projection_is_learned_where_widths_differ_and_never_saved(teacher, transfer, tmp_path, monkeypatch):
    """A narrower student (hidden 16, 2 heads) of the 32-wide teacher: hidden and embedding targets go
    through learned projections, attention through the mean over heads; the model keeps none of it."""
    config = transformers.BertConfig(vocab_size=200, hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=64, num_labels=2,
                                     initializer_range=0.2)
    torch.manual_seed(0)
    student = transformers.BertForSequenceClassification(config).eval()
    keys_before = set(student.state_dict())
    params_before = sum(p.numel() for p in student.parameters())
    made = []

    class Spy(D.Targets):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            made.append((self, {k: v.detach().clone() for k, v in self.state_dict().items()}))

    monkeypatch.setattr(D, "Targets", Spy)
    cfg = D.Distillation(steps=5, batch_size=8, lr=1e-2, hidden=1.0, embeddings=1.0, attention=1.0)
    model, targets = D.train(student, cfg, ctx_for(transfer, teacher))
    (spy, initial), = made
    assert spy is targets and set(targets.project) == {"hidden", "embeddings"}
    assert targets.project["hidden"].weight.shape == (32, 16)
    assert targets.heads == [None] * 4
    for k, v in targets.state_dict().items():
        assert not torch.equal(v, initial[k]), f"{k} was not trained"
    assert set(model.state_dict()) == keys_before and sum(p.numel() for p in model.parameters()) == params_before
    path = save_model(model, None, tmp_path / "ckpt")
    saved = load_file(str(path / "model.safetensors"))
    assert not any("project" in k for k in saved) and set(saved) <= keys_before
    batch = transfer.collate(list(range(8)))
    with torch.no_grad():
        assert torch.allclose(load_model(path)(**arch.inputs(model, batch)).logits,
                              model(**arch.inputs(model, batch)).logits, atol=1e-5)


# ---------------------------------------------------------------- training
@pytest.mark.parametrize("target", TARGETS)
def test_distilling_a_target_lowers_its_own_loss(target, teacher, transfer):
    student = structure(copy.deepcopy(teacher), transfer, ("drop_layers", {"keep": 3, "strategy": "alternate"}))
    if target == "embeddings":       # they differ from the teacher's only where a step changed them: here, their scale
        with torch.no_grad():
            student.base_model.embeddings.LayerNorm.weight.mul_(1.5)
    lr = 1e-2 if target == "embeddings" else 3e-3      # Adam moves the LayerNorm's scale about lr per step
    cfg = D.Distillation(steps=25, batch_size=16, lr=lr, logits=0.0, **{target: 1.0})
    batches = fixed_batches(transfer)
    before = losses(student, teacher, cfg, batches)[target]
    model, targets = D.train(student, cfg, ctx_for(transfer, teacher))
    after = losses(model, teacher, cfg, batches, targets)[target]
    assert after < 0.8 * before, (before, after)


def test_training_restores_attention_and_dropout_and_reloads_the_same(teacher, transfer, tmp_path):
    student = structure(copy.deepcopy(teacher), transfer, ("drop_layers", {"keep": 3, "strategy": "alternate"}),
                        ("prune_heads", {"ratio": 0.5}))
    rates = [arch.attention_dropout(student, layer).p for layer in arch.layers(student)]
    assert all(r > 0 for r in rates)
    cfg = D.Distillation(steps=3, batch_size=8, hidden=1.0, attention=1.0, embeddings=1.0)
    model = D.distill(student, cfg, ctx_for(transfer, teacher))
    assert model.config._attn_implementation == "sdpa" and teacher.config._attn_implementation == "sdpa"
    assert [arch.attention_dropout(model, layer).p for layer in arch.layers(model)] == rates
    assert not model.training and all(p.requires_grad for p in model.parameters())
    batch = transfer.collate(list(range(8)))
    with torch.no_grad():
        ref = model(**arch.inputs(model, batch)).logits
        again = load_model(save_model(model, None, tmp_path / "ckpt"))(**arch.inputs(model, batch)).logits
    assert torch.allclose(again, ref, atol=1e-5)


def test_logits_only_never_runs_the_teacher(tiny_bert, transfer):
    def no_teacher():
        raise AssertionError("the teacher was loaded for logits-only distillation")

    D.distill(tiny_bert, D.Distillation(steps=2, batch_size=8), Context(transfer, teacher=no_teacher))


# ---------------------------------------------------------------- augmentation
def _rows(*lengths, pair=False):
    """A padded batch of rows [CLS] w... [SEP] with distinct word ids per row (101 and 102 as CLS and SEP)."""
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.tensor([101] + [1000 + 100 * i + k for k in range(n - 2)] + [102])
        mask[i, :n] = 1
    types = mask.clone() if pair else torch.zeros_like(ids)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def test_replace_swaps_a_quarter_of_the_inner_pieces_for_the_batchs_own():
    batch = _rows(*[42] * 16)
    before = {k: v.clone() for k, v in batch.items()}
    chosen = augment(batch, 0.5, "replace", torch.Generator().manual_seed(0))
    assert 3 <= int(chosen.sum()) <= 13
    ids, old = batch["input_ids"], before["input_ids"]
    assert torch.equal(ids[~chosen], old[~chosen])                     # the other rows as they were
    assert torch.equal(ids[:, 0], old[:, 0]) and torch.equal(ids[:, -1], old[:, -1])   # [CLS], [SEP] kept
    assert torch.equal(batch["attention_mask"], before["attention_mask"])
    changed = (ids != old)[chosen, 1:-1].float().mean().item()
    assert 0.15 < changed < 0.3                                         # about REPLACE_RATE (a swap may draw itself)
    assert set(ids[ids != old].tolist()) <= set(old[:, 1:-1].flatten().tolist())   # the batch's own words


def test_join_makes_one_input_of_two_rows_and_leaves_pairs_alone():
    batch = _rows(5, 4, 3)
    old = batch["input_ids"].clone()
    chosen = augment(batch, 1.0, "join", torch.Generator().manual_seed(0))
    assert chosen.all()
    rows = [r[m.bool()].tolist() for r, m in zip(batch["input_ids"], batch["attention_mask"])]
    words = [r[1:-1] for r in (o[o != 0].tolist() for o in old)]
    for i, r in enumerate(rows):
        assert r[0] == 101 and r[-1] == 102 and r[1:1 + len(words[i])] == words[i]
        assert r[1 + len(words[i]):-1] in [w for j, w in enumerate(words) if j != i]   # then another row's words
    assert batch["input_ids"].shape == batch["attention_mask"].shape == batch["token_type_ids"].shape
    long = _rows(100, 90)
    augment(long, 1.0, "join", torch.Generator().manual_seed(0), max_length=128)
    assert long["input_ids"].shape[1] == 128 and (long["input_ids"][:, 127] == 102).all()
    pairs = _rows(6, 5, pair=True)
    augment(pairs, 1.0, "join", torch.Generator().manual_seed(0))
    assert pairs["input_ids"].shape == (2, 6)               # a pair task's rows are never joined (replaced instead)


def test_augmented_rows_learn_the_teachers_live_answer_not_the_cached_one(tiny_bert, transfer):
    """Cached logits that are not numbers: with every row augmented the loss never reads them (the teacher
    labels its rows itself); without augmentation the same recovery fails on them."""
    broken = TransferSet(transfer.features, transfer.labels, torch.full_like(transfer.teacher_logits, float("nan")))
    teacher = copy.deepcopy(tiny_bert)
    D.distill(tiny_bert, D.Distillation(steps=3, batch_size=8, augment=1.0), ctx_for(broken, teacher))
    with pytest.raises(FloatingPointError):
        D.distill(copy.deepcopy(teacher), D.Distillation(steps=3, batch_size=8), ctx_for(broken, teacher))


@pytest.mark.parametrize("native", [True, False])
def test_bf16_runs_the_forward_passes_in_bf16_only_where_the_cpu_has_it(native, tiny_bert, transfer, monkeypatch):
    """Under ``bf16`` both models' layers compute in bf16 on a CPU with native bf16 (in fp32 elsewhere: emulated
    bf16 is slower); the weights, the losses and the trained model stay float32."""
    monkeypatch.setattr(D, "native_bf16", lambda: native)
    teacher = copy.deepcopy(tiny_bert)
    seen = {"student": set(), "teacher": set()}
    for name, m in (("student", tiny_bert), ("teacher", teacher)):
        linear = next(x for x in arch.layers(m)[0].modules() if isinstance(x, torch.nn.Linear))
        linear.register_forward_hook(lambda mod, args, out, name=name: seen[name].add(out.dtype))
    cfg = D.Distillation(steps=3, batch_size=8, hidden=1.0, attention=1.0, bf16=True)
    model = D.distill(tiny_bert, cfg, ctx_for(transfer, teacher))
    assert seen["student"] and seen["teacher"]
    assert (torch.bfloat16 in seen["student"]) == (torch.bfloat16 in seen["teacher"]) == native
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    with torch.no_grad():
        logits = model(**arch.inputs(model, transfer.collate(list(range(8))))).logits
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


def test_augmentation_stays_out_of_the_hash_at_its_default():
    plain = Recipe((Step("distill", {"steps": 300}),))
    assert Recipe((Step("distill", {"steps": 300, "augment": 0.0, "augment_mode": "replace"}),)).hash == plain.hash
    assert Recipe((Step("distill", {"steps": 300, "augment": 0.5}),)).hash != plain.hash
    assert Recipe((Step("distill", {"steps": 300, "bf16": True}),)).hash != plain.hash
    assert Recipe((Step("distill", {"steps": 300, "augment": 0.5, "augment_mode": "join"}),)).hash != \
        Recipe((Step("distill", {"steps": 300, "augment": 0.5}),)).hash


def test_intermediate_targets_without_a_teacher_are_refused(tiny_bert, transfer):
    with pytest.raises(RecipeError, match="distill: the attention target.* need the teacher"):
        D.distill(tiny_bert, D.Distillation(steps=2, attention=1.0), Context(transfer))


@pytest.mark.parametrize("model_type", LAYOUTS)
def test_every_layout(model_type, tiny_model, transfer, tmp_path):
    """Dropped layers, pruned heads, every target: the origin pair of layer 0 starts at zero on the
    kept heads; training runs; the model reloads with the same logits and takes the layout's inputs."""
    teacher = tiny_model(model_type)
    student = structure(copy.deepcopy(teacher), transfer, ("drop_layers", {"keep": 3, "strategy": "alternate"}),
                        ("prune_heads", {"ratio": 0.5}))
    cfg = D.Distillation(steps=3, batch_size=8, lr=1e-3, hidden=1.0, attention=1.0, embeddings=1.0)
    batches = fixed_batches(transfer, n=1)
    targets = D.Targets(cfg, student, teacher, D.target_widths(student, teacher, batches[0]))
    kept = arch.heads_module(student, arch.layers(student)[0]).kept_heads
    assert targets.pairs == [(0, 0), (1, 2), (2, 3)] and targets.heads[0].tolist() == kept
    first = copy.copy(targets)
    first.pairs, first.heads = targets.pairs[:1], targets.heads[:1]
    start = losses(student, teacher, cfg, batches, first)
    assert start["attention"] == pytest.approx(0.0, abs=1e-6) and start["embeddings"] == pytest.approx(0.0, abs=1e-7)
    assert start["hidden"] > 1e-4                      # the pruned heads no longer add to the layer's output
    model = D.distill(student, cfg, ctx_for(transfer, teacher))
    batch = transfer.collate(list(range(8)))
    assert ("token_type_ids" in arch.inputs(model, batch)) == (model_type != "distilbert")
    with torch.no_grad():
        ref = model(**arch.inputs(model, batch)).logits
        again = load_model(save_model(model, None, tmp_path / "ckpt"))(**arch.inputs(model, batch)).logits
    assert torch.isfinite(ref).all() and torch.allclose(again, ref, atol=1e-5)


# ---------------------------------------------------------------- config, labels, recipes
@pytest.mark.parametrize("params,label", [
    ({"steps": 400}, "kd 400"),
    ({"steps": 400, "attention": 1.0, "hidden": 2.0}, "kd 400 +att+hid"),
    ({"steps": 400, "attention": 1.0, "hidden": 1.0, "embeddings": 1.0, "mapping": "uniform"},
     "kd 400 +att+hid+emb uniform"),
    ({"steps": 300, "hidden": 1.0, "logits": 0.0}, "kd 300 +hid (no logits)"),
    ({"steps": 300, "mapping": "last"}, "kd 300"),              # a mapping without intermediate targets maps nothing
    ({"steps": 400, "augment": 0.5}, "kd 400 aug 50%"),
    ({"steps": 400, "hidden": 1.0, "bf16": True}, "kd 400 +hid bf16"),
    ({"steps": 3000, "hidden": 1.0, "attention": 1.0, "augment": 0.25, "augment_mode": "both"},
     "kd 3000 +att+hid aug 25% both"),
])
def test_labels(params, label):
    assert Recipe((Step("distill", params),)).short() == label


@pytest.mark.parametrize("params,word", [
    ({"steps": 10, "hidden": -1.0}, "hidden"),
    ({"steps": 10, "attention": float("nan")}, "attention"),
    ({"steps": 10, "embeddings": True}, "embeddings"),
    ({"steps": 10, "logits": 0.0}, "every loss weight is 0"),
    ({"steps": 10, "attention": 1.0, "mapping": "skip"}, "mapping must be one of origin, uniform, last"),
    ({"steps": 10, "augment": 1.5}, r"augment must be in \[0, 1\]"),
    ({"steps": 10, "augment": 0.5, "augment_mode": "mix"}, "augment_mode must be one of replace, join, both"),
    ({"steps": 10, "bf16": "yes"}, "bf16 must be true or false"),
])
def test_invalid_configs_name_the_parameter(params, word):
    with pytest.raises(RecipeError, match=word):
        Recipe((Step("distill", params),))


def test_recipe_json_round_trip():
    r = Recipe((Step("drop_layers", {"keep": 4}),
                Step("distill", {"steps": 400, "attention": 2, "hidden": 0.5, "mapping": "uniform"})))
    again = Recipe.from_json(r.to_json())
    assert again.to_json() == r.to_json() and again.hash == r.hash
    params = again.to_dict()["steps"][1]["params"]
    assert params["attention"] == 2.0 and isinstance(params["attention"], float) and params["embeddings"] == 0.0
    assert again.short() == "layers 4 · kd 400 +att+hid uniform"
    assert r.hash != Recipe((Step("drop_layers", {"keep": 4}), Step("distill", {"steps": 400}))).hash
