"""benchmarks/methods.py covers every method of the registry: each alone at two or three settings
(one where the method has no parameters), so a method added without a benchmark row fails here.
Nothing is trained or timed: the recipes are only built (which validates their parameters)."""
import dataclasses
import importlib.util
import sys
from pathlib import Path

import pytest

from autocompress.methods import REGISTRY
from autocompress.recipe import Recipe, Step

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "methods.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_methods", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module          # its dataclasses look their module up while being built
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def _distillation_recipes(bench):
    student = (Step("drop_layers", {"keep": 4}),)
    return [(name, Recipe(student + (Step("distill", {"steps": 400, "lr": 2e-4, **params}),)))
            for name, params, _ in bench.distillation_variants()]


def test_every_method_has_rows_alone_at_several_settings(bench):
    sections = bench.alone_recipes(400, 2e-4)
    common = bench.recovery(400, 2e-4)
    settings: dict[str, set[str]] = {m: set() for m in REGISTRY}
    for variants in sections.values():
        for _, recipe in variants:
            (step,) = [s for s in recipe.steps if s != common]           # one method, besides the common recovery
            settings[step.method].add(Recipe((step,)).to_json())
    for _, recipe in _distillation_recipes(bench):                      # distill: its own section, one student
        settings["distill"].add(Recipe(recipe.recovery_steps).to_json())
    for name, method in REGISTRY.items():
        wanted = 2 if dataclasses.fields(method.config_cls) else 1
        assert len(settings[name]) >= wanted, f"{name} has {len(settings[name])} distinct setting(s) in the benchmark"


def test_structural_variants_share_one_recovery_and_onnx_steps_train_nothing(bench):
    sections = bench.alone_recipes(7, 1e-4)
    for name in ("structure", "size"):
        assert all(r.recovery_steps == (bench.recovery(7, 1e-4),) for _, r in sections[name])
    assert all(not r.torch_steps and r.onnx_steps for _, r in sections["quantization"])
    assert all(r.steps[0].method == "early_exit" and r.steps[0].params["steps"] == 7 for _, r in sections["early_exit"])


def test_every_section_is_registered_and_its_row_names_are_unique(bench):
    assert set(bench.alone_recipes(400, 2e-4)) | {"distillation"} == set(bench.SECTIONS)
    for variants in [*bench.alone_recipes(400, 2e-4).values(), _distillation_recipes(bench)]:
        names = [name for name, _ in variants]
        assert len(set(names)) == len(names) and "teacher (unchanged)" not in names   # latencies are keyed by name


def test_notes_say_what_a_method_cannot_buy(bench):
    assert "size only" in bench.method_notes(Recipe((Step("magnitude_prune", {"sparsity": 0.5}),)))
    assert "size only" not in bench.method_notes(Recipe((Step("prune_ffn", {"ratio": 0.5}),)))
    assert "GPU" in bench.method_notes(Recipe((Step("quantize_fp16"),)))
    assert bench.method_notes(Recipe((Step("quantize_int8"),))) == ""
