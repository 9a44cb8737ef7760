"""A search run without the command line (``search.session``): the settings a run records (versioned, old
stores still read), the closing lines of an outcome, and a run from start to its outcome on a tiny world."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autocompress.search.session import Launch, NewRun, Outcome, RunSettings, SessionError

# what ``autocompress search`` recorded before settings had a version (version 1): the same keys
OLD = {"trials": 4, "space": "tiny", "val_size": 200, "seed": 0, "teacher": "/cache/teachers/sst2-minilm-abc",
       "data": "local:/glue", "data_path": "/runs/demo/data", "num_layers": 6,
       "profiles": [{"name": "laptop-cpu", "runtime": "onnxruntime"}], "attempt": 1,
       "labels": ["negative", "positive"], "metric": "accuracy", "pair": False,
       "command": "autocompress search --budget 30ms", "cwd": "/home/me"}


def test_settings_round_trip():
    s = RunSettings(trials=3, space="quick", val_size=64, seed=1, teacher="/t", data="hub:glue", data_path="/r/d",
                    num_layers=4, profiles=({"name": "test-cpu", "seq_len": 32},), attempt=2, labels=("a", "b", "c"),
                    metric="macro_f1", pair=True, command="autocompress search", cwd="/w")
    d = s.to_dict()
    assert d["version"] == RunSettings.VERSION == 2
    assert set(d) == set(OLD) | {"version", "baseline", "resolution", "carve", "tolerance", "sampler", "task_lengths"}   # the keys runs always
    assert d["baseline"] is None and d["resolution"] is None            # recorded, the version, the noise, the pick
    assert d["labels"] == ["a", "b", "c"] and d["profiles"] == [{"name": "test-cpu", "seq_len": 32}]
    assert json.loads(json.dumps(d)) == d                      # what the JSON column holds
    assert RunSettings.from_dict(json.loads(json.dumps(d))) == s


def test_settings_without_a_version_read_as_version_1():
    s = RunSettings.from_dict(OLD)
    assert (s.trials, s.space, s.teacher, s.data_path, s.num_layers, s.attempt) == (4, "tiny", OLD["teacher"],
                                                                                    "/runs/demo/data", 6, 1)
    assert s.labels == ("negative", "positive") and s.profiles == ({"name": "laptop-cpu", "runtime": "onnxruntime"},)
    assert s.task_info("sst2") == (("negative", "positive"), "accuracy", False)
    again = {k: v for k, v in s.to_dict().items() if k not in ("version", "baseline", "resolution", "carve", "tolerance", "sampler",
                                                                     "task_lengths")}
    assert again == OLD                                                      # written again: the same keys
    assert s.baseline is None and s.resolution is None                       # not recorded then: no noise line


def test_settings_of_early_runs_fall_back_to_glue():
    """Runs made before runs recorded their labels, metric and pair (or stores written by hand)."""
    s = RunSettings.from_dict({"trials": 3})
    assert s.trials == 3 and s.data_path is None and s.command is None and s.profiles == () and s.attempt == 0
    assert s.task_info("mrpc") == (("not_equivalent", "equivalent"), "f1", True)
    assert s.task_info("own-data") == ((), "accuracy", False)
    assert RunSettings.from_dict(None) == RunSettings() == RunSettings.from_dict({"attempt": None})


def test_settings_from_a_newer_autocompress_are_refused():
    with pytest.raises(SessionError, match="version 3, newer than this autocompress reads"):
        RunSettings.from_dict({**OLD, "version": 3})


def test_outcome_lines():
    t0 = time.time() - 12
    done = Outcome("done", "demo", 0, t0, store_option=" --runs-dir /r")
    assert done.messages() == ["search took 12 s; see it again with: autocompress front demo --runs-dir /r"]
    assert done.messages("2 candidate(s) over")[0] == ("search took 12 s; 2 candidate(s) over; see it again with: "
                                                      "autocompress front demo --runs-dir /r")
    stopped = Outcome("interrupted", "demo", 130, t0).messages()
    assert stopped[1] == ("the search was interrupted: the trials finished so far are kept; continue it with: "
                          "autocompress search --resume demo")
    timed = Outcome("done", "demo", 0, t0, time_limit_stopped=True).messages()
    assert timed[1].startswith("the time limit stopped the trials that were running")
    failed = Outcome("failed", "demo", 1, t0, error="no candidate finished: 2 trial(s) failed").messages()
    assert failed == ["autocompress search: no candidate finished: 2 trial(s) failed",
                      "see the details with: autocompress front demo"]


# ---------------------------------------------------------------- a run on a tiny world, without the CLI
CPU = {"name": "test-cpu", "description": "this CPU, quick protocol", "runtime": "onnxruntime",
       "provider": "CPUExecutionProvider", "max_threads": 1, "max_seconds": 0.3, "ci_target": 0.05, "seq_len": 32}
ONE_TRIAL = """
name: one
trials: 1
steps:
  - method: drop_layers
    params: {keep: 2}
  - method: distill
    params: {steps: 3, batch_size: 8}
  - method: quantize_int8
    optional: true
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory, glue_dir):
    """A tiny BERT (hidden 64, 4 layers, untrained) as the teacher, 64 SST-2 rows to validate on."""
    import torch
    import transformers

    from autocompress import checkpoint
    from autocompress.tasks import load_task
    from autocompress.teacher import resolve_model

    tmp = tmp_path_factory.mktemp("session")
    mp = pytest.MonkeyPatch()
    mp.setenv("AUTOCOMPRESS_CACHE", str(tmp / "cache"))
    mp.setenv("AUTOCOMPRESS_LOCK_FILE", str(tmp / "machine.lock"))
    cfg = transformers.BertConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=256,
                                  max_position_embeddings=128, num_labels=2)
    model = transformers.BertForSequenceClassification(cfg).eval()
    for p in model.parameters():     # as fine-tuned: no bias left at exactly 0 (the exporter drops zero biases)
        p.data.add_(torch.randn_like(p) * 0.02)
    folder = checkpoint.save_model(model, checkpoint.load_tokenizer(resolve_model("minilm")), tmp / "tiny")
    yield {"tmp": tmp, "teacher": str(folder), "data": load_task("sst2", glue_dir, val_size=64), "glue": glue_dir}
    mp.undo()


def _new_run(world, name: str, space_text: str, trials: int) -> NewRun:
    from autocompress.hardware import HardwareProfile
    from autocompress.search.space import parse_space
    from autocompress.teacher import TeacherSettings

    cpu = HardwareProfile.from_dict(CPU)
    return NewRun(name=name, store_url=f"sqlite:///{world['tmp'] / 'runs' / 'store.db'}",
                  runs_dir=str(world["tmp"] / "runs"), target=cpu, profiles=(cpu,),
                  space=parse_space(space_text, "one"), trials=trials, budget_ms=None, data=world["data"],
                  teacher=TeacherSettings(train_examples=64, val_size=64, transfer_examples=64), num_layers=4,
                  teacher_folder=world["teacher"], force=True, command="a notebook")


def test_a_run_without_trials_records_its_settings_and_fails_in_words(world):
    """start -> the teacher adopted and timed, the run recorded with its RunSettings, its outcome: with no
    trial to run (no Ray started) no candidate finished, and the outcome says so."""
    from autocompress.store import Store

    from autocompress.search import session

    lines = []
    start_run = _new_run(world, "none", ONE_TRIAL, trials=0)
    outcome = session.start(start_run, Launch(store_option=" --runs-dir R"), log=lines.append)
    assert (outcome.status, outcome.run, outcome.exit_code) == ("failed", "none", 1)
    assert outcome.messages() == ["autocompress search: no candidate finished: 0 trial(s) failed, most often with: "
                                  "no trial ran", "see the details with: autocompress front none --runs-dir R"]
    assert any(line.startswith("run none: 0 trials of space 'one' on sst2, target test-cpu") for line in lines)
    store = Store(start_run.store_url, create=False)
    run = store.get_run("none")
    assert run.status == "failed" and run.error.startswith("no candidate finished")
    assert run.settings["version"] == 2
    s = RunSettings.from_dict(run.settings)
    assert (s.trials, s.space, s.val_size, s.num_layers, s.attempt, s.command) == (0, "one", 64, 4, 0, "a notebook")
    assert s.labels == ("negative", "positive") and s.metric == "accuracy" and s.pair is False
    assert Path(s.data_path, "task.json").is_file() and Path(s.teacher, "teacher.json").is_file()
    assert [p.name for p in s.hardware_profiles()] == ["test-cpu"] and s.cwd == os.getcwd()
    teacher = store.trial("none", 0)
    assert teacher.role == "teacher" and set(teacher.latencies) == {"test-cpu"}

    from autocompress.locks import StoreBusy, store_lock
    from autocompress.store import sqlite_file

    with store_lock(sqlite_file(start_run.store_url), "another search"):     # one search per SQLite store
        with pytest.raises(StoreBusy, match="another search"):
            session.start(_new_run(world, "second", ONE_TRIAL, trials=0), log=lines.append)
    with pytest.raises(Exception, match="no run named 'second'"):
        store.get_run("second")                                                # refused before any work


def _started_with_mix(world, new, name: str):
    """A started run's store, settings, its one profile, and the mix of the world's validation inputs'
    token lengths counted here by the teacher's tokenizer (what the run should have recorded)."""
    from autocompress import lengths
    from autocompress.features import EVAL_MAX_LENGTH
    from autocompress.store import Store
    from autocompress.teacher import load_teacher

    store = Store(new.store_url, create=False)
    settings = RunSettings.from_dict(store.get_run(name).settings)
    (profile,) = settings.hardware_profiles()
    mix = lengths.of_texts(load_teacher(settings.teacher).tokenizer, list(world["data"].val["text_a"]), source="",
                           max_length=EVAL_MAX_LENGTH)
    return store, settings, profile, mix


def test_a_run_at_the_task_lengths_records_the_mix_of_its_validation_inputs(world):
    """A profile that says ``lengths: task``: the run counts its validation inputs' tokens with the teacher's
    tokenizer, records the mix in its profile, and the teacher is timed at those lengths (fixed shape beside)."""
    import dataclasses

    from autocompress.search import session

    lines = []
    new = _new_run(world, "lengths", ONE_TRIAL, trials=0)
    cpu = dataclasses.replace(new.target, lengths="task")
    session.start(dataclasses.replace(new, target=cpu, profiles=(cpu,)), log=lines.append)
    store, settings, profile, mix = _started_with_mix(world, new, "lengths")
    assert profile.lengths == "task" and profile.length_mix["lengths"] == list(mix.lengths)
    assert profile.length_mix["n"] == 64 and profile.length_mix["source"] == "sst2's validation split"
    assert any(line.startswith("latency at the task's input lengths on test-cpu: 64 inputs of sst2's") for line in lines)
    lat = store.trial("lengths", 0).latencies["test-cpu"]
    assert lat["detail"]["lengths"]["lengths"] == list(mix.lengths) and lat["detail"]["fixed"]["seq_len"] == 32


def test_a_fixed_run_records_its_validation_mix_and_its_picked_card_says_what_a_typical_input_costs(world, tmp_path):
    """Every run records its validation inputs' length mix; where the pick's device was timed at its fixed
    shape, ``pick`` times the model at that mix for the card (the search's figure stays the fixed one)."""
    import re

    from autocompress import ship
    from autocompress.search import session

    new = _new_run(world, "fixed", ONE_TRIAL, trials=0)
    session.start(new, log=lambda _: None)
    store, settings, profile, mix = _started_with_mix(world, new, "fixed")
    assert profile.length_mix is None and profile.lengths != "task"
    assert settings.task_lengths["lengths"] == list(mix.lengths) and settings.task_lengths["n"] == 64
    lat = store.trial("fixed", 0).latencies["test-cpu"]
    assert "lengths" not in lat["detail"]                                  # the search timed the fixed shape
    said = []
    folder = ship.export(store, ship.choose(store, "fixed"), tmp_path / "out", command="autocompress pick fixed",
                         log=said.append)
    card = (folder / "README.md").read_text()
    m = re.search(r"\*\*A typical input of the task\*\* costs ([\d.]+) ms on test-cpu", card)
    assert m and float(m.group(1)) > 0
    assert "expected over the lengths of 64 inputs of sst2's validation split: medians at [" in card
    assert all(f"{q}: " in card for q in mix.lengths)
    assert any(line.startswith("timing the model on test-cpu at the task's input lengths") for line in said)
    plain = ship.export(store, ship.choose(store, "fixed"), tmp_path / "plain", command="x", typical=False)
    assert "A typical input" not in (plain / "README.md").read_text()


def test_the_card_s_typical_input_figure_never_costs_the_export(world, tmp_path, monkeypatch):
    """Where timing the model at the task's lengths fails for any reason (here the route raises), ``pick``
    still exports the model, with the run's figure only, and says why in one line."""
    from autocompress import hardware, ship
    from autocompress.search import session

    new = _new_run(world, "broken", ONE_TRIAL, trials=0)
    session.start(new, log=lambda _: None)
    store = _started_with_mix(world, new, "broken")[0]

    def fails(*a, **k):
        raise RuntimeError("the route is gone")

    monkeypatch.setattr(hardware, "obtain_over_lengths", fails)
    said = []
    folder = ship.export(store, ship.choose(store, "broken"), tmp_path / "out", command="x", log=said.append)
    assert (folder / "model.onnx").is_file() and "A typical input" not in (folder / "README.md").read_text()
    assert [line for line in said if line.startswith("warning: not timed at the task's input lengths")] == [
        "warning: not timed at the task's input lengths (RuntimeError: the route is gone); the card gives the "
        "run's figure only"]


SCRIPT = """
import json, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
import test_session as t
from autocompress.search import session
from autocompress.tasks import load_task

world = {{"tmp": Path({tmp!r}), "teacher": {teacher!r}, "data": load_task("sst2", {glue!r}, val_size=64)}}
outcome = session.start(t._new_run(world, "one", t.ONE_TRIAL, trials=1), log=lambda line: None)
print(json.dumps([outcome.status, outcome.exit_code]))
"""


@pytest.mark.slow
def test_a_search_through_the_session_without_the_cli(world):
    """One real trial (Ray Tune + Optuna, in a process of its own as a notebook's kernel would be)."""
    from autocompress.report import front_data
    from autocompress.store import Store

    tmp = world["tmp"] / "slow"
    tmp.mkdir()
    script = SCRIPT.format(tests=str(Path(__file__).parent), tmp=str(tmp), teacher=world["teacher"],
                           glue=str(world["glue"]))
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=900, cwd=tmp,
                       env={**os.environ, "AUTOCOMPRESS_CACHE": str(world["tmp"] / "cache"),
                            "AUTOCOMPRESS_LOCK_FILE": str(world["tmp"] / "machine.lock")})
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == ["done", 0]
    data = front_data(Store(f"sqlite:///{tmp / 'runs' / 'store.db'}", create=False), "one")
    assert data["status"] == "done" and data["trials_done"] == 1
    assert data["devices"]["test-cpu"]["front"]
