"""share_layers: does a group's shared weight set recover better from the group's mean or from its first layer?

On SST-2 with the packaged MiniLM: a teacher fine-tuned on a subset (cached like any teacher), then for
each sharing setting and each init, validation accuracy right after sharing and after a short
distillation. Accuracy only (sharing changes no computation, so no latency is taken).

    AUTOCOMPRESS_GLUE_DIR=../shared/glue python benchmarks/share_init.py [--steps 200] [--rows 500]
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time

from autocompress.features import encode
from autocompress.evaluate import predict_torch, score
from autocompress.methods.base import Context
from autocompress.recipe import Recipe, Step
from autocompress.tasks import load_task
from autocompress.teacher import TeacherSettings, get_teacher

SETTINGS = [("all", 3), ("ffn", 2)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200, help="distillation steps after sharing")
    ap.add_argument("--rows", type=int, default=500, help="validation rows scored")
    ap.add_argument("--train-rows", type=int, default=6000, help="rows the teacher is fine-tuned on (1 epoch)")
    args = ap.parse_args()
    data = load_task("sst2", os.environ.get("AUTOCOMPRESS_GLUE_DIR"))
    teacher = get_teacher(TeacherSettings(train_examples=args.train_rows, epochs=1, transfer_examples=args.train_rows),
                          data)
    ctx = Context(teacher.transfer_set(data), seed=0)
    val = data.val.select(range(min(args.rows, len(data.val))))
    features = encode(teacher.tokenizer, val, 128)

    def accuracy(model) -> float:
        return score(data.spec, predict_torch(model, features, pad_id=teacher.tokenizer.pad_token_id or 0),
                     val["label"], "val").main

    base = teacher.model()
    print(f"teacher: val {accuracy(base):.3f} on {len(val)} rows (SST-2 train split, held out)")
    for what, groups in SETTINGS:
        for init in ("mean", "first"):
            recipe = Recipe((Step("share_layers", {"groups": groups, "what": what, "init": init}),
                             Step("distill", {"steps": args.steps, "lr": 2e-4})))
            model = recipe.apply_torch(copy.deepcopy(base), ctx, recipe.structure_steps)
            before = accuracy(model)
            t0 = time.time()
            model = recipe.apply_torch(model, ctx, recipe.recovery_steps)
            print(f"{recipe.short():28} init {init:5}  before recovery {before:.3f}  "
                  f"after {args.steps} distillation steps {accuracy(model):.3f}  ({time.time() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
