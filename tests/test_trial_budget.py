"""Latency before training: a candidate over the budget on the target device is not trained; within
budget, the figure taken on the untrained structure is reused when the shipped graph has its signature.

A tiny BERT teacher (hidden 64, 4 layers) on real SST-2 rows; the target device is the server GPU, whose
figure here is the roofline prediction: deterministic, so which recipe is over the budget cannot flip
with the load of a shared machine. A measured CPU profile is timed beside it."""
import dataclasses

import optuna
import pytest
import torch

from autocompress import checkpoint
from autocompress.hardware import describe
from autocompress.hardware import HardwareProfile, load_profile
from autocompress.methods.base import REGISTRY
from autocompress.recipe import Recipe, Step
from autocompress.search.runner import ConstrainedOptunaSearch, DefineByRun
from autocompress.search.space import load_space
from autocompress.search.trial import TrialSetup
from conftest import run_and_report
from autocompress.store import Store
from autocompress.tasks import load_task, save_task_data
from autocompress.teacher import TeacherSettings, adopt_teacher, resolve_model

CPU = HardwareProfile.from_dict({"name": "test-cpu", "description": "this CPU, quick protocol", "runtime": "onnxruntime",
                                 "provider": "CPUExecutionProvider", "max_threads": 1, "max_seconds": 0.3,
                                 "ci_target": 0.05, "seq_len": 32})
HEAVY = Recipe((Step("distill", {"steps": 3, "batch_size": 8}),))                        # the teacher's size
LIGHT = Recipe((Step("drop_layers", {"keep": 1}), Step("distill", {"steps": 3, "batch_size": 8})))


@pytest.fixture(scope="module")
def world(tmp_path_factory, glue_dir):
    import torch
    import transformers

    tmp = tmp_path_factory.mktemp("budget")
    mp = pytest.MonkeyPatch()
    mp.setenv("AUTOCOMPRESS_CACHE", str(tmp / "cache"))
    mp.setenv("AUTOCOMPRESS_LOCK_FILE", str(tmp / "machine.lock"))
    data = load_task("sst2", glue_dir, val_size=64)
    cfg = transformers.BertConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=256,
                                  max_position_embeddings=128, num_labels=2)
    model = transformers.BertForSequenceClassification(cfg).eval()
    for p in model.parameters():     # as fine-tuned: no bias left at exactly 0 (the exporter drops zero biases)
        p.data.add_(torch.randn_like(p) * 0.02)
    folder = checkpoint.save_model(model, checkpoint.load_tokenizer(resolve_model("minilm")), tmp / "tiny")
    teacher = adopt_teacher(str(folder), TeacherSettings(train_examples=64, val_size=64, transfer_examples=64), data,
                            log=lambda m: None)
    store = Store(f"sqlite:///{tmp / 'store.db'}")
    store.create_run("b", task="sst2", model="tiny", device="server-gpu", budget_ms=None, space="", run_dir=str(tmp / "run"))
    setup = TrialSetup(store_url=store.url, run="b", run_dir=str(tmp / "run"),
                       data_path=save_task_data(data, tmp / "run" / "data"), teacher_path=str(teacher.path), profiles=(CPU, load_profile("server-gpu")),
                       device="server-gpu", budget_ms=None, space_text="", num_layers=4, threads=1)
    base = run_and_report(setup, 0, Recipe(), role="teacher", data=data, teacher=teacher)
    calls = []
    distill = REGISTRY["distill"]

    def counting(model, cfg, ctx):
        calls.append(cfg.steps)
        return distill.fn(model, cfg, ctx)

    mp.setitem(REGISTRY, "distill", dataclasses.replace(distill, fn=counting))
    setup = dataclasses.replace(setup, budget_ms=0.6 * base["latency_ms"])
    heavy = run_and_report(setup, 1, HEAVY, data=data, teacher=teacher)
    calls_after_heavy = list(calls)
    light = run_and_report(setup, 2, LIGHT, data=data, teacher=teacher)
    yield {"store": store, "setup": setup, "heavy": heavy, "light": light, "calls": calls,
           "calls_after_heavy": calls_after_heavy, "tmp": tmp, "data": data, "teacher": teacher}
    mp.undo()


def test_over_budget_candidate_is_not_trained(world):
    store, setup = world["store"], world["setup"]
    assert world["calls_after_heavy"] == []                    # distillation never ran for it
    t = store.trial("b", 1)
    assert t.status == "over_budget" and "over the" in t.error and "not trained" in t.error
    assert t.recovery_seconds is None and "val" not in t.metrics and t.metrics["untrained"]["n"] == 64
    assert not t.artifacts and not (world["tmp"] / "run" / "trial-001").exists()    # no checkpoint, no files
    assert set(t.latencies) == {"test-cpu", "server-gpu"}      # its latency on every profile is kept
    assert t.latencies["server-gpu"]["median_ms"] > setup.budget_ms
    r = world["heavy"]
    assert r["trained"] is False and r["constraint"] > 0
    assert r["latency_ms"] == t.latencies["server-gpu"]["median_ms"] and r["val_accuracy"] == t.accuracy("untrained")
    assert store.trials("b") and 1 not in {x.number for x in store.trials("b")}   # never on a front


def test_within_budget_candidate_is_trained_and_reuses_its_figure(world):
    store = world["store"]
    assert world["calls"] == [3]                               # trained once: the light recipe
    t = store.trial("b", 2)
    assert t.status == "done" and t.recovery_seconds > 0 and t.metrics["val"]["n"] == 64
    assert world["light"]["trained"] is True and world["light"]["constraint"] <= 0
    # distillation changed weights only: the figures taken before training are the shipped file's
    for p in ("test-cpu", "server-gpu"):
        lat = t.latencies[p]
        assert lat["detail"]["timed_before_training"] is True
        assert "untrained structure (same graph as shipped)" in describe(lat)
    assert not (world["tmp"] / "run" / "trial-002" / "structure").exists()


def test_the_constraint_reaches_optuna(world):
    """The over-budget result is a complete, infeasible trial for Optuna's sampler."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_space("quick")
    searcher = ConstrainedOptunaSearch(space=DefineByRun(space, 6), metric=["val_accuracy", "latency_ms"],
                                       mode=["max", "min"], sampler=optuna.samplers.TPESampler(seed=0))
    searcher.suggest("heavy")
    searcher.on_trial_complete("heavy", world["heavy"])
    (trial,) = searcher._ot_study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert trial.constraints == {"latency_budget": pytest.approx(world["heavy"]["constraint"])}
    assert trial.constraints["latency_budget"] > 0


def test_a_repeated_over_budget_recipe_is_not_redone(world):
    setup, store = world["setup"], world["store"]
    out = run_and_report(setup, 3, HEAVY, data=world["data"], teacher=world["teacher"])
    assert out["trained"] is False and out["constraint"] == world["heavy"]["constraint"]
    assert world["calls"] == [3]
    assert store.trial("b", 3).status == "duplicate"


def test_graph_signature_ignores_weights_only(world, tmp_path):
    from autocompress import export
    from autocompress.hardware import graph_signature

    teacher = world["teacher"]
    a = export.export_onnx(teacher.model(), tmp_path / "a.onnx")
    other = teacher.model()
    for p in other.parameters():
        p.data.mul_(0.5)
    b = export.export_onnx(other, tmp_path / "b.onnx")
    from autocompress.methods.pruning import drop_layers, LayerDrop

    c = export.export_onnx(drop_layers(teacher.model(), LayerDrop(keep=2)), tmp_path / "c.onnx")
    assert a.read_bytes() != b.read_bytes()
    assert graph_signature(a) == graph_signature(b) != graph_signature(c)


def test_a_recipe_sharing_the_trained_prefix_reuses_the_model(world):
    """The light recipe then int8: the same structure and recovery steps as trial 2, so its trained model
    is loaded from the teacher's prefix cache instead of being trained again; another seed trains anew."""
    from safetensors.torch import load_file

    setup, store, run = world["setup"], world["store"], world["tmp"] / "run"
    quantized = Recipe(LIGHT.steps + (Step("quantize_int8", {}),))
    out = run_and_report(setup, 4, quantized, data=world["data"], teacher=world["teacher"])
    assert out["trained"] is True and world["calls"] == [3]          # distillation did not run again
    t = store.trial("b", 4)
    assert t.status == "done" and t.reused_from == "b/2" and t.recovery_seconds is None
    a = load_file(str(run / "trial-002" / "checkpoint" / "model.safetensors"))
    b = load_file(str(run / "trial-004" / "checkpoint" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert t.size_mb < 0.5 * store.trial("b", 2).size_mb                # its own ONNX step did run (int8)
    other = Recipe(LIGHT.steps + (Step("quantize_int8", {"reduce_range": True}),))    # not a duplicate recipe
    run_and_report(dataclasses.replace(setup, seed=1), 5, other, data=world["data"], teacher=world["teacher"])
    assert world["calls"] == [3, 3] and store.trial("b", 5).reused_from is None


def test_masked_pruning_is_timed_in_its_shipped_form_then_trained(world):
    """Magnitude pruning keeps masks (weights recomputed on every forward, with autograd history) through
    recovery: the latency before training is taken on a finalized copy, and the masks still hold after."""
    from safetensors.torch import load_file

    setup = dataclasses.replace(world["setup"], budget_ms=None)
    recipe = Recipe((Step("magnitude_prune", {"sparsity": 0.5}), Step("distill", {"steps": 3, "batch_size": 8})))
    out = run_and_report(setup, 6, recipe, data=world["data"], teacher=world["teacher"])
    t = world["store"].trial("b", 6)
    assert out["trained"] and t.status == "done" and world["calls"][-1] == 3, t.error
    state = load_file(str(world["tmp"] / "run" / "trial-006" / "checkpoint" / "model.safetensors"))
    enc = [v for k, v in state.items() if ".encoder." in k and k.endswith("weight") and v.dim() == 2]
    zeros = sum(int((v == 0).sum()) for v in enc) / sum(v.numel() for v in enc)
    assert 0.49 <= zeros <= 0.51                     # the masks held through distillation, then were folded in


def _summary(count, candidates_ms, teacher_ms):
    over = {"count": count, "trials": list(range(1, count + 1)), "with_recovery_steps": count,
            "recovery_seconds_mean": 50.0, "estimated_from": 3, "training_saved_seconds": 50.0 * count}
    member = lambda ms: {"latency": {"median_ms": ms}}
    return {"budget_ms": 50.0, "device": "mobile-cpu", "over_budget": over,
            "devices": {"mobile-cpu": {"teacher": member(teacher_ms), "candidates": [member(m) for m in candidates_ms]},
                        "laptop-cpu": {"teacher": member(13.0), "candidates": [member(99.0)]}}}


def test_the_closing_line_says_what_the_budget_spared_or_that_it_spared_nothing():
    from autocompress.report import over_budget_line

    line = over_budget_line(_summary(2, [27.0, 33.7], 53.2))
    assert line.startswith("2 candidate(s) over the 50 ms budget on mobile-cpu were not trained (trials 1, 2)")
    assert "about 100 s of recovery training saved" in line
    # every candidate within the budget: it steered nothing, and the line says so (the target's figures,
    # not another device's 99 ms)
    line = over_budget_line(_summary(0, [27.0, 33.7], 53.2))
    assert line.startswith("no candidate was over the 50 ms budget on mobile-cpu (the slowest 33.7 ms; "
                           "the teacher 53.2 ms, over it)") and "spared no training" in line
    assert "within it" in over_budget_line(_summary(0, [27.0], 40.0))
    assert over_budget_line(_summary(0, [], 53.2)) is None                 # no candidate: the run says that instead
    assert over_budget_line({"over_budget": None}) is None                 # no budget


def test_the_budget_applies_to_the_expected_latency_over_the_task_lengths(world):
    """A profile timing at the task's input lengths (here every input 4 tokens long): the teacher-sized
    recipe, over the budget at 128 tokens, is within it at the task's lengths, so it is trained; its
    figure keeps both, and says over what it was expected."""
    store, data, teacher, tmp = world["store"], world["data"], world["teacher"], world["tmp"]
    mix = {"lengths": [4], "weights": [1.0], "n": 64, "source": "four-token inputs", "max_length": 128}
    cpu = dataclasses.replace(CPU, name="len-cpu", seq_len=128, lengths="task", length_mix=mix)
    store.create_run("len", task="sst2", model="tiny", device="len-cpu", budget_ms=None, space="", run_dir=str(tmp / "len"))
    setup = dataclasses.replace(world["setup"], run="len", run_dir=str(tmp / "len"), profiles=(cpu,), device="len-cpu",
                                budget_ms=None)
    base = run_and_report(setup, 0, Recipe(), role="teacher", data=data, teacher=teacher)
    t0 = store.trial("len", 0).latencies["len-cpu"]
    fixed, expected = t0["detail"]["fixed"]["median_ms"], t0["median_ms"]
    assert base["latency_ms"] == expected and t0["detail"]["lengths"]["lengths"] == [4]
    assert t0["detail"]["fixed"]["seq_len"] == 128 and expected < fixed / 2     # 4 tokens: about 10x cheaper here
    budget = (fixed * expected) ** 0.5
    r = run_and_report(dataclasses.replace(setup, budget_ms=budget), 1, HEAVY, data=data, teacher=teacher)
    t = store.trial("len", 1)
    lat = t.latencies["len-cpu"]
    assert t.status == "done" and r["trained"] is True
    assert r["constraint"] == pytest.approx(lat["median_ms"] - budget) and r["constraint"] < 0
    assert lat["detail"]["fixed"]["median_ms"] > budget        # at 128 tokens it would have been over, not trained
    assert describe(lat).startswith("expected over the lengths of 64 inputs of four-token inputs: medians at [4: ")
