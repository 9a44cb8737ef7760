"""Searches that survive Ctrl-C and SIGKILL, refuse a second search on their SQLite store, listen on
loopback only, and run on a real two-node Ray cluster with the store in PostgreSQL. Each test runs the
installed command on the packaged MiniLM with tiny budgets (the small teacher is shared), the target a
laptop profile of the user's own with a short timing protocol (``conftest.QUICK_LAPTOP``)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import QUICK_LAPTOP, is_loopback, listening_addresses, process_tree

SPACE = """
name: tiny
trials: 3
steps:
  - method: drop_layers
    params: {keep: {int: [2, 5]}}
  - method: distill
    when: changed
    params: {steps: {int: [10, 30], step: 10}}
  - method: quantize_int8
    optional: true
"""
TEACHER = ["--train-examples", "1600", "--epochs", "2", "--val-size", "200"]   # learns: ~85% val
EXE = str(Path(sys.executable).with_name("autocompress"))


@pytest.fixture
def user(tmp_path, glue_dir, shared_cache):
    cwd = tmp_path / "work"
    cwd.mkdir()
    (cwd / "tiny.yaml").write_text(SPACE)
    (cwd / "quick.yaml").write_text(QUICK_LAPTOP)
    env = {**os.environ, "AUTOCOMPRESS_CACHE": str(shared_cache), "AUTOCOMPRESS_GLUE_DIR": str(glue_dir),
           "AUTOCOMPRESS_LOCK_FILE": str(tmp_path / "machine.lock"), "PYTHONUNBUFFERED": "1"}
    return cwd, env


def _start(cwd, env, *args):
    """The search in its own process group (as a shell runs a foreground job)."""
    return subprocess.Popen([EXE, "search", "--space", "tiny.yaml", "--device", "quick.yaml", *TEACHER, *args],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _store(cwd):
    from autocompress.store import Store, default_url

    return Store(default_url(cwd / "runs"), create=False)


def _wait_for_finished(cwd, run, n, proc, err: list | None = None, timeout=900):
    """Wait until ``n`` candidates of ``run`` are finished; returns the store. ``err``: the lines of the
    search's stderr read so far (by ``_lines``), else its stderr is read once it has exited."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, ("".join(err) if err is not None else proc.communicate()[1])[-3000:]
        if (cwd / "runs" / "autocompress.db").exists():
            try:
                store = _store(cwd)
                if sum(t.role == "candidate" for t in store.trials(run)) >= n:
                    return store
            except Exception:       # the store is being created
                pass
        time.sleep(2)
    raise AssertionError(f"{n} trials did not finish in {timeout} s")


def test_a_search_stopped_at_trial_0_then_killed_resumes_without_losing_or_repeating_trials(user):
    """One run stopped twice. Ctrl-C while trial 0 (the teacher's own figures, timed in the search's process)
    runs: stored ``interrupted``, not a failure with a traceback. Resumed, it times the teacher again; then,
    mid-search, SIGKILL of the whole process group (a crash: no chance to clean up), and --resume again:
    no finished trial lost or re-run, the trial that was running re-proposed."""
    from autocompress.search.resume import study_agrees

    cwd, env = user
    proc = _start(cwd, env, "--name", "crash")
    err: list[str] = []
    _lines(proc.stderr, err)
    _wait_for_trial(cwd, "crash", 0, proc, err, "started", lambda t: t.status == "running")
    time.sleep(1)
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=60)
    assert proc.returncode == 130, "".join(err)[-3000:]
    assert "the search was interrupted" in "".join(err)
    zero = _store(cwd).trial("crash", 0)
    assert zero.status == "interrupted" and "interrupted while this trial ran" in zero.error, zero.error

    proc = subprocess.Popen([EXE, "search", "--resume", "crash"], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    err, out = [], []
    _lines(proc.stderr, err), _lines(proc.stdout, out)     # drained as it runs: a full pipe would block it
    store = _wait_for_finished(cwd, "crash", 1, proc, err)

    # while it runs: Ray and the search listen on loopback only ...
    tree = process_tree(proc.pid)
    addresses = listening_addresses(tree)
    assert addresses, "the search's Ray processes listen on no TCP port?"
    assert all(is_loopback(a) for a in addresses), addresses
    # ... and a second search on the same SQLite store is refused at once
    second = subprocess.run([EXE, "search", "--space", "tiny.yaml", "--name", "other", *TEACHER], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=300)
    assert second.returncode == 2 and "is in use by another search (pid" in second.stderr, second.stderr
    assert len(second.stderr.strip().splitlines()) == 1

    store = _wait_for_finished(cwd, "crash", 2, proc, err)
    before = {t.number: (t.recipe_hash, t.seconds, t.metrics["val"]["main"]) for t in store.trials("crash")
              if t.role == "candidate"}
    tree |= process_tree(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)               # the whole process group, no chance to clean up
    proc.wait(timeout=60)
    for pid in tree:                                   # Ray workers live in process groups of their own
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert _store(cwd).get_run("crash").status == "running"      # as a crash leaves it

    r = subprocess.run([EXE, "search", "--resume", "crash"], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    store = _store(cwd)
    assert store.get_run("crash").status == "done"
    trials = [t for t in store.trials("crash", status=None) if t.role == "candidate"]
    finished = [t for t in trials if t.status in ("done", "duplicate") ]
    stale = [t for t in trials if (t.error or "").startswith("stale:")]
    assert len(finished) == 3                          # the asked number of trials, counting those before
    after = {t.number: (t.recipe_hash, t.seconds, t.metrics["val"]["main"]) for t in finished}
    assert all(after[n] == v for n, v in before.items())          # none lost, none re-run (same figures)
    assert len({t.number for t in trials}) == len(trials)         # none twice
    for t in stale:     # the trial that was running is failed as stale, and its recipe ran again
        assert "its recipe is proposed again as trial" in t.error
        retry = int(t.error.rsplit(" ", 1)[1])
        assert next(x for x in trials if x.number == retry).params == t.params
    ours, theirs = study_agrees(store, "crash", store.url)
    assert ours == theirs                              # Optuna's study and our table: same trials, same states
    zero = store.trial("crash", 0)                     # the teacher, timed again by the first --resume
    assert zero.status == "done" and zero.role == "teacher"
    assert set(zero.latencies) == {"laptop-cpu", "mobile-cpu", "server-gpu"} and "teacher fp32 ONNX" in r.stdout


def test_cluster_search_with_the_store_in_postgresql(user, ray_cluster, postgres_url):
    """Two nodes (`ray start --head` + `ray start --address`), token auth, trials in parallel, one per
    node; the store and the Optuna study in PostgreSQL."""
    from autocompress.search.resume import study_agrees
    from autocompress.store import Store

    cwd, env = user
    address = ray_cluster(head_cpus=1, worker_cpus=1)
    env = {**env, **{k: v for k, v in os.environ.items() if k.startswith("RAY_")}}    # the cluster's token
    r = subprocess.run([EXE, "search", "--space", "tiny.yaml", "--trials", "2", "--name", "shared", *TEACHER,
                        "--device", "quick.yaml",
                        "--ray-address", address, "--storage", postgres_url, "--parallel", "2"],
                       cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 at a time with 1 CPU(s) each, on 2 node(s)" in r.stderr
    store = Store(postgres_url, create=False)
    trials = [t for t in store.trials("shared") if t.role == "candidate"]
    assert len(trials) == 2
    assert len({t.node for t in trials}) == 2, [t.node for t in trials]       # both nodes trained, side by side
    ours, theirs = study_agrees(store, "shared", store.url)
    assert ours == theirs and len(theirs) == 2
    assert not (cwd / "runs" / "autocompress.db").exists()                  # nothing went to SQLite


def test_parallel_trials_split_the_cores(monkeypatch):
    from autocompress.search import cluster

    nodes = [{"Alive": True, "Resources": {"CPU": 2.0}}]
    monkeypatch.setattr(cluster, "alive_nodes", lambda: nodes)
    assert cluster.plan_parallel(None) == (1, 2)            # one machine: one trial with its cores
    assert cluster.plan_parallel(2) == (2, 1)               # two side by side: one core each, never 2 x 2
    nodes.append({"Alive": True, "Resources": {"CPU": 8.0}})
    assert cluster.plan_parallel(None) == (2, 2)            # one trial per node, capped by the smallest node
    assert cluster.plan_parallel(3, max_threads=4) == (3, 2)


# ---------------------------------------------------------------- Ctrl-C at any stage, within seconds
LONG = """
name: long
trials: 2
steps:
  - method: drop_layers
    params: {keep: {int: [1, 2]}}
  - method: distill
    params: {steps: {int: [10, 6000], step: 5990}, batch_size: 4}
seeds:
  - {drop_layers.keep: 2, distill.steps: 10}
  - {drop_layers.keep: 1, distill.steps: 6000}
"""


def _search_processes(marker: str) -> list[int]:
    """Processes whose environment holds ``marker`` (the test's own lock file path): the search and the
    Ray processes it started (they inherit its environment)."""
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if marker.encode() in (proc / "environ").read_bytes():
                    out.append(int(proc.name))
            except OSError:
                pass
    return out


def _wait_for_trial(cwd, run: str, number: int, proc, err: list, what: str, ready, timeout: float = 900) -> None:
    """Wait until trial ``number`` of ``run`` is ``ready`` (a predicate on its record), the search still alive."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "".join(err)[-3000:]
        try:
            t = _store(cwd).trial(run, number)
            if t is not None and ready(t):
                return
        except Exception:            # the store or the trial's row not made yet
            pass
        time.sleep(0.5)
    raise AssertionError(f"trial {number} of run {run} never {what}:\n" + "".join(err)[-3000:])


def _lines(stream, into: list):
    import threading

    def read():
        for line in iter(stream.readline, ""):
            into.append(line)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    return t


def test_ctrl_c_during_a_trials_distillation_stops_within_seconds_and_resumes(user):
    """The issue's case: a trial whose recovery would run for minutes. Ctrl-C (SIGINT to the process group)
    while it distils: exit 130 within 10 s, the run and that trial stored interrupted, no process of the
    search left (Ray's included); --resume keeps the finished trial and proposes the interrupted one again."""
    cwd, env = user
    (cwd / "long.yaml").write_text(LONG)
    proc = subprocess.Popen([EXE, "search", "--space", "long.yaml", "--device", "quick.yaml", "--name", "ctrlc",
                             *TEACHER], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    err: list[str] = []
    _lines(proc.stderr, err)
    _wait_for_trial(cwd, "ctrlc", 2, proc, err, "reached its distillation loop",   # it reports every 50 steps
                    lambda t: t.status == "running" and (t.stage or "").startswith("distill "))
    finished_before = {t.number: t.seconds for t in _store(cwd).trials("ctrlc") if t.role == "candidate"}
    t0 = time.time()
    os.killpg(proc.pid, signal.SIGINT)               # what a terminal's Ctrl-C sends
    out = proc.stdout.read()
    proc.wait(timeout=60)
    took = time.time() - t0
    assert proc.returncode == 130 and took < 10, (took, "".join(err)[-3000:])
    assert "the search was interrupted" in "".join(err) and "autocompress search --resume ctrlc" in "".join(err)
    assert "run ctrlc (interrupted)" in out           # the fronts of what finished are still printed
    store = _store(cwd)
    assert store.get_run("ctrlc").status == "interrupted"
    two = store.trial("ctrlc", 2)
    assert two.status == "interrupted" and "interrupted while this trial ran" in two.error
    time.sleep(1)
    assert _search_processes(env["AUTOCOMPRESS_LOCK_FILE"]) == []     # no Ray process of the search left
    # --resume: the finished trial is kept, the interrupted one is proposed again (bounded here by a time limit)
    r = subprocess.run([EXE, "search", "--resume", "ctrlc", "--time-limit", "20s"], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "waiting up to" not in r.stderr       # its own search stopped it: no heartbeat to wait for
    store = _store(cwd)
    assert store.get_run("ctrlc").status == "done"
    assert {t.number: t.seconds for t in store.trials("ctrlc") if t.number in finished_before} == finished_before
    two = store.trial("ctrlc", 2)
    assert two.status == "failed" and "its recipe is proposed again as trial 3" in two.error
    assert store.trial("ctrlc", 3).params == two.params


def test_ctrl_c_during_the_teachers_fine_tune_leaves_no_partial_teacher(tmp_path, glue_dir):
    """Ctrl-C while the teacher fine-tunes (before the run exists): exit 130 within 10 s, nothing in the
    teacher cache (no folder, no temporary one), no run in the store, no process left."""
    cwd = tmp_path / "work"
    cwd.mkdir()
    (cwd / "tiny.yaml").write_text(SPACE)
    env = {**os.environ, "AUTOCOMPRESS_CACHE": str(tmp_path / "cache"), "AUTOCOMPRESS_GLUE_DIR": str(glue_dir),
           "AUTOCOMPRESS_LOCK_FILE": str(tmp_path / "machine.lock"), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([EXE, "search", "--space", "tiny.yaml", "--name", "t", "--train-examples", "3200",
                             "--epochs", "3", "--val-size", "200"], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    err: list[str] = []
    _lines(proc.stderr, err)
    deadline = time.time() + 600
    while not any("teacher step" in line for line in err):       # its first look at val: mid-way
        assert proc.poll() is None and time.time() < deadline, "".join(err)[-3000:]
        time.sleep(0.5)
    t0 = time.time()
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=60)
    assert proc.returncode == 130 and time.time() - t0 < 10, "".join(err)[-3000:]
    teachers = tmp_path / "cache" / "teachers"
    assert not teachers.exists() or list(teachers.iterdir()) == []
    db = cwd / "runs" / "autocompress.db"
    assert not db.exists() or _store(cwd).run_names() == []
    time.sleep(1)
    assert _search_processes(env["AUTOCOMPRESS_LOCK_FILE"]) == []
