"""The compression methods side by side on SST-2 with the packaged MiniLM: parameters, zipped size,
latency per device, and accuracy after recovery.

One section per question (``--section``, all by default); each registers itself in ``SECTIONS`` and
returns rows that the common table prints, so a section for another family is one more function.
Every method of the registry appears alone at two or three settings (``tests/test_bench_methods.py``
fails when a method has no row), beside the unchanged teacher:

- ``structure``: structured pruning, which shrinks the dense graph (the speed methods):
  ``drop_layers`` keep 4 / 3 (top), ``prune_heads`` 25% / 50%, ``prune_ffn`` 25% / 50%; each followed
  by the same recovery, ``distill`` on the logits (``--steps``, ``--lr``).
- ``size``: factorization, sharing and sparsity: ``low_rank`` (rank 50% / 25% of the FFN, 50% of every
  Linear), ``factorize_embeddings`` dim 128 / 64, ``share_layers`` (3 groups of FFN, 3 / 2 groups of whole
  layers), ``magnitude_prune`` 50% / 90% (the last structure step, as a recipe requires); same recovery.
  The methods the registry marks ``size_only`` say so in the notes: their benefit is the zipped file,
  their latency on a dense runtime is the unchanged model's (``low_rank`` changes the FLOPs: it may be
  faster or slower).
- ``quantization``: the ONNX-stage methods applied to the teacher's own exported fp32 file, no
  training, as ``Recipe.apply_onnx`` does it in a trial (the transfer set's training rows calibrate
  ``quantize_static`` and measure ``quantize_mixed``'s sensitivity, drawn with each seed):
  ``quantize_int8`` per channel / per tensor, ``quantize_static`` minmax / percentile,
  ``quantize_mixed`` keep 2 / 6 MatMuls in fp32, ``quantize_fp16`` (for GPU profiles: on these CPU
  profiles it is slower than fp32, the notes say so). Accuracy is that of the quantized file, the one timed.
- ``early_exit``: exits on the unchanged 6-layer teacher (its heads trained for ``--steps`` steps, the
  backbone frozen), every layer at entropy thresholds 0.2 / 0.5 and every 2 layers at 0.5. It ships as a
  pipeline (one graph per segment): scored with its exit rule, and its latency is the *expected* one
  (marked §): each segment timed side by side with the other rows, weighted by the share of the
  validation inputs that reach it (as a search trial obtains it).
- ``distillation``: the distillation targets at the same student (``drop_layers keep 4``): logits
  only, +hidden states, +attention, +hidden+attention, +embeddings as well, and two other layer
  mappings — same steps, learning rate and seeds. Two controls: logits only with the student's
  attention-probability dropout off (distilling attention turns it off, so this separates the two
  effects), and the cost of a step relative to logits only, timed in interleaved rounds.

How figures are obtained. The teacher is the cached one ``autocompress finetune`` makes with the same
options (``--train-examples``, ``--epochs``, ``--val-size``, ``--seed``; defaults as in the CLI, so
``autocompress finetune --data-dir ../shared/glue`` fills the cache this reuses). Each variant is
built as a search trial builds it: structure steps, recovery, ``finalize``, export
(``export.export_candidate``: one ONNX file, or a pipeline folder for early exit), ONNX steps; its
accuracy is measured on that shipped file, on the validation split carved from train (what the search
sees) and on the GLUE dev set. Latencies: each profile's figure is obtained as a search obtains it
(``hardware.obtain``): laptop-cpu measured here, every variant side by side in interleaved rounds;
mobile-cpu (a Pixel 4) predicted from this host's operator timings, per variant, then re-predicted
from one side-by-side host measurement, so the ratios of both columns come from one run while the
milliseconds on a shared machine are provisional; the line under each table says how. Training seconds per step
are wall-clock on this machine: comparable only within one run.

    AUTOCOMPRESS_GLUE_DIR=../shared/glue python benchmarks/methods.py [--section structure] \\
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

from autocompress import arch, pipeline
from autocompress.checkpoint import count_params, zipped_mb
from autocompress.features import EVAL_MAX_LENGTH, encode
from autocompress.evaluate import score_artifact
from autocompress.export import export_candidate
from autocompress.hardware import describe, shared_machine
from autocompress.hardware import obtain_together
from autocompress.hardware import load_profile
from autocompress.methods.base import Context, get_method
from autocompress.finalize import finalize
from autocompress.recipe import Recipe, Step
from autocompress.report import EXPECTED_LEGEND, EXPECTED_MARK
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
    usage: object = None                                    # pipeline.Usage of an input-dependent artifact


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
        """The recipe's PyTorch steps applied to a fresh copy of the teacher (``prepare(model)`` between
        structure and recovery); returns the model and the seconds recovery took."""
        torch.manual_seed(seed)
        ctx = self.context(seed)
        with shared_machine():
            model = recipe.apply_torch(self.teacher.model(), ctx, recipe.structure_steps)
            if prepare:
                prepare(model)
            t0 = time.time()
            model = recipe.apply_torch(model, ctx, recipe.recovery_steps)
            return finalize(model), time.time() - t0

    def candidate(self, recipe: Recipe, seed: int, prepare: Callable | None = None) -> tuple[Path, int, float]:
        """The recipe's shipped file as a trial makes it (an ONNX file, or an early-exit pipeline's
        manifest), its parameters, and the seconds its recovery (or its ONNX steps alone) took."""
        self.made += 1
        ctx = self.context(seed)
        if not recipe.torch_steps:
            # ONNX steps alone, on the teacher's own fp32 file; one folder per seed, so that quantize_mixed
            # measures the sensitivity once for every keep_fp32 (it caches it beside its output)
            t0 = time.time()
            with shared_machine():
                path = recipe.apply_onnx(self.teacher.onnx_path, self.out / f"teacher-seed{seed}", ctx)
            if path != self.teacher.onnx_path:
                path = path.rename(path.with_name(f"model-{self.made}.onnx"))
            return path, count_params(self.teacher_model()), time.time() - t0
        model, seconds = self.build(recipe, seed, prepare)
        with shared_machine():
            final, _ = export_candidate(model, self.out / f"model-{self.made}",
                                        lambda src, dst: recipe.apply_onnx(src, dst, ctx))
        return final, count_params(model), seconds

    def score(self, row: Row, path: Path, seed: int, params: int) -> Row:
        """Score the shipped artifact as a trial does (``evaluate.score_artifact``: a pipeline runs with its
        exit rule, and says how much of it the validation inputs ran); fills ``row`` (its file, size and
        notes from the first seed's)."""
        usage = None
        with shared_machine():
            for split in ("val", "dev"):
                rows = getattr(self.data, split)
                result, used = score_artifact(path, self.data.spec, self.features[split], rows["label"], split,
                                              pad_id=self.pad)
                getattr(row, split)[seed] = result.main
                usage = used if split == "val" else usage
        artifact = pipeline.open(path)
        artifact.note_usage(usage)
        if seed == self.args.seeds[0]:
            row.onnx, row.params = path, params
            row.zip_mb = sum(zipped_mb(src) for src, _, _ in artifact.files())
            row.usage = usage
            if usage is not None:
                row.note = (f"{EXPECTED_MARK} expected; reach " + "/".join(f"{100 * r:.0f}" for r in usage.shares) +
                            "% of val " + row.note).strip()
        return row

    def run(self, variant: str, recipe: Recipe, prepare: Callable | None = None) -> Row:
        row = Row(variant, recipe.short(), 0, 0.0, Path(), note=method_notes(recipe))
        for seed in self.args.seeds:
            path, params, seconds = self.candidate(recipe, seed, prepare)
            self.score(row, path, seed, params)
            what = "recovery" if recipe.recovery_steps else "onnx steps" if recipe.onnx_steps else "structure"
            print(f"  {variant:40} seed {seed}: val {row.val[seed]:.4f} dev {row.dev[seed]:.4f} "
                  f"({what} {seconds:.0f} s)", flush=True)
        return row

    @functools.cached_property
    def _teacher_scores(self) -> Row:
        row = Row("teacher (unchanged)", "fp32", 0, 0.0, Path())
        seed = self.args.seeds[0]
        self.score(row, self.teacher.onnx_path, seed, count_params(self.teacher_model()))
        for other in self.args.seeds[1:]:      # deterministic: one scoring serves every seed
            row.val[other], row.dev[other] = row.val[seed], row.dev[seed]
        return row

    def teacher_row(self) -> Row:
        """The unchanged teacher's exported fp32 file (scored once per run, a copy for each section)."""
        return copy.deepcopy(self._teacher_scores)


def method_notes(recipe: Recipe) -> str:
    """What the registry says of a recipe's methods that a reader of the table must know: size only
    (no speed on a dense runtime), or no use on a CPU profile (``cpu_note``: fp16)."""
    notes = []
    for s in recipe.steps:
        m = get_method(s.method)
        if m.size_only:
            notes.append("size only: latency unchanged on a dense runtime")
        if m.cpu_note:
            notes.append("for GPU profiles: on a CPU slower than fp32")
    return "; ".join(notes)


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


# ---------------------------------------------------------------- each method alone
Variants = list[tuple[str, tuple[Step, ...]]]


def recovery(steps: int, lr: float) -> Step:
    """The one recovery every structural variant gets: distillation on the teacher's logits."""
    return Step("distill", {"steps": steps, "lr": lr})


def structure_variants() -> Variants:
    """Structured pruning (smaller dense matrices: the speed methods), each alone, before recovery."""
    return [
        ("drop_layers keep 4 (top)", (Step("drop_layers", {"keep": 4}),)),
        ("drop_layers keep 3 (top)", (Step("drop_layers", {"keep": 3}),)),
        ("prune_heads 25%", (Step("prune_heads", {"ratio": 0.25}),)),
        ("prune_heads 50%", (Step("prune_heads", {"ratio": 0.5}),)),
        ("prune_ffn 25%", (Step("prune_ffn", {"ratio": 0.25}),)),
        ("prune_ffn 50%", (Step("prune_ffn", {"ratio": 0.5}),)),
    ]


def size_variants() -> Variants:
    """Factorization, sharing and sparsity (mostly size), each alone, before recovery."""
    return [
        ("low_rank 50% ffn", (Step("low_rank", {"rank_ratio": 0.5, "targets": "ffn"}),)),
        ("low_rank 25% ffn", (Step("low_rank", {"rank_ratio": 0.25, "targets": "ffn"}),)),
        ("low_rank 50% all", (Step("low_rank", {"rank_ratio": 0.5, "targets": "all"}),)),
        ("factorize_embeddings 128", (Step("factorize_embeddings", {"dim": 128}),)),
        ("factorize_embeddings 64", (Step("factorize_embeddings", {"dim": 64}),)),
        ("share_layers ffn in 3 groups", (Step("share_layers", {"groups": 3, "what": "ffn"}),)),
        ("share_layers all in 3 groups", (Step("share_layers", {"groups": 3, "what": "all"}),)),
        ("share_layers all in 2 groups", (Step("share_layers", {"groups": 2, "what": "all"}),)),
        ("magnitude_prune 50%", (Step("magnitude_prune", {"sparsity": 0.5}),)),
        ("magnitude_prune 90%", (Step("magnitude_prune", {"sparsity": 0.9}),)),
    ]


def quantization_variants() -> Variants:
    """The ONNX-stage methods, each alone on the teacher's fp32 file (no training)."""
    return [
        ("quantize_int8 per channel", (Step("quantize_int8"),)),
        ("quantize_int8 per tensor", (Step("quantize_int8", {"per_channel": False}),)),
        ("quantize_static minmax", (Step("quantize_static", {"calibration": "minmax"}),)),
        ("quantize_static percentile", (Step("quantize_static", {"calibration": "percentile"}),)),
        ("quantize_mixed keep 2 fp32", (Step("quantize_mixed", {"keep_fp32": 2}),)),
        ("quantize_mixed keep 6 fp32", (Step("quantize_mixed", {"keep_fp32": 6}),)),
        ("quantize_fp16", (Step("quantize_fp16"),)),
    ]


def early_exit_variants(steps: int = 200) -> Variants:
    """Exits on the unchanged teacher (``steps``: training of the exit heads, the backbone frozen)."""
    return [(f"early_exit every {k} layer{'s' if k > 1 else ''}, H<{t:g}",
             (Step("early_exit", {"exits": k, "rule": "entropy", "threshold": t, "steps": steps}),))
            for k, t in ((1, 0.2), (1, 0.5), (2, 0.5))]


def _recovery_text(bench: Bench) -> str:
    cfg = recovery(bench.args.steps, bench.args.lr).config
    return (f"recovery of every variant: distill {cfg.steps} steps, lr {cfg.lr:g}, logits only (batch {cfg.batch_size}, "
            f"temperature {cfg.temperature:g}), seeds {' '.join(map(str, bench.args.seeds))}")


def alone_recipes(steps: int, lr: float) -> dict[str, list[tuple[str, Recipe]]]:
    """Each section's variants as it runs them (row name, recipe): a structural method followed by the
    common recovery; an ONNX step or early exit on the unchanged teacher."""
    kd = (recovery(steps, lr),)
    return {"structure": [(name, Recipe(s + kd)) for name, s in structure_variants()],
            "size": [(name, Recipe(s + kd)) for name, s in size_variants()],
            "quantization": [(name, Recipe(s)) for name, s in quantization_variants()],
            "early_exit": [(name, Recipe(s)) for name, s in early_exit_variants(steps)]}


def _alone(bench: Bench, name: str) -> list[Row]:
    variants = alone_recipes(bench.args.steps, bench.args.lr)[name]
    return [bench.teacher_row()] + [bench.run(variant, recipe) for variant, recipe in variants]


@section("structure")
def structure(bench: Bench) -> list[Row]:
    rows = _alone(bench, "structure")
    print(f"\n{_recovery_text(bench)}; heads and FFN neurons ranked by importance on transfer rows.")
    return rows


@section("size")
def size(bench: Bench) -> list[Row]:
    rows = _alone(bench, "size")
    print(f"\n{_recovery_text(bench)}. Size only: the benefit is the zipped file; on a dense "
          "runtime the latency is the unchanged model's (sparsity's zeros are still multiplied, shared weights are "
          "still run once per layer).")
    return rows


@section("quantization")
def quantization(bench: Bench) -> list[Row]:
    rows = _alone(bench, "quantization")
    notes = {get_method(s.method).cpu_note for _, steps in quantization_variants() for s in steps} - {None}
    print("\nno training: each variant is the teacher's fp32 ONNX file through the recipe's ONNX step (calibration "
          "and sensitivity rows drawn from the transfer set with each seed); val and dev accuracy are the quantized "
          "file's. " + " ".join(f"{n}." for n in sorted(notes)))
    return rows


@section("early_exit")
def early_exit(bench: Bench) -> list[Row]:
    rows = _alone(bench, "early_exit")
    print(f"\nexit heads trained {bench.args.steps} steps by distillation on the teacher's logits (backbone frozen); "
          f"accuracy with the exit rule on each split. {' '.join(EXPECTED_LEGEND.split())} ({len(bench.data.val)} rows); the segments "
          "are timed side by side with the other rows; reach: share of val inputs running each segment.")
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
          f"mean over seeds on the {n_dev} GLUE dev rows; both on the shipped file, the one timed (fp32 unless the "
          "recipe quantizes; an early-exit pipeline with its exit rule). zip MB: the shipped file(s) zipped (deflate, "
          "level 6).")


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
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ac-methods-bench-") as out:
        bench = Bench(args, Path(out))
        for name in args.section or sorted(SECTIONS):
            print(f"\n== {name}", flush=True)
            rows = SECTIONS[name](bench)
            latencies, how = {}, []
            for p in PROFILES:
                lats = obtain_together({r.variant: r.onnx for r in rows}, p,
                                       usages={r.variant: r.usage for r in rows if r.usage is not None})
                latencies[p] = {k: v.median_ms for k, v in lats.items()}
                how.append(f"{p}: {describe(lats[rows[0].variant].to_dict())}")
            print()
            print_table(rows, latencies, bench)
            print("latency: median ms, obtained side by side per profile (ratios hold on a shared machine, "
                  "milliseconds are provisional); " + "; ".join(how))
    return 0


if __name__ == "__main__":
    sys.exit(main())
