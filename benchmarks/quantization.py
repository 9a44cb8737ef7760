"""Every quantization variant side by side on a small SST-2 teacher: accuracy, size, laptop-cpu latency.

The packaged MiniLM fine-tuned on 3,200 SST-2 rows for one epoch (the teacher ``autocompress finetune
--data-dir ../shared/glue --train-examples 3200 --epochs 1 --val-size 500`` caches; fine-tuned here if it
is not cached yet). Its fp32 ONNX export is quantized by each variant exactly as a search trial does it
(``Recipe.apply_onnx`` with the transfer set's training rows for calibration and sensitivity), then
scored on the validation rows carved from train and on the GLUE dev set, and timed side by side on the
laptop-cpu profile (``hardware.latency.measure_side_by_side``: interleaved rounds, so only the ratios
to fp32 mean anything). Also prints the mixed-precision sensitivity ranking, each node named by the
Linear whose weights it holds.

    AUTOCOMPRESS_GLUE_DIR=../shared/glue python benchmarks/quantization.py [--keep 2,6,12] [--rounds 5]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from autocompress.checkpoint import size_mb, zipped_mb
from autocompress.features import EVAL_MAX_LENGTH, encode
from autocompress.evaluate import predict_onnx
from autocompress.hardware import describe, measure_side_by_side
from autocompress.hardware import load_profile
from autocompress.methods.base import Context, get_method
from autocompress.recipe import Recipe, Step
from autocompress.tasks import load_task
from autocompress.teacher import TeacherSettings, get_teacher


def variants(keep: list[int], rows: int) -> list[Recipe]:
    return ([Recipe(), Recipe((Step("quantize_int8"),))]
            + [Recipe((Step("quantize_static", {"calibration": c, "rows": rows}),))
               for c in ("minmax", "entropy", "percentile")]
            + [Recipe((Step("quantize_static", {"calibration": "minmax", "per_channel": False, "rows": rows}),)),
               Recipe((Step("quantize_fp16"),))]
            + [Recipe((Step("quantize_mixed", {"keep_fp32": k}),)) for k in keep])


def node_names(onnx_path: Path, model) -> dict[str, str]:
    """ONNX weight-MatMul name (as the quantizers know it) -> the model's Linear holding that weight."""
    import onnx
    from onnx import numpy_helper

    from autocompress.methods.quantization import weight_matmuls

    def key(a: np.ndarray) -> str:
        return hashlib.sha1(np.ascontiguousarray(a, dtype=np.float32).tobytes()).hexdigest()

    linears = {}
    for name, m in model.named_modules():
        if hasattr(m, "weight") and getattr(m.weight, "dim", lambda: 0)() == 2 and type(m).__name__ == "Linear":
            w = m.weight.detach().numpy()
            linears[key(w.T)] = linears[key(w)] = name.removeprefix("bert.").replace("encoder.layer.", "layer ")
    graph = onnx.load(str(onnx_path)).graph
    inits = {i.name: i for i in graph.initializer}
    out, wanted = {}, set(weight_matmuls(onnx_path))
    for node in graph.node:
        ort_name = node.name + ("_MatMul" if node.op_type == "Gemm" else "")
        if ort_name in wanted and node.input[1] in inits:
            out[ort_name] = linears.get(key(numpy_helper.to_array(inits[node.input[1]])), "?")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-rows", type=int, default=3200, help="rows the teacher is fine-tuned on (1 epoch)")
    ap.add_argument("--val-size", type=int, default=500, help="validation rows carved from train")
    ap.add_argument("--rows", type=int, default=128, help="calibration rows of static int8 (transfer set)")
    ap.add_argument("--keep", default="2,6,12", help="keep_fp32 values of the mixed-precision variants")
    ap.add_argument("--profile", default="laptop-cpu", help="hardware profile for the latency ratios")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (10 runs each per model)")
    args = ap.parse_args()
    profile = load_profile(args.profile)
    data = load_task("sst2", os.environ.get("AUTOCOMPRESS_GLUE_DIR"), val_size=args.val_size, seed=0)
    teacher = get_teacher(TeacherSettings(train_examples=args.train_rows, epochs=1, val_size=len(data.val)), data)
    ctx = Context(teacher.transfer_set(data), seed=0)
    pad = teacher.tokenizer.pad_token_id or 0
    splits = {s: (encode(teacher.tokenizer, getattr(data, s), EVAL_MAX_LENGTH), np.asarray(getattr(data, s)["label"]))
              for s in ("val", "dev")}
    recipes = variants([int(k) for k in args.keep.split(",")], args.rows)
    rows, paths = [], {}
    with tempfile.TemporaryDirectory(prefix="ac-quant-bench-") as tmp:
        work = Path(tmp)          # one folder, as in a trial: the mixed variants measure the sensitivity once
        for i, recipe in enumerate(recipes):
            t0 = time.time()
            path = teacher.onnx_path
            for step in recipe.onnx_steps:      # what Recipe.apply_onnx does, each variant to its own file
                path = get_method(step.method).fn(path, work / f"model.{i}.{step.method}.onnx", step.config, ctx)
            seconds = time.time() - t0
            logits = {s: predict_onnx(path, f, pad_id=pad) for s, (f, _) in splits.items()}
            if i == 0:
                ref = logits
            acc = {s: float((logits[s].argmax(-1) == y).mean()) for s, (_, y) in splits.items()}
            agree = float((logits["val"].argmax(-1) == ref["val"].argmax(-1)).mean())
            rows.append((recipe.short() if recipe.steps else "fp32", acc, agree, size_mb(path), zipped_mb(path), seconds))
            paths[i] = path
            print(f"{rows[-1][0]}: {seconds:.0f} s", file=sys.stderr)
        sensitivity = next((json.loads(f.read_text()) for f in work.glob("sensitivity-*.json")), None)
        names = node_names(teacher.onnx_path, teacher.model()) if sensitivity else {}
        lats = measure_side_by_side(paths, profile, rounds=args.rounds)
    ref_ms = lats[0].median_ms
    n_val, n_dev = len(splits["val"][1]), len(splits["dev"][1])
    print(f"{'variant':34} {'val %':>6} {'dev %':>6} {'agree %':>8} {'ONNX MB':>8} {'zip MB':>7} "
          f"{args.profile + ' x':>15} {'quantize s':>10}")
    for i, (name, acc, agree, mb, zmb, seconds) in enumerate(rows):
        print(f"{name:34} {100 * acc['val']:>6.1f} {100 * acc['dev']:>6.1f} {100 * agree:>8.1f} {mb:>8.1f} {zmb:>7.1f} "
              f"{ref_ms / lats[i].median_ms:>14.2f}x {seconds:>10.0f}")
    print(f"\nval = {n_val} rows carved from SST-2 train (not trained on), dev = GLUE dev ({n_dev} rows); agree = val "
          "rows with the fp32 model's prediction. x = fp32's median latency / this variant's (> 1: faster), side by "
          f"side in {args.rounds} interleaved rounds; fp32 {ref_ms:.2f} ms, {describe(lats[0].to_dict())}. "
          "quantize s = wall-clock seconds to quantize (calibration, sensitivity). Shared machine: latency ratios "
          "and seconds are provisional.\nfp16 on a CPU profile: ONNX Runtime's CPU provider wraps most float16 "
          "nodes in casts, so it is slower than fp32 here; it is meant for GPU profiles.")
    if sensitivity:
        print(f"\nmixed precision: sensitivity of each weight MatMul alone (int8 dynamic on that node only), "
              f"{sensitivity['rows']} transfer rows, most sensitive first:")
        for rank, n in enumerate(sensitivity["nodes"], 1):
            print(f"  {rank:>2}. {names.get(n['node'], n['node']):36} KL {n['kl']:.2e}  flips {100 * n['flips']:.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
