"""The user's input, checked before any work: every path resolved against the user's working directory
once (Ray workers run elsewhere), numbers in range, options that go together, files that exist and can
be written. A mistake is a ``UserError``: one line on stderr, exit code 2, never a traceback."""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from ..paths import PATH_VARIABLES, default_runs_dir

EXIT_USAGE = 2


class UserError(Exception):
    """Bad input: printed as one line, exit code 2."""


def log(msg: str) -> None:
    """A line for the user on stderr (stdout holds the command's output), above any progress bar."""
    from tqdm import tqdm

    tqdm.write(msg, file=sys.stderr)
    sys.stderr.flush()


def abs_path(path: str) -> str:
    return str(Path(path).expanduser().resolve())


def store_url(args) -> str:
    from ..store import default_url

    return args.storage or default_url(args.runs_dir)


def resolve_paths(args) -> None:
    """Resolve every path the user gave against the user's working directory, once, here: Ray workers
    run elsewhere (their working directory is a trial folder), so nothing relative may reach them."""
    from ..search.space import bundled_spaces
    from ..store import absolute_url
    from ..tasks import ENV_DATA_DIR
    from ..teacher import DEFAULT_MODEL

    for env in (*PATH_VARIABLES, ENV_DATA_DIR):
        if os.environ.get(env):
            os.environ[env] = abs_path(os.environ[env])     # what workers inherit is absolute too
    if hasattr(args, "data_dir"):
        given = args.data_dir or os.environ.get(ENV_DATA_DIR)
        args.data_dir = abs_path(given) if given else None
    if getattr(args, "runs_dir", None):
        args.runs_dir = abs_path(args.runs_dir)
    if getattr(args, "storage", None):
        args.storage = absolute_url(args.storage)
    for attr in ("space", "device"):    # a bundled name stays a name; a .yaml file is resolved
        value = getattr(args, attr, None)
        if value and value not in bundled_spaces() and (value.endswith((".yaml", ".yml")) or os.sep in value):
            if not Path(value).expanduser().is_file():
                raise UserError(f"--{attr} {value}: no such file")
            setattr(args, attr, abs_path(value))
    for attr in ("train", "dev", "file"):      # the user's own data files, and predict's --file
        value = getattr(args, attr, None)
        if value:
            if not Path(value).expanduser().is_file():
                raise UserError(f"--{attr} {value}: no such file")
            setattr(args, attr, abs_path(value))
    if getattr(args, "out", None):
        args.out = abs_path(args.out)
    if getattr(args, "teacher", None):
        if not Path(args.teacher).expanduser().is_dir():
            raise UserError(f"--teacher {args.teacher}: no such folder; give a fine-tuned model folder")
        args.teacher = abs_path(args.teacher)
    model = getattr(args, "model", None)
    if model and model != DEFAULT_MODEL:
        if Path(model).expanduser().exists():
            args.model = abs_path(model)
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
    from ..tasks import FileTask

    if not args.train:
        return args.task or "sst2"
    return FileTask(train=args.train, dev=args.dev, text_column=args.text_column or "text",
                    text_pair_column=args.text_pair_column or None, label_column=args.label_column or "label",
                    metric=args.metric or "accuracy")


def teacher_settings(args, data, source):
    """How the teacher is fine-tuned (and found in the cache) for these options and this data."""
    from ..tasks import FileTask
    from ..teacher import TeacherSettings

    return TeacherSettings(model=args.model, task=data.spec.name, train_examples=args.train_examples,
                           epochs=args.epochs, val_size=len(data.val), seed=args.seed, bf16=args.bf16,
                           data=source.fingerprint() if isinstance(source, FileTask) else "")


def model_config(args):
    """The base model's (or given teacher's) config, read without loading or training anything."""
    from transformers import AutoConfig

    from ..arch import ArchitectureError, check_config
    from ..teacher import TeacherError, resolve_model

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
    from ..store import check_url, writable_folder

    why = writable_folder(Path(args.runs_dir))
    if why:
        raise UserError(f"--runs-dir {args.runs_dir}: cannot write there: {why}; choose another --runs-dir")
    url = store_url(args)
    check_url(url, parent_may_be_created=not args.storage)   # the default store lives in the runs folder
    return url


def check_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", name):
        raise UserError(f"--name {name!r}: use letters, digits, '.', '_' or '-'")
    return name


PLOT_SUFFIXES = (".png", ".pdf", ".svg")       # what ``front --plot`` writes (matplotlib picks by the suffix)


def check_output_file(option: str, path: str | None, suffixes: tuple[str, ...] = ()) -> None:
    """A file the command will write at the end: its folder exists and can be written, and its name ends
    in one of ``suffixes`` (where given), checked first."""
    if not path:
        return
    if suffixes and Path(path).suffix.lower() not in suffixes:
        hint = "; for an interactive page give --html FILE" if Path(path).suffix.lower() in (".html", ".htm") else ""
        raise UserError(f"{option} {path}: the file's name must end in {', '.join(suffixes)}{hint}")
    from ..store import writable_folder

    folder = Path(path).expanduser().resolve().parent
    why = "no such folder" if not folder.is_dir() else writable_folder(folder)
    if why:
        raise UserError(f"{option} {path}: cannot write there ({folder}: {why})")


def check_out_folder(out: Path) -> None:
    """pick --out: a new or empty folder whose parent can be written."""
    from ..store import writable_folder

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out}: exists and is not an empty folder; give a new folder")
    why = writable_folder(out.parent)
    if why:
        raise UserError(f"--out {out}: cannot write there: {why}")


def check_predict_input(args) -> Path:
    """predict: a model folder, and texts or --file (not both, not neither); returns the folder."""
    folder = Path(args.model).expanduser()
    if not folder.is_dir():
        raise UserError(f"{args.model}: no such folder; give a folder written by `autocompress pick`")
    if args.file and args.texts:
        raise UserError("give texts or --file FILE, not both")
    if not args.file and not args.texts:
        raise UserError("nothing to predict: give a text (two for a text pair) or --file FILE")
    return folder


def read_examples(path: str, pair: bool, option: str = "--file") -> list[tuple[str, ...]]:
    """predict --file (bench --lengths): one text per line, or (pair models) text<TAB>second text per line."""
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise UserError(f"{option} {path}: not UTF-8 text (line {line}); save it as UTF-8") from None
    examples = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = tuple(line.split("\t")) if pair else (line,)
        if len(parts) != (2 if pair else 1):
            raise UserError(f"{option} {path} line {number}: this model classifies text pairs: write "
                            "text<TAB>second text on each line")
        examples.append(parts)
    if not examples:
        raise UserError(f"{option} {path} holds no text")
    return examples


def check_bench_model(model: str) -> Path:
    """bench MODEL: an ONNX file that reads, or a saved model folder."""
    path = Path(model).expanduser()
    if not path.exists():
        raise UserError(f"{model}: no such file or folder; give an ONNX file or a model folder")
    if path.is_dir() and not (path / "config.json").is_file():
        raise UserError(f"{model}: a folder without config.json; give an ONNX file or a saved model folder")
    if path.is_dir() and not any((path / f).is_file() for f in ("model.onnx", "model.safetensors", "pytorch_model.bin")):
        raise UserError(f"{model}: a folder with neither model.onnx (a folder written by pick) nor model weights "
                        "(model.safetensors); give an ONNX file or a saved model folder")
    if path.is_file() and path.suffix != ".onnx":
        raise UserError(f"{model}: not an .onnx file; give an ONNX file or a model folder")
    if path.is_file():
        import onnx

        try:
            onnx.load(str(path), load_external_data=False)
        except Exception as e:
            raise UserError(f"{model}: not a readable ONNX model ({str(e).splitlines()[0][:120]})") from None
    return path


def load_profile_checked(device: str):
    """--device: a bundled profile's name or a profile .yaml (resolved here)."""
    from ..hardware import ProfileError, load_profile

    try:
        return load_profile(abs_path(device) if device.endswith((".yaml", ".yml")) else device)
    except ProfileError as e:
        raise UserError(f"--device: {e}") from None


def is_default_runs_dir(runs_dir: str) -> bool:
    return runs_dir == abs_path(default_runs_dir())
