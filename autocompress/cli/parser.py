"""The command line's grammar: ``build_parser`` (argparse) and the small parsers of option values."""
from __future__ import annotations

import argparse
import re

from ..paths import default_runs_dir
from .checks import EXIT_USAGE, UserError

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


def parse_duration(text: str) -> float:
    """'2h', '30m', '90s', '1.5h' (or plain seconds) -> seconds (> 0)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(h|m|min|s)?\s*", text or "")
    if not m or float(m.group(1)) <= 0:
        raise UserError(f"--time-limit {text!r} is not a duration: give e.g. 2h, 30m or 90s")
    return float(m.group(1)) * {"h": 3600, "m": 60, "min": 60, "s": 1, None: 1}[m.group(2)]


def parse_points(text: str, option: str = "--tolerance") -> float:
    """'1', '0.5', '1pt' -> a fraction of the metric (0.01, 0.005): points of a score in [0, 100]."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(pts?|points?|%)?\s*", text or "")
    if not m or float(m.group(1)) > 100:
        raise UserError(f"{option} {text!r}: give points of the metric, e.g. 1 or 0.5 (0: the most accurate)")
    return float(m.group(1)) / 100.0


def parse_score(text: str) -> float:
    """'0.85' or '85%' -> 0.85 (a score in the task's metric: accuracy, F1 or Matthews correlation)."""
    m = re.fullmatch(r"\s*([-+]?\d+(?:\.\d+)?)\s*(%)?\s*", text or "")
    value = float(m.group(1)) / (100.0 if m.group(2) else 1.0) if m else None
    if value is None or not -1.0 <= value <= 1.0:
        raise UserError(f"--min-accuracy {text!r}: give a fraction like 0.85 or a percentage like 85%")
    return value


def join_negative_values(argv: list[str]) -> list[str]:
    """``--budget -5ms`` would read as a missing value; hand it to our own check instead."""
    out = list(argv)
    for i in range(len(out) - 1):
        if out[i] in ("--budget", "--trials") and out[i + 1].startswith("-") and out[i + 1][1:2].isdigit():
            out[i:i + 2] = [f"{out[i]}={out[i + 1]}"]
            break
    return out


def _add_data_args(p) -> None:
    from ..tasks import METRICS

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
                   help="rows carved from train as the search's validation split (default 10%% of train, at least "
                   "20%% up to 500 rows, at most 1000; never more than half of train)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, sampler and training (default 0)")


def _add_teacher_args(p) -> None:
    p.add_argument("--model", default="minilm", help="base model: 'minilm' (the packaged all-MiniLM-L6-v2, "
                   "default), a local model folder or a hub id")
    p.add_argument("--teacher", help="an already fine-tuned model folder to use as the teacher (skips fine-tuning)")
    p.add_argument("--train-examples", type=int, default=0,
                   help="train rows used to fine-tune the teacher (default 0: all of them)")
    p.add_argument("--epochs", type=int, help="teacher fine-tuning epochs (default: from the row count: three passes "
                   "(one over data sets above 100,000 rows), enough passes for 600 optimiser steps on small ones, "
                   "at most 20)")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                   help="fine-tune the teacher under bf16 autocast where this CPU computes bf16 natively (AVX-512 BF16 "
                   "or AMX; elsewhere fp32 anyway): about 0.6x the time per step; --no-bf16 fine-tunes in fp32 (as "
                   "teachers cached before bf16 became the default were)")


def _add_store_args(p) -> None:
    p.add_argument("--runs-dir", default=default_runs_dir(),
                   help="where runs keep their artifacts and the default SQLite store (default ./runs)")
    p.add_argument("--storage", help="SQLAlchemy URL of the store, e.g. postgresql://host/db "
                   "(default sqlite:///RUNS_DIR/autocompress.db)")


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command; ``args.command`` names the one given (``main`` dispatches on it)."""
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
    s.add_argument("--sampler", default="tpe", choices=("tpe", "random"), help="the search strategy: tpe (default: "
                   "the space's seed recipes, random start-up trials, then multi-objective TPE) or random (the "
                   "baseline a strategy must beat)")
    s.add_argument("--lengths", choices=("task", "fixed"), help="the input lengths latencies are timed at, on every "
                   "profile: task (the token lengths of the task's validation inputs: a few representative lengths, "
                   "each weighted by its share; the figure, the budget and the searcher's objective are the expected "
                   "latency over the task's inputs, the fixed shape's figure kept beside it) or fixed (each profile's "
                   "own shape, e.g. batch 1 x 128 tokens). Default: what each profile says (the bundled ones: fixed)")
    s.add_argument("--tolerance", help="the pick that ends the search (*): the fastest member within this many points "
                   "of the most accurate one within budget, on val (default 1; 0: the most accurate); latencies within 5%% "
                   "of each other count as one speed, the more accurate taken")
    s.add_argument("--force", action="store_true", help="search even if the teacher is no better than always "
                   "answering one class (by default the search stops there)")
    s.add_argument("--resume", metavar="RUN", help="continue an interrupted run (same --storage/--runs-dir): "
                   "finished trials are kept, trials left running are failed as stale and their recipes re-run")
    _add_data_args(s)
    _add_teacher_args(s)
    _add_store_args(s)

    f = sub.add_parser("front", help="show a run's Pareto front per device (table, --json, --plot)")
    f.add_argument("run", help="the run's name (printed by search)")
    f.add_argument("--device", help="only this device's front")
    f.add_argument("--json", action="store_true", help="machine-readable output")
    f.add_argument("--plot", metavar="PNG", help="also write a plot of the fronts to this file (.png; .pdf and .svg work too)")
    f.add_argument("--html", metavar="HTML", help="also write one self-contained interactive page (plotly) of "
                   "the fronts; hover a point for its recipe and figures")
    _add_store_args(f)

    r = sub.add_parser("runs", help="list the runs in a store")
    r.add_argument("--json", action="store_true", help="machine-readable output")
    _add_store_args(r)

    k = sub.add_parser("pick", help="pick a model within a budget for a device and write it as a model folder",
                       description="Pick from a device's Pareto front as the search does: among the members within "
                       "the latency budget, the fastest whose score is within --tolerance of the most accurate "
                       "(judged on the dev set); write it as a Hugging Face-style folder: model.onnx (the very file "
                       "timed and scored), config.json, tokenizer, recipe.json, README.md.")
    k.add_argument("run", help="the run's name (see `autocompress runs`)")
    k.add_argument("--device", help="the device to ship for (default: the run's target device)")
    k.add_argument("--budget", help="latency budget on that device, e.g. 30ms (default: the run's budget when the "
                   "device is its target, else none)")
    k.add_argument("--min-accuracy", help="the lowest acceptable score in the task's metric, e.g. 0.85 or 85%%")
    k.add_argument("--tolerance", help="how far below the most accurate member a faster one may score and still be "
                   "picked, in points of the metric, e.g. 1 or 0.5 (default: the run's, else 1; 0: the most accurate)")
    k.add_argument("--out", required=True, metavar="DIR", help="the folder to write (new, or empty)")
    _add_store_args(k)

    d = sub.add_parser("predict", help="classify texts with a folder written by pick (ONNX Runtime + tokenizer)")
    d.add_argument("model", metavar="DIR", help="a folder written by `autocompress pick`")
    d.add_argument("texts", nargs="*", metavar="TEXT", help="one text, or two for a text-pair model")
    d.add_argument("--file", help="one example per line (text<TAB>second text for a text-pair model)")
    d.add_argument("--json", action="store_true", help="one JSON object per example")

    t = sub.add_parser("finetune", help="fine-tune and cache the teacher only (what search does first)")
    _add_data_args(t)
    _add_teacher_args(t)
    t.add_argument("--fresh", action="store_true", help="fine-tune again even if a cached teacher exists")

    pr = sub.add_parser("profiles", help="list the hardware profiles and how each latency is obtained here")
    pr.add_argument("--recalibrate", "--calibrate", dest="recalibrate", action="store_true", help="establish this "
                    "host's speed references again and calibrate the predictors again (otherwise done once per host, "
                    "on first use, and cached; the old references are kept in their history)")
    pr.add_argument("--check", action="store_true", help="time the host's speed references again now (a few "
                    "seconds) and say whether each cached one, and each predictor's calibration, still holds; "
                    "exit 1 if one does not")
    pr.add_argument("--ray-address", help="also look for Ray nodes offering a profile's resource in this cluster")

    b = sub.add_parser("bench", help="latency of a model folder or ONNX file on one profile, with how it was obtained")
    b.add_argument("model", metavar="MODEL", help="an ONNX file, a folder written by `pick`, or a saved model folder "
                   "(exported to ONNX first)")
    b.add_argument("--device", required=True, help="the profile: a bundled name (see `autocompress profiles`) "
                   "or a profile .yaml")
    b.add_argument("--ray-address", help="a Ray cluster whose nodes may offer the profile's resource")
    b.add_argument("--json", action="store_true", help="the whole figure as JSON")
    b.add_argument("--lengths", metavar="FILE", help="time at the lengths of your own inputs: a text file, one input "
                   "per line (text<TAB>second text for pairs); the model folder's tokenizer counts their tokens "
                   "(capped at 128), a few representative lengths are timed, and the figure is the expected latency "
                   "over the file's inputs (the fixed shape's figure beside it)")
    return parser
