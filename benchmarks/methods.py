"""The compression methods side by side on SST-2 with the packaged MiniLM: parameters, zipped size,
latency per device, and accuracy after recovery.

One section per question (``--section``, all by default); each registers itself in ``SECTIONS`` and
returns rows that the common table prints, so a section for another family is one more function.

- ``distillation``: the distillation targets at the same student (``drop_layers keep 4``): logits
  only, +hidden states, +attention, +hidden+attention, +embeddings as well, and two other layer
  mappings — same steps, learning rate and seeds. Two controls: logits only with the student's
  attention-probability dropout off (distilling attention turns it off, so this separates the two
  effects), and the cost of a step relative to logits only, timed in interleaved rounds.

How figures are obtained. The teacher is the cached one ``autocompress finetune`` makes with the same
options (``--train-examples``, ``--epochs``, ``--val-size``, ``--seed``; defaults as in the CLI, so
``autocompress finetune --data-dir ../shared/glue`` fills the cache this reuses). Each variant is
built as a search trial builds it: structure steps, recovery, ``finalize``, ONNX export; its
accuracy is measured on that ONNX file, on the validation split carved from train (what the search
sees) and on the GLUE dev set. Latencies: every variant's file, timed side by side in interleaved
rounds on each profile (``hardware.latency.measure_side_by_side``), so their ratios hold on a shared
machine while the milliseconds themselves are provisional. Training seconds per step are wall-clock
on this machine: comparable only within one run.

    AUTOCOMPRESS_GLUE_DIR=../shared/glue python benchmarks/methods.py [--section distillation] \\
        [--steps 400] [--seeds 0 1] [--train-examples 3200 --epochs 1 --val-size 500]
"""
from __future__ import annotations

import argparse
import copy
import functools
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from autocompress import arch
from autocompress.checkpoint import count_params, zipped_mb
from autocompress.evaluate import EVAL_MAX_LENGTH, encode, predict_onnx, score
from autocompress.export import export_onnx
from autocompress.hardware.latency import describe, measure_side_by_side, shared_machine
from autocompress.hardware.profiles import load_profile
from autocompress.methods.base import Context, finalize
from autocompress.recipe import Recipe, Step
from autocompress.tasks import load_task
from autocompress.teacher import TeacherSettings, get_teacher

PROFILES = ("laptop-cpu", "mobile-cpu")


@dataclass
class Row:
    variant: str
    recipe: str
    params: int
    zip_mb: float
    onnx: Path
    val: dict[int, float] = field(default_factory=dict)      # seed -> accuracy
    dev: dict[int, float] = field(default_factory=dict)
    note: str = ""                                          # e.g. the cost of a training step


class Bench:
    """The teacher, the task's rows and the way every variant is built and scored."""

    def __init__(self, args, out: Path):
        self.args, self.out = args, out
        self.made = 0                                               # ONNX files written (their names)
        self.data = load_task("sst2", args.data_dir, val_size=args.val_size, seed=args.seed)
        settings = TeacherSettings(train_examples=args.train_examples, epochs=args.epochs, val_size=args.val_size,
                                   seed=args.seed)
        self.teacher = get_teacher(settings, self.data, log=lambda m: print(m, file=sys.stderr))
        self.transfer = self.teacher.transfer_set(self.data)
        self.teacher_model = functools.cache(self.teacher.model)   # one copy for every variant, loaded on first use
        tok = self.teacher.tokenizer
        self.pad = tok.pad_token_id or 0
        self.features = {"val": encode(tok, self.data.val, EVAL_MAX_LENGTH), "dev": encode(tok, self.data.dev, EVAL_MAX_LENGTH)}
        info = self.teacher.info
        print(f"teacher {self.teacher.path.name}: {info['train_rows']} rows, {info.get('epochs')} epoch(s); val "
              f"{info['val']['metrics']['main']:.4f} ({info['val']['n']} rows), dev {info['dev']['metrics']['main']:.4f} "
              f"({info['dev']['n']} rows); transfer set {len(self.transfer)} rows", flush=True)

    def context(self, seed: int) -> Context:
        return Context(self.transfer, seed=seed, teacher=self.teacher_model)

    def build(self, recipe: Recipe, seed: int, prepare: Callable | None = None):
        """The recipe applied to a fresh copy of the teacher (``prepare(model)`` between structure and
        recovery); returns the model and the seconds recovery took."""
        torch.manual_seed(seed)
        ctx = self.context(seed)
        with shared_machine():
            model = recipe.apply_torch(self.teacher.model(), ctx, recipe.structure_steps)
            if prepare:
                prepare(model)
            t0 = time.time()
            model = recipe.apply_torch(model, ctx, recipe.recovery_steps)
            return finalize(model), time.time() - t0

    def score(self, row: Row, model, seed: int) -> Row:
        """Export, then score that file as the search does; fills ``row``."""
        self.made += 1
        with shared_machine():
            path = export_onnx(model, self.out / f"model-{self.made}.onnx")
            for split in ("val", "dev"):
                rows = getattr(self.data, split)
                logits = predict_onnx(path, self.features[split], pad_id=self.pad)
                getattr(row, split)[seed] = score(self.data.spec, logits, rows["label"], split).main
        if seed == self.args.seeds[0]:
            row.onnx, row.params, row.zip_mb = path, count_params(model), zipped_mb(path)
        return row

    def run(self, variant: str, recipe: Recipe, prepare: Callable | None = None) -> Row:
        row = Row(variant, recipe.short(), 0, 0.0, Path())
        for seed in self.args.seeds:
            model, seconds = self.build(recipe, seed, prepare)
            self.score(row, model, seed)
            print(f"  {variant:40} seed {seed}: val {row.val[seed]:.4f} dev {row.dev[seed]:.4f} "
                  f"(recovery {seconds:.0f} s)", flush=True)
        return row

    def teacher_row(self) -> Row:
        row = Row("teacher (unchanged)", "fp32", 0, 0.0, Path())
        model = self.teacher.model()
        for seed in self.args.seeds:        # deterministic: one scoring serves every seed
            self.score(row, model, seed)
        return row


SECTIONS: dict[str, Callable[[Bench], list[Row]]] = {}


def section(name: str):
    def wrap(fn):
        SECTIONS[name] = fn
        return fn
    return wrap


# ---------------------------------------------------------------- distillation
def _no_attention_dropout(model) -> None:
    for layer in arch.layers(model):
        arch.attention_dropout(model, layer).p = 0.0


def distillation_variants() -> list[tuple[str, dict, Callable | None]]:
    """(row name, distill parameters besides steps and lr, what to do to the student before it trains)."""
    return [
        ("logits only", {}, None),
        ("logits only, attention dropout off", {}, _no_attention_dropout),
        ("+hidden", {"hidden": 1.0}, None),
        ("+attention", {"attention": 1.0}, None),
        ("+hidden+attention", {"hidden": 1.0, "attention": 1.0}, None),
        ("+hidden+attention+embeddings", {"hidden": 1.0, "attention": 1.0, "embeddings": 1.0}, None),
        ("+hidden+attention, uniform mapping", {"hidden": 1.0, "attention": 1.0, "mapping": "uniform"}, None),
        ("+attention, last layer only (MiniLM)", {"attention": 1.0, "mapping": "last"}, None),
    ]


def step_cost(bench: Bench, student: Recipe, variants, steps: int = 8, rounds: int = 3) -> dict[str, float]:
    """Seconds per distillation step of each variant, median of interleaved rounds (A B C .., A B C ..),
    so that slow phases of a shared machine hit them all alike."""
    times: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    base = student.apply_torch(bench.teacher.model(), None)
    bench.teacher_model()                                   # loaded before any timing
    with shared_machine():
        for _ in range(rounds):
            for name, params, prepare in variants:
                model = copy.deepcopy(base)
                if prepare:
                    prepare(model)
                recipe = Recipe((Step("distill", {"steps": steps, "batch_size": 32, **params}),))
                t0 = time.perf_counter()
                recipe.apply_torch(model, bench.context(0))
                times[name].append((time.perf_counter() - t0) / steps)
    return {name: statistics.median(t) for name, t in times.items()}


@section("distillation")
def distillation(bench: Bench) -> list[Row]:
    args = bench.args
    student = (Step("drop_layers", {"keep": args.keep, "strategy": args.strategy}),)
    variants = distillation_variants()
    rows = [bench.teacher_row()]
    for name, params, prepare in variants:
        recipe = Recipe(student + (Step("distill", {"steps": args.steps, "lr": args.lr, **params}),))
        rows.append(bench.run(name, recipe, prepare))
    cost = step_cost(bench, Recipe(student), variants)
    for row, (name, _, _) in zip(rows[1:], variants):
        row.note = f"{cost[name]:.3f} s ({cost[name] / cost['logits only']:.1f}x)"
    print(f"\nstudent: {Recipe(student).short()}; distillation {args.steps} steps, lr {args.lr:g}, batch 32, "
          f"temperature 2, seeds {' '.join(map(str, args.seeds))}; loss weights 1 for every target used.\n"
          "Targets follow the layer each student layer was copied from (mapping origin) unless the row says "
          "otherwise. s/step: one distillation step, median of 3 interleaved rounds of 8 steps (x: relative "
          "to logits only).")
    return rows


# ---------------------------------------------------------------- table
def print_table(rows: list[Row], latencies: dict[str, dict[str, float]], bench: Bench) -> None:
    seeds = bench.args.seeds
    n_val, n_dev = len(bench.data.val), len(bench.data.dev)
    head = (f"{'variant':40} {'recipe':28} {'params':>10} {'zip MB':>7} " +
            " ".join(f"{p + ' ms':>14}" for p in PROFILES) +
            f" {'val acc':>8} {'dev acc':>8}  {'dev per seed':14} notes")
    print(head)
    for r in rows:
        val = statistics.mean(r.val[s] for s in seeds)
        dev = statistics.mean(r.dev[s] for s in seeds)
        per = " ".join(f"{100 * r.dev[s]:.1f}" for s in seeds)
        print(f"{r.variant:40} {r.recipe:28} {r.params:>10,} {r.zip_mb:>7.1f} " +
              " ".join(f"{latencies[p][r.variant]:>14.2f}" for p in PROFILES) +
              f" {100 * val:>8.2f} {100 * dev:>8.2f}  {per:14} {r.note}")
    print(f"\nval acc: mean over seeds on {n_val} rows carved from SST-2 train (the search's split); dev acc: "
          f"mean over seeds on the {n_dev} GLUE dev rows; both on the exported fp32 ONNX file. zip MB: the ONNX "
          "file zipped (deflate, level 6).")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--section", choices=sorted(SECTIONS), action="append",
                    help="a section to run (repeatable; default: all)")
    ap.add_argument("--data-dir", default=os.environ.get("AUTOCOMPRESS_GLUE_DIR"), help="local GLUE folder")
    ap.add_argument("--train-examples", type=int, default=0, help="teacher: train rows (as autocompress finetune)")
    ap.add_argument("--epochs", type=int, help="teacher: epochs (as autocompress finetune)")
    ap.add_argument("--val-size", type=int, default=1000, help="validation rows carved from train (as the CLI)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the split and the teacher (as the CLI)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds of each variant's training")
    ap.add_argument("--steps", type=int, default=400, help="distillation steps of every variant")
    ap.add_argument("--lr", type=float, default=2e-4, help="distillation learning rate of every variant")
    ap.add_argument("--keep", type=int, default=4, help="distillation section: the student's layers")
    ap.add_argument("--strategy", default="top", choices=("top", "alternate"), help="which layers the student keeps")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved latency rounds (10 runs each per model)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ac-methods-bench-") as out:
        bench = Bench(args, Path(out))
        for name in args.section or sorted(SECTIONS):
            print(f"\n== {name}", flush=True)
            rows = SECTIONS[name](bench)
            latencies, how = {}, []
            for p in PROFILES:
                lats = measure_side_by_side({r.variant: r.onnx for r in rows}, load_profile(p), rounds=args.rounds)
                latencies[p] = {k: v.median_ms for k, v in lats.items()}
                how.append(f"{p}: {describe(next(iter(lats.values())).to_dict())}")
            print()
            print_table(rows, latencies, bench)
            print("latency: median ms; every variant side by side in interleaved rounds on one machine (shared: "
                  "ratios hold, milliseconds are provisional); " + "; ".join(how))
    return 0


if __name__ == "__main__":
    sys.exit(main())
