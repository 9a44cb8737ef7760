"""``autocompress search`` and ``search --resume RUN``: everything the user gave checked before any work
(bad input exits 2 before the teacher is fine-tuned or anything is written), then ``search.session``
does the run; here its lines are printed and its outcome becomes the exit code."""
from __future__ import annotations

import contextlib
import dataclasses
import signal
import time

from .checks import (UserError, check_name, check_numbers, check_output_places, check_task_options,
                     is_default_runs_dir, load_profile_checked, log, model_config, resolve_paths, store_url,
                     task_source, teacher_settings)
from .parser import build_parser, parse_budget, parse_duration, parse_points

# Options a resumed search takes from the stored run (giving them again with --resume is refused).
FIXED_ON_RESUME = ("budget", "device", "space", "trials", "name", "task", "data_dir", "val_size", "seed", "model",
                   "tolerance", "sampler", "lengths",
                   "teacher", "train_examples", "epochs", "train", "dev", "text_column", "text_pair_column",
                   "label_column", "metric")


class TeacherBar:
    """The teacher fine-tune's progress bar (tqdm), a ``teacher_progress`` callback for the session: made
    at the first step, closed at the last (or by ``close``, when the fine-tune stopped half-way)."""

    def __init__(self):
        self.bar = None

    def __call__(self, step: int, total: int, loss: float) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="fine-tune teacher", unit="step", dynamic_ncols=True)
        self.bar.update(1)
        if step % 20 == 0:
            self.bar.set_postfix_str(f"loss {loss:.3f}")
        if step >= total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def cmd_search(args) -> int:
    from ..search import cluster, session

    signal.signal(signal.SIGTERM, _interrupt)      # until the session takes over (session.Stopper): like Ctrl-C
    if args.resume:
        return _resume(args)
    # Everything the user gave is checked before anything is trained or written.
    budget = parse_budget(args.budget) if args.budget is not None else None
    time_limit = parse_duration(args.time_limit) if args.time_limit else None
    tolerance = parse_points(args.tolerance) if args.tolerance is not None else None
    check_numbers(args)
    check_task_options(args)
    resolve_paths(args)
    cluster.configure_environment(args.ray_address)
    from ..hardware import with_bundled
    from ..search.space import load_space
    from ..tasks import get_task, load_task

    target = load_profile_checked(args.device)
    profiles = with_bundled(target)
    if args.lengths:                        # every profile times at the task's lengths, or at its fixed shape
        profiles = tuple(dataclasses.replace(p, lengths=args.lengths) for p in profiles)
        target = next(p for p in profiles if p.name == target.name)
    space = load_space(args.space)
    trials = args.trials if args.trials is not None else space.trials
    source = task_source(args)
    if isinstance(source, str):
        get_task(source)                    # an unknown task name fails here, before anything is read
    if args.name:
        check_name(args.name)
    num_layers = model_config(args).num_hidden_layers
    space.validate(num_layers)
    cluster.check_ray_address(args.ray_address)
    url = check_output_places(args)
    data = load_task(source, args.data_dir, val_size=args.val_size, seed=args.seed)   # bad files fail here
    name = args.name or check_name(f"{data.spec.name}-{target.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    from ..store import Store, sqlite_file

    db = sqlite_file(url)
    if (db is None or db.exists()) and name in Store(url).run_names():
        raise UserError(f"a run named {name!r} exists already: choose another --name")

    # ---- from here on, work is done and written
    new = session.NewRun(name=name, store_url=url, runs_dir=args.runs_dir, target=target, profiles=profiles,
                         space=space, trials=trials, budget_ms=budget, data=data,
                         teacher=teacher_settings(args, data, source), num_layers=num_layers,
                         teacher_folder=args.teacher, force=args.force, command=args.command_line, tolerance=tolerance,
                         sampler=args.sampler)
    with TeacherBar() as bar, _store_in_use(url):
        outcome = session.start(new, _launch(args, time_limit), log=log, teacher_progress=bar)
    return _report(outcome, url)


def _resume(args) -> int:
    """``search --resume RUN``: continue an interrupted (or crashed) run from the store."""
    from ..search import cluster, session

    defaults = vars(build_parser().parse_args(["search"]))
    given = [o for o in FIXED_ON_RESUME if getattr(args, o) != defaults[o]]
    if given:
        raise UserError(f"--resume continues the run as it was started: leave out --{given[0].replace('_', '-')}")
    time_limit = parse_duration(args.time_limit) if args.time_limit else None
    check_numbers(args)
    resolve_paths(args)
    cluster.configure_environment(args.ray_address)
    url = store_url(args)
    store, run = session.check_resumable(url, args.resume)
    cluster.check_ray_address(args.ray_address)
    with _store_in_use(url):
        outcome = session.resume(store, run.name, _launch(args, time_limit), log=log)
    return _report(outcome, url)


def _launch(args, time_limit: float | None):
    from ..search.session import Launch

    return Launch(ray_address=args.ray_address, parallel=args.parallel, time_limit_s=time_limit,
                  store_option=store_option(args))


def _report(outcome, url: str) -> int:
    """The fronts on stdout, then the outcome's closing lines on stderr; its exit code."""
    from ..report import front_data, over_budget_line, tables
    from ..store import Store

    data = front_data(Store(url, create=False), outcome.run)
    print(tables(data))
    for line in outcome.messages(over_budget_line(data) if outcome.status != "failed" else None):
        log(line)
    return outcome.exit_code


@contextlib.contextmanager
def _store_in_use(url: str):
    """Another search holds the SQLite store: one line (exit 2) that says what to do."""
    from ..locks import StoreBusy
    from ..store import sqlite_file

    try:
        yield
    except StoreBusy as e:
        raise UserError(f"the store {sqlite_file(url)} is in use by another search ({e}): wait for it to finish, "
                        "or give this search its own --runs-dir or --storage") from None


def store_option(args) -> str:
    """How the hints name the store the user gave (nothing for the default one)."""
    if args.storage:
        return f" --storage {args.storage}"
    return f" --runs-dir {args.runs_dir}" if not is_default_runs_dir(args.runs_dir) else ""


def _interrupt(signum, frame):
    raise KeyboardInterrupt
