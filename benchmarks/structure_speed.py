"""How fast each finishing-curve member's structure runs once int8, before any training (latency depends on
the architecture and precision, not on the weights): the structures of ``finishing_curve.MEMBERS`` built
from a cached teacher, exported, int8 (``quantize_int8`` as the default space ships it), and timed side by
side with the teacher's fp32 and int8 files in one interleaved pass (``hardware.obtain_together``)::

    python benchmarks/structure_speed.py --teacher TEACHER_FOLDER [--recipe MEMBER ...] [--device laptop-cpu]

One line per file: median ms and the speed-up over the teacher's fp32 export. Read it beside a member's
finishing curve (its dev score): the two together say whether a structure can meet a speed-up at a cost.
"""
from __future__ import annotations

import argparse
import functools
import sys
import tempfile
from pathlib import Path

from finishing_curve import MEMBERS       # this folder is on the path of a script run from it


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", required=True, help="a cached teacher's folder (it holds teacher.json)")
    ap.add_argument("--recipe", nargs="+", default=list(MEMBERS), choices=list(MEMBERS), help="the member(s)")
    ap.add_argument("--device", default="laptop-cpu", help="the profile that times them (default laptop-cpu)")
    ap.add_argument("--data-dir", default=None, help="GLUE folder (default: $AUTOCOMPRESS_GLUE_DIR, else the hub)")
    args = ap.parse_args()
    teacher_dir = Path(args.teacher).expanduser()
    if not (teacher_dir / "teacher.json").is_file():
        ap.error("--teacher must be a cached teacher's folder (it holds teacher.json)")

    import os

    from autocompress.export import export_onnx
    from autocompress.finalize import finalized_copy
    from autocompress.hardware import obtain_together
    from autocompress.methods import Context
    from autocompress.methods.quantization import DynamicInt8, quantize_int8
    from autocompress.recipe import Recipe, Step
    from autocompress.tasks import load_task
    from autocompress.teacher import load_teacher

    teacher = load_teacher(str(teacher_dir))
    s = teacher.info["settings"]
    data = load_task(s["task"], args.data_dir or os.environ.get("AUTOCOMPRESS_GLUE_DIR"), val_size=s["val_size"],
                     seed=s["seed"])
    ctx = Context(teacher.transfer_set(data), seed=s["seed"] + 1, teacher=functools.cache(teacher.model))
    with tempfile.TemporaryDirectory(prefix="ac-structure-speed-") as tmp:
        out = Path(tmp)
        fp32 = export_onnx(finalized_copy(teacher.model()), out / "teacher.onnx")
        files = {"teacher fp32": str(fp32), "teacher int8": str(quantize_int8(fp32, out / "teacher.int8.onnx", DynamicInt8()))}
        for i, name in enumerate(args.recipe):    # pruning ranks heads and neurons on transfer rows: the ctx
            model = Recipe(tuple(Step(m, p) for m, p in MEMBERS[name])).apply_torch(teacher.model(), ctx)
            path = export_onnx(finalized_copy(model), out / f"{i}.onnx")
            files[f"{name} · int8"] = str(quantize_int8(path, out / f"{i}.int8.onnx", DynamicInt8()))
        figures = obtain_together(files, args.device)
        base = figures["teacher fp32"].median_ms
        for name, fig in figures.items():
            print(f"{fig.median_ms:8.2f} ms  {base / fig.median_ms:5.2f}x  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
