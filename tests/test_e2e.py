"""A tiny search end to end, as a user runs it: the installed command, started from a folder that is not
the repo root, with a *relative* AUTOCOMPRESS_GLUE_DIR and the default (relative) runs folder; the
packaged MiniLM, real SST-2 rows, real Ray Tune + Optuna, real ONNX Runtime timings, a real SQLite
store. Small budgets keep it to a few minutes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TINY_SPACE = """
name: tiny
trials: 2
steps:
  - method: drop_layers
    params: {keep: {int: [4, 5]}}
  - method: prune_ffn
    params: {ratio: {float: [0.0, 0.5], step: 0.5}, score_batches: 2}
  - method: distill
    when: changed
    params: {steps: {int: [10, 20], step: 10}}
  - method: quantize_int8
    optional: true
seeds:
  - {drop_layers.keep: 4, prune_ffn.ratio: 0.5, distill.steps: 20, quantize_int8: true}
"""
TEACHER = ["--train-examples", "1600", "--epochs", "2", "--val-size", "200"]   # learns: ~85% val


def _cli(*args, env, cwd, timeout=900):
    exe = Path(sys.executable).with_name("autocompress")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)


@pytest.fixture(scope="module")
def user(tmp_path_factory, glue_dir, shared_cache):
    """A user's folder outside the repo, and the environment a user would have: the GLUE folder given
    as a path *relative* to that folder (the README's AUTOCOMPRESS_GLUE_DIR=../shared/glue)."""
    tmp = tmp_path_factory.mktemp("e2e")
    cwd = tmp / "user" / "work"
    cwd.mkdir(parents=True)
    assert not (cwd / "pyproject.toml").exists() and Path.cwd() != cwd
    env = {**os.environ, "AUTOCOMPRESS_CACHE": str(shared_cache),
           "AUTOCOMPRESS_GLUE_DIR": os.path.relpath(glue_dir, cwd),
           "AUTOCOMPRESS_LOCK_FILE": str(tmp / "machine.lock")}
    return {"tmp": tmp, "cwd": cwd, "env": env}


@pytest.fixture(scope="module")
def run(user):
    cwd, env = user["cwd"], user["env"]
    (cwd / "tiny.yaml").write_text(TINY_SPACE)
    r = _cli("search", "--budget", "500ms", "--space", "tiny.yaml", "--name", "e2e", *TEACHER, env=env, cwd=cwd)
    assert r.returncode == 0, r.stderr[-3000:]
    front = _cli("front", "e2e", "--json", env=env, cwd=cwd)
    assert front.returncode == 0, front.stderr
    return {"tmp": cwd, "env": env, "out": r.stdout, "err": r.stderr, "front": json.loads(front.stdout)}


def test_relative_data_folder_reaches_the_trials(run):
    """The README's main command, the way a user types it: candidates finish (the first search's
    bug: the relative data path was resolved in each Ray worker's folder and every trial failed)."""
    data = run["front"]
    assert data["trials_done"] == 2 and data["trials_failed"] == 0, data["failures"]
    assert (run["tmp"] / "runs" / "autocompress.db").is_file()        # the default runs folder, in the user's cwd


def test_search_prints_a_front_per_device(run):
    out = run["out"]
    assert "laptop-cpu (target, budget 500 ms)" in out and "mobile-cpu" in out
    assert "teacher fp32 ONNX" in out and "MB zipped)" in out and "zip MB" in out
    assert "*" in out            # the best model within budget is marked


def test_front_json_holds_teacher_and_members(run):
    data = run["front"]
    assert data["status"] == "done" and data["trials_done"] == 2 and data["trials_failed"] == 0
    assert set(data["devices"]) == {"laptop-cpu", "mobile-cpu"}
    for name, d in data["devices"].items():
        teacher = d["teacher"]
        assert teacher["recipe"] == "fp32 (unchanged)" and teacher["speedup"] == 1.0
        assert teacher["val"]["n"] == 200 and teacher["dev"]["n"] == 872   # val carved from train; GLUE dev
        assert 0.5 < teacher["dev"]["main"] <= 1.0
        assert 0 < teacher["size_zip_mb"] < teacher["size_mb"]       # the zipped file, for every candidate too
        assert d["front"], name
        for m in d["front"]:
            lat = m["latency"]
            assert lat["how"] == "measured" and lat["n"] >= 20 and lat["median_ms"] > 0
            assert lat["p10_ms"] <= lat["median_ms"] <= lat["p90_ms"]
            assert m["dev"] is not None and m["dev"]["n"] == 872      # fronts are re-scored on dev
            assert Path(m["onnx"]).is_file()
            assert 0 < m["size_zip_mb"] <= m["size_mb"]
        lats = [m["latency"]["median_ms"] for m in d["front"]]
        accs = [m["val"]["main"] for m in d["front"]]
        assert lats == sorted(lats) and accs == sorted(accs)          # a front: slower only if more accurate
    assert data["devices"]["laptop-cpu"]["best_within_budget"] is not None


def test_seeded_recipe_really_compressed(run):
    """Trial 1 is the space's seed: 4 layers, FFN halved, distilled, int8 — smaller than the teacher."""
    from autocompress.store import Store, default_url

    store = Store(default_url(run["tmp"] / "runs"), create=False)
    trials = {t.number: t for t in store.trials("e2e")}
    assert set(trials) == {0, 1, 2}
    seed = trials[1]
    recipe = json.loads(seed.recipe)
    assert [s["method"] for s in recipe["steps"]] == ["drop_layers", "prune_ffn", "distill", "quantize_int8"]
    assert seed.n_params < trials[0].n_params
    assert seed.size_mb < trials[0].size_mb / 2       # int8 and pruning both shrink the file
    assert set(seed.latencies) == {"laptop-cpu", "mobile-cpu"}
    config = json.loads((Path(seed.artifacts["checkpoint"]) / "config.json").read_text())
    structure = config["autocompress_structure"]
    assert len(structure["layers"]) == 4 and structure["layers"][0]["ffn_in"]["out"] == 768


def test_front_plot_and_cached_teacher(run):
    png = run["tmp"] / "front.png"
    r = _cli("front", "e2e", "--plot", "front.png", env=run["env"], cwd=run["tmp"])
    assert r.returncode == 0 and png.stat().st_size > 5000
    r = _cli("finetune", *TEACHER, env=run["env"], cwd=run["tmp"])          # same settings: the cached teacher, no training
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["cached"] is True and info["train_rows"] == 1600


def test_a_repeated_recipe_reuses_the_earlier_trial(run):
    """When the searcher proposes a recipe it has already tried, nothing is trained or timed again."""
    from autocompress.hardware.profiles import load_profile
    from autocompress.recipe import Recipe
    from autocompress.search.trial import TrialSetup, evaluate_candidate
    from autocompress.store import Store, default_url

    store = Store(default_url(run["tmp"] / "runs"), create=False)
    first = {t.number: t for t in store.trials("e2e")}[1]
    r = store.get_run("e2e")
    setup = TrialSetup(store_url=store.url, run="e2e", run_dir=r.run_dir, data_path=r.settings["data_path"],
                       teacher_path=r.settings["teacher"], profiles=(load_profile("laptop-cpu"),), device="laptop-cpu",
                       budget_ms=500.0, space_text="", num_layers=6, threads=1)
    out = evaluate_candidate(setup, 99, Recipe.from_json(first.recipe))
    assert out["val_accuracy"] == first.accuracy("val")
    assert out["latency_ms"] == first.latencies["laptop-cpu"]["median_ms"]
    assert out["constraint"] == out["latency_ms"] - 500.0
    (dup,) = store.trials("e2e", status="duplicate")
    assert dup.number == 99 and dup.error == "same recipe as trial 1" and not dup.latencies



def test_a_trial_of_static_int8_alone_calibrates_on_the_transfer_set(run):
    """A recipe with nothing but an ONNX step that needs training rows (static int8): the trial hands its
    transfer set to the ONNX steps, so the candidate is calibrated, scored and timed like any other."""
    import onnx

    from autocompress.hardware.profiles import load_profile
    from autocompress.recipe import Recipe, Step
    from autocompress.search.trial import TrialSetup, evaluate_candidate
    from autocompress.store import Store, default_url

    store = Store(default_url(run["tmp"] / "runs"), create=False)
    r = store.get_run("e2e")
    setup = TrialSetup(store_url=store.url, run="e2e", run_dir=r.run_dir, data_path=r.settings["data_path"],
                       teacher_path=r.settings["teacher"], profiles=(load_profile("mobile-cpu"),), device="mobile-cpu",
                       budget_ms=None, space_text="", num_layers=6, threads=1)
    out = evaluate_candidate(setup, 98, Recipe((Step("quantize_static", {"rows": 16}),)))
    trial = {t.number: t for t in store.trials("e2e")}[98]
    assert trial.status == "done" and out["val_accuracy"] == trial.accuracy("val") > 0.7
    ops = {n.op_type for n in onnx.load(trial.artifacts["onnx"]).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and trial.size_mb < 30


FAILING_PLUGIN = """
from dataclasses import dataclass

from autocompress.methods.base import register


@dataclass(frozen=True)
class Explode:
    pass


@register("explode", "structure", Explode)
def explode(model, cfg, ctx):
    \"\"\"Always fails: a planted failure.\"\"\"
    raise RuntimeError("planted failure in every trial\\nsecond line of the message")
"""


def test_a_search_whose_every_trial_fails_says_so(user, run):
    """Every trial raises (a method of a plugin): the progress shows each failure with its reason, the run
    is stored as failed with the most common reason, and the command exits 1 pointing at `front`."""
    cwd, env = user["cwd"], dict(user["env"])
    (cwd / "plugins").mkdir()
    (cwd / "plugins" / "planted.py").write_text(FAILING_PLUGIN)
    (cwd / "explode.yaml").write_text("name: explode\ntrials: 2\nsteps:\n  - method: explode\n")
    env.update(PYTHONPATH=str(cwd / "plugins"), AUTOCOMPRESS_PLUGINS="planted")
    r = _cli("search", "--space", "explode.yaml", "--name", "doomed", *TEACHER, env=env, cwd=cwd)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "trial 1 failed: RuntimeError: planted failure in every trial" in r.stderr
    assert "no candidate finished: 2 trial(s) failed, most often with: RuntimeError: planted failure" in r.stderr
    assert "autocompress front doomed" in r.stderr
    assert "Traceback" not in r.stderr
    from autocompress.store import Store, default_url

    store = Store(default_url(cwd / "runs"), create=False)
    stored = store.get_run("doomed")
    assert stored.status == "failed" and "RuntimeError: planted failure in every trial" in stored.error
    failed = store.trials("doomed", status="failed")
    assert [t.number for t in failed] == [1, 2]
    assert all(t.error.startswith("RuntimeError: planted failure") for t in failed)
    front = _cli("front", "doomed", env=env, cwd=cwd)
    assert front.returncode == 0
    assert "(failed)" in front.stdout and "failed (2x): RuntimeError: planted failure in every trial" in front.stdout
