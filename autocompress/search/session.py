"""A search run from start to fronts, without the command line: usable from a notebook or a test.

``start(NewRun(...), Launch(...), log=...)`` fine-tunes (or adopts) the teacher, records the run with its
``RunSettings``, runs the trials, re-times and re-scores the fronts, and returns an ``Outcome``;
``check_resumable`` then ``resume`` continue a run that was interrupted or crashed. Nothing here parses
arguments or prints: lines for the user go to ``log`` (the CLI writes them to stderr), the teacher's
fine-tune reports through ``teacher_progress(step, total, loss)``, and the ``Outcome`` holds the status,
the exit code and the closing lines. The caller checks its input before calling ``start`` (the CLI does
so before any work); ``start`` and ``resume`` take the store's lock and this machine's search slot.

Heavy modules (torch, Ray) are imported inside the functions that need them: ``RunSettings`` is read
by ``report`` and ``ship``, which must stay quick to import.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator, Mapping

if TYPE_CHECKING:
    from ..hardware import HardwareProfile
    from ..store import RunRecord, Store
    from ..tasks import TaskData
    from ..teacher import Teacher, TeacherSettings
    from .space import Space

Log = Callable[[str], None]
Progress = Callable[[int, int, float], None]     # (step, total steps, loss) of the teacher's fine-tune


class SessionError(Exception):
    """A run cannot be started or resumed as asked; one line (the CLI exits 2)."""


# ------------------------------------------------------------------ what a run records
@dataclass(frozen=True)
class RunSettings:
    """What a run records beside its row (the run row's JSON ``settings`` column): enough to resume it,
    to ship its models and to say how it was made. ``to_dict`` writes ``version``; ``from_dict`` reads
    every version written so far (version 1, before the key existed, had the same keys). Fields a store
    made by an older autocompress lacks come back as their defaults (None, empty)."""

    VERSION: ClassVar[int] = 2

    trials: int | None = None
    space: str = ""                       # the space's name (its text is the run row's ``space``)
    val_size: int | None = None           # rows of the validation split carved from train
    seed: int = 0
    teacher: str = ""                     # the teacher's folder, as trial workers read it
    data: str | None = None               # where the task's rows came from (TaskData.source)
    data_path: str | None = None          # the splits as carved, saved in the run folder
    num_layers: int | None = None         # the base model's layer count
    profiles: tuple[dict, ...] = ()       # every hardware profile, as HardwareProfile.to_dict
    attempt: int = 0                      # 0: the first start; k: the k-th resume
    labels: tuple[str, ...] = ()
    metric: str | None = None
    pair: bool | None = None              # takes text pairs
    command: str | None = None            # the command line that started the run
    cwd: str | None = None                # and the folder it was started in
    baseline: dict | None = None          # the trivial answer's val score (teacher.trivial_baseline)
    resolution: float | None = None       # how far apart two val scores must be to differ at 95% (evaluate.resolution)
    carve: str | None = None              # how val was carved from train (tasks.split.carve), in words

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["profiles"] = [dict(p) for p in self.profiles]
        d["labels"] = list(self.labels)
        return {**d, "version": self.VERSION}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> RunSettings:
        d = dict(d or {})
        version = d.pop("version", 1)
        if not isinstance(version, int) or version < 1:
            raise SessionError(f"the run's settings have no readable version ({version!r})")
        if version > cls.VERSION:
            raise SessionError(f"the run's settings are version {version}, newer than this autocompress reads "
                               f"({cls.VERSION}): upgrade autocompress")
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in d.items() if k in names}     # versions 1 and 2 share their keys
        if values.get("profiles") is not None:
            values["profiles"] = tuple(dict(p) for p in values["profiles"])
        if values.get("labels") is not None:
            values["labels"] = tuple(values["labels"])
        return cls(**{k: v for k, v in values.items() if v is not None})     # a stored null: the default

    def hardware_profiles(self) -> tuple[HardwareProfile, ...]:
        from ..hardware import HardwareProfile

        return tuple(HardwareProfile.from_dict(p) for p in self.profiles)

    def task_info(self, task: str) -> tuple[tuple[str, ...], str, bool]:
        """(label names, metric, takes text pairs) of the run's task ``task``: as recorded, or GLUE's own
        for runs made before runs recorded them."""
        from ..tasks import stored_task

        return stored_task(task, labels=self.labels, metric=self.metric, pair=self.pair)


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


# ------------------------------------------------------------------ start, resume, finish
def start(new: NewRun, launch: Launch = Launch(), *, log: Log, teacher_progress: Progress | None = None) -> Outcome:
    """Fine-tune (or adopt) the teacher, record the run, run its trials, then its fronts: ``finish``.
    Raises ``locks.StoreBusy`` when another search holds the SQLite store, ``teacher.UselessTeacher``
    when the teacher learned nothing (unless ``new.force``)."""
    from ..store import Store
    from ..tasks import save_task_data
    from ..teacher import check_learned

    with exclusive(new.store_url, new.name, local=not launch.ray_address, log=log):
        Path(new.runs_dir).mkdir(parents=True, exist_ok=True)
        store = Store(new.store_url)
        teacher = obtain_teacher(new.teacher, new.data, adopt=new.teacher_folder, log=log, progress=teacher_progress)
        if not new.force:
            check_learned(teacher)      # stop before an hour of compressing a model that learned nothing
        run_dir = Path(new.runs_dir) / new.name
        run_dir.mkdir(parents=True, exist_ok=True)
        spec = new.data.spec
        settings = RunSettings(
            trials=new.trials, space=new.space.name, val_size=len(new.data.val), seed=new.teacher.seed,
            teacher=_teacher_for_workers(teacher.path, run_dir, launch.ray_address), data=new.data.source,
            data_path=save_task_data(new.data, run_dir / "data"), num_layers=new.num_layers,
            profiles=tuple(p.to_dict() for p in new.profiles), attempt=0, labels=tuple(spec.label_names),
            metric=spec.metric, pair=spec.text_b is not None, command=new.command, cwd=new.cwd or os.getcwd(),
            baseline=teacher.info.get("baseline"), resolution=teacher.info.get("resolution"),
            carve=(new.data.carve or {}).get("how"))
        store.create_run(new.name, task=spec.name, model=new.teacher_folder or new.teacher.model, device=new.target.name,
                         budget_ms=new.budget_ms, space=new.space.text, run_dir=str(run_dir),
                         settings=settings.to_dict())
        log(f"run {new.name}: {new.trials} trials of space '{new.space.name}' on {spec.name}, target {new.target.name}"
            + (f", budget {new.budget_ms:g} ms" if new.budget_ms else "") + f"; store {store.url}")
        return _search(store, new.name, settings, new.data, teacher, launch, log)


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
    with exclusive(store.url, run.name, local=not launch.ray_address, log=log):
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
                      time_limit_s=launch.time_limit_s, attempt=settings.attempt)
    prepare(profiles, log=log)      # predictors calibrated on this host (once, cached) before any trial
    started = time.time()
    status = "done"
    try:
        status = run_search(plan, setup, data, teacher, log=log)
    except KeyboardInterrupt:
        status = "interrupted"
    except BaseException as e:
        store.finish_run(name, "failed", error=f"{type(e).__name__}: {e}")
        raise
    return finish(store, name, profiles, data, teacher, status=status, launch=launch, started=started)


def finish(store: Store, name: str, profiles: tuple[HardwareProfile, ...], data: TaskData, teacher: Teacher, *,
           status: str, launch: Launch = Launch(), started: float | None = None) -> Outcome:
    """After the trials (``status``: what ``run_search`` returned): the fronts' members and the teacher
    re-timed side by side and re-scored on the dev set, the run's final status stored; a run without
    one finished candidate has failed, and says why."""
    from ..store import failure_summary
    from .runner import remeasure_fronts, rescore_fronts

    started = time.time() if started is None else started
    try:
        if _candidates_done(store, name):
            remeasure_fronts(store, name, profiles)
            rescore_fronts(store, name, profiles, data, teacher)
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
