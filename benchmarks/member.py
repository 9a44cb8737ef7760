"""One finishing-curve member built as a search builds a finished trial: its structure, the finishing stage's
recovery (``search_spaces/default.yaml``, ``finish: distill:``), int8; scored on dev as shipped (the ONNX
file) and timed side by side with the default teacher's shipped fp32 file (``--teacher-onnx``: e.g. a run's
``trial-000/model.fused.onnx``) on one profile. It answers "can this structure meet a goal" without a search::

    AUTOCOMPRESS_GLUE_DIR=../shared/glue python benchmarks/member.py --recipe "layers 4 · heads -50% · ffn -50%" \\
        --teacher-onnx runs/RUN/trial-000/model.fused.onnx

One JSON line per call, printed and appended to ``results/member.jsonl``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

import front                                  # this folder is on the path of a script run from it
from finishing_curve import MEMBERS, SPACE


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", required=True, choices=list(MEMBERS), help="the member")
    ap.add_argument("--teacher-onnx", required=True, help="the default teacher's shipped fp32 ONNX file (the reference)")
    ap.add_argument("--device", default="laptop-cpu")
    ap.add_argument("--data-dir", default=os.environ.get("AUTOCOMPRESS_GLUE_DIR"))
    ap.add_argument("--out", default=str(front.RESULTS / "member.jsonl"))
    args = ap.parse_args()
    if not Path(args.teacher_onnx).is_file():
        ap.error(f"--teacher-onnx: no such file: {args.teacher_onnx}")

    from autocompress.hardware import obtain_together
    from autocompress.recipe import Recipe, Step

    data, teacher = front._world("sst2", args.data_dir)
    finish = yaml.safe_load(SPACE.read_text())["finish"]["distill"]
    recipe = Recipe(tuple(Step(m, p) for m, p in MEMBERS[args.recipe]) + (Step("distill", finish), Step("quantize_int8")))
    t0 = time.time()
    onnx = front.as_trial(recipe, data, teacher, tempfile.mkdtemp(prefix="ac-member-"), args.device)
    seconds = round(time.time() - t0)
    figures = obtain_together({"teacher": args.teacher_onnx, "member": onnx}, args.device)
    row = {"recipe": recipe.short(), "dev": front._dev(onnx, data, teacher),
           "teacher_dev": front._dev(args.teacher_onnx, data, teacher), "device": args.device,
           "teacher_ms": figures["teacher"].median_ms, "member_ms": figures["member"].median_ms,
           "speedup": figures["teacher"].median_ms / figures["member"].median_ms, "seconds": seconds,
           "teacher": Path(teacher.path).name, "date": time.strftime("%Y-%m-%d %H:%M")}
    print(json.dumps(row))
    with open(args.out, "a") as f:
        f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
