"""The teacher's fine-tune: today's loop (a fixed number of passes, the last weights kept, val looked at
once at the end) against the loop that looks at val as it goes, keeps its best weights and stops after a
patience with no gain, side by side: time, passes run, the kept step, val and dev scores, per task and seed.

Each (task, seed, loop) is one run; runs append one line each to the results file as they finish, so a
long benchmark can be stopped and continued (``--skip-done``), and each part can run on its own::

    AUTOCOMPRESS_GLUE_DIR=../shared/glue python benchmarks/teacher.py --task sst2 --seeds 0 1 2
    AUTOCOMPRESS_GLUE_DIR=../shared/glue python benchmarks/teacher.py --task cola --seeds 0
    python benchmarks/teacher.py --table benchmarks/results/teacher.jsonl      # the table of what ran
    AUTOCOMPRESS_GLUE_DIR=../shared/glue python benchmarks/teacher.py --loops bf16 --seeds 0 1 2
    AUTOCOMPRESS_GLUE_DIR=../shared/glue python benchmarks/teacher.py --step-time 30 3   # fp32 vs bf16 per step

Both loops use the same split (carved like dev, ``tasks.split``), batch size, learning rate, plan and
seed; "today" is ``TeacherSettings(patience=None, keep_best=False, passes=2)`` (two passes, no look at val
until the end, as the issue found it), "new" the defaults, "bf16" and "fp32" the defaults with ``bf16`` on (the default since
2026-12-06; "new" rows before that date were fp32) and off. Each run fine-tunes in a cache of its own (the
teacher cache is not reused), on a quiet machine: times are wall-clock seconds of training (scoring,
transfer logits and export excluded). "meanpool" is the defaults with the classifier reading the mean of the
token states under the attention mask (``MeanPooler``: how all-MiniLM-L6-v2 embeds a sentence) in place of
BERT's [CLS] pooler; it is scored here only (``--loops meanpool --seeds 0 1 2``).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

LOOPS = {"new": {}, "today": {"patience": None, "keep_best": False, "passes": 2, "bf16": False},   # as the issue found it
         "new-3pass": {"epochs": 3},      # the new loop over a plan of three passes (SST-2: val still rose at two)
         "bf16": {"bf16": True},          # the new loop with its passes under bf16 autocast (where native; the default
         "fp32": {"bf16": False},         # since 2026-12-06) or in fp32 (the default before)
         "bf16-lr5e-5": {"bf16": True, "lr": 5e-5},   # the bf16 loop at half the learning rate
         "seeded": {},     # the defaults once the head and dropout follow the seed (5a948cb): one seed, one teacher
         "meanpool": {}}   # the defaults with the classifier on the mean of the token states (MeanPooler)
POOLED = {"meanpool"}     # loops whose model reads the mean of its token states, not tanh(W [CLS])


class MeanPooler:
    """In place of BERT's pooler (tanh of a linear map of the [CLS] state): the mean of the token states under
    the attention mask, how all-MiniLM-L6-v2 was trained to embed a sentence (sentence-transformers' mean
    pooling). A benchmark of the teacher's head only: the search's students, export and ``pick`` keep BERT's
    head, so a teacher fine-tuned this way is scored here and not exported (its ONNX export is skipped)."""

    @staticmethod
    def install(model):
        import torch

        class Mean(torch.nn.Module):
            mask = None

            def forward(self, hidden):
                m = (self.mask if self.mask is not None else torch.ones(hidden.shape[:2])).unsqueeze(-1).to(hidden.dtype)
                return (hidden * m).sum(1) / m.sum(1).clamp(min=1)

        pooler = Mean()
        model.bert.pooler = pooler
        model.bert.register_forward_pre_hook(
            lambda _, args, kwargs: setattr(pooler, "mask", kwargs.get("attention_mask")), with_kwargs=True)
        return model


def run(task: str, seed: int, loop: str, data_dir: str | None, cache: str | None = None, adopt: bool = False) -> dict:
    from autocompress.tasks import load_task
    from autocompress.teacher import TeacherSettings, get_teacher

    data = load_task(task, data_dir, seed=seed)
    settings = TeacherSettings(task=data.spec.name, val_size=len(data.val), seed=seed, **LOOPS[loop])
    with tempfile.TemporaryDirectory(prefix="ac-teacher-bench-") as tmp, pooled(loop in POOLED, cache):
        os.environ["AUTOCOMPRESS_CACHE"] = cache or tmp
        t0 = time.time()
        teacher = get_teacher(settings, data, log=lambda m: print(f"  {m}", file=sys.stderr, flush=True),
                              fresh=not adopt)
        wall = time.time() - t0 if not adopt else None      # adopted: only the recorded training time is known
        info = teacher.info
    per_pass = -(-info["train_rows"] // settings.batch_size)
    steps = max(c["step"] for c in info["curve"]) if info.get("curve") else per_pass * info["epochs"]
    return {"task": task, "seed": seed, "loop": loop, "train_rows": info["train_rows"], "val_n": info["val"]["n"],
            "plan_passes": info["epochs"], "steps_run": steps, "passes_run": round(steps / per_pass, 2),
            "kept_step": info.get("kept_step"), "stopped": info.get("stopped"),
            "train_seconds": info["train_seconds"], "wall_seconds": wall and round(wall, 1), "adopted": adopt, "metric": data.spec.metric,
            "val": info["val"]["metrics"]["main"], "dev": info["dev"]["metrics"]["main"],
            "learned": (info.get("learned") or {}).get("passed"), "curve": info.get("curve"),
            "settings": dataclasses.asdict(settings), "date": time.strftime("%Y-%m-%d %H:%M")}


@contextlib.contextmanager
def pooled(on: bool, cache: str | None):
    """With ``on``, the teacher's model gets ``MeanPooler`` as it is built, and is not exported."""
    if not on:
        yield
        return
    if cache:
        raise SystemExit("a mean-pooled teacher would share the cache key of BERT's head: leave --cache out")
    from unittest import mock

    from autocompress import export, teacher
    real = teacher.AutoModelForSequenceClassification

    class Auto:
        @staticmethod
        def from_pretrained(*args, **kwargs):
            return MeanPooler.install(real.from_pretrained(*args, **kwargs))

    with mock.patch.object(teacher, "AutoModelForSequenceClassification", Auto), \
            mock.patch.object(export, "export_onnx", lambda *a, **k: None):
        yield


def step_time(task: str, data_dir: str | None, steps: int, rounds: int) -> str:
    """Seconds per fine-tuning step in fp32 and under bf16 autocast, side by side: ``rounds`` rounds of
    ``steps`` steps each (batches of the default size from the same rows, the base model fresh each time),
    the two in turn (their order swapped every round), after one warm-up round; medians and their ratio."""
    import copy

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from autocompress.features import TransferSet, encode
    from autocompress.hardware.host import native_bf16
    from autocompress.tasks import load_task
    from autocompress.teacher import TeacherSettings, finetune, resolve_model

    data = load_task(task, data_dir, seed=0)
    source = resolve_model(TeacherSettings().model)
    base = AutoModelForSequenceClassification.from_pretrained(source, num_labels=data.spec.num_labels,
                                                              attn_implementation="sdpa")
    tokenizer = AutoTokenizer.from_pretrained(source)
    plain = TeacherSettings(task=data.spec.name, epochs=1, patience=None, keep_best=False)
    rows = data.train.select(range(steps * plain.batch_size))
    train = TransferSet(encode(tokenizer, rows, plain.max_length), torch.tensor(list(rows["label"])),
                        torch.zeros(len(rows), data.spec.num_labels), pad_id=tokenizer.pad_token_id or 0)
    variants = {"fp32": plain, "bf16": dataclasses.replace(plain, bf16=True)}
    times: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(rounds + 1):                     # round 0 warms up (not counted)
        for v in (list(variants) if r % 2 == 0 else list(variants)[::-1]):
            model = copy.deepcopy(base)
            t0 = time.perf_counter()
            finetune(model, train, variants[v])
            if r:
                times[v].append((time.perf_counter() - t0) / steps)
    med = {v: statistics.median(t) for v, t in times.items()}
    return (f"{task}: s per fine-tuning step of {plain.batch_size} rows ({rounds} rounds of {steps} steps, median, "
            f"after one warm-up round; native bf16: {native_bf16()}): "
            + "; ".join(f"{v} {med[v]:.3f} (min {min(times[v]):.3f}, max {max(times[v]):.3f})" for v in variants)
            + f"; bf16 / fp32 {med['bf16'] / med['fp32']:.2f}")


def table(rows: list[dict]) -> str:
    out = [f"{'task':6} {'loop':6} {'seed':>4} {'passes':>7} {'kept':>6} {'train s':>8} {'val':>7} {'dev':>7}  stopped"]
    for r in rows:
        out.append(f"{r['task']:6} {r['loop']:6} {r['seed']:>4} {r['passes_run']:>7} {str(r['kept_step']):>6} "
                   f"{r['train_seconds']:>8.0f} {100 * r['val']:>7.2f} {100 * r['dev']:>7.2f}  {r['stopped'] or '-'}")
    out.append("")
    for task in sorted({r["task"] for r in rows}):
        for loop in LOOPS:
            sel = [r for r in rows if r["task"] == task and r["loop"] == loop]
            if not sel:
                continue
            out.append(f"{task:6} {loop:6} n={len(sel)}: dev {spread([100 * r['dev'] for r in sel])}, "
                       f"train {spread([r['train_seconds'] for r in sel], '.0f', ' s')}")
    return "\n".join(out)


def spread(values: list[float], fmt: str = ".2f", unit: str = "") -> str:
    """``mean (min a, max b)`` of a few runs' figures: one run is not a figure."""
    return f"{statistics.mean(values):{fmt}}{unit} (min {min(values):{fmt}}, max {max(values):{fmt}})"


def results_options(ap: argparse.ArgumentParser, name: str) -> None:
    """The options every per-seed benchmark of this folder shares: where GLUE lies, the results file it
    appends to (``results/NAME``) and ``--table`` (only print the table of such a file)."""
    ap.add_argument("--data-dir", default=os.environ.get("AUTOCOMPRESS_GLUE_DIR"))
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / name))
    ap.add_argument("--table", metavar="JSONL", help="only print the table of a results file")


def read_rows(path: str | os.PathLike) -> list[dict]:
    """The rows of a results file (one JSON object per line)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--loops", nargs="+", default=list(LOOPS), choices=list(LOOPS))
    results_options(ap, "teacher.jsonl")
    ap.add_argument("--skip-done", action="store_true", help="leave out (task, seed, loop) already in --out")
    ap.add_argument("--cache", help="keep the teachers in this cache (default: a temporary one per run); always "
                    "fine-tuned again")
    ap.add_argument("--adopt", action="store_true", help="with --cache: take a teacher already fine-tuned there "
                    "with the same settings (e.g. the search's default one, which is the 'new' loop's seed 0) and "
                    "report what its teacher.json recorded, instead of fine-tuning again")
    ap.add_argument("--step-time", type=int, nargs=2, metavar=("STEPS", "ROUNDS"),
                    help="only time fine-tuning steps in fp32 against bf16 autocast, side by side")
    args = ap.parse_args()
    if args.step_time:
        print(step_time(args.task, args.data_dir, *args.step_time))
        return 0
    if args.table:
        print(table(read_rows(args.table)))
        return 0
    out = Path(args.out)
    done = set()
    if args.skip_done and out.is_file():
        done = {(r["task"], r["seed"], r["loop"]) for r in map(json.loads, out.read_text().splitlines()) if r}
    rows = []
    for seed in args.seeds:
        for loop in (args.loops if seed % 2 == 0 else args.loops[::-1]):   # alternating order: a slow phase hits both
            if (args.task, seed, loop) in done:
                continue
            print(f"{args.task} seed {seed}, {loop} loop", file=sys.stderr, flush=True)
            r = run(args.task, seed, loop, args.data_dir, args.cache, args.adopt and bool(args.cache))
            rows.append(r)
            with open(out, "a") as f:
                f.write(json.dumps(r) + "\n")
            print(table([r]).splitlines()[1], flush=True)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
