"""Surviving a crash or a stop, with what Optuna offers.

The study lives in the store's database (RDBStorage). While trials run, the driver records an Optuna
heartbeat for each (``Heartbeat``), and the run's own heartbeat in the store. ``--resume`` fails at once
the trials of a search known to be gone (on a SQLite store, whose lock died with it; elsewhere, those it
stopped itself on Ctrl-C), lets Optuna's ``fail_stale_trials`` fail those whose heartbeat stopped (a crash
of a search on a shared database), and its ``RetryHeartbeatStaleTrialCallback`` enqueues their
parameters again, so their recipes are proposed again; our own table follows Optuna's
verdicts (``reconcile``).
"""
from __future__ import annotations

import threading
import time

from ..store import Store, sqlite_file

HEARTBEAT_S = 10       # the driver records an Optuna heartbeat for each running trial this often
GRACE_S = 30           # a running trial whose heartbeat is older than this is stale (its search is gone)
FINISHED = ("done", "duplicate", "over_budget", "failed", "stopped")   # statuses that use up the trial budget
STATE_OF = {"done": "COMPLETE", "duplicate": "COMPLETE", "over_budget": "COMPLETE", "failed": "FAIL",
            "stopped": "PRUNED"}     # our status -> the Optuna state the same trial must have



def heartbeat_storage(url: str):
    """The study's storage with Optuna's heartbeat settings and retry of stale trials (used to record
    heartbeats and to fail stale trials; the searcher itself asks and tells through a plain one)."""
    import warnings

    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna.storages.RDBStorage(
        url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3))


class Heartbeat:
    """A driver thread: every HEARTBEAT_S, an Optuna heartbeat for each trial under way (so a resumed
    search can tell which trials were left running by a search that died) and the run's own heartbeat
    in the store (so --resume can tell whether the run's search is still alive)."""

    def __init__(self, searcher, store: Store, run: str, url: str, on_beat=None):
        self.searcher, self.store, self.run, self.on_beat = searcher, store, run, on_beat
        self.storage = heartbeat_storage(url)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="autocompress-heartbeat")

    def beat(self) -> None:
        for trial_id in list(getattr(self.searcher, "live", {}).values()):
            self.storage.record_heartbeat(trial_id)
        self.store.touch_run(self.run)
        if self.on_beat:
            self.on_beat()

    def _loop(self) -> None:
        while not self.stop.wait(HEARTBEAT_S):
            try:
                self.beat()
            except Exception:          # a busy database: try again at the next beat
                pass

    def __enter__(self):
        self.beat()
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=5)


def study_exists(url: str, run: str) -> bool:
    """Whether the run's Optuna study is there (a search stopped while the teacher was timed has none yet)."""
    import optuna

    return run in optuna.study.get_all_study_names(optuna.storages.RDBStorage(url))


def fail_stale_trials(store: Store, run: str, log=print) -> list[tuple[int, int | None]]:
    """Before a resumed search: let Optuna fail the trials the interrupted search left running (their
    heartbeats stopped) and enqueue their parameters again; mirror that in our table. Returns
    (stale trial, the trial that will retry it) pairs; none where the study was never made."""
    import optuna
    from optuna.trial import TrialState

    if not study_exists(store.url, run):
        return []
    storage = heartbeat_storage(store.url)
    study = optuna.load_study(study_name=run, storage=storage)
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    # No heartbeat to wait for where the search that ran them is known to be gone: on a SQLite store, whose
    # lock this search holds (``session.exclusive``; the lock dies with its holder), every running trial;
    # elsewhere, those their own search stopped (Ctrl-C: stored ``interrupted`` once its workers were ended).
    gone = sqlite_file(store.url) is not None
    stopped = {t.number - 1 for t in store.trials(run, status="interrupted")}
    for t in [t for t in running if gone or t.number in stopped]:
        _fail_and_retry(storage, study, t)
    running = [t for t in running if not gone and t.number not in stopped]
    if running:
        log(f"waiting up to {GRACE_S + HEARTBEAT_S} s for the heartbeats of {len(running)} trial(s) the "
            "interrupted search left running to go stale")
        deadline = time.time() + GRACE_S + HEARTBEAT_S + 5
        while running and time.time() < deadline:
            optuna.storages.fail_stale_trials(study)
            running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if running:
                time.sleep(2)
        for t in running:     # never got a heartbeat (the search died between asking and recording one)
            _fail_and_retry(storage, study, t)
    return reconcile(store, run)


def _fail_and_retry(storage, study, trial) -> None:
    """Fail a study's running trial and enqueue its parameters again (what Optuna does to a stale one)."""
    from optuna.trial import TrialState

    if storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
        storage.get_heartbeat_stale_trial_callback()(study, storage.get_trial(trial._trial_id))


def reconcile(store: Store, run: str, why: str = "the search stopped while it ran") -> list[tuple[int, int | None]]:
    """Make our table agree with the Optuna study: a trial Optuna failed as stale (or never saw
    finish) is failed here too, with the reason and the trial that retries its recipe; a trial Optuna
    asked for but that never reached a worker gets a row. Returns (stale, retry) pairs."""
    import optuna
    from optuna.trial import TrialState

    study = optuna.load_study(study_name=run, storage=optuna.storages.RDBStorage(store.url))
    trials = study.get_trials(deepcopy=False)
    retry_of = {t.system_attrs.get("failed_trial"): t.number for t in trials
                if t.state == TrialState.WAITING and "failed_trial" in t.system_attrs}
    ours = {t.number: t for t in store.trials(run, status=None)}
    pairs = []
    for t in trials:
        number = t.number + 1
        if t.state == TrialState.WAITING:
            continue
        row = ours.get(number)
        if t.state == TrialState.FAIL and (row is None or row.status not in FINISHED):
            retry = retry_of.get(t.number)
            error = (f"stale: {why}; " + (f"its recipe is proposed again as trial {retry + 1}" if retry is not None
                                          else "not retried (retried too often)"))
            if row is None:
                store.record_failed(run, number, t.params, error)
            else:
                store.finish_trial(store.trial_id(run, number), "failed", error=error)
            pairs.append((number, None if retry is None else retry + 1))
    return pairs


def finished_count(store: Store, run: str) -> int:
    return sum(1 for t in store.trials(run, status=None) if t.role == "candidate" and t.status in FINISHED
               and not (t.error or "").startswith("stale:"))


def study_agrees(store: Store, run: str, url: str) -> tuple[dict[int, str], dict[int, str]]:
    """(our candidate trials -> the Optuna state their status means, the study's trials -> state), for
    checking that the two agree after a search (WAITING trials, proposed but never started, excluded)."""
    import optuna

    study = optuna.load_study(study_name=run, storage=optuna.storages.RDBStorage(url))
    theirs = {t.number + 1: t.state.name for t in study.get_trials(deepcopy=False) if t.state.name != "WAITING"}
    ours = {t.number: STATE_OF.get(t.status, t.status.upper()) for t in store.trials(run, status=None)
            if t.role == "candidate"}
    return ours, theirs


def note_dev_scores(store: Store, run: str) -> None:
    """The dev scores of the re-scored trials, in the Optuna study as its user attribute ``dev`` (trial
    number -> score; Optuna allows no attribute on a finished trial), so that optuna-dashboard shows them
    beside the searcher's objectives. Nothing where the study is not there (a run without trials)."""
    import optuna

    try:
        study = optuna.load_study(study_name=run, storage=optuna.storages.RDBStorage(store.url))
    except KeyError:
        return
    dev = {str(t.number): t.accuracy("dev") for t in store.trials(run) if t.accuracy("dev") is not None}
    study.set_user_attr("dev", dev)
    study.set_user_attr("dev_note", "trial number (the run's; Optuna's is one less) -> score on the held-out dev set")
