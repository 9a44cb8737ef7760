"""The ``autocompress`` command: search, front, runs, pick, predict, finetune, profiles, bench.

User mistakes end with one line on stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import signal
import sys
import time
from pathlib import Path

EXIT_USAGE = 2


class UserError(Exception):
    """Bad input: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def parse_budget(text: str) -> float:
    """'50ms', '50', '0.05s' -> milliseconds (> 0)."""
    m = re.fullmatch(r"\s*([-+]?\d+(?:\.\d+)?)\s*(ms|s)?\s*", text or "")
    if not m:
        raise UserError(f"--budget {text!r} is not a latency: give milliseconds like 50ms (or seconds like 0.05s)")
    value = float(m.group(1)) * (1000.0 if m.group(2) == "s" else 1.0)
    if value <= 0:
        raise UserError(f"--budget {text!r} must be a positive latency, like 50ms")
    return value


def _default_runs_dir() -> str:
    return os.environ.get("AUTOCOMPRESS_RUNS", "runs")


def _store_url(args) -> str:
    from .store import default_url

    return args.storage or default_url(args.runs_dir)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ the user's input, checked before any work
def _abs(path: str) -> str:
    return str(Path(path).expanduser().resolve())


def resolve_paths(args) -> None:
    """Resolve every path the user gave against the user's working directory, once, here: Ray workers
    run elsewhere (their working directory is a trial folder), so nothing relative may reach them."""
    from .search.space import bundled_spaces
    from .store import absolute_url
    from .tasks import ENV_DATA_DIR
    from .teacher import DEFAULT_MODEL

    for env in ("AUTOCOMPRESS_CACHE", "AUTOCOMPRESS_LOCK_FILE", "AUTOCOMPRESS_CALIBRATION_DIR", ENV_DATA_DIR):
        if os.environ.get(env):
            os.environ[env] = _abs(os.environ[env])     # what workers inherit is absolute too
    if hasattr(args, "data_dir"):
        given = args.data_dir or os.environ.get(ENV_DATA_DIR)
        args.data_dir = _abs(given) if given else None
    if getattr(args, "runs_dir", None):
        args.runs_dir = _abs(args.runs_dir)
    if getattr(args, "storage", None):
        args.storage = absolute_url(args.storage)
    for attr in ("space", "device"):    # a bundled name stays a name; a .yaml file is resolved
        value = getattr(args, attr, None)
        if value and value not in bundled_spaces() and (value.endswith((".yaml", ".yml")) or os.sep in value):
            if not Path(value).expanduser().is_file():
                raise UserError(f"--{attr} {value}: no such file")
            setattr(args, attr, _abs(value))
    for attr in ("train", "dev", "file"):      # the user's own data files, and predict's --file
        value = getattr(args, attr, None)
        if value:
            if not Path(value).expanduser().is_file():
                raise UserError(f"--{attr} {value}: no such file")
            setattr(args, attr, _abs(value))
    if getattr(args, "out", None):
        args.out = _abs(args.out)
    if getattr(args, "teacher", None):
        if not Path(args.teacher).expanduser().is_dir():
            raise UserError(f"--teacher {args.teacher}: no such folder; give a fine-tuned model folder")
        args.teacher = _abs(args.teacher)
    model = getattr(args, "model", None)
    if model and model != DEFAULT_MODEL:
        if Path(model).expanduser().exists():
            args.model = _abs(model)
        elif model.startswith((".", "/", "~")):
            raise UserError(f"--model {model}: no such folder; give a model folder, a hub id, or leave it out "
                            "for the packaged MiniLM")


def check_numbers(args) -> None:
    """Numeric options in range (argparse has checked they are numbers)."""
    checks = [("epochs", 1, "at least 1"), ("train_examples", 0, "0 (all rows) or more"),
              ("val_size", 1, "at least 1"), ("seed", 0, "0 or more"), ("trials", 1, "at least 1"),
              ("parallel", 1, "at least 1")]
    for attr, low, what in checks:
        value = getattr(args, attr, None)
        if value is not None and value < low:
            raise UserError(f"--{attr.replace('_', '-')} must be {what}, got {value}")


_FILE_OPTIONS = ("text_column", "text_pair_column", "label_column", "metric")


def check_task_options(args) -> None:
    """GLUE (--task, --data-dir) or your own files (--train, --dev and their column options): not both."""
    own = args.train or args.dev
    if not own:
        given = [f"--{a.replace('_', '-')}" for a in _FILE_OPTIONS if getattr(args, a) is not None]
        if given:
            raise UserError(f"{given[0]} describes your own data: give it with --train FILE --dev FILE")
        return
    if args.task:
        raise UserError("give --task (a GLUE task) or --train/--dev (your own data), not both")
    if args.data_dir:
        raise UserError("--data-dir is a GLUE folder: leave it out with --train/--dev")
    if not (args.train and args.dev):
        raise UserError(f"--{'dev' if args.train else 'train'} is missing: your own data needs both --train FILE "
                        "and --dev FILE (CSV, TSV or JSON lines)")


def task_source(args):
    """The task as trial workers will load it: a GLUE task name, or a FileTask with absolute paths."""
    from .tasks import FileTask

    if not args.train:
        return args.task or "sst2"
    return FileTask(train=args.train, dev=args.dev, text_column=args.text_column or "text",
                    text_pair_column=args.text_pair_column or None, label_column=args.label_column or "label",
                    metric=args.metric or "accuracy")


def model_config(args):
    """The base model's (or given teacher's) config, read without loading or training anything."""
    from transformers import AutoConfig

    from .teacher import TeacherError, resolve_model

    from .arch import ArchitectureError, check_config

    source = args.teacher or resolve_model(args.model)
    which = f"--teacher {args.teacher}" if args.teacher else f"--model {args.model}"
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise TeacherError(f"{which}: cannot read its config ({str(e).splitlines()[0][:160]})") from None
    try:
        check_config(config)       # before any fine-tuning: the methods must know this layout
    except ArchitectureError as e:
        raise TeacherError(f"{which}: {e}") from None
    return config


def check_output_places(args) -> str:
    """The runs folder and the store can be written (nothing is created here); returns the store URL."""
    from .store import check_url, writable_folder

    why = writable_folder(Path(args.runs_dir))
    if why:
        raise UserError(f"--runs-dir {args.runs_dir}: cannot write there: {why}; choose another --runs-dir")
    url = _store_url(args)
    check_url(url, parent_may_be_created=not args.storage)   # the default store lives in the runs folder
    return url


def _teacher_settings(args, data, source):
    from .tasks import FileTask
    from .teacher import TeacherSettings

    return TeacherSettings(model=args.model, task=data.spec.name, train_examples=args.train_examples,
                           epochs=args.epochs, val_size=len(data.val), seed=args.seed,
                           data=source.fingerprint() if isinstance(source, FileTask) else "")


def _teacher(args, data, source):
    from tqdm import tqdm

    from .teacher import adopt_teacher, get_teacher

    settings = _teacher_settings(args, data, source)
    if args.teacher:
        return adopt_teacher(args.teacher, settings, data, log=_log)
    bar = None

    def progress(step, total, loss):
        nonlocal bar
        bar = bar or tqdm(total=total, desc="fine-tune teacher", unit="step", dynamic_ncols=True)
        bar.update(1)
        if step % 20 == 0:
            bar.set_postfix_str(f"loss {loss:.3f}")

    try:
        return get_teacher(settings, data, log=_log, progress=progress, fresh=getattr(args, "fresh", False))
    finally:
        if bar:
            bar.close()


# ------------------------------------------------------------------ commands
def parse_duration(text: str) -> float:
    """'2h', '30m', '90s', '1.5h' (or plain seconds) -> seconds (> 0)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(h|m|min|s)?\s*", text or "")
    if not m or float(m.group(1)) <= 0:
        raise UserError(f"--time-limit {text!r} is not a duration: give e.g. 2h, 30m or 90s")
    return float(m.group(1)) * {"h": 3600, "m": 60, "min": 60, "s": 1, None: 1}[m.group(2)]


# Options a resumed search takes from the stored run (giving them again with --resume is refused).
_FIXED_ON_RESUME = ("budget", "device", "space", "trials", "name", "task", "data_dir", "val_size", "seed", "model",
                    "teacher", "train_examples", "epochs", "train", "dev", "text_column", "text_pair_column",
                    "label_column", "metric")


def cmd_search(args) -> int:
    from .search import cluster

    signal.signal(signal.SIGTERM, _interrupt)      # a stop (systemd, kill) ends the search like Ctrl-C
    if args.resume:
        return _resume(args)
    # Everything the user gave is checked before anything is trained or written.
    budget = parse_budget(args.budget) if args.budget is not None else None
    time_limit = parse_duration(args.time_limit) if args.time_limit else None
    check_numbers(args)
    check_task_options(args)
    resolve_paths(args)
    cluster.configure_environment(args.ray_address)
    from .hardware.profiles import ProfileError, list_profiles, load_profile
    from .search.space import load_space
    from .tasks import get_task, load_task

    try:
        target = load_profile(args.device)
    except ProfileError as e:
        raise UserError(f"--device: {e}") from None
    profiles = tuple({p.name: p for p in [target, *map(load_profile, list_profiles())]}.values())
    space = load_space(args.space)
    trials = args.trials if args.trials is not None else space.trials
    source = task_source(args)
    if isinstance(source, str):
        get_task(source)                    # an unknown task name fails here, before anything is read
    if args.name:
        _check_name(args.name)
    num_layers = model_config(args).num_hidden_layers
    space.validate(num_layers)
    cluster.check_ray_address(args.ray_address)
    url = check_output_places(args)
    data = load_task(source, args.data_dir, val_size=args.val_size, seed=args.seed)   # bad files fail here
    spec = data.spec
    name = args.name or _check_name(f"{spec.name}-{target.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    from .store import Store, sqlite_file

    db = sqlite_file(url)
    if (db is None or db.exists()) and name in Store(url).run_names():
        raise UserError(f"a run named {name!r} exists already: choose another --name")

    # ---- from here on, work is done and written
    with _exclusive_use(args, url, name):
        Path(args.runs_dir).mkdir(parents=True, exist_ok=True)
        store = Store(url)
        teacher = _teacher(args, data, source)
        from .teacher import check_learned

        if not args.force:
            check_learned(teacher)      # stop before an hour of compressing a model that learned nothing
        from .tasks import save_task_data

        run_dir = Path(args.runs_dir) / name
        run_dir.mkdir(parents=True, exist_ok=True)
        data_path = save_task_data(data, run_dir / "data")
        teacher_path = _teacher_for_workers(teacher.path, run_dir, args.ray_address)
        settings = {"trials": trials, "space": space.name, "val_size": len(data.val), "seed": args.seed,
                    "teacher": teacher_path, "data": data.source, "data_path": data_path, "num_layers": num_layers,
                    "profiles": [p.to_dict() for p in profiles], "attempt": 0,
                    "labels": list(spec.label_names), "metric": spec.metric, "pair": spec.text_b is not None,
                    "command": args.command_line, "cwd": os.getcwd()}
        store.create_run(name, task=spec.name, model=args.teacher or args.model, device=target.name,
                         budget_ms=budget, space=space.text, run_dir=str(run_dir), settings=settings)
        _log(f"run {name}: {trials} trials of space '{space.name}' on {spec.name}, target {target.name}"
             + (f", budget {budget:g} ms" if budget else "") + f"; store {store.url}")
        return _search(args, store, name, settings, data, teacher, time_limit)


def _resume(args) -> int:
    """``search --resume RUN``: continue an interrupted (or crashed) run from the store."""
    from .search import cluster

    defaults = vars(build_parser().parse_args(["search"]))
    given = [o for o in _FIXED_ON_RESUME if getattr(args, o) != defaults[o]]
    if given:
        raise UserError(f"--resume continues the run as it was started: leave out --{given[0].replace('_', '-')}")
    time_limit = parse_duration(args.time_limit) if args.time_limit else None
    check_numbers(args)
    resolve_paths(args)
    cluster.configure_environment(args.ray_address)
    from .hardware.profiles import HardwareProfile
    from .search.runner import GRACE_S
    from .store import Store, sqlite_file
    from .tasks import load_task_data
    from .teacher import load_teacher

    url = _store_url(args)
    store = Store(url, create=False)
    run = store.get_run(args.resume)
    if run.status == "done":
        raise UserError(f"run {run.name} is done: there is nothing to resume (see autocompress front {run.name})")
    idle = store.seconds_since_heartbeat(run.name)
    # a SQLite store: the store lock (taken below) tells for sure whether a search still holds it;
    # a shared database: the run's heartbeat tells whether its search is alive somewhere
    if sqlite_file(url) is None and run.status == "running" and idle is not None and idle < 2 * GRACE_S:
        raise UserError(f"run {run.name} is still running (its search gave a sign of life {idle:.0f} s ago): "
                        "stop that search first, or wait")
    cluster.check_ray_address(args.ray_address)
    settings = dict(run.settings)
    if "data_path" not in settings:
        raise UserError(f"run {run.name} was made by an earlier version of autocompress and cannot be resumed")
    data = load_task_data(settings["data_path"])
    teacher = load_teacher(settings["teacher"])
    with _exclusive_use(args, url, run.name):
        settings["attempt"] = settings.get("attempt", 0) + 1
        store.restart_run(run.name, settings)
        _log(f"resuming run {run.name} (attempt {settings['attempt']}): {settings['trials']} trials in all; "
             f"store {store.url}")
        return _search(args, store, run.name, settings, data, teacher, time_limit,
                       profiles=tuple(HardwareProfile.from_dict(p) for p in settings["profiles"]))


def _search(args, store, name: str, settings: dict, data, teacher, time_limit: float | None,
            profiles=None) -> int:
    """Run (or continue) the trials, then re-time and re-score the fronts and print them."""
    from .hardware.profiles import HardwareProfile
    from .search.runner import SearchPlan, remeasure_fronts, rescore_fronts, run_search
    from .search.space import parse_space
    from .search.trial import TrialSetup

    run = store.get_run(name)
    profiles = profiles or tuple(HardwareProfile.from_dict(p) for p in settings["profiles"])
    space = parse_space(run.space, settings["space"])
    run_dir = Path(run.run_dir)
    setup = TrialSetup(store_url=store.url, run=name, run_dir=str(run_dir), data_path=settings["data_path"],
                       teacher_path=settings["teacher"], profiles=profiles, device=run.device, budget_ms=run.budget_ms,
                       space_text=run.space, num_layers=settings["num_layers"], threads=min(4, os.cpu_count() or 1),
                       seed=settings["seed"])
    plan = SearchPlan(run=name, store_url=store.url, run_dir=run_dir, space=space, trials=settings["trials"],
                      profiles=profiles, device=run.device, budget_ms=run.budget_ms, ray_address=args.ray_address,
                      seed=settings["seed"], parallel=args.parallel, time_limit_s=time_limit,
                      attempt=settings.get("attempt", 0))
    from .hardware.obtain import prepare

    prepare(profiles, log=_log)      # predictors calibrated on this host (once, cached) before any trial
    t0 = time.time()
    status = "done"
    try:
        status = run_search(plan, setup, data, teacher, log=_log)
    except KeyboardInterrupt:
        status = "interrupted"
    except BaseException as e:
        store.finish_run(name, "failed", error=f"{type(e).__name__}: {e}")
        raise
    try:
        if _candidates_done(store, name):
            remeasure_fronts(store, name, profiles)
            rescore_fronts(store, name, profiles, data, teacher)
    except KeyboardInterrupt:
        status = "interrupted"
    from .report import front_data, over_budget_line, tables
    from .store import failure_summary

    again = f"autocompress front {name}" + _store_option(args)
    if status == "done" and not _candidates_done(store, name):
        over = store.trials(name, status="over_budget")
        reason, count = failure_summary(store.trials(name, status=None)) or ("no trial ran", 0)
        error = f"no candidate finished: {count} trial(s) failed, most often with: {reason}"
        if over and not count:
            error = (f"no candidate within the {run.budget_ms:g} ms budget on {run.device}: all {len(over)} were over it "
                     f"and not trained; raise --budget or search smaller models")
        store.finish_run(name, "failed", error=error)
        print(tables(front_data(store, name)))
        _log(f"autocompress search: {error}\nsee the details with: {again}")
        return 1
    store.finish_run(name, status)
    data = front_data(store, name)
    print(tables(data))
    saved = over_budget_line(data)
    _log(f"search took {time.time() - t0:.0f} s" + (f"; {saved}" if saved else "") + f"; see it again with: {again}")
    if status == "interrupted":
        _log(f"the search was interrupted: the trials finished so far are kept; continue it with: "
             f"autocompress search --resume {name}{_store_option(args)}")
        return 130
    if time_limit is not None and sum(1 for t in store.trials(name, status=None) if t.status == "stopped"):
        _log("the time limit stopped the trials that were running; the fronts hold the trials finished in time")
    return 0


def _store_option(args) -> str:
    if args.storage:
        return f" --storage {args.storage}"
    return f" --runs-dir {args.runs_dir}" if args.runs_dir != _abs(_default_runs_dir()) else ""


def _interrupt(signum, frame):
    raise KeyboardInterrupt


@contextlib.contextmanager
def _exclusive_use(args, url: str, run: str):
    """One search per SQLite store (a second is refused: two writers on one file would stall each
    other), and, for a local search, one search per machine (a second waits its turn rather than
    fighting the first for the cores)."""
    from .locks import StoreBusy, search_slot, store_lock
    from .store import sqlite_file

    who = f"pid {os.getpid()}, run {run}"
    with contextlib.ExitStack() as stack:
        db = sqlite_file(url)
        if db is not None:
            try:
                stack.enter_context(store_lock(db, who))
            except StoreBusy as e:
                raise UserError(f"the store {db} is in use by another search ({e}): wait for it to finish, "
                                "or give this search its own --runs-dir or --storage") from None
        if not args.ray_address:
            stack.enter_context(search_slot(who, wait=lambda holder: _log(
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


def _check_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", name):
        raise UserError(f"--name {name!r}: use letters, digits, '.', '_' or '-'")
    return name


def _candidates_done(store, run: str) -> int:
    return sum(1 for t in store.trials(run) if t.role == "candidate")


def _check_output_file(option: str, path: str | None) -> None:
    """A file the command will write at the end: its folder exists and can be written, checked first."""
    if not path:
        return
    from .store import writable_folder

    folder = Path(path).expanduser().resolve().parent
    why = "no such folder" if not folder.is_dir() else writable_folder(folder)
    if why:
        raise UserError(f"{option} {path}: cannot write there ({folder}: {why})")


def cmd_front(args) -> int:
    from .report import front_data, plot_html, plot_png, tables
    from .store import Store

    resolve_paths(args)
    _check_output_file("--plot", args.plot)
    _check_output_file("--html", args.html)

    store = Store(_store_url(args), create=False)
    data = front_data(store, args.run)
    if args.device:
        if args.device not in data["devices"]:
            raise UserError(f"run {args.run} has no figures for device {args.device!r}: "
                            f"choose one of {', '.join(data['devices'])}")
        data["devices"] = {args.device: data["devices"][args.device]}
    if args.json:
        print(json.dumps(data, indent=2, default=str))
    else:
        print(tables(data))
    if args.plot:
        _log(f"plot written to {plot_png(data, args.plot)}")
    if args.html:
        _log(f"interactive page written to {plot_html(data, args.html)}")
    return 0


def cmd_runs(args) -> int:
    from .report import runs_data, runs_table
    from .store import Store

    resolve_paths(args)
    rows = runs_data(Store(_store_url(args), create=False))
    print(json.dumps(rows, indent=2, default=str) if args.json else runs_table(rows))
    return 0


def parse_score(text: str) -> float:
    """'0.85' or '85%' -> 0.85 (a score in the task's metric: accuracy, F1 or Matthews correlation)."""
    m = re.fullmatch(r"\s*([-+]?\d+(?:\.\d+)?)\s*(%)?\s*", text or "")
    value = float(m.group(1)) / (100.0 if m.group(2) else 1.0) if m else None
    if value is None or not -1.0 <= value <= 1.0:
        raise UserError(f"--min-accuracy {text!r}: give a fraction like 0.85 or a percentage like 85%")
    return value


def cmd_pick(args) -> int:
    budget = parse_budget(args.budget) if args.budget is not None else None
    floor = parse_score(args.min_accuracy) if args.min_accuracy is not None else None
    resolve_paths(args)
    from .store import Store, writable_folder

    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out}: exists and is not an empty folder; give a new folder")
    why = writable_folder(out.parent)
    if why:
        raise UserError(f"--out {out}: cannot write there: {why}")
    from . import ship

    store = Store(_store_url(args), create=False)
    choice = ship.choose(store, args.run, device=args.device, budget_ms=budget, min_score=floor)
    folder = ship.export(store, choice, out, command=args.command_line)
    t, m = choice.trial, choice.trial.metrics[choice.split]
    within = f", within {choice.budget_ms:g} ms" if choice.budget_ms is not None else ""
    print(f"picked trial {t.number} of run {args.run} for {choice.device}: {choice.split} {choice.metric} "
          f"{choice.score:.4f} (n={m['n']}), {choice.latency_ms:.2f} ms{within}; recipe: "
          f"{_recipe_short(t.recipe)}")
    if choice.split == "val":
        print("judged on the validation split: this run's front was not re-scored on the dev set")
    print(f"wrote {folder}: {', '.join(sorted(p.name for p in folder.iterdir()))}")
    return 0


def _recipe_short(recipe_json: str) -> str:
    from .recipe import Recipe

    return Recipe.from_json(recipe_json).short()


def _read_examples(path: str, pair: bool) -> list[tuple[str, ...]]:
    """predict --file: one text per line, or (pair models) text<TAB>second text per line."""
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise UserError(f"--file {path}: not UTF-8 text (line {line}); save it as UTF-8") from None
    examples = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = tuple(line.split("\t")) if pair else (line,)
        if len(parts) != (2 if pair else 1):
            raise UserError(f"--file {path} line {number}: this model classifies text pairs: write "
                            "text<TAB>second text on each line")
        examples.append(parts)
    if not examples:
        raise UserError(f"--file {path} holds no text")
    return examples


def cmd_predict(args) -> int:
    resolve_paths(args)
    folder = Path(args.model).expanduser()
    if not folder.is_dir():
        raise UserError(f"{args.model}: no such folder; give a folder written by `autocompress pick`")
    if args.file and args.texts:
        raise UserError("give texts or --file FILE, not both")
    if not args.file and not args.texts:
        raise UserError("nothing to predict: give a text (two for a text pair) or --file FILE")
    from .hardware.latency import time_call
    from .ship import ShippedModel

    model = ShippedModel(folder)
    want = 2 if model.pair else 1
    if args.texts and len(args.texts) != want:
        raise UserError(f"this model classifies {'text pairs: give two texts' if model.pair else 'single texts: give one text'}"
                        f" (got {len(args.texts)}); for many examples use --file")
    examples = [tuple(args.texts)] if args.texts else _read_examples(args.file, model.pair)
    model.predict(*examples[0])              # warm-up: the first call also sets ONNX Runtime up
    for example in examples:
        out, ms = time_call(model.predict, *example)
        if args.json:
            print(json.dumps({"label": out["label"], "probability": round(out["probability"], 6),
                              "latency_ms": round(ms, 3), "texts": list(example),
                              "probabilities": out["probabilities"],
                              **({"layers_run": out["layers_run"]} if "layers_run" in out else {})}))
        else:
            run = f"\t{out['layers_run']} layers" if "layers_run" in out else ""     # early exit: where it left
            print(f"{out['label']}\t{out['probability']:.4f}\t{ms:.2f} ms{run}\t{' | '.join(example)}")
    _log(f"label, probability, latency of the call (tokenizer + ONNX Runtime, batch 1, {model.threads} CPU "
         "thread(s), after one warm-up call)")
    return 0


def cmd_finetune(args) -> int:
    from .tasks import load_task

    check_numbers(args)
    check_task_options(args)
    resolve_paths(args)
    model_config(args)

    source = task_source(args)
    data = load_task(source, args.data_dir, val_size=args.val_size, seed=args.seed)
    cached = (not args.teacher and not args.fresh
              and (_teacher_settings(args, data, source).cache_dir() / "teacher.json").exists())
    from .locks import search_slot

    with search_slot(f"pid {os.getpid()}, finetune", wait=lambda holder: _log(
            f"a search is using this machine ({holder}): waiting for it to finish (Ctrl-C to stop)")):
        teacher = _teacher(args, data, source)
    info = teacher.info
    print(json.dumps({"path": str(teacher.path), "task": info["task"], "labels": list(data.spec.label_names),
                      "train_rows": info["train_rows"],
                      "epochs": info.get("epochs"), "train_seconds": info["train_seconds"], "val": info["val"],
                      "dev": info["dev"], "baseline": info.get("baseline"), "cached": cached}, indent=2))
    from .teacher import UselessTeacher, check_learned

    try:
        check_learned(teacher)
    except UselessTeacher as e:
        _log(f"autocompress finetune: warning: {e}")
        return 1
    return 0


def cmd_profiles(args) -> int:
    from .hardware.obtain import describe_route, prepare
    from .hardware.profiles import list_profiles, load_profile

    _join_cluster_checked(args.ray_address)
    profiles = [load_profile(name) for name in list_profiles()]
    with _ray(args.ray_address):
        if args.calibrate:
            prepare(profiles, log=_log, fresh=True)
        for p in profiles:
            shapes = ", ".join(f"batch {b} x seq {s}" for b, s in p.shapes)
            print(f"{p.name}: {p.device or p.description}\n  {shapes}; {describe_route(p)}")
    return 0


def cmd_bench(args) -> int:
    """Latency of a model folder or ONNX file on one profile, with how it was obtained."""
    import tempfile

    from .hardware.latency import describe
    from .hardware.profiles import ProfileError, load_profile

    path = Path(args.model).expanduser()
    if not path.exists():
        raise UserError(f"{args.model}: no such file or folder; give an ONNX file or a model folder")
    if path.is_dir() and not (path / "config.json").is_file():
        raise UserError(f"{args.model}: a folder without config.json; give an ONNX file or a saved model folder")
    if path.is_file() and path.suffix != ".onnx":
        raise UserError(f"{args.model}: not an .onnx file; give an ONNX file or a model folder")
    if path.is_file():
        import onnx

        try:
            onnx.load(str(path), load_external_data=False)
        except Exception as e:
            raise UserError(f"{args.model}: not a readable ONNX model ({str(e).splitlines()[0][:120]})") from None
    try:
        profile = load_profile(_abs(args.device) if args.device.endswith((".yaml", ".yml")) else args.device)
    except ProfileError as e:
        raise UserError(f"--device: {e}") from None
    _join_cluster_checked(args.ray_address)
    from .hardware.obtain import obtain_latency

    with tempfile.TemporaryDirectory(prefix="autocompress-bench-") as tmp, _ray(args.ray_address):
        onnx_path = path
        if path.is_dir():
            from . import checkpoint, export

            onnx_path = export.export_onnx(checkpoint.load_model(path), Path(tmp) / "model.fp32.onnx")
        lat = obtain_latency(onnx_path, profile, log=_log)
    d = lat.to_dict()
    if args.json:
        print(json.dumps({**d, "obtained": describe(d)}, indent=2, default=str))
    else:
        print(f"{profile.name}: {lat.median_ms:.3f} ms ({lat.how}) — {describe(d)}")
    return 0


def _join_cluster_checked(address: str | None) -> None:
    """Ray's environment for a cluster (token auth) set before Ray is imported, and the address checked."""
    from .search import cluster

    if address:
        cluster.configure_environment(address)
        cluster.check_ray_address(address)


@contextlib.contextmanager
def _ray(address: str | None):
    """A connection to the Ray cluster at ``address`` for the duration (nothing without one)."""
    if not address:
        yield
        return
    import ray

    from .search import cluster

    cluster.start(address, 0)
    try:
        yield
    finally:
        ray.shutdown()


# ------------------------------------------------------------------ parser
def _add_data_args(p) -> None:
    from .tasks import METRICS

    p.add_argument("--task", help="GLUE task: sst2, cola, mrpc, qqp, qnli, rte, mnli (default sst2)")
    p.add_argument("--data-dir", help="local GLUE folder (GLUE's layout, e.g. SST-2/train.tsv); default: "
                   "$AUTOCOMPRESS_GLUE_DIR, else the hub (needs network)")
    p.add_argument("--train", metavar="FILE", help="your own labelled data instead of a GLUE task: a .csv, .tsv or "
                   ".jsonl file with a header (or keys) naming its columns; needs --dev")
    p.add_argument("--dev", metavar="FILE", help="your own held-out data (same columns as --train): the fronts "
                   "are re-scored on it")
    p.add_argument("--text-column", help="column of the text (default text)")
    p.add_argument("--text-pair-column", help="column of a second text, for pair tasks (default: none)")
    p.add_argument("--label-column", help="column of the label: strings or integers, any number of classes "
                   "(default label)")
    p.add_argument("--metric", choices=METRICS, help="your own data's metric: accuracy (default), f1 (macro "
                   "average over classes) or matthews (Matthews correlation, multi-class R_K)")
    p.add_argument("--val-size", type=int, default=None,
                   help="rows carved from train as the search's validation split (default min(1000, 10%% of train); "
                   "at most half of train)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, sampler and training (default 0)")


def _add_teacher_args(p) -> None:
    p.add_argument("--model", default="minilm", help="base model: 'minilm' (the packaged all-MiniLM-L6-v2, "
                   "default), a local model folder or a hub id")
    p.add_argument("--teacher", help="an already fine-tuned model folder to use as the teacher (skips fine-tuning)")
    p.add_argument("--train-examples", type=int, default=0,
                   help="train rows used to fine-tune the teacher (default 0: all of them)")
    p.add_argument("--epochs", type=int, help="teacher fine-tuning epochs (default: from the row count: two passes "
                   "(one over data sets above 100,000 rows), enough passes for 600 optimiser steps on small ones, "
                   "at most 20)")


def _add_store_args(p) -> None:
    p.add_argument("--runs-dir", default=_default_runs_dir(),
                   help="where runs keep their artifacts and the default SQLite store (default ./runs)")
    p.add_argument("--storage", help="SQLAlchemy URL of the store, e.g. postgresql://host/db "
                   "(default sqlite:///RUNS_DIR/autocompress.db)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="autocompress", description="Find the best way to compress a BERT-like model for a device: "
                     "search combinations of pruning, distillation and quantization, and get a Pareto front "
                     "(accuracy vs latency) per hardware profile.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("search", help="search compression recipes; ends with a Pareto front per device",
                       description="Fine-tune (or reuse) the teacher, run the trials with Ray Tune + Optuna, "
                       "time every candidate on every hardware profile, re-score the fronts on the GLUE dev set "
                       "and print them.")
    s.add_argument("--budget", help="latency budget on the target device, e.g. 50ms: steers the search and "
                   "marks the best model within it")
    s.add_argument("--device", default="laptop-cpu", help="target hardware profile: a bundled name "
                   "(see `autocompress profiles`) or a profile .yaml (default laptop-cpu)")
    s.add_argument("--space", default="default", help="search space: quick, default or a .yaml file (default: default)")
    s.add_argument("--trials", type=int, help="number of trials (default: the space's own, 14 for default)")
    s.add_argument("--name", help="name of the run (default: generated and printed)")
    s.add_argument("--ray-address", help="address of a running Ray cluster, e.g. HEAD:6379 (default: a local Ray "
                   "that listens on 127.0.0.1 only); see the README for token authentication")
    s.add_argument("--parallel", type=int, help="trials at once (default: one per node of the cluster, one on a "
                   "single machine); the cores are split between trials side by side")
    s.add_argument("--time-limit", help="stop the search after this long, e.g. 2h or 30m: running trials are "
                   "stopped and the fronts of what finished are still re-timed, re-scored and printed")
    s.add_argument("--force", action="store_true", help="search even if the teacher is no better than always "
                   "answering one class (by default the search stops there)")
    s.add_argument("--resume", metavar="RUN", help="continue an interrupted run (same --storage/--runs-dir): "
                   "finished trials are kept, trials left running are failed as stale and their recipes re-run")
    _add_data_args(s)
    _add_teacher_args(s)
    _add_store_args(s)
    s.set_defaults(func=cmd_search)

    f = sub.add_parser("front", help="show a run's Pareto front per device (table, --json, --plot)")
    f.add_argument("run", help="the run's name (printed by search)")
    f.add_argument("--device", help="only this device's front")
    f.add_argument("--json", action="store_true", help="machine-readable output")
    f.add_argument("--plot", metavar="PNG", help="also write a plot of the fronts to this PNG file")
    f.add_argument("--html", metavar="HTML", help="also write one self-contained interactive page (plotly) of "
                   "the fronts; hover a point for its recipe and figures")
    _add_store_args(f)
    f.set_defaults(func=cmd_front)

    r = sub.add_parser("runs", help="list the runs in a store")
    r.add_argument("--json", action="store_true", help="machine-readable output")
    _add_store_args(r)
    r.set_defaults(func=cmd_runs)

    k = sub.add_parser("pick", help="pick the most accurate model within a budget for a device and write it as a "
                       "model folder", description="Pick the most accurate member of a device's Pareto front within "
                       "the latency budget (judged on the dev set), and write it as a Hugging Face-style folder: "
                       "model.onnx (the very file timed and scored), config.json, tokenizer, recipe.json, README.md.")
    k.add_argument("run", help="the run's name (see `autocompress runs`)")
    k.add_argument("--device", help="the device to ship for (default: the run's target device)")
    k.add_argument("--budget", help="latency budget on that device, e.g. 30ms (default: the run's budget when the "
                   "device is its target, else none)")
    k.add_argument("--min-accuracy", help="the lowest acceptable score in the task's metric, e.g. 0.85 or 85%%")
    k.add_argument("--out", required=True, metavar="DIR", help="the folder to write (new, or empty)")
    _add_store_args(k)
    k.set_defaults(func=cmd_pick)

    d = sub.add_parser("predict", help="classify texts with a folder written by pick (ONNX Runtime + tokenizer)")
    d.add_argument("model", metavar="DIR", help="a folder written by `autocompress pick`")
    d.add_argument("texts", nargs="*", metavar="TEXT", help="one text, or two for a text-pair model")
    d.add_argument("--file", help="one example per line (text<TAB>second text for a text-pair model)")
    d.add_argument("--json", action="store_true", help="one JSON object per example")
    d.set_defaults(func=cmd_predict)


    t = sub.add_parser("finetune", help="fine-tune and cache the teacher only (what search does first)")
    _add_data_args(t)
    _add_teacher_args(t)
    t.add_argument("--fresh", action="store_true", help="fine-tune again even if a cached teacher exists")
    t.set_defaults(func=cmd_finetune)

    pr = sub.add_parser("profiles", help="list the hardware profiles and how each latency is obtained here")
    pr.add_argument("--calibrate", action="store_true", help="calibrate the predictors on this host again "
                    "(otherwise done once per host, on first use, and cached)")
    pr.add_argument("--ray-address", help="also look for Ray nodes offering a profile's resource in this cluster")
    pr.set_defaults(func=cmd_profiles)

    b = sub.add_parser("bench", help="latency of a model folder or ONNX file on one profile, with how it was obtained")
    b.add_argument("model", metavar="MODEL", help="an ONNX file, or a saved model folder (exported to ONNX first)")
    b.add_argument("--device", required=True, help="the profile: a bundled name (see `autocompress profiles`) "
                   "or a profile .yaml")
    b.add_argument("--ray-address", help="a Ray cluster whose nodes may offer the profile's resource")
    b.add_argument("--json", action="store_true", help="the whole figure as JSON")
    b.set_defaults(func=cmd_bench)
    return parser


def _join_negative_values(argv: list[str]) -> list[str]:
    """``--budget -5ms`` would read as a missing value; hand it to our own check instead."""
    out = list(argv)
    for i in range(len(out) - 1):
        if out[i] in ("--budget", "--trials") and out[i + 1].startswith("-") and out[i + 1][1:2].isdigit():
            out[i:i + 2] = [f"{out[i]}={out[i + 1]}"]
            break
    return out


def main(argv: list[str] | None = None) -> int:
    argv = _join_negative_values(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.command_line = "autocompress " + shlex.join(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()      # no weight-loading reports or progress bars from transformers
    hf_logging.disable_progress_bar()
    from .hardware.profiles import ProfileError
    from .methods.base import RecipeError
    from .search.cluster import ClusterError
    from .search.space import SpaceError
    from .ship import IntegrityError, PickError
    from .store import StoreError
    from .tasks import DataError
    from .teacher import TeacherError

    try:
        return args.func(args)
    except (UserError, DataError, ProfileError, SpaceError, StoreError, TeacherError, RecipeError, ClusterError,
            PickError) as e:
        print(f"autocompress {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except IntegrityError as e:          # not a usage mistake: the store and the files disagree
        print(f"autocompress {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("autocompress: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:              # the reader went away (`autocompress front RUN | head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # (the interpreter's exit flushes stdout)
        return 0


if __name__ == "__main__":
    sys.exit(main())
