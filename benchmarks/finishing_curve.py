"""How many steps the finishing stage's long recovery needs: one front member's recipe, rebuilt from a cached
teacher and trained with the finishing stage's recovery (``search_spaces/default.yaml``, ``finish: distill:``:
3000 steps, hidden-state and attention targets), its dev score looked at every ``--every`` steps on the way.

The finishing stage is most of a default search's time (on the 2-core VM: 4 members x 544-792 s of a 79-min
search with the teacher cached, against a 60-min goal). The curve says what the last steps of that plan buy.
A look inside one plan is at a learning rate not yet decayed to zero, so it understates what a shorter plan
would reach at its own end: read it as a lower bound for a plan of that many steps. Scored in PyTorch fp32
(no int8: that is an ONNX step after training, the same for every look). One line per member is appended to
the results file::

    AUTOCOMPRESS_GLUE_DIR=../shared/glue python benchmarks/finishing_curve.py --teacher TEACHER_FOLDER \\
        --recipe "layers 3 alt" --every 250

``--set KEY=VALUE ...`` changes the recovery's settings (``--set bf16=false``: the fp32 recovery; ``--set
augment=0.5 augment_mode=both``: half of each batch augmented), and ``--step-time STEPS ROUNDS`` only times a
step as the space gives it against one with ``--set``, side by side (same member, same batches, in turn)::

    python benchmarks/finishing_curve.py --teacher TEACHER_FOLDER --set bf16=false --step-time 40 4
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import yaml

from teacher import read_rows, results_options    # benchmarks/teacher.py (this folder is on the path of a script run from it)

SPACE = Path(__file__).resolve().parent.parent / "search_spaces" / "default.yaml"
MEMBERS = {   # the members the tenth session's README run finished (benchmarks/results/readme-first-command-20261206-0911.txt)
    "layers 3 alt": [("drop_layers", {"keep": 3, "strategy": "alternate"})],
    "layers 4 alt · ffn -25%": [("drop_layers", {"keep": 4, "strategy": "alternate"}), ("prune_ffn", {"ratio": 0.25})],
    "layers 3 · heads -25% · ffn -50%": [("drop_layers", {"keep": 3, "strategy": "top"}),
                                          ("prune_heads", {"ratio": 0.25}), ("prune_ffn", {"ratio": 0.5})],
    "layers 3 · heads -25% · ffn -25%": [("drop_layers", {"keep": 3, "strategy": "top"}),   # 4.72x in the README
                                          ("prune_heads", {"ratio": 0.25}), ("prune_ffn", {"ratio": 0.25})],   # run of 12-07
    "layers 4 · heads -50% · ffn -50%": [("drop_layers", {"keep": 4, "strategy": "top"}),   # 3.98x at -0.12 dev
                                         ("prune_heads", {"ratio": 0.5}), ("prune_ffn", {"ratio": 0.5})],   # on 12-05
    "layers 3 · heads -50% · ffn -50%": [("drop_layers", {"keep": 3, "strategy": "top"}),   # the 4-layer member one
                                         ("prune_heads", {"ratio": 0.5}), ("prune_ffn", {"ratio": 0.5})],   # layer less
    "layers 3 alt · heads -25%": [("drop_layers", {"keep": 3, "strategy": "alternate"}), ("prune_heads", {"ratio": 0.25})],
    "layers 2 alt · heads -25% · ffn -50%": [("drop_layers", {"keep": 2, "strategy": "alternate"}),   # the 2-layer
                                              ("prune_heads", {"ratio": 0.25}), ("prune_ffn", {"ratio": 0.5})],   # seed
}


def run(teacher_dir: str, member: str, every: int, data_dir: str | None, steps: int | None,
        overrides: dict | None = None) -> dict:
    import torch

    from autocompress.evaluate import predict_torch, score
    from autocompress.features import EVAL_MAX_LENGTH, encode
    from autocompress.methods import Context
    from autocompress.methods import distillation
    from autocompress.recipe import Recipe, Step
    from autocompress.tasks import load_task
    from autocompress.teacher import load_teacher

    finish = yaml.safe_load(SPACE.read_text())["finish"]["distill"]
    distill = {**finish, **({"steps": steps} if steps else {}), **(overrides or {})}
    recipe = Recipe(tuple(Step(m, p) for m, p in MEMBERS[member]) + (Step("distill", distill),))
    teacher = load_teacher(teacher_dir)
    s = teacher.info["settings"]
    data = load_task(s["task"], data_dir, val_size=s["val_size"], seed=s["seed"])   # the teacher's own carve
    pad = teacher.tokenizer.pad_token_id or 0
    dev_f, val_f = encode(teacher.tokenizer, data.dev, EVAL_MAX_LENGTH), encode(teacher.tokenizer, data.val, EVAL_MAX_LENGTH)
    looks: list[dict] = []
    t_start = time.time()

    def metric(model, features, split) -> float:
        labels = data.dev["label"] if split == "dev" else data.val["label"]
        return score(data.spec, predict_torch(model, features, pad_id=pad), labels, split).main

    plain = distillation.optimise

    def with_looks(model, params, batches, loss_fn, **kw):
        def evaluate(step, loss):
            t = time.time()
            looks.append({"step": step, "train_loss": round(loss, 5), "dev": metric(model, dev_f, "dev"),
                          "val": metric(model, val_f, "val"), "seconds": round(t - t_start, 1)})
            print(f"  {member}: step {step}/{kw['steps']} loss {loss:.4f} dev {100 * looks[-1]['dev']:.2f} "
                  f"val {100 * looks[-1]['val']:.2f}", file=sys.stderr, flush=True)
            return looks[-1]["val"]

        watch = distillation.Watch(evaluate=evaluate, every=every, patience=None, keep_best=False)
        return plain(model, params, batches, loss_fn, watch=watch, **kw)

    distillation.optimise = with_looks       # the recovery's loop, with looks (nothing else changes)
    try:
        ctx = Context(teacher.transfer_set(data), seed=s["seed"] + 1, teacher=functools.cache(teacher.model))
        torch.manual_seed(s["seed"])
        model = recipe.apply_torch(teacher.model(), ctx)
    finally:
        distillation.optimise = plain
    return {"teacher": Path(teacher_dir).name, "teacher_dev": teacher.info["dev"]["metrics"]["main"],
            "teacher_val": teacher.info["val"]["metrics"]["main"], "member": member, "recipe": recipe.to_json(),
            "steps": distill["steps"], "overrides": overrides or {}, "looks": looks, "seconds": round(time.time() - t_start, 1),
            "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d %H:%M")}


def step_time(teacher_dir: str, member: str, data_dir: str | None, overrides: dict, steps: int, rounds: int) -> str:
    """Seconds per step of the finishing recovery as the space gives it and with ``overrides``, side by side:
    ``rounds`` rounds of ``steps`` steps each on the same structured member and the same batches, the two in
    turn (their order swapped every round); medians and their ratio."""
    import copy
    import statistics

    from autocompress.methods import Context, distillation
    from autocompress.recipe import Recipe, Step
    from autocompress.tasks import load_task
    from autocompress.teacher import load_teacher

    finish = yaml.safe_load(SPACE.read_text())["finish"]["distill"]
    teacher = load_teacher(teacher_dir)
    s = teacher.info["settings"]
    data = load_task(s["task"], data_dir, val_size=s["val_size"], seed=s["seed"])
    ctx = Context(teacher.transfer_set(data), seed=s["seed"] + 1, teacher=functools.cache(teacher.model))
    structured = Recipe(tuple(Step(m, p) for m, p in MEMBERS[member])).apply_torch(teacher.model(), ctx)
    variants = {"space": {**finish, "steps": steps},
                "overrides": {**finish, "steps": steps, **overrides}}
    times: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(rounds + 1):                     # round 0 warms up (not counted)
        for v in (list(variants) if r % 2 == 0 else list(variants)[::-1]):
            model = copy.deepcopy(structured)
            t0 = time.perf_counter()
            distillation.distill(model, distillation.Distillation(**variants[v]), ctx)
            if r:
                times[v].append((time.perf_counter() - t0) / steps)
    med = {v: statistics.median(t) for v, t in times.items()}
    given = ", ".join(f"{k} {v}" for k, v in overrides.items())
    return (f"{member}: s per finishing step ({rounds} rounds of {steps} steps, median, after one warm-up round): "
            f"as the space gives it {finish} {med['space']:.3f} (min {min(times['space']):.3f}, max "
            f"{max(times['space']):.3f}); with {given} {med['overrides']:.3f} (min {min(times['overrides']):.3f}, "
            f"max {max(times['overrides']):.3f}); ratio {med['overrides'] / med['space']:.2f}")


def table(rows: list[dict]) -> str:
    from autocompress.recipe import Recipe

    out = []
    for r in rows:
        out.append(f"{Recipe.from_json(r['recipe']).short()} (teacher dev {100 * r['teacher_dev']:.2f}), "
                   f"{r['seconds']:.0f} s, {r['date']}:")
        out.append("  step  " + " ".join(f"{lk['step']:>6}" for lk in r["looks"]))
        out.append("  dev   " + " ".join(f"{100 * lk['dev']:>6.2f}" for lk in r["looks"]))
        out.append("  val   " + " ".join(f"{100 * lk['val']:>6.2f}" for lk in r["looks"]))
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", help="a cached teacher's folder (e.g. ~/.cache/autocompress/teachers/sst2-minilm-...)")
    ap.add_argument("--recipe", nargs="+", default=["layers 3 alt"], choices=list(MEMBERS), help="the member(s)")
    ap.add_argument("--every", type=int, default=250, help="steps between two looks at dev and val")
    ap.add_argument("--steps", type=int, help="the recovery's steps (default: the finishing stage's)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="the recovery's other settings, e.g. augment=0.5 augment_mode=both (YAML values)")
    ap.add_argument("--step-time", type=int, nargs=2, metavar=("STEPS", "ROUNDS"),
                    help="only time the recovery's step as the space gives it and with --set, side by side")
    results_options(ap, "finishing-curve.jsonl")
    args = ap.parse_args()
    if args.table:
        print(table(read_rows(args.table)))
        return 0
    if not args.teacher or not (Path(args.teacher).expanduser() / "teacher.json").is_file():
        ap.error("--teacher must be a cached teacher's folder (it holds teacher.json)")
    if any("=" not in item for item in args.set):
        ap.error("--set takes KEY=VALUE items")
    overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    if args.step_time:
        for member in args.recipe:
            print(step_time(str(Path(args.teacher).expanduser()), member, args.data_dir, overrides, *args.step_time))
        return 0
    for member in args.recipe:
        r = run(str(Path(args.teacher).expanduser()), member, args.every, args.data_dir, args.steps, overrides)
        with open(args.out, "a") as f:
            f.write(json.dumps(r) + "\n")
        print(table([r]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
