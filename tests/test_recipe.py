"""Recipes: validation, JSON round trip, stable hashes, short descriptions, application order."""
import json

import pytest
import torch

from autocompress.arch import inputs as arch_inputs
from autocompress.methods.base import RecipeError
from autocompress.methods.pruning import encoder_layers
from autocompress.recipe import RECIPE_VERSION, Recipe, Step


def full_recipe() -> Recipe:
    return Recipe((Step("drop_layers", {"keep": 4}), Step("prune_heads", {"ratio": 0.25}),
                   Step("prune_ffn", {"ratio": 0.5}), Step("distill", {"steps": 300}), Step("quantize_int8")))


def test_json_round_trip():
    r = full_recipe()
    text = r.to_json()
    back = Recipe.from_json(text)
    assert back.to_json() == text
    assert back.hash == r.hash
    assert back == Recipe.from_dict(json.loads(text))
    d = json.loads(text)
    assert d["version"] == RECIPE_VERSION
    assert [s["method"] for s in d["steps"]] == ["drop_layers", "prune_heads", "prune_ffn", "distill",
                                                  "quantize_int8"]
    # defaults are written out
    assert d["steps"][0]["params"] == {"keep": 4, "strategy": "top"}
    assert d["steps"][3]["params"]["temperature"] == 2.0
    assert d["steps"][4]["params"] == {"per_channel": True, "reduce_range": False, "fuse_attention": True}


def test_hash_is_stable():
    a = Recipe((Step("distill", {"steps": 100, "lr": 2e-4, "temperature": 4.0}),))
    b = Recipe((Step("distill", {"temperature": 4.0, "lr": 2e-4, "steps": 100}),))       # key order
    assert a.hash == b.hash and a.to_json() == b.to_json()
    omitted = Recipe((Step("drop_layers", {"keep": 3}), Step("quantize_int8")))
    filled = Recipe((Step("drop_layers", {"keep": 3, "strategy": "top"}),
                     Step("quantize_int8", {"per_channel": True, "reduce_range": False})))
    assert omitted.hash == filled.hash
    assert len(a.hash) == 16 and int(a.hash, 16) >= 0
    # the hash is a function of the JSON text only (same in another process)
    assert Recipe.from_json(omitted.to_json()).hash == omitted.hash


def test_hash_differs():
    base = full_recipe()
    hashes = {base.hash}
    for variant in [
        Recipe((Step("drop_layers", {"keep": 3}),) + base.steps[1:]),
        Recipe((Step("drop_layers", {"keep": 4, "strategy": "alternate"}),) + base.steps[1:]),
        Recipe(base.steps[:3] + (Step("distill", {"steps": 300, "lr": 2e-4}),) + base.steps[4:]),
        Recipe(base.steps[:4] + (Step("quantize_int8", {"per_channel": False}),)),
        Recipe(base.steps[:4]),                                     # a step fewer
        Recipe((base.steps[1], base.steps[0]) + base.steps[2:]),   # another order
    ]:
        assert variant.hash not in hashes
        hashes.add(variant.hash)


def test_onnx_step_before_torch_step():
    with pytest.raises(RecipeError, match="ONNX"):
        Recipe((Step("quantize_int8"), Step("distill", {"steps": 10})))
    with pytest.raises(RecipeError):
        Recipe.from_dict({"version": RECIPE_VERSION, "steps": [{"method": "quantize_int8"},
                                                                {"method": "drop_layers", "params": {"keep": 2}}]})


def test_unsupported_version():
    with pytest.raises(RecipeError, match="version"):
        Recipe.from_dict({"version": 99, "steps": []})


def test_invalid_parameters_from_json():
    text = json.dumps({"version": RECIPE_VERSION, "steps": [{"method": "prune_heads", "params": {"ratio": 1.5}}]})
    with pytest.raises(RecipeError, match="ratio"):
        Recipe.from_json(text)


def test_short():
    assert full_recipe().short() == "layers 4 · heads -25% · ffn -50% · kd 300 · int8"
    assert Recipe().short() == "fp32 (unchanged)"
    assert Recipe((Step("drop_layers", {"keep": 2, "strategy": "alternate"}),)).short() == "layers 2 alt"
    assert Recipe((Step("prune_ffn", {"ratio": 0.75}), Step("quantize_int8"))).short() == "ffn -75% · int8"


def test_torch_and_onnx_steps():
    r = full_recipe()
    assert [s.method for s in r.torch_steps] == ["drop_layers", "prune_heads", "prune_ffn", "distill"]
    assert [s.method for s in r.onnx_steps] == ["quantize_int8"]
    assert Recipe().torch_steps == () and Recipe().onnx_steps == ()


def test_apply_torch_in_order(tiny_bert, tiny_ctx, tiny_transfer):
    seen = []
    tiny_ctx.progress = seen.append
    r = Recipe((Step("drop_layers", {"keep": 3}), Step("prune_heads", {"ratio": 0.5}),
                Step("prune_ffn", {"ratio": 0.5}), Step("quantize_int8")))
    model = r.apply_torch(tiny_bert, tiny_ctx)
    assert seen == ["drop_layers", "prune_heads", "prune_ffn"]              # the onnx step is not applied here
    layers = encoder_layers(model)
    assert len(layers) == 3
    assert all(l.attention.self.num_attention_heads == 2 and l.intermediate.dense.out_features == 32 for l in layers)
    with torch.no_grad():
        assert model(**arch_inputs(model, tiny_transfer.collate([0, 1, 2]))).logits.shape == (3, 2)


def test_empty_recipe_changes_nothing(tiny_bert, tiny_ctx, tiny_transfer):
    b = tiny_transfer.collate(list(range(8)))
    with torch.no_grad():
        ref = tiny_bert(**arch_inputs(tiny_bert, b)).logits
        out = Recipe().apply_torch(tiny_bert, tiny_ctx)(**arch_inputs(tiny_bert, b)).logits
    assert torch.equal(ref, out)


# ---------------------------------------------------------------- the stored form's versions
def test_recipe_stored_before_steps_had_versions_reads_back():
    """A version-1 recipe (steps without a version key, as stores written before steps carried their
    config's version hold) reads back as the same steps, and is written again in today's form."""
    from autocompress.methods import get_method

    old = {"version": 1, "steps": [
        {"method": "drop_layers", "params": {"keep": 4, "strategy": "top"}},
        {"method": "prune_heads", "params": {"ratio": 0.25, "score_batches": 8, "batch_size": 32}},
        {"method": "prune_ffn", "params": {"ratio": 0.5, "score_batches": 8, "batch_size": 32, "multiple": 16}},
        {"method": "distill", "params": {"steps": 300}},
        {"method": "quantize_int8", "params": {"per_channel": True, "reduce_range": False}}]}
    now = full_recipe()
    back = Recipe.from_json(json.dumps(old))
    assert [s.method for s in back.steps] == [s.method for s in now.steps]
    assert [s.config for s in back.steps[:4]] == [s.config for s in now.steps[:4]]
    # quantize_int8 is version 2 now (fused attention first): the stored step keeps the meaning it had
    assert back.steps[4].config.fuse_attention is False and now.steps[4].config.fuse_attention is True
    assert Recipe.from_json(back.to_json()).to_json() == back.to_json() and back.hash != now.hash
    assert all(s["version"] == get_method(s["method"]).version for s in json.loads(back.to_json())["steps"])
    # a step whose config is still version 1 reads from its version-1 form as from today's
    first = {"version": 1, "steps": [{k: v for k, v in s.items() if k != "version"} for s in now.to_dict()["steps"][:4]]}
    assert Recipe.from_dict(first).to_json() == Recipe(now.steps[:4]).to_json()


def test_current_recipe_names_every_steps_version():
    from autocompress.methods import get_method

    d = json.loads(full_recipe().to_json())
    assert d["version"] == RECIPE_VERSION == 2
    assert [s["version"] for s in d["steps"]] == [get_method(s["method"]).version for s in d["steps"]]
    assert all(set(s) == {"method", "version", "params"} for s in d["steps"])


def test_hash_is_that_of_stores_written_before_steps_had_versions():
    """Duplicates and the recovery cache find trials stored before steps carried a config version: the
    hash of a version-1 recipe is what the version-1 code computed (c0ae5d779e6b870e, taken from it); a
    step whose config version is above 1 hashes apart."""
    import dataclasses

    from autocompress.methods import REGISTRY

    r = Recipe((Step("drop_layers", {"keep": 4}), Step("distill", {"steps": 300}), Step("quantize_static")))
    assert r.hash == "c0ae5d779e6b870e"
    m = REGISTRY["drop_layers"]
    cls = m.config_cls
    had = cls.__dict__.get("VERSION")
    try:
        cls.VERSION = 2
        assert r.hash != "c0ae5d779e6b870e" and '"version":2' in r.to_json()
    finally:
        if had is None:
            del cls.VERSION
        else:
            cls.VERSION = had
    assert dataclasses.fields(cls) and m.version == 1
