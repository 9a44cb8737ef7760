"""The store's contract, run against an SQLite file and an in-memory SQLite database."""
import hashlib

import pytest

from autocompress.hardware import Latency
from autocompress.recipe import Recipe, Step
from autocompress.store import Store, StoreError, TrialRecord, default_url

RECIPE = Recipe((Step("drop_layers", {"keep": 4}), Step("quantize_int8")))


def run_fields(**over):
    d = dict(task="sst2", model="tiny", device="laptop", budget_ms=20.0, space="name: quick\n",
             settings={"trials": 3}, run_dir="/tmp/runs/r")
    d.update(over)
    return d


@pytest.fixture(params=["file", "memory", "postgresql"])
def store(request, tmp_path):
    """The same contract on every database the store supports (PostgreSQL where .ci/run started one)."""
    if request.param == "postgresql":
        return Store(request.getfixturevalue("postgres_url"))
    url = f"sqlite:///{tmp_path}/s.db" if request.param == "file" else "sqlite://"
    return Store(url)


def test_create_and_get_run(store):
    store.create_run("r1", **run_fields())
    r = store.get_run("r1")
    assert (r.name, r.status, r.task, r.model, r.device, r.budget_ms) == ("r1", "running", "sst2", "tiny", "laptop", 20.0)
    assert r.settings == {"trials": 3} and r.space == "name: quick\n" and r.finished is None
    store.finish_run("r1", "done")
    r = store.get_run("r1")
    assert r.status == "done" and r.finished is not None and r.finished >= r.created and r.error is None
    store.create_run("r2", **run_fields(budget_ms=None))
    assert store.get_run("r2").budget_ms is None
    assert store.run_names() == ["r1", "r2"]


def test_duplicate_run_name(store):
    store.create_run("r1", **run_fields())
    with pytest.raises(StoreError, match="r1"):
        store.create_run("r1", **run_fields(task="cola"))
    assert store.get_run("r1").task == "sst2"              # the first one is untouched


def test_unknown_run_lists_recent_runs(store):
    with pytest.raises(StoreError, match="no runs yet"):
        store.get_run("nope")
    for name in ("alpha", "beta"):
        store.create_run(name, **run_fields())
    with pytest.raises(StoreError, match="nope") as e:
        store.trials("nope")
    assert "alpha" in str(e.value) and "beta" in str(e.value)
    with pytest.raises(StoreError):
        store.start_trial("nope", 1, "candidate", RECIPE.to_json(), RECIPE.hash)
    with pytest.raises(StoreError):
        store.finish_run("nope", "done")


def test_trial_round_trip(store, tmp_path):
    store.create_run("r", **run_fields())
    tid = store.start_trial("r", 1, "candidate", RECIPE.to_json(), RECIPE.hash,
                            params={"drop_layers.keep": 4, "quantize_int8": True})
    assert store.trial_id("r", 1) == tid
    store.add_metrics(tid, "val", {"accuracy": 0.9, "main": 0.9}, 500)
    store.add_metrics(tid, "dev", {"accuracy": 0.88, "f1": 0.87, "main": 0.88}, 872)
    lat = Latency("laptop", 12.5, 0.4, 12.1, 13.2, 40, "measured", {"threads": 2})
    store.add_latency(tid, lat.to_dict())
    store.add_latency(tid, Latency("phone", 40.0, 1.0, 39.0, 42.0, 20, "predicted").to_dict())
    art = tmp_path / "model.onnx"
    art.write_bytes(b"onnx bytes" * 100)
    store.add_artifact(tid, "onnx", art)
    store.finish_trial(tid, "done", seconds=12.0, size_mb=4.5, size_zip_mb=4.1, n_params=1234)

    (t,) = store.trials("r")
    assert isinstance(t, TrialRecord)
    assert (t.number, t.role, t.recipe, t.recipe_hash, t.status, t.error) == \
        (1, "candidate", RECIPE.to_json(), RECIPE.hash, "done", None)
    assert (t.seconds, t.size_mb, t.size_zip_mb, t.n_params) == (12.0, 4.5, 4.1, 1234)
    assert t.params == {"drop_layers.keep": 4, "quantize_int8": True}
    assert t.metrics == {"val": {"n": 500, "accuracy": 0.9, "main": 0.9},
                         "dev": {"n": 872, "accuracy": 0.88, "f1": 0.87, "main": 0.88}}
    assert t.accuracy("val") == 0.9 and t.accuracy("dev") == 0.88 and t.accuracy("test") is None
    assert t.latencies["laptop"] == lat.to_dict()
    assert Latency.from_dict(t.latencies["phone"]).how == "predicted"
    assert set(t.latencies) == {"laptop", "phone"}
    assert t.artifacts == {"onnx": str(art.resolve())}
    assert Recipe.from_json(t.recipe).hash == t.recipe_hash

    # the stored checksum and size are the file's
    from sqlalchemy import select

    from autocompress.store.tables import ArtifactRow
    with store._session() as s:
        row = s.scalars(select(ArtifactRow)).one()
    assert row.sha256 == hashlib.sha256(art.read_bytes()).hexdigest()
    assert row.size_bytes == 1000


def test_metrics_are_replaced_not_duplicated(store):
    store.create_run("r", **run_fields())
    tid = store.start_trial("r", 1, "candidate", RECIPE.to_json(), RECIPE.hash)
    store.add_metrics(tid, "val", {"main": 0.5}, 10)
    store.add_metrics(tid, "val", {"main": 0.7}, 20)
    store.finish_trial(tid, "done")
    (t,) = store.trials("r")
    assert t.metrics == {"val": {"n": 20, "main": 0.7}}


def test_latency_is_replaced_per_profile(store):
    """Re-timing a front member side by side replaces its latency on that profile only."""
    store.create_run("r", **run_fields())
    tid = store.start_trial("r", 1, "candidate", RECIPE.to_json(), RECIPE.hash)
    store.add_latency(tid, Latency("laptop", 10.0, 0.1, 9.9, 10.2, 20).to_dict())
    store.add_latency(tid, Latency("phone", 30.0, 0.1, 29.9, 30.2, 20).to_dict())
    store.add_latency(tid, Latency("laptop", 12.0, 0.2, 11.9, 12.2, 40, detail={"protocol": "side by side"}).to_dict())
    store.finish_trial(tid, "done")
    (t,) = store.trials("r")
    assert t.latencies["laptop"]["median_ms"] == 12.0 and t.latencies["laptop"]["n"] == 40
    assert t.latencies["laptop"]["detail"] == {"protocol": "side by side"}
    assert t.latencies["phone"]["median_ms"] == 30.0


def test_artifact_that_is_not_a_file(store, tmp_path):
    store.create_run("r", **run_fields())
    tid = store.start_trial("r", 1, "candidate", RECIPE.to_json(), RECIPE.hash)
    store.add_artifact(tid, "checkpoint", tmp_path)                  # a folder: no checksum
    store.finish_trial(tid, "done")
    assert store.trials("r")[0].artifacts == {"checkpoint": str(tmp_path.resolve())}


def test_failed_trial_and_status_filter(store):
    store.create_run("r", **run_fields())
    t0 = store.start_trial("r", 0, "teacher", Recipe().to_json(), Recipe().hash)
    store.finish_trial(t0, "done", seconds=1.0)
    t1 = store.start_trial("r", 1, "candidate", RECIPE.to_json(), RECIPE.hash)
    error = "RecipeError: prune_heads: ratio must be in [0, 1), got 1.0\nline two — ünïcode"
    store.finish_trial(t1, "failed", error=error, seconds=0.5)
    t2 = store.start_trial("r", 2, "candidate", RECIPE.to_json(), RECIPE.hash)      # still running

    assert [t.number for t in store.trials("r")] == [0]                           # default: done only
    (failed,) = store.trials("r", status="failed")
    assert failed.number == 1 and failed.error == error and failed.status == "failed" and failed.seconds == 0.5
    assert [t.number for t in store.trials("r", status="running")] == [2]
    assert [t.number for t in store.trials("r", status=None)] == [0, 1, 2]
    assert [t.role for t in store.trials("r", status=None)] == ["teacher", "candidate", "candidate"]
    assert t2 == store.trial_id("r", 2)


def test_retried_trial_starts_over(store, tmp_path):
    store.create_run("r", **run_fields())
    tid = store.start_trial("r", 1, "candidate", RECIPE.to_json(), RECIPE.hash)
    store.add_metrics(tid, "val", {"main": 0.5}, 10)
    store.add_latency(tid, Latency("laptop", 10.0, 0.1, 9.9, 10.2, 10).to_dict())
    store.finish_trial(tid, "failed", error="boom")
    other = Recipe((Step("drop_layers", {"keep": 2}),))
    tid2 = store.start_trial("r", 1, "candidate", other.to_json(), other.hash)
    store.finish_trial(tid2, "done")
    (t,) = store.trials("r", status=None)
    assert t.recipe_hash == other.hash and t.status == "done" and t.error is None
    assert t.metrics == {} and t.latencies == {}


def test_runs_are_separate(store):
    store.create_run("a", **run_fields())
    store.create_run("b", **run_fields())
    ta = store.start_trial("a", 1, "candidate", RECIPE.to_json(), RECIPE.hash)
    tb = store.start_trial("b", 1, "candidate", Recipe().to_json(), Recipe().hash)   # same number, other run
    assert ta != tb
    store.finish_trial(ta, "done")
    store.finish_trial(tb, "done")
    assert [t.recipe_hash for t in store.trials("a")] == [RECIPE.hash]
    assert [t.recipe_hash for t in store.trials("b")] == [Recipe().hash]


# ---------------------------------------------------------------- file-only behaviour
def test_reopen_file_store(tmp_path):
    url = f"sqlite:///{tmp_path}/deep/er/s.db"                    # parent folders are created
    Store(url).create_run("r", **run_fields())
    again = Store(url)
    assert again.run_names() == ["r"]
    with pytest.raises(StoreError):
        again.create_run("r", **run_fields())


def test_optuna_study_in_same_database(tmp_path):
    import optuna

    url = f"sqlite:///{tmp_path}/shared.db"
    store = Store(url)
    store.create_run("r", **run_fields())
    storage = optuna.storages.RDBStorage(url)
    study = optuna.create_study(study_name="r", storage=storage, direction="maximize")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    tid = store.start_trial("r", 1, "candidate", RECIPE.to_json(), RECIPE.hash)
    store.finish_trial(tid, "done")
    # both see their own data, in either order of opening
    again = optuna.load_study(study_name="r", storage=optuna.storages.RDBStorage(url))
    assert len(again.trials) == 2
    assert [t.number for t in Store(url).trials("r")] == [1]

    from sqlalchemy import inspect
    tables = set(inspect(store.engine).get_table_names())
    assert {"ac_runs", "ac_trials", "ac_metrics", "ac_latencies", "ac_artifacts"} <= tables
    assert {"studies", "trials"} <= tables


def test_optuna_first_then_store(tmp_path):
    import optuna

    url = f"sqlite:///{tmp_path}/shared2.db"
    optuna.create_study(study_name="s", storage=optuna.storages.RDBStorage(url))
    store = Store(url)
    store.create_run("r", **run_fields())
    assert store.run_names() == ["r"]
    assert [s.study_name for s in optuna.get_all_study_summaries(url)] == ["s"]


def test_bad_url():
    with pytest.raises(StoreError, match="cannot open store"):
        Store("nosuchdialect://x/y")


def test_default_url(tmp_path):
    url = default_url(tmp_path / "runs")
    assert url == f"sqlite:///{(tmp_path / 'runs').resolve()}/autocompress.db"
    Store(url).create_run("r", **run_fields())
    assert (tmp_path / "runs" / "autocompress.db").is_file()


def test_open_without_create(tmp_path):
    import optuna

    missing = f"sqlite:///{tmp_path}/missing.db"
    with pytest.raises(StoreError, match="no store at"):
        Store(missing, create=False)
    assert not (tmp_path / "missing.db").exists()                 # opening did not create it
    only_optuna = f"sqlite:///{tmp_path}/optuna.db"
    optuna.create_study(storage=optuna.storages.RDBStorage(only_optuna))
    with pytest.raises(StoreError, match="holds no autocompress runs"):
        Store(only_optuna, create=False)
    url = f"sqlite:///{tmp_path}/s.db"
    Store(url).create_run("r", **run_fields())
    assert Store(url, create=False).run_names() == ["r"]


def test_a_store_from_an_earlier_version_gains_new_columns(tmp_path):
    """Opening a store whose tables lack a column added since adds it (existing rows keep their data)."""
    import sqlalchemy as sa

    url = f"sqlite:///{tmp_path / 'old.db'}"
    Store(url).create_run("r", **run_fields())
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE ac_trials DROP COLUMN size_mb"))
        conn.execute(sa.text("ALTER TABLE ac_trials DROP COLUMN size_zip_mb"))
    assert not {"size_mb", "size_zip_mb"} & {c["name"] for c in sa.inspect(engine).get_columns("ac_trials")}
    store = Store(url)
    assert {"size_mb", "size_zip_mb"} <= {c["name"] for c in sa.inspect(engine).get_columns("ac_trials")}
    assert store.run_names() == ["r"]
