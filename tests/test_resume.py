"""--resume's verdict on the trials an earlier search left running in the Optuna study: failed and their
recipes proposed again at once where that search is known to be gone, without waiting for the heartbeat
grace (up to 40 s) that tells a dead search from a live one on a shared database."""
import optuna
import pytest

from autocompress.search import resume
from autocompress.store import Store
from test_store import RECIPE, run_fields


def _left_running(url: str, rows: list[str]) -> Store:
    """Run "r": its study holds one RUNNING trial per entry of ``rows``, each with a heartbeat just recorded
    (as a live search's would be); our table has the same trials in the statuses ``rows`` gives."""
    store = Store(url)
    store.create_run("r", **run_fields())
    storage = resume.heartbeat_storage(url)
    study = optuna.create_study(study_name="r", storage=storage, directions=["maximize", "minimize"])
    for i, status in enumerate(rows):
        trial = study.ask({"keep": optuna.distributions.IntDistribution(1, 5)})
        storage.record_heartbeat(trial._trial_id)
        tid = store.start_trial("r", trial.number + 1, "candidate", RECIPE.to_json(), RECIPE.hash)
        if status != "running":
            store.finish_trial(tid, status, error="interrupted while this trial ran")
    return store


def _check_retried(store: Store, url: str, number: int) -> None:
    study = optuna.load_study(study_name="r", storage=optuna.storages.RDBStorage(url))
    failed = study.trials[number - 1]
    assert failed.state == optuna.trial.TrialState.FAIL
    retry = next(t for t in study.trials if t.system_attrs.get("failed_trial") == failed.number)
    assert retry.state == optuna.trial.TrialState.WAITING and retry.params == failed.params
    row = store.trial("r", number)
    assert row.status == "failed" and f"its recipe is proposed again as trial {retry.number + 1}" in row.error


@pytest.mark.parametrize("row", ["running", "interrupted"])
def test_on_a_sqlite_store_the_lock_says_the_search_is_gone(tmp_path, row):
    """Resuming holds the SQLite store's lock, which died with the search that held it: a trial still
    RUNNING in the study is stale whatever its heartbeat says (a SIGKILL leaves it fresh for 30 s)."""
    url = f"sqlite:///{tmp_path}/s.db"
    store = _left_running(url, [row])
    said = []
    assert resume.fail_stale_trials(store, "r", log=said.append) == [(1, 2)]
    assert not any("waiting" in s for s in said), said
    _check_retried(store, url, 1)


def test_on_a_shared_database_trials_stopped_by_ctrl_c_need_no_wait(postgres_url):
    """PostgreSQL (several machines may share it: a live search elsewhere is told by its heartbeats): a
    trial its own search stored ``interrupted`` on Ctrl-C is failed and proposed again at once."""
    store = _left_running(postgres_url, ["interrupted"])
    said = []
    assert resume.fail_stale_trials(store, "r", log=said.append) == [(1, 2)]
    assert not any("waiting" in s for s in said), said
    _check_retried(store, postgres_url, 1)
