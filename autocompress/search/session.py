"""A search run from start to fronts, without the command line: usable from a notebook or a test.

``start(NewRun(...), Launch(...), log=...)`` fine-tunes (or adopts) the teacher, records the run with its
``RunSettings``, runs the trials, re-times and re-scores the fronts, and returns an ``Outcome``;
``check_resumable`` then ``resume`` continue a run that was interrupted or crashed. Nothing here parses
arguments or prints: lines for the user go to ``log`` (the CLI writes them to stderr), the teacher's
fine-tune reports through ``teacher_progress(step, total, loss)``, and the ``Outcome`` holds the status,
the exit code and the closing lines. The caller checks its input before calling ``start`` (the CLI does
so before any work); ``start`` and ``resume`` take the store's lock and this machine's search slot.

Heavy modules (torch, Ray) are imported inside the functions that need them. ``RunSettings`` (what a run
records) lives in ``settings.py``: ``report`` and ``ship`` read it and must stay quick to import.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

if TYPE_CHECKING:
    from ..hardware import HardwareProfile
    from ..lengths import LengthMix
    from ..store import RunRecord, Store
    from ..tasks import TaskData
    from ..teacher import Teacher, TeacherSettings
    from .space import Space

Log = Callable[[str], None]
Progress = Callable[[int, int, float], None]     # (step, total steps, loss) of the teacher's fine-tune


from .settings import RunSettings, SessionError  # noqa: F401  (SessionError: the CLI)


# ------------------------------------------------------------------ what a run is started with
@dataclass(frozen=True)
class NewRun:
    """A run to start, every part of it already checked (the CLI checks them before any work)."""

    name: str
    store_url: str
    runs_dir: str                         # the run's artifacts go to RUNS_DIR/NAME
    target: HardwareProfile               # the budget and the searcher's latency objective apply to it
    profiles: tuple[HardwareProfile, ...]  # every profile (the target among them): one front each
    space: Space
    trials: int
    budget_ms: float | None
    data: TaskData                        # the task, its validation split carved
    teacher: TeacherSettings              # how the teacher is fine-tuned (and cached); its seed is the run's
    num_layers: int                       # the base model's layer count (the space was validated for it)
    teacher_folder: str | None = None     # an already fine-tuned model to adopt instead
    force: bool = False                   # search even if the teacher learned nothing
    tolerance: float | None = None        # the pick's tolerance (None: pareto.TOLERANCE)
    sampler: str = "tpe"                  # the search strategy (samplers.py)
    command: str | None = None            # recorded, for the model card
    cwd: str | None = None                # recorded too; default: this process's working directory


@dataclass(frozen=True)
class Launch:
    """How this attempt runs (not recorded: a resumed run may run differently)."""

    ray_address: str | None = None        # a Ray cluster; None: a local Ray on 127.0.0.1
    parallel: int | None = None           # trials at once (None: one per node)
    time_limit_s: float | None = None
    store_option: str = ""                # how a command line names this store, for the hints (" --storage URL")


@dataclass(frozen=True)
class Outcome:
    """How a run ended: ``status`` done / interrupted / failed, the exit code a command should return,
    and (``messages``) the closing lines for the user."""

    status: str
    run: str
    exit_code: int
    started: float                        # time.time() when the trials started
    error: str | None = None              # why it failed
    time_limit_stopped: bool = False      # the time limit stopped trials that were running
    store_option: str = ""

    def messages(self, saved: str | None = None) -> list[str]:
        """The closing lines, after the fronts; ``saved``: a line on the training the budget spared
        (``report.over_budget_line``), put into the first one."""
        again = f"autocompress front {self.run}{self.store_option}"
        if self.status == "failed":
            return [f"autocompress search: {self.error}", f"see the details with: {again}"]
        lines = [f"search took {time.time() - self.started:.0f} s" + (f"; {saved}" if saved else "")
                 + f"; see it again with: {again}"]
        if self.status == "interrupted":
            lines.append("the search was interrupted: the trials finished so far are kept; continue it with: "
                         f"autocompress search --resume {self.run}{self.store_option}")
        elif self.time_limit_stopped:
            lines.append("the time limit stopped the trials that were running; the fronts hold the trials "
                         "finished in time")
        return lines


# ------------------------------------------------------------------ Ctrl-C and SIGTERM
STOP_WITHIN_S = 8.0       # after a first Ctrl-C, the watchdog ends what is still running by then


class Stopper:
    """How a search stops on Ctrl-C (SIGINT) or SIGTERM, whatever it is doing.

    The first signal raises ``KeyboardInterrupt`` in the main thread: the teacher's fine-tune, the
    calibration, the trials' loop or the final re-timing stop there; what finished is kept, the running
    trials are stored ``interrupted``, their Ray workers ended (``ray.shutdown``), the run stored
    ``interrupted``. It also arms a watchdog: whatever still runs ``STOP_WITHIN_S`` seconds later (the main
    thread stuck in a library call that does not look at signals) is ended the same way from the watchdog's
    thread, and the process exits 130. A second signal, while that cleanup runs, exits at once (130); the
    run stays resumable (``--resume`` fails the trials left running as stale)."""

    def __init__(self, log: Log, run: Callable[[], tuple[str, str] | None] = lambda: None):
        self.log, self.run = log, run        # run(): (store URL, run name) once the run exists
        self.signals, self._saved = 0, {}

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._saved[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        import signal

        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
        self._saved = {}

    def _handle(self, signum, frame):
        import threading

        self.signals += 1
        if self.signals > 1:
            self.log("interrupted again: exiting now" + self._resume_hint())
            os._exit(130)
        threading.Thread(target=self._watchdog, daemon=True, name="autocompress-stop").start()
        raise KeyboardInterrupt

    def _resume_hint(self) -> str:
        where = self.run()
        return f"; the run can be resumed: autocompress search --resume {where[1]}" if where else ""

    def _watchdog(self) -> None:
        time.sleep(STOP_WITHIN_S)
        self.log(f"the search did not stop within {STOP_WITHIN_S:g} s of the interrupt: ending it now"
                 + self._resume_hint())
        where = self.run()
        if where:
            try:
                from ..store import INTERRUPTED, Store

                store = Store(where[0], create=False)
                store.mark_trials(where[1], ("running",), "interrupted", INTERRUPTED)
                store.finish_run(where[1], "interrupted")
            except Exception:
                pass
        _end_ray(timeout=1.5)
        os._exit(130)


def _end_ray(timeout: float) -> None:
    """``ray.shutdown()`` (the local Ray's processes and the trials' workers end), waiting at most ``timeout``."""
    import threading

    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return
    t = threading.Thread(target=ray.shutdown, daemon=True)
    t.start()
    t.join(timeout)


# ------------------------------------------------------------------ start, resume, finish
def start(new: NewRun, launch: Launch = Launch(), *, log: Log, teacher_progress: Progress | None = None) -> Outcome:
    """Fine-tune (or adopt) the teacher, record the run, run its trials, then its fronts: ``finish``.
    Raises ``locks.StoreBusy`` when another search holds the SQLite store, ``teacher.UselessTeacher``
    when the teacher learned nothing (unless ``new.force``)."""
    from ..store import Store
    from ..tasks import save_task_data
    from ..teacher import check_learned

    created = []
    with Stopper(log, lambda: (new.store_url, new.name) if created else None), \
            exclusive(new.store_url, new.name, local=not launch.ray_address, log=log):
        Path(new.runs_dir).mkdir(parents=True, exist_ok=True)
        store = Store(new.store_url)
        teacher = obtain_teacher(new.teacher, new.data, adopt=new.teacher_folder, log=log, progress=teacher_progress)
        if not new.force:
            check_learned(teacher)      # stop before an hour of compressing a model that learned nothing
        run_dir = Path(new.runs_dir) / new.name
        run_dir.mkdir(parents=True, exist_ok=True)
        spec = new.data.spec
        profiles, mix = _at_task_lengths(new.profiles, new.data, teacher, log)
        settings = RunSettings(
            trials=new.trials, space=new.space.name, val_size=len(new.data.val), seed=new.teacher.seed,
            teacher=_teacher_for_workers(teacher.path, run_dir, launch.ray_address), data=new.data.source,
            data_path=save_task_data(new.data, run_dir / "data"), num_layers=new.num_layers,
            profiles=tuple(p.to_dict() for p in profiles), attempt=0, labels=tuple(spec.label_names),
            metric=spec.metric, pair=spec.text_b is not None, command=new.command, cwd=new.cwd or os.getcwd(),
            baseline=teacher.info.get("baseline"), resolution=teacher.info.get("resolution"),
            carve=(new.data.carve or {}).get("how"), tolerance=new.tolerance, sampler=new.sampler,
            task_lengths=mix.to_dict())
        store.create_run(new.name, task=spec.name, model=new.teacher_folder or new.teacher.model, device=new.target.name,
                         budget_ms=new.budget_ms, space=new.space.text, run_dir=str(run_dir),
                         settings=settings.to_dict())
        created.append(True)
        log(f"run {new.name}: {new.trials} trials of space '{new.space.name}' on {spec.name}, target {new.target.name}"
            + (f", budget {new.budget_ms:g} ms" if new.budget_ms else "") + f"; store {store.url}")
        return _search(store, new.name, settings, new.data, teacher, launch, log)


def _at_task_lengths(profiles: tuple[HardwareProfile, ...], data: TaskData, teacher: Teacher,
                     log: Log) -> tuple[tuple[HardwareProfile, ...], LengthMix]:
    """The mix of the validation inputs' token lengths (by the teacher's tokenizer, as candidates are
    scored; a second or so), which every run records (``pick`` times a fixed run's model at it for the
    card), and the profiles, those that time at the task's lengths (``lengths: task``) given the mix."""
    from .. import lengths
    from ..features import EVAL_MAX_LENGTH

    val = data.val
    mix = lengths.of_texts(teacher.tokenizer, list(val["text_a"]), list(val["text_b"]) if "text_b" in val.column_names
                           else None, source=f"{data.spec.name}'s validation split", max_length=EVAL_MAX_LENGTH)
    if not any(p.lengths == "task" for p in profiles):
        return profiles, mix
    log(f"latency at the task's input lengths on {', '.join(p.name for p in profiles if p.lengths == 'task')}: "
        f"{mix.describe()}")
    return tuple(p.with_mix(mix.to_dict()) for p in profiles), mix


def check_resumable(store_url: str, name: str) -> tuple[Store, RunRecord]:
    """The store and the run to resume; refused (SessionError) when the run is done, or when its search
    is still alive on a shared database (a SQLite store's lock, taken by ``resume``, tells for sure)."""
    from ..store import Store, sqlite_file
    from .runner import GRACE_S

    store = Store(store_url, create=False)
    run = store.get_run(name)
    if run.status == "done":
        raise SessionError(f"run {run.name} is done: there is nothing to resume (see autocompress front {run.name})")
    idle = store.seconds_since_heartbeat(run.name)
    if sqlite_file(store_url) is None and run.status == "running" and idle is not None and idle < 2 * GRACE_S:
        raise SessionError(f"run {run.name} is still running (its search gave a sign of life {idle:.0f} s ago): "
                           "stop that search first, or wait")
    return store, run


def resume(store: Store, name: str, launch: Launch = Launch(), *, log: Log) -> Outcome:
    """Continue run ``name`` (see ``check_resumable``): finished trials are kept, the trial budget counts
    them, trials left running are failed as stale and their recipes proposed again."""
    from ..tasks import load_task_data
    from ..teacher import load_teacher

    run = store.get_run(name)
    settings = RunSettings.from_dict(run.settings)
    if settings.data_path is None:
        raise SessionError(f"run {run.name} was made by an earlier version of autocompress and cannot be resumed")
    data = load_task_data(settings.data_path)
    teacher = load_teacher(settings.teacher)
    with Stopper(log, lambda: (store.url, run.name)), exclusive(store.url, run.name, local=not launch.ray_address, log=log):
        settings = dataclasses.replace(settings, attempt=settings.attempt + 1)
        store.restart_run(run.name, settings.to_dict())
        log(f"resuming run {run.name} (attempt {settings.attempt}): {settings.trials} trials in all; store {store.url}")
        return _search(store, run.name, settings, data, teacher, launch, log)


def _search(store: Store, name: str, settings: RunSettings, data: TaskData, teacher: Teacher, launch: Launch,
            log: Log) -> Outcome:
    """Run (or continue) the trials, then ``finish``."""
    from . import cluster

    if "ray" not in sys.modules:     # Ray reads its environment when first imported (the CLI has set it)
        cluster.configure_environment(launch.ray_address)
    from ..hardware import prepare
    from .runner import SearchPlan, run_search
    from .space import parse_space
    from .trial import TrialSetup

    run = store.get_run(name)
    profiles = settings.hardware_profiles()
    run_dir = Path(run.run_dir)
    setup = TrialSetup(store_url=store.url, run=name, run_dir=str(run_dir), data_path=settings.data_path,
                       teacher_path=settings.teacher, profiles=profiles, device=run.device, budget_ms=run.budget_ms,
                       space_text=run.space, num_layers=settings.num_layers, threads=min(4, os.cpu_count() or 1),
                       seed=settings.seed)
    plan = SearchPlan(run=name, store_url=store.url, run_dir=run_dir, space=parse_space(run.space, settings.space),
                      trials=settings.trials, profiles=profiles, device=run.device, budget_ms=run.budget_ms,
                      ray_address=launch.ray_address, seed=settings.seed, parallel=launch.parallel,
                      time_limit_s=launch.time_limit_s, attempt=settings.attempt, sampler=settings.sampler)
    started = time.time()
    status = "done"
    try:
        prepare(profiles, log=log)      # predictors calibrated on this host (once, cached) before any trial
        status = run_search(plan, setup, data, teacher, log=log)
        if status == "done" and plan.space.finish:   # the finishing stage: a long recovery for the most promising
            from .finishing import refine              # members, chosen on figures re-timed side by side
            from .runner import retime_candidates

            for target in (p for p in profiles if p.name == run.device):
                log(f"finishing: the finished candidates re-timed on {target.name} side by side before it chooses")
                retime_candidates(store, name, target)
            refine(store, setup, plan.space.finish, data, teacher, floor=settings.floor, log=log)
    except KeyboardInterrupt:
        status = "interrupted"
    except BaseException as e:
        store.finish_run(name, "failed", error=f"{type(e).__name__}: {e}")
        raise
    return finish(store, name, profiles, data, teacher, status=status, launch=launch, started=started,
                  floor=settings.floor)


def finish(store: Store, name: str, profiles: tuple[HardwareProfile, ...], data: TaskData, teacher: Teacher, *,
           status: str, launch: Launch = Launch(), started: float | None = None, floor: float | None = None) -> Outcome:
    """After the trials (``status``: what ``run_search`` returned): the fronts' members and the teacher
    re-timed side by side and re-scored on the dev set, the run's final status stored; a run without
    one finished candidate has failed, and says why."""
    from ..store import INTERRUPTED, failure_summary
    from .runner import remeasure_fronts, rescore_fronts

    started = time.time() if started is None else started
    if status == "interrupted":         # whatever was still running (the teacher baseline, say)
        store.mark_trials(name, ("running",), "interrupted", INTERRUPTED)
    try:
        if _candidates_done(store, name) and status != "interrupted":    # interrupted: the fronts as they are, now
            remeasure_fronts(store, name, profiles, floor)
            rescore_fronts(store, name, profiles, data, teacher, floor)
    except KeyboardInterrupt:
        status = "interrupted"
    if status == "done" and not _candidates_done(store, name):
        run = store.get_run(name)
        over = store.trials(name, status="over_budget")
        reason, count = failure_summary(store.trials(name, status=None)) or ("no trial ran", 0)
        error = f"no candidate finished: {count} trial(s) failed, most often with: {reason}"
        if over and not count:
            error = (f"no candidate within the {run.budget_ms:g} ms budget on {run.device}: all {len(over)} were over it "
                     f"and not trained; raise --budget or search smaller models")
        store.finish_run(name, "failed", error=error)
        return Outcome("failed", name, 1, started, error=error, store_option=launch.store_option)
    store.finish_run(name, status)
    stopped = (launch.time_limit_s is not None
               and any(t.status == "stopped" for t in store.trials(name, status=None)))
    return Outcome(status, name, 130 if status == "interrupted" else 0, started, time_limit_stopped=stopped,
                   store_option=launch.store_option)


# ------------------------------------------------------------------ parts
def obtain_teacher(settings: TeacherSettings, data: TaskData, *, adopt: str | None = None, log: Log,
                   progress: Progress | None = None, fresh: bool = False) -> Teacher:
    """The teacher: ``adopt`` (an already fine-tuned folder) scored and cached, or the cached fine-tune for
    ``settings``, fine-tuning it first (again with ``fresh``) if there is none."""
    from ..teacher import adopt_teacher, get_teacher

    if adopt:
        return adopt_teacher(adopt, settings, data, log=log)
    return get_teacher(settings, data, log=log, progress=progress, fresh=fresh)


@contextlib.contextmanager
def exclusive(store_url: str, run: str, *, local: bool, log: Log) -> Iterator[None]:
    """One search per SQLite store (a second is refused with ``locks.StoreBusy``: two writers on one file
    would stall each other), and, for a local search, one search per machine (a second waits its turn
    rather than fighting the first for the cores)."""
    from ..locks import search_slot, store_lock
    from ..store import sqlite_file

    who = f"pid {os.getpid()}, run {run}"
    with contextlib.ExitStack() as stack:
        db = sqlite_file(store_url)
        if db is not None:
            stack.enter_context(store_lock(db, who))
        if local:
            stack.enter_context(search_slot(who, wait=lambda holder: log(
                f"another search is using this machine ({holder}): waiting for it to finish (Ctrl-C to stop)")))
        yield


def _teacher_for_workers(path: Path, run_dir: Path, ray_address: str | None) -> str:
    """Local trials read the cached teacher; on a cluster, trials on other machines read it from the run
    folder (which the README asks to be shared storage), so it is copied there once."""
    if not ray_address:
        return str(path)
    import shutil

    dst = run_dir / "teacher"
    if not (dst / "teacher.json").exists():
        shutil.copytree(path, dst, dirs_exist_ok=True)
    return str(dst)


def _candidates_done(store: Store, run: str) -> int:
    return sum(1 for t in store.trials(run) if t.role == "candidate")
