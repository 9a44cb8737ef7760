"""Which of the teacher's looks to keep: one full-plan fine-tune per seed (no early stop), the weights at
every look at val kept aside, then each selection rule applied to the same run and scored on dev:

- ``patience3-best``: today's default (the best look by val, stopping after 3 looks without a gain);
- ``last``: the last weights (the whole plan);
- ``best``: the best look by val over the whole plan;
- ``later-within-se``: the latest look whose val is within one standard error (binomial, at val's n) of
  the best, so that val's noise does not pull the pick back to an early look;
- ``avg-last-K``: the uniform average of the weights of the last K looks;
- ``ema``: an exponential moving average of the weights over the steps (decay ``--ema``).

Each rule reads the same looks, so the rules are compared within a run, seed by seed: the rule's gain is
a paired difference, not a difference of two noisy runs. One line per seed is appended to the results
file as it finishes (each seed can run on its own)::

    AUTOCOMPRESS_GLUE_DIR=../shared/glue python benchmarks/teacher_looks.py --seeds 0 1 2
    python benchmarks/teacher_looks.py --table benchmarks/results/teacher-looks.jsonl

A recipe lever is measured the same way, as a variant beside the default's rows (``--train-embeddings``:
the word embeddings trained too, where the default fine-tune freezes them for speed)::

    AUTOCOMPRESS_GLUE_DIR=../shared/glue python benchmarks/teacher_looks.py --seeds 0 1 2 --train-embeddings
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

from teacher import read_rows, results_options, spread      # benchmarks/teacher.py (this folder is on the path of a script run from it)

RULES = ["patience3-best", "last", "best", "later-within-se", "avg-last-2", "avg-last-3", "avg-last-4", "ema"]


def _setup(task: str, seed: int, data_dir: str | None, train_examples: int = 0):
    """The task, the default teacher settings (no early stop, the last weights), the packaged model with a
    fresh head, its tokenizer's pad id and the training rows, as the fine-tune gets them."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from autocompress.features import TransferSet, encode
    from autocompress.tasks import load_task
    from autocompress.teacher import TeacherSettings, _subset, resolve_model

    data = load_task(task, data_dir, seed=seed)
    settings = TeacherSettings(task=data.spec.name, val_size=len(data.val), seed=seed, patience=None, keep_best=False,
                               train_examples=train_examples)
    source = resolve_model(settings.model)
    tok = AutoTokenizer.from_pretrained(source)
    names = data.spec.label_names
    model = AutoModelForSequenceClassification.from_pretrained(
        source, num_labels=len(names), id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)}, attn_implementation="sdpa")
    pad = tok.pad_token_id or 0
    train_idx = _subset(len(data.train), settings.train_examples, settings.seed)
    rows = data.train.select(train_idx)
    train_set = TransferSet(encode(tok, rows, settings.max_length), torch.tensor(list(rows["label"])),
                            torch.zeros(len(rows), data.spec.num_labels), pad_id=pad)
    return data, settings, model, tok, pad, rows, train_set


def run(task: str, seed: int, data_dir: str | None, ema_decay: float, train_examples: int = 0,
        train_embeddings: bool = False) -> dict:
    import torch

    from autocompress.evaluate import predict_torch, score
    from autocompress.features import EVAL_MAX_LENGTH, encode
    from autocompress.teacher import _train, finetune, watch_val

    data, settings, model, tok, pad, rows, train_set = _setup(task, seed, data_dir, train_examples)
    val_f, dev_f = encode(tok, data.val, EVAL_MAX_LENGTH), encode(tok, data.dev, EVAL_MAX_LENGTH)

    def metric(features, split) -> float:
        labels = data.val["label"] if split == "val" else data.dev["label"]
        return score(data.spec, predict_torch(model, features, pad_id=pad), labels, split).main

    log = lambda m: print(f"  {m}", file=sys.stderr, flush=True)   # noqa: E731
    watch = watch_val(model, tok, settings, data, len(rows), log)
    looks: list[dict] = []          # per look: step, val, dev, weights
    evaluate = watch.evaluate

    def look(step: int, loss: float) -> float:
        v = evaluate(step, loss)
        t = time.time()
        looks.append({"step": step, "val": v, "dev": metric(dev_f, "dev"),
                      "state": {k: x.detach().clone() for k, x in model.state_dict().items()}})
        looks[-1]["dev_seconds"] = round(time.time() - t, 1)
        return v

    watch.evaluate = look
    floats = [p for p in model.parameters()]
    ema = [p.detach().clone() for p in floats]

    def progress(step, total, loss):
        with torch.no_grad():
            torch._foreach_mul_(ema, ema_decay)
            torch._foreach_add_(ema, [p.detach() for p in floats], alpha=1 - ema_decay)

    t0 = time.time()
    # the default freezes the word embeddings (``finetune``); the variant trains every weight
    (_train if train_embeddings else finetune)(model, train_set, settings, progress, watch)
    train_seconds = time.time() - t0 - sum(lk["dev_seconds"] for lk in looks)

    def scored(state: dict) -> dict:
        model.load_state_dict(state)
        return {"val": metric(val_f, "val"), "dev": metric(dev_f, "dev")}

    n = len(data.val)
    vals = [lk["val"] for lk in looks]
    picks: dict[str, dict] = {}
    # today's default: best by val, stopping after 3 looks without a gain
    best_i, since, stop = 0, 0, len(looks) - 1
    for i, v in enumerate(vals):
        if i == 0 or v > vals[best_i]:
            best_i, since = i, 0
        else:
            since += 1
            if since >= 3:
                stop = i
                break
    picks["patience3-best"] = {"look": best_i, "steps_run": looks[stop]["step"]}
    picks["last"] = {"look": len(looks) - 1}
    top = max(range(len(vals)), key=lambda i: (vals[i], -i))
    picks["best"] = {"look": top}
    se = math.sqrt(vals[top] * (1 - vals[top]) / n)
    picks["later-within-se"] = {"look": max(i for i, v in enumerate(vals) if v >= vals[top] - se), "se": round(se, 4)}
    for rule, p in picks.items():
        lk = looks[p["look"]]
        p.update(step=lk["step"], val=lk["val"], dev=lk["dev"])
    for k in (2, 3, 4):
        states = [lk["state"] for lk in looks[-k:]]
        avg = {name: (sum(s[name].double() for s in states) / k).to(states[0][name].dtype)
               if states[0][name].is_floating_point() else states[-1][name] for name in states[0]}
        picks[f"avg-last-{k}"] = {"steps": [lk["step"] for lk in looks[-k:]], **scored(avg)}
    with torch.no_grad():
        for p, e in zip(floats, ema):
            p.copy_(e)
    picks["ema"] = {"decay": ema_decay, "val": metric(val_f, "val"), "dev": metric(dev_f, "dev")}
    return {"task": task, "seed": seed, "variant": "train-embeddings" if train_embeddings else "default",
            "train_rows": len(rows), "val_n": n, "dev_n": len(data.dev),
            "metric": data.spec.metric, "train_seconds": round(train_seconds, 1),
            "looks": [{k: v for k, v in lk.items() if k != "state"} for lk in looks], "rules": picks,
            "settings": dataclasses.asdict(settings), "date": time.strftime("%Y-%m-%d %H:%M")}


def variant(r: dict) -> str:
    return r.get("variant", "default")


def table(rows: list[dict]) -> str:
    if len({variant(r) for r in rows}) > 1:     # one table per variant, then the variants compared
        return "\n\n".join(f"## {v}\n" + table([r for r in rows if variant(r) == v])
                           for v in dict.fromkeys(variant(r) for r in rows)) + "\n\n" + versus(rows)
    out = [f"{'task':5} {'seed':>4} {'train s':>8}  " + "  ".join(f"{r:>15}" for r in RULES)]
    for r in rows:
        out.append(f"{r['task']:5} {r['seed']:>4} {r['train_seconds']:>8.0f}  "
                   + "  ".join(f"{100 * r['rules'][k]['dev']:>15.2f}" for k in RULES))
        out.append(f"{'':5} {'':>4} {'(val)':>8}  " + "  ".join(f"{100 * r['rules'][k]['val']:>15.2f}" for k in RULES))
    out.append("")
    for task in sorted({r["task"] for r in rows}):
        sel = [r for r in rows if r["task"] == task]
        base = [r["rules"]["patience3-best"]["dev"] for r in sel]
        for k in RULES:
            dev = [100 * r["rules"][k]["dev"] for r in sel]
            gain = [100 * (r["rules"][k]["dev"] - b) for r, b in zip(sel, base)]
            out.append(f"{task:5} {k:16} n={len(sel)}: dev mean {spread(dev)}; vs patience3-best, same run: "
                       + " ".join(f"{g:+.2f}" for g in gain))
    out += ["", "# dev (val) at each look"]
    for r in rows:
        kept = r["rules"]["patience3-best"]
        out.append(f"seed {r['seed']} " + " ".join(f"{lk['step']}:{100 * lk['dev']:.2f}({100 * lk['val']:.1f})"
                                                   for lk in r["looks"])
                   + f"  kept by patience3-best: step {kept['step']} of {kept['steps_run']}")
    return "\n".join(out)


def step_time(task: str, data_dir: str | None, steps: int, rounds: int) -> str:
    """Seconds per optimiser step of the default fine-tune (word embeddings frozen) and of the variant that
    trains them, side by side: ``rounds`` rounds of ``steps`` steps each from the same start and the same
    batches, the two in turn (their order swapped every round); medians and their ratio."""
    import copy
    import statistics

    from autocompress import arch
    from autocompress.methods.distillation import optimise

    data, settings, model, tok, pad, rows, train_set = _setup(task, 0, data_dir)
    times: dict[str, list[float]] = {"default": [], "train-embeddings": []}
    for r in range(rounds):
        for v in (list(times) if r % 2 == 0 else list(times)[::-1]):
            m = copy.deepcopy(model)
            arch.vocab_weight(m).requires_grad_(v != "default")
            params = [p for p in m.parameters() if p.requires_grad]
            t0 = time.perf_counter()
            optimise(m, params, train_set.batches(settings.batch_size, steps, seed=r),
                     lambda b, m=m: (m(**arch.inputs(m, b), labels=b["labels"]).loss, {}), steps=steps, lr=settings.lr)
            times[v].append((time.perf_counter() - t0) / steps)
    med = {v: statistics.median(t) for v, t in times.items()}
    return (f"{task}: s per step (batch {settings.batch_size}, {rounds} rounds of {steps} steps, median): "
            + ", ".join(f"{v} {m:.3f} (min {min(times[v]):.3f}, max {max(times[v]):.3f})" for v, m in med.items())
            + f"; train-embeddings / default {med['train-embeddings'] / med['default']:.2f}")


def versus(rows: list[dict]) -> str:
    """Each variant against the default, seed by seed (different runs, so the same-seed noise is in it):
    dev of the default rule, dev of the best look (what any rule could keep), training seconds."""
    out = []
    for task in sorted({r["task"] for r in rows}):
        by = {(variant(r), r["seed"]): r for r in rows if r["task"] == task}
        for v in dict.fromkeys(variant(r) for r in rows if r["task"] == task):
            seeds = sorted(s for (w, s) in by if w == v)
            cols = {"patience3-best dev": [100 * by[v, s]["rules"]["patience3-best"]["dev"] for s in seeds],
                    "best look by dev": [100 * max(lk["dev"] for lk in by[v, s]["looks"]) for s in seeds],
                    "train s": [by[v, s]["train_seconds"] for s in seeds]}
            out.append(f"{task:5} {v:17} seeds {seeds}: " + "; ".join(
                f"{k} {spread(x, '.2f' if 'dev' in k else '.0f')}" for k, x in cols.items()))
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--ema", type=float, default=0.998, help="the moving average's decay per step")
    ap.add_argument("--train-examples", type=int, default=0, help="fine-tune on this many train rows (0: all)")
    ap.add_argument("--train-embeddings", action="store_true",
                    help="train the word embeddings too (the default fine-tune freezes them)")
    ap.add_argument("--step-time", type=int, nargs=2, metavar=("STEPS", "ROUNDS"),
                    help="only time the optimiser step of the default and of --train-embeddings side by side")
    results_options(ap, "teacher-looks.jsonl")
    args = ap.parse_args()
    if args.table:
        print(table(read_rows(args.table)))
        return 0
    if args.step_time:
        print(step_time(args.task, args.data_dir, *args.step_time), flush=True)
        return 0
    rows = []
    for seed in args.seeds:
        print(f"{args.task} seed {seed}", file=sys.stderr, flush=True)
        r = run(args.task, seed, args.data_dir, args.ema, args.train_examples, args.train_embeddings)
        rows.append(r)
        with open(args.out, "a") as f:
            f.write(json.dumps(r) + "\n")
        print(table([r]), flush=True)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
