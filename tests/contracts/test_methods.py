"""The contract every registered compression method must pass (Optuna's habit: one suite over every
implementation). Parametrized over the registry as it stands once ``autocompress.methods`` is imported,
so methods named in ``AUTOCOMPRESS_PLUGINS`` are checked too, and a method registered tomorrow is checked
without anyone writing a test for it.

What a method declares for the suite, on its config class (``typing.ClassVar``, beside its code; see
``autocompress/methods/base.py``): ``EXAMPLE`` (a small non-identity setting for the tiny BERT: 4 layers,
4 heads, hidden 32, FFN 64, vocab 200), ``IDENTITY`` (parameters that leave the logits unchanged, or None
where there are none) and, for the onnx stage, ``TOLERANCE`` (the largest |logit change| on the tiny
model). A method that declares nothing fails here, with a message saying what to declare.

Checked for every method: the config round-trips through a recipe's JSON with its version, and a stored
version the code does not know is refused; the identity setting changes no logit; (torch stages) a
finalized model saves and reloads with the same logits, and its exported artifact gives PyTorch's logits;
(onnx stage) the method applied to the tiny model's fp32 graph stays within its tolerance and loads in
ONNX Runtime; an unknown parameter and a bad value are refused with one-line errors naming the method;
the label is a short line.
"""
from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import onnx
import pytest

import autocompress.methods                                      # noqa: F401  (fills the registry, plugins too)
from autocompress import checkpoint, export, pipeline
from autocompress.evaluate import predict_torch
from autocompress.finalize import finalize
from autocompress.methods import REGISTRY, Context, Method, RecipeError, get_method
from autocompress.recipe import RECIPE_VERSION, Recipe, Step

from conftest import TINY_LAYERS

METHODS = sorted(REGISTRY)
TORCH = [n for n in METHODS if REGISTRY[n].kind == "torch"]
ONNX = [n for n in METHODS if REGISTRY[n].kind == "onnx"]

# What each declaration is, as the failure message tells a method's author.
DECLARATIONS = {
    "EXAMPLE": "EXAMPLE: ClassVar[dict] = {...}  (a small non-identity setting that runs in a second or two on "
               "the tiny BERT: 4 layers, 4 heads, hidden 32, FFN 64, vocab 200)",
    "IDENTITY": "IDENTITY: ClassVar[dict | None] = {...}  (parameters that leave the model's logits unchanged; "
                "None if there are none)",
    "TOLERANCE": "TOLERANCE: ClassVar[float] = ...  (onnx stage: the largest |logit change| it makes on the tiny "
                 "model's fp32 graph)",
}
TORCH_ATOL = 1e-4        # ONNX Runtime against PyTorch, as test_checkpoint_export and test_early_exit use
RELOAD_ATOL = 1e-6       # a reloaded checkpoint against the model saved
IDENTITY_ATOL = 1e-5     # an identity setting against the untouched model (as test_methods uses)
LABEL_MAX = 40           # characters: a label is a table cell
BAD_VALUES = (None, "no such value", -1, [])   # tried on a config's first field: refused, or accepted, never a crash


def declared(method: Method, name: str):
    """The config's declaration ``name``, or a failure saying what to declare and where."""
    cls = method.config_cls
    if not hasattr(cls, name):
        pytest.fail(f"{method.name}: its config {cls.__module__}.{cls.__qualname__} declares no {name} for the "
                    f"method contract suite; add {DECLARATIONS[name]} to the class (the protocol: "
                    "autocompress/methods/base.py)", pytrace=False)
    return getattr(cls, name)


def example(name: str) -> Step:
    return Step(name, dict(declared(get_method(name), "EXAMPLE")))


def context(transfer, teacher_factory) -> Context:
    """The context a method gets: the tiny transfer set, and the untouched tiny BERT as its teacher."""
    return Context(transfer, seed=0, teacher=teacher_factory)


@pytest.fixture(scope="module")
def rows(feature_rows):
    return feature_rows(24, seed=11)                 # not transfer rows: scored like a validation split


@pytest.fixture(scope="module")
def module_ctx(tiny_transfer, tiny_bert_factory):
    return context(tiny_transfer, tiny_bert_factory)


@pytest.fixture(scope="module")
def example_models(tiny_bert_factory, module_ctx):
    """``example_models(name)``: the tiny BERT with the method's EXAMPLE applied, finalized (once per module)."""
    cache = {}

    def get(name: str):
        if name not in cache:
            recipe = Recipe((example(name),))
            cache[name] = finalize(recipe.apply_torch(tiny_bert_factory(), module_ctx)).eval()
        return cache[name]

    return get


@pytest.fixture(scope="module")
def fp32(tiny_bert_factory, tmp_path_factory):
    """The tiny BERT's fp32 graph, as the onnx stage receives it."""
    return export.export_onnx(tiny_bert_factory(), tmp_path_factory.mktemp("fp32") / "model.fp32.onnx")


def onnx_logits(path, rows) -> tuple[np.ndarray, np.ndarray | None, int]:
    """(logits, what each row ran, number of graphs) of the artifact at ``path``."""
    artifact = pipeline.open(path)
    logits, ran = pipeline.run_rows(artifact, rows, threads=1)
    return logits, ran, len(artifact.graphs())


# ---------------------------------------------------------------- declarations
@pytest.mark.parametrize("name", METHODS)
def test_declares_what_the_suite_needs(name):
    method = get_method(name)
    fields = {f.name for f in dataclasses.fields(method.config_cls)}
    wanted = ["EXAMPLE", "IDENTITY"] + (["TOLERANCE"] if method.kind == "onnx" else [])
    values = {key: declared(method, key) for key in wanted}
    assert not fields & set(wanted), (f"{name}: {sorted(fields & set(wanted))} became dataclass fields (and so part "
                                      "of the stored form): declare them as typing.ClassVar")
    assert isinstance(values["EXAMPLE"], dict), f"{name}: EXAMPLE must be a dict of parameters"
    assert values["IDENTITY"] is None or isinstance(values["IDENTITY"], dict), \
        f"{name}: IDENTITY must be a dict or None"
    if method.kind == "onnx":
        tol = values["TOLERANCE"]
        assert isinstance(tol, (int, float)) and not isinstance(tol, bool) and 0 <= tol < 1, \
            f"{name}: TOLERANCE must be a number in [0, 1) (max |logit change| on the tiny model), got {tol!r}"
    cfg = method.config(values["EXAMPLE"])                  # valid
    is_identity = getattr(cfg, "is_identity", None)
    assert is_identity is None or not is_identity(TINY_LAYERS), f"{name}: EXAMPLE must change the model"


def test_a_method_that_declares_nothing_fails_the_contract():
    @dataclasses.dataclass(frozen=True)
    class Bare:
        level: int = 1

    bare = Method("bare_method", "structure", Bare, lambda m, c, ctx: m, "bare", lambda c: "bare")
    with pytest.raises(pytest.fail.Exception, match=r"bare_method: .*declares no EXAMPLE.*EXAMPLE: ClassVar\[dict\]"):
        declared(bare, "EXAMPLE")


# ---------------------------------------------------------------- 1. config round trip
@pytest.mark.parametrize("name", METHODS)
def test_config_round_trip(name):
    method = get_method(name)
    step = example(name)
    stored = step.to_dict()
    assert stored["method"] == name and stored["version"] == method.version
    back = Step.from_dict(json.loads(json.dumps(stored)))
    assert back.method == name and back.config == step.config
    assert back.to_dict() == stored
    assert Recipe((back,)).hash == Recipe((step,)).hash
    recipe = Recipe((step,))
    assert Recipe.from_json(recipe.to_json()).to_json() == recipe.to_json()
    # a stored form of a version this code does not know is refused, naming the method
    future = {**stored, "version": method.version + 1}
    with pytest.raises(RecipeError, match=rf"^{re.escape(name)}\b.*version {method.version + 1}"):
        Step.from_dict(future)
    with pytest.raises(RecipeError, match=rf"^{re.escape(name)}\b"):
        Recipe.from_dict({"version": RECIPE_VERSION, "steps": [future]})


# ---------------------------------------------------------------- 2. identity
@pytest.mark.parametrize("name", METHODS)
def test_identity_setting_keeps_the_logits(name, tiny_bert, tiny_transfer, tiny_bert_factory, rows, tmp_path, request):
    method = get_method(name)
    params = declared(method, "IDENTITY")
    if params is None:
        pytest.skip(f"{name} declares no identity setting (IDENTITY = None)")
    recipe = Recipe((Step(name, dict(params)),))
    if method.kind == "torch":
        before = predict_torch(tiny_bert, rows)
        after = predict_torch(finalize(recipe.apply_torch(tiny_bert, context(tiny_transfer, tiny_bert_factory))), rows)
    else:
        fp32 = request.getfixturevalue("fp32")
        before = onnx_logits(fp32, rows)[0]
        after = onnx_logits(recipe.apply_onnx(fp32, tmp_path, context(tiny_transfer, tiny_bert_factory)), rows)[0]
    np.testing.assert_allclose(after, before, atol=IDENTITY_ATOL, err_msg=f"{name} IDENTITY {params} moved the logits")


# ---------------------------------------------------------------- 3. save -> reload
@pytest.mark.parametrize("name", TORCH)
def test_save_reload_same_logits(name, example_models, rows, tmp_path):
    model = example_models(name)
    ref = predict_torch(model, rows)
    again = checkpoint.load_model(checkpoint.save_model(model, None, tmp_path / "ckpt"))
    np.testing.assert_allclose(predict_torch(again, rows), ref, atol=RELOAD_ATOL,
                               err_msg=f"{name}: the reloaded checkpoint gives other logits")


# ---------------------------------------------------------------- 4. ONNX
@pytest.mark.parametrize("name", TORCH)
def test_export_matches_pytorch(name, example_models, rows, tmp_path):
    """The exported artifact (one graph, or a pipeline of graphs) against the PyTorch model's logits. A
    pipeline's rows that left at an earlier graph answer from parts of the model the forward pass does not
    return, so the rows that ran every graph are compared (some must)."""
    model = example_models(name)
    ref = predict_torch(model, rows)
    final, _ = export.export_candidate(model, tmp_path, lambda src, dst: src)
    got, ran, n_graphs = onnx_logits(final, rows)
    assert got.shape == ref.shape and np.isfinite(got).all()
    whole = np.ones(len(rows), bool) if ran is None else ran == n_graphs - 1
    assert whole.any(), f"{name}: no row ran the whole artifact: give an EXAMPLE where some rows do"
    np.testing.assert_allclose(got[whole], ref[whole], atol=TORCH_ATOL,
                               err_msg=f"{name}: ONNX Runtime and PyTorch disagree")


@pytest.mark.parametrize("name", ONNX)
def test_onnx_step_within_its_tolerance(name, fp32, rows, tmp_path, tiny_transfer, tiny_bert_factory):
    method = get_method(name)
    tol = declared(method, "TOLERANCE")
    out = Recipe((example(name),)).apply_onnx(fp32, tmp_path, context(tiny_transfer, tiny_bert_factory))
    assert out.is_file() and out != fp32 and out.parent == tmp_path, f"{name} wrote no file where apply_onnx asked"
    onnx.checker.check_model(str(out))
    ref = onnx_logits(fp32, rows)[0]
    got = onnx_logits(out, rows)[0]                      # loads in ONNX Runtime
    assert got.shape == ref.shape and got.dtype == np.float32
    diff = float(np.abs(got - ref).max())
    assert diff <= tol, f"{name}: logits moved by {diff:.4f}, more than its declared TOLERANCE {tol}"


# ---------------------------------------------------------------- 5. errors that name themselves
@pytest.mark.parametrize("name", METHODS)
def test_unknown_parameter_is_named(name):
    step = example(name)
    params = {**step.params, "no_such_parameter": 1}
    with pytest.raises(RecipeError) as e:
        Step(name, params).config
    assert name in str(e.value) and "no_such_parameter" in str(e.value) and "\n" not in str(e.value)
    stored = {"method": name, "version": get_method(name).version, "params": params}
    text = json.dumps({"version": RECIPE_VERSION, "steps": [stored]})
    with pytest.raises(RecipeError, match=rf"{re.escape(name)}.*no_such_parameter"):
        Recipe.from_json(text)


@pytest.mark.parametrize("name", METHODS)
def test_bad_value_is_named(name):
    method = get_method(name)
    fields = dataclasses.fields(method.config_cls)
    if not fields:
        pytest.skip(f"{name} takes no parameters")
    first = fields[0].name
    base = dict(example(name).params)
    refused = []
    for bad in BAD_VALUES:
        try:
            method.config({**base, first: bad})
        except RecipeError as e:                # anything else (a TypeError, an AssertionError) fails the test
            message = str(e)
            assert message.startswith(f"{name}:") and "\n" not in message, \
                f"{name}: {first}={bad!r} was refused with a message that does not start with the method: {message!r}"
            refused.append(message)
    assert refused, f"{name}: none of {BAD_VALUES} was refused for its first parameter {first!r}"
    assert any(first in m for m in refused), f"{name}: no refusal names the parameter {first!r}: {refused}"


# ---------------------------------------------------------------- 6. label
@pytest.mark.parametrize("name", METHODS)
def test_label_is_a_short_line(name):
    method = get_method(name)
    settings = [declared(method, "EXAMPLE"), getattr(method.config_cls, "IDENTITY", None)]
    for params in filter(lambda p: p is not None, settings):
        label = method.label(method.config(dict(params)))
        assert isinstance(label, str) and label.strip() and "\n" not in label and len(label) <= LABEL_MAX, \
            f"{name}: label {label!r} for {params} is not a short one-line string"
