"""Early exit (DeeBERT/PABEE): exit heads as declared, the identity setting, save/reload, the ONNX pipeline
against PyTorch on every layout, the expected latency, and a trial that scores, times and ships one."""
import copy
import json

import numpy as np
import pytest
import torch

from autocompress import arch, checkpoint, evaluate, pipeline
from autocompress.features import batches
from autocompress.hardware import Latency, describe
from autocompress.methods.base import RecipeError
from autocompress.methods.early_exit import EarlyExit, early_exit, heads_of, predict_torch
from autocompress.recipe import Recipe, Step
from conftest import LAYOUTS, TINY_LAYERS


def _rows(features, n=24, seed=5):
    return features(n, seed=seed)


def _torch_run(model, features):
    """predict_torch over evaluate's batches (the same padding the pipeline sees)."""
    logits = where = None
    for idx, arrays in batches(features, 64, 0):
        lg, w = predict_torch(model, {k: torch.from_numpy(v) for k, v in arrays.items()})
        if logits is None:
            logits, where = np.zeros((len(features), lg.shape[1]), np.float32), np.zeros(len(features), np.int64)
        logits[idx], where[idx] = lg, w
    return logits, where


def _threshold_between(model, features):
    """An entropy threshold that lets about half the rows leave at the first exit, midway between two
    rows' entropies (so float noise between ONNX and PyTorch cannot flip a decision)."""
    heads = heads_of(model)
    width = max(len(f["input_ids"]) for f in features)
    feats = {k: torch.tensor([f[k] + [0] * (width - len(f[k])) for f in features]) for k in features[0]}
    with torch.no_grad():
        states = model(**arch.inputs(model, feats), output_hidden_states=True).hidden_states
        ent = np.sort(pipeline.normalized_entropy(heads(states)[0].numpy()))
    gaps = np.diff(ent)
    mid = len(ent) // 2
    i = mid - 3 + int(np.argmax(gaps[mid - 3: mid + 3]))
    return float((ent[i] + ent[i + 1]) / 2)


# ---------------------------------------------------------------- the config
def test_config_validates_and_places_exits():
    assert EarlyExit(exits=2).positions(6) == [2, 4]
    assert EarlyExit(exits=[3, 1]).positions(6) == [1, 3] and EarlyExit(exits=[3, 1]).exits == (1, 3)
    assert EarlyExit(exits=4).is_identity(4) and not EarlyExit(exits=3).is_identity(4)
    for bad, words in [({"exits": 0}, "exits"), ({"exits": [2, 2]}, "exits"), ({"rule": "margin"}, "rule"),
                       ({"threshold": 1.5}, "threshold for rule entropy"),
                       ({"rule": "patience", "threshold": 1.5}, "threshold for rule patience"),
                       ({"steps": 0}, "steps")]:
        with pytest.raises(RecipeError, match=words):
            EarlyExit(**bad)
    # a recipe round-trips with a list of exits, and the method must be the last recovery step
    r = Recipe((Step("distill", {"steps": 1}), Step("early_exit", {"exits": [1, 3], "steps": 1})))
    assert Recipe.from_json(r.to_json()).hash == r.hash and "exit@1,3 H<0.3" in r.short()
    with pytest.raises(RecipeError, match="last step of its stage"):
        Recipe((Step("early_exit", {"steps": 1}), Step("distill", {"steps": 1})))


def test_full_space_may_add_exits():
    from autocompress.search.space import load_space

    space = load_space("full")
    params = dict(space.seeds[1], **{"early_exit": True, "early_exit.exits": 2, "early_exit.threshold": 0.3,
                                     "early_exit.steps": 200})
    assert space.recipe_from_params(params, 6).short() == "layers 4 · ffn -25% · kd 600 · exit/2 H<0.3 · int8"
    params["early_exit.exits"] = 3      # one exit after layer 3 of the 4 layers left
    assert "exit/3" in space.recipe_from_params(params, 6).short()
    params["drop_layers.keep"] = 3      # no layer left to put an exit after: the step is left out
    assert "exit" not in space.recipe_from_params(params, 6).short()


def test_exit_past_the_depth_or_twice_is_refused(tiny_bert, tiny_ctx):
    with pytest.raises(RecipeError, match="exits: an exit after layer 4"):
        early_exit(tiny_bert, EarlyExit(exits=[1, TINY_LAYERS], steps=1), tiny_ctx)
    model = early_exit(tiny_bert, EarlyExit(exits=2, steps=1), tiny_ctx)
    with pytest.raises(RecipeError, match="has exits already"):
        early_exit(model, EarlyExit(exits=1, steps=1), tiny_ctx)


# ---------------------------------------------------------------- the heads and training
def test_heads_as_declared_and_backbone_untouched(tiny_bert, tiny_ctx, tiny_transfer):
    before = {k: v.clone() for k, v in tiny_bert.state_dict().items()}
    n0 = checkpoint.count_params(tiny_bert)
    model = early_exit(tiny_bert, EarlyExit(exits=1, steps=4, batch_size=8), tiny_ctx)
    heads = heads_of(model)
    assert heads.after == [1, 2, 3] and len(heads.heads) == 3
    for head in heads.heads:
        shapes = [tuple(p.shape) for p in head.parameters()]
        assert shapes == [(32, 32), (32,), (2, 32), (2,)]
    assert checkpoint.count_params(model) == n0 + 3 * (32 * 32 + 32 + 2 * 32 + 2)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)          # backbone and classifier frozen
    assert all(p.requires_grad for p in model.parameters())               # ... and given back trainable


def test_training_moves_exits_towards_the_teacher(tiny_model, tiny_ctx, tiny_transfer):
    """The exits' distillation loss falls with training (same heads' initialisation: same seed)."""
    from autocompress.methods.distillation import kd_loss

    def loss_after(steps):
        m = early_exit(tiny_model("bert"), EarlyExit(exits=2, steps=steps, lr=1e-2, batch_size=16), tiny_ctx)
        batch = tiny_transfer.collate(list(range(64)))
        with torch.no_grad():
            states = m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       token_type_ids=batch["token_type_ids"], output_hidden_states=True).hidden_states
            return float(sum(kd_loss(lg, batch["teacher_logits"], batch["labels"], 2.0, 0.9)
                             for lg in heads_of(m)(states)))

    assert loss_after(40) < 0.8 * loss_after(1)


@pytest.mark.parametrize("rule,threshold", [("entropy", 0.0), ("patience", 3)])
def test_threshold_that_never_exits_is_the_model(tiny_bert, tiny_ctx, feature_rows, rule, threshold):
    plain = copy.deepcopy(tiny_bert)
    model = early_exit(tiny_bert, EarlyExit(exits=1, rule=rule, threshold=threshold, steps=2), tiny_ctx)
    rows = _rows(feature_rows)
    logits, where = _torch_run(model, rows)
    assert (where == 3).all()
    np.testing.assert_array_equal(logits, evaluate.predict_torch(plain, rows))


def test_save_reload_same_logits_and_exits(tiny_bert, tiny_ctx, feature_rows, tmp_path):
    model = early_exit(tiny_bert, EarlyExit(exits=2, threshold=0.99, steps=3), tiny_ctx)
    rows = _rows(feature_rows)
    logits, where = _torch_run(model, rows)
    assert len(set(where)) > 1 or where[0] == 0      # some rows leave early at this lax threshold
    checkpoint.save_model(model, None, tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["autocompress_attached"]["early_exits"]["after"] == [2]
    again = checkpoint.load_model(tmp_path / "ckpt")
    assert heads_of(again).rule == "entropy" and heads_of(again).threshold == 0.99
    logits2, where2 = _torch_run(again, rows)
    np.testing.assert_array_equal(where, where2)
    np.testing.assert_allclose(logits, logits2, atol=1e-6)


# ---------------------------------------------------------------- the ONNX pipeline
@pytest.mark.parametrize("model_type", LAYOUTS)
def test_pipeline_matches_pytorch_on_every_layout(model_type, tiny_model, tiny_ctx, feature_rows, tmp_path):
    model = early_exit(tiny_model(model_type), EarlyExit(exits=[2], threshold=1.0, steps=3), tiny_ctx)
    rows = _rows(feature_rows, n=32)
    heads_of(model).threshold = _threshold_between(model, rows)
    manifest = heads_of(model).write_pipeline(model, tmp_path / "pipe", lambda src, out: src)
    m = pipeline.read(manifest)
    assert [s["layers"] for s in m["segments"]] == [[0, 2], [2, 4]]     # (middle segments: the bert tests below)
    assert m["segments"][1]["inputs"] == ["hidden_in", "attention_mask"]
    logits, where = pipeline.run_rows(pipeline.open(manifest), rows)
    ref_logits, ref_where = _torch_run(model, rows)
    np.testing.assert_array_equal(where, ref_where)             # the same exits taken
    assert 0 < (where == 0).sum() < len(rows)                    # ... some early, some not
    np.testing.assert_allclose(logits, ref_logits, atol=1e-4)
    np.testing.assert_allclose(evaluate.predict_onnx(manifest, rows), logits)   # what scoring uses


def test_patience_rule_in_pytorch_and_onnx_and_tampering(tiny_bert, tiny_ctx, feature_rows, tmp_path):
    model = early_exit(tiny_bert, EarlyExit(exits=1, rule="patience", threshold=1, steps=3), tiny_ctx)
    rows = _rows(feature_rows, n=32)
    manifest = heads_of(model).write_pipeline(model, tmp_path / "pipe", lambda src, out: src)
    logits, where = pipeline.run_rows(pipeline.open(manifest), rows)
    ref_logits, ref_where = _torch_run(model, rows)
    np.testing.assert_array_equal(where, ref_where)
    np.testing.assert_allclose(logits, ref_logits, atol=1e-4)
    assert (where >= 1).all()          # patience 1: the first exit can never decide alone
    seg = tmp_path / "pipe" / "segment2" / "model.fp32.onnx"           # a changed graph is refused
    seg.write_bytes(seg.read_bytes() + b"\0")
    with pytest.raises(ValueError, match="does not match the sha256"):
        pipeline.read(manifest)


def test_on_top_of_structure_methods(tiny_bert, tiny_ctx, feature_rows, tmp_path):
    """Pruned heads, shared FFNs, factorized embeddings and magnitude masks, then exits: the pipeline
    still matches PyTorch, and the model saves and reloads with its heads."""
    from autocompress import export
    from autocompress.finalize import finalize

    recipe = Recipe((Step("prune_heads", {"ratio": 0.5, "score_batches": 2}),
                     Step("share_layers", {"groups": 2, "what": "ffn"}), Step("factorize_embeddings", {"dim": 16}),
                     Step("magnitude_prune", {"sparsity": 0.5}), Step("distill", {"steps": 2}),
                     Step("early_exit", {"exits": 1, "threshold": 0.95, "steps": 3})))
    model = finalize(recipe.apply_torch(tiny_bert, tiny_ctx))
    manifest, fp32 = export.export_candidate(model, tmp_path, lambda src, out: recipe.apply_onnx(src, out, tiny_ctx))
    assert manifest == fp32 == tmp_path / "pipeline" / "manifest.json"
    rows = _rows(feature_rows, n=32)
    logits, where = pipeline.run_rows(pipeline.open(manifest), rows)
    ref_logits, ref_where = _torch_run(model, rows)
    np.testing.assert_array_equal(where, ref_where)
    np.testing.assert_allclose(logits, ref_logits, atol=1e-4)
    checkpoint.save_model(model, None, tmp_path / "ckpt")
    np.testing.assert_allclose(_torch_run(checkpoint.load_model(tmp_path / "ckpt"), rows)[0], ref_logits, atol=1e-6)


def test_patience_rule_counts_agreeing_exits():
    rule = pipeline.ExitRule("patience", 2)
    state = rule.start(2)
    votes = [[[1, 0], [0, 1]], [[1, 0], [1, 0]], [[1, 0], [0, 1]], [[1, 0], [0, 1]]]   # row 0 always class 0
    left = [rule.step(np.array(v, dtype=np.float32), state).tolist() for v in votes]
    assert left == [[False, False], [False, False], [True, False], [True, False]]


# ---------------------------------------------------------------- the expected latency
def test_expected_latency_is_the_reach_weighted_sum():
    def other(ms):
        return {"other_shapes": [{"batch_size": 8, "seq_len": 128, "median_ms": ms}]}

    segs = [Latency("p", 2.0, 0.2, 1.8, 2.4, 30, "measured", {"host": "h", "host_ms": 9, **other(10.0)}),
            Latency("p", 1.0, 0.1, 0.9, 1.2, 20, "measured", {"host": "h", **other(4.0)}),
            Latency("p", 3.0, 0.4, 2.5, 3.5, 25, "measured", {"host": "h", **other(8.0)})]
    reach = [1.0, 0.5, 0.25]
    from autocompress.hardware.obtain import expected

    usage = pipeline.Usage(tuple(reach), "the validation inputs (8 rows)", "early exit, entropy 0.5")
    lat = expected(segs, usage)
    assert lat.median_ms == pytest.approx(2.0 + 0.5 * 1.0 + 0.25 * 3.0)
    assert lat.p90_ms == pytest.approx(2.4 + 0.6 + 0.875) and lat.n == 20 and lat.how == "measured"
    assert lat.detail["expected"] and lat.detail["reach"] == reach and lat.detail["segment_ms"] == [2.0, 1.0, 3.0]
    assert "host_ms" not in lat.detail                      # a per-graph figure is not carried over
    assert lat.detail["other_shapes"] == [{"batch_size": 8, "seq_len": 128, "median_ms": 10.0 + 2.0 + 2.0}]
    text = describe(lat.to_dict())
    assert text.startswith("expected over the validation inputs (8 rows)") and "[100%, 50%, 25%]" in text
    assert pipeline.reach_of(np.array([0, 2, 1, 2]), 3) == [1.0, 0.75, 0.5]
    with pytest.raises(ValueError):
        expected(segs[:2], usage)


# ---------------------------------------------------------------- one trial, front, pick and predict
@pytest.fixture(scope="module")
def trial_world(tmp_path_factory, glue_dir):
    """A tiny BERT teacher on real SST-2 rows; one trial with early exit and int8, on a measured CPU
    profile and the roofline-predicted server GPU (deterministic)."""
    import transformers

    from autocompress.hardware import HardwareProfile, load_profile
    from autocompress.search.trial import TrialSetup
    from conftest import run_and_report
    from autocompress.store import Store
    from autocompress.tasks import load_task, save_task_data
    from autocompress.teacher import TeacherSettings, adopt_teacher, resolve_model

    tmp = tmp_path_factory.mktemp("exit")
    mp = pytest.MonkeyPatch()
    mp.setenv("AUTOCOMPRESS_CACHE", str(tmp / "cache"))
    mp.setenv("AUTOCOMPRESS_LOCK_FILE", str(tmp / "machine.lock"))
    cpu = HardwareProfile.from_dict({"name": "test-cpu", "description": "this CPU, quick protocol",
                                     "runtime": "onnxruntime", "provider": "CPUExecutionProvider", "max_threads": 1,
                                     "max_seconds": 0.3, "ci_target": 0.05, "seq_len": 32})
    data = load_task("sst2", glue_dir, val_size=64)
    cfg = transformers.BertConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=256,
                                  max_position_embeddings=128, num_labels=2)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(cfg).eval()
    for p in model.parameters():
        p.data.add_(torch.randn_like(p) * 0.02)
    folder = checkpoint.save_model(model, checkpoint.load_tokenizer(resolve_model("minilm")), tmp / "tiny")
    teacher = adopt_teacher(str(folder), TeacherSettings(train_examples=64, val_size=64, transfer_examples=64), data,
                            log=lambda m: None)
    store = Store(f"sqlite:///{tmp / 'store.db'}")
    store.create_run("e", task="sst2", model="tiny", device="server-gpu", budget_ms=None, space="",
                     run_dir=str(tmp / "run"))
    setup = TrialSetup(store_url=store.url, run="e", run_dir=str(tmp / "run"),
                       data_path=save_task_data(data, tmp / "run" / "data"), teacher_path=str(teacher.path),
                       profiles=(cpu, load_profile("server-gpu")), device="server-gpu", budget_ms=None,
                       space_text="", num_layers=4, threads=1)
    recipe = Recipe((Step("early_exit", {"exits": 1, "threshold": 0.9, "steps": 5, "batch_size": 16}),
                     Step("quantize_int8")))
    result = run_and_report(setup, 1, recipe, data=data, teacher=teacher)
    yield {"store": store, "result": result, "tmp": tmp, "data": data, "teacher": teacher, "cpu": cpu}
    mp.undo()


def test_trial_scores_the_pipeline_and_stores_expected_latency(trial_world):
    from autocompress.hardware import obtain_latency

    store, result = trial_world["store"], trial_world["result"]
    t = store.trial("e", 1)
    assert t.status == "done" and t.metrics["val"]["n"] == 64
    manifest = t.artifacts["onnx"]
    m = pipeline.read(manifest)                           # sha256 of every segment as recorded
    assert len(m["segments"]) == 4 and all("quantize_int8" in s["file"] for s in m["segments"])
    assert sum(m["left_at"]) == 64 and m["reach"][0] == 1.0
    assert m["reach"] == pipeline.reach_of(np.repeat(np.arange(4), m["left_at"]), 4)
    for name, lat in t.latencies.items():
        d = lat["detail"]
        assert d["expected"] and d["reach"] == [round(r, 4) for r in m["reach"]] and len(d["segment_ms"]) == 4
        assert lat["median_ms"] == pytest.approx(sum(r * s for r, s in zip(m["reach"], d["segment_ms"])), rel=1e-3)
        assert "expected over the validation inputs (64 rows)" in describe(lat)
    # the predicted figure is deterministic: each segment predicted again gives the same sum
    from autocompress.hardware import load_profile

    gpu = load_profile("server-gpu")
    again = [obtain_latency(s["file"], gpu, fp32_path=s["fp32"]).median_ms for s in m["segments"]]
    assert t.latencies["server-gpu"]["median_ms"] == pytest.approx(sum(r * a for r, a in zip(m["reach"], again)))
    # scored on the pipeline with its exit rule: the val score is that of its logits
    from autocompress.features import EVAL_MAX_LENGTH, encode
    from autocompress.evaluate import score

    feats = encode(trial_world["teacher"].tokenizer, trial_world["data"].val, EVAL_MAX_LENGTH)
    logits, where = pipeline.run_rows(pipeline.open(manifest), feats)
    assert score(trial_world["data"].spec, logits, trial_world["data"].val["label"], "val").main == \
        pytest.approx(t.accuracy("val"))
    assert np.bincount(where, minlength=4).tolist() == m["left_at"]
    # re-timed side by side with another graph (as fronts are): segment by segment, then weighed again
    from autocompress.hardware import obtain_side_by_side

    again = obtain_side_by_side({"pipe": manifest, "seg": m["segments"][0]["file"]}, trial_world["cpu"],
                                stored={"pipe": t.latencies["test-cpu"]})      # its usage: the stored figure's
    d = again["pipe"].detail
    assert set(again) == {"pipe", "seg"} and d["expected"] and len(d["segment_ms"]) == 4
    assert again["pipe"].median_ms == pytest.approx(sum(r * s for r, s in zip(m["reach"], d["segment_ms"])), rel=1e-3)
    assert t.size_mb == pytest.approx(sum(f.stat().st_size for f in [src for src, _, _ in pipeline.open(manifest).files()]) / 1e6)
    assert result["latency_ms"] == t.latencies["server-gpu"]["median_ms"]


def test_dev_rescore_runs_the_pipeline(trial_world):
    from autocompress.features import EVAL_MAX_LENGTH, encode
    from autocompress.evaluate import score
    from autocompress.search.runner import rescore_dev

    store, data = trial_world["store"], trial_world["data"]
    rescore_dev(store, "e", [store.trial("e", 1)], data, trial_world["teacher"])
    t = store.trial("e", 1)
    logits, _ = pipeline.run_rows(pipeline.open(t.artifacts["onnx"]), encode(trial_world["teacher"].tokenizer, data.dev, EVAL_MAX_LENGTH))
    assert t.metrics["dev"]["n"] == len(data.dev)
    assert t.accuracy("dev") == pytest.approx(score(data.spec, logits, data.dev["label"], "dev").main)


def test_front_marks_expected_latency(trial_world, tmp_path):
    from autocompress import plots, report

    data = report.front_data(trial_world["store"], "e")
    member = data["devices"]["server-gpu"]["front"][0]
    assert member["latency_expected"] is True
    text = report.tables(data)
    assert f"exit/1 H<0.9 · int8 {report.EXPECTED_MARK}" in text and report.EXPECTED_LEGEND in text
    assert json.loads(json.dumps(data, default=str))["devices"]["test-cpu"]["front"][0]["latency_expected"]
    assert plots.plot_png(data, tmp_path / "front.png").stat().st_size > 0


def test_pick_ships_the_pipeline_and_predict_runs_it(trial_world, tmp_path):
    from autocompress import ship

    store = trial_world["store"]
    choice = ship.choose(store, "e")
    out = ship.export(store, choice, tmp_path / "shipped", command="autocompress pick ...")
    files = sorted(str(p.relative_to(out)) for p in (out / "pipeline").rglob("*") if p.is_file())
    assert "pipeline/manifest.json" in files
    assert len([f for f in files if f.endswith(".onnx")]) == 4 and not any("fp32" in f for f in files)
    card = (out / "README.md").read_text()
    assert "**expected** latencies (early exit)" in card and "the validation inputs (64 rows)" in card
    model = ship.ShippedModel(out)
    row = trial_world["data"].val[0]
    got = model.predict(row["text_a"])
    manifest = store.trial("e", 1).artifacts["onnx"]
    enc = model.tokenizer(row["text_a"], truncation=True, max_length=128)
    logits, where = pipeline.run_rows(pipeline.open(manifest), [{k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}])
    p = np.exp(logits[0] - logits[0].max())
    assert got["probability"] == pytest.approx(float((p / p.sum()).max()), abs=1e-5)
    assert got["ran"]["layers_run"] == [1, 2, 3, 4][int(where[0])]
    seg = next((out / "pipeline").rglob("*.onnx"))            # a changed graph is refused on load
    seg.write_bytes(seg.read_bytes()[:-1])
    with pytest.raises(ship.PickError, match="does not match the sha256"):
        ship.ShippedModel(out)


def test_cli_pick_and_predict_a_pipeline(trial_world, tmp_path, capsys):
    from autocompress.cli import main

    store = trial_world["store"]
    out = tmp_path / "cli-shipped"
    assert main(["pick", "e", "--storage", store.url, "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out and (out / "pipeline" / "manifest.json").is_file()
    assert main(["predict", str(out), "a gripping , funny film", "--json"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["layers_run"] in (1, 2, 3, 4) and set(line["probabilities"]) == {"negative", "positive"}


def test_same_exits_other_precision_reuse_the_trained_model(trial_world):
    """early_exit + fp16 after early_exit + int8: the trained model (exit heads included) comes from the
    teacher's prefix cache, and its pipeline's exits are the very ones trained for trial 1."""
    from autocompress.search.trial import TrialSetup
    from conftest import run_and_report

    store = trial_world["store"]
    setup = TrialSetup(store_url=store.url, run="e", run_dir=str(trial_world["tmp"] / "run"),
                       data_path=str(trial_world["tmp"] / "run" / "data"), teacher_path=str(trial_world["teacher"].path),
                       profiles=(trial_world["cpu"],), device="test-cpu", budget_ms=None, space_text="", num_layers=4,
                       threads=1)
    recipe = Recipe((Step("early_exit", {"exits": 1, "threshold": 0.9, "steps": 5, "batch_size": 16}),
                     Step("quantize_fp16")))
    run_and_report(setup, 3, recipe, data=trial_world["data"], teacher=trial_world["teacher"])
    t = store.trial("e", 3)
    assert t.status == "done" and t.reused_from == "e/1" and t.latencies["test-cpu"]["detail"]["expected"]
    m1, m3 = (pipeline.read(store.trial("e", n).artifacts["onnx"]) for n in (1, 3))
    assert [s["exit"] for s in m3["segments"]] == [s["exit"] for s in m1["segments"]] == [1, 2, 3, None]
    assert all("quantize_fp16" in s["file"] for s in m3["segments"])


def test_a_single_graph_still_ships_as_model_onnx(trial_world, tmp_path):
    """The pipeline branch of pick leaves the one-file candidates as they were."""
    from autocompress import ship
    from autocompress.search.trial import TrialSetup
    from conftest import run_and_report

    store = trial_world["store"]
    setup = TrialSetup(store_url=store.url, run="e", run_dir=str(trial_world["tmp"] / "run"),
                       data_path=str(trial_world["tmp"] / "run" / "data"), teacher_path=str(trial_world["teacher"].path),
                       profiles=(trial_world["cpu"],), device="test-cpu", budget_ms=None, space_text="", num_layers=4,
                       threads=1)
    run_and_report(setup, 4, Recipe((Step("quantize_int8"),)), data=trial_world["data"],
                       teacher=trial_world["teacher"])
    t = store.trial("e", 4)
    assert not t.latencies["test-cpu"]["detail"].get("expected")
    choice = ship.Choice(store.get_run("e"), "test-cpu", None, None, 0.01, "val", "accuracy", t, None)
    out = ship.export(store, choice, tmp_path / "one", command="autocompress pick ...")
    assert (out / "model.onnx").is_file() and not (out / "pipeline").exists()
    card = (out / "README.md").read_text()
    assert "`model.onnx`:" in card and "ORTModelForSequenceClassification" in card and "**expected**" not in card
    got = ship.ShippedModel(out).predict("a fine film")
    assert got["ran"] == {} and abs(sum(got["probabilities"].values()) - 1) < 1e-6


def test_calibrated_quantization_is_not_combined_with_exits():
    """Static and mixed int8 calibrate on token inputs, which later segments do not take: a recipe refuses
    the pair in one line, and a space leaves the quantization step out when exits were chosen."""
    from autocompress.search.space import load_space

    with pytest.raises(RecipeError, match="quantize_static cannot be combined with early_exit: its calibration"):
        Recipe((Step("early_exit", {"steps": 1}), Step("quantize_static")))
    space = load_space("full")
    params = dict(space.seeds[1], **{"early_exit": True, "early_exit.exits": 2, "early_exit.threshold": 0.3,
                                     "early_exit.steps": 200, "quantization": "quantize_static",
                                     "quantize_static.calibration": "minmax"})
    assert space.recipe_from_params(params, 6).short() == "layers 4 · ffn -25% · kd 600 · exit/2 H<0.3"
    params["quantization"] = "quantize_fp16"          # keeps float32 inputs and outputs: fine per segment
    assert space.recipe_from_params(params, 6).short().endswith("exit/2 H<0.3 · fp16")
