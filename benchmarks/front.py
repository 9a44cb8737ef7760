"""Fronts against what a user gets by hand, side by side, per task and device.

Rows (each a part that runs on its own and appends to ``benchmarks/results/front-TASK.jsonl``; a part
already there is skipped unless ``--again``; ``--part table`` re-times what is compared and prints):

1. ``teacher``: the fp32 teacher as autocompress exports it (the table's reference); ``shipped``: the same
   graph with ONNX Runtime's fused kernels, as a search ships an uncompressed member (``export.shipped_form``).
2. ``optimum``: what an app team does by hand with Hugging Face Optimum: export, ``ORTOptimizer`` (O2), then
   ``ORTQuantizer`` dynamic int8 (avx512_vnni, per channel), in the consumer virtual environment the tests
   build (transformers < 5); the O2 fp32 file, int8 of the plain export, int8 of the O2 graph (Optimum's
   quantizer fails on it as is: the usual workaround is applied), scored here on dev.
3. ``distilbert``: the DistilBERT recipe by hand: every other layer kept, logit distillation for one pass
   over the train rows, int8.
4. ``random`` / ``search``: ``autocompress search`` on the default space with ``--sampler random`` / the
   default sampler, the same trial count (``--seed`` varies the searcher; the teacher is the cached one).

``table``: every compared model (the teacher, Optimum's two files, the DistilBERT recipe, and each search's
front members) re-timed in one interleaved pass per device (laptop-cpu measured, mobile-cpu predicted), dev
scores of the very files timed; per row: the best speed-up at <=1 and <=3 dev points below the fp32
teacher, the hypervolume of (dev score, latency) against (the majority class's dev score, the teacher's
latency), the trials and the wall time.

    AUTOCOMPRESS_GLUE_DIR=../shared/glue python benchmarks/front.py --task sst2 --part teacher
    ... --part shipped | optimum | distilbert | search --seed 0 [--label VARIANT] | random --seed 0 | table

A hand baseline's point is "matched" where a member of the newest ``search`` row (the default as it is now)
is as accurate on dev and as fast (within 1%, the side-by-side pass's noise: files of one graph differ by up
to 0.5% in it); ``--label`` keeps an ablation's run and row apart from the others.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DEVICES = ("laptop-cpu", "mobile-cpu")


SAME_SPEED = 0.01        # latencies this close (relative) in one side-by-side pass are one speed: the pass's noise


def _out(task: str) -> Path:
    return RESULTS / f"front-{task}.jsonl"


def _rows(task: str) -> list[dict]:
    path = _out(task)
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []


def _append(task: str, row: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(_out(task), "a") as f:
        f.write(json.dumps(row) + "\n")


def _world(task: str, data_dir: str | None):
    from autocompress.tasks import load_task
    from autocompress.teacher import TeacherSettings, get_teacher

    data = load_task(task, data_dir)
    teacher = get_teacher(TeacherSettings(task=data.spec.name, val_size=len(data.val)), data,
                          log=lambda m: print(m, file=sys.stderr))
    return data, teacher


def _dev(path: str, data, teacher) -> float:
    from autocompress.evaluate import score_artifact
    from autocompress.features import EVAL_MAX_LENGTH, encode

    feats = encode(teacher.tokenizer, data.dev, EVAL_MAX_LENGTH)
    return score_artifact(path, data.spec, feats, data.dev["label"], "dev", pad_id=teacher.tokenizer.pad_token_id or 0)[0].main


# ---------------------------------------------------------------- the parts
def part_teacher(args, data, teacher) -> list[dict]:
    return [{"part": "teacher", "name": "teacher fp32 (autocompress export)", "onnx": str(teacher.onnx_path),
             "dev": _dev(str(teacher.onnx_path), data, teacher)}]


def part_shipped(args, data, teacher) -> list[dict]:
    """The fp32 teacher as a search now ships an uncompressed member: with ONNX Runtime's fused kernels
    (``export.shipped_form``). The ``teacher`` row (the graph as exported) stays the table's reference."""
    from autocompress import export

    path = export.shipped_form(teacher.onnx_path, Path(args.work) / f"shipped-{args.task}", lambda src, dst: src)
    return [{"part": "shipped", "name": "teacher fp32, fused (autocompress ships)", "onnx": str(path),
             "dev": _dev(str(path), data, teacher)}]


OPTIMUM_SCRIPT = r'''
import sys, shutil
from pathlib import Path
from optimum.onnxruntime import ORTModelForSequenceClassification, ORTOptimizer, ORTQuantizer
from optimum.onnxruntime.configuration import AutoOptimizationConfig, AutoQuantizationConfig
src, out = sys.argv[1], Path(sys.argv[2])
model = ORTModelForSequenceClassification.from_pretrained(src, export=True)
model.save_pretrained(out / "export")
ORTOptimizer.from_pretrained(model).optimize(save_dir=out / "o2", optimization_config=AutoOptimizationConfig.O2())
qcfg = AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=True)
ORTQuantizer.from_pretrained(out / "export", file_name="model.onnx").quantize(save_dir=out / "int8", quantization_config=qcfg)
# ORTQuantizer on an O2 graph fails ("Unable to find data type for weight_name=...": shape inference cannot type
# com.microsoft ops' outputs; Optimum has no way to pass ONNX Runtime's extra_options). The usual workaround:
# DefaultTensorType=FLOAT injected into the quantizer Optimum builds.
import onnx
import optimum.onnxruntime.quantization as oq
class _Q(oq.ONNXQuantizer):
    def __init__(self, *a, **k):
        k.setdefault("extra_options", {})["DefaultTensorType"] = onnx.TensorProto.FLOAT
        super().__init__(*a, **k)
oq.ONNXQuantizer = _Q
ORTQuantizer.from_pretrained(out / "o2", file_name="model_optimized.onnx").quantize(save_dir=out / "o2-int8", quantization_config=qcfg)
print(out)
'''


def part_optimum(args, data, teacher) -> list[dict]:
    """Optimum's export, O2 and dynamic int8 of the same fine-tuned teacher, in the consumer environment."""
    sys.path.insert(0, str(HERE.parent / "tests"))
    from conftest import consumer_venv          # the tests build it once per machine (PyPI needed)

    venv = consumer_venv()
    if not (venv / ".complete").exists():
        raise SystemExit(f"no consumer environment at {venv}: run the tests once (they build it), then this part")
    out = Path(args.work) / f"optimum-{args.task}"
    script = Path(args.work) / "optimum_export.py"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(OPTIMUM_SCRIPT)
    r = subprocess.run([str(venv / "bin" / "python"), str(script), str(teacher.path), str(out)], capture_output=True,
                       text=True)
    if r.returncode:
        raise SystemExit(f"Optimum failed: {r.stderr[-2000:]}")
    rows = []
    for name, rel in (("Optimum O2 fp32", "o2/model_optimized.onnx"), ("Optimum export + int8", "int8/model_quantized.onnx"),
                      ("Optimum O2 + int8", "o2-int8/model_optimized_quantized.onnx")):
        path = out / rel
        rows.append({"part": "optimum", "name": name, "onnx": str(path), "dev": _dev(str(path), data, teacher)})
    return rows


def as_trial(recipe, data, teacher, work: str | Path, device: str = "laptop-cpu") -> str:
    """``recipe`` built as a search builds a trial (in ``work``, outside any store): its shipped ONNX file."""
    from autocompress.search.trial import TrialSetup, evaluate_candidate

    setup = TrialSetup(store_url="", run="bench", run_dir=str(work), data_path="", teacher_path=str(teacher.path),
                       profiles=(device,), device=device, budget_ms=None, space_text="", num_layers=6,
                       threads=min(4, os.cpu_count() or 1))
    return evaluate_candidate(setup, 1, recipe, data=data, teacher=teacher).artifacts["onnx"]


def part_distilbert(args, data, teacher) -> list[dict]:
    """Every other layer kept (3 of 6), logit distillation for one pass over train, int8: built as a trial."""
    from autocompress.features import EVAL_MAX_LENGTH  # noqa: F401
    from autocompress.recipe import Recipe, Step

    steps = -(-len(data.train) // 32)
    recipe = Recipe((Step("drop_layers", {"keep": teacher.model().config.num_hidden_layers // 2, "strategy": "alternate"}),
                     Step("distill", {"steps": steps, "batch_size": 32, "lr": 1e-4}), Step("quantize_int8")))
    t0 = time.time()
    onnx = as_trial(recipe, data, teacher, Path(args.work) / f"distilbert-{args.task}")
    return [{"part": "distilbert", "name": f"DistilBERT recipe ({recipe.short()})", "onnx": onnx,
             "dev": _dev(onnx, data, teacher), "seconds": round(time.time() - t0)}]


def part_search(args, data, teacher, sampler: str) -> list[dict]:
    name = f"front-{args.task}-{sampler}-s{args.seed}" + (("-" + re.sub(r"[^A-Za-z0-9._-]+", "-", args.label))
                                                          if args.label else "")
    runs = Path(args.work) / "runs"
    cmd = ["autocompress", "search", "--task", args.task, "--name", name, "--runs-dir", str(runs), "--seed", str(args.seed),
           "--sampler", sampler, "--space", args.space]
    if args.trials:
        cmd += ["--trials", str(args.trials)]
    exe = str(Path(sys.executable).with_name("autocompress"))
    t0 = time.time()
    r = subprocess.run([exe, *cmd[1:]], capture_output=True, text=True)
    wall = time.time() - t0
    if r.returncode:
        raise SystemExit(f"search failed: {r.stderr[-3000:]}")
    from autocompress.report import front_data
    from autocompress.store import Store, default_url

    d = front_data(Store(default_url(runs), create=False), name)
    members = d["devices"]["laptop-cpu"]["front"]
    return [{"part": sampler if sampler == "random" else "search", "name": f"{sampler} search, seed {args.seed}" + (f", {args.label}" if args.label else ""),
             "run": name, "runs_dir": str(runs), "wall_seconds": round(wall), "trials": d["trials_done"],
             "refined": len(d.get("refined") or []), "summary": r.stdout,
             "members": [{"trial": m["trial"], "recipe": m["recipe"], "onnx": m["onnx"],
                          "dev": (m.get("dev") or {}).get("main"), "val": (m.get("val") or {}).get("main")}
                         for m in members if m["role"] != "teacher"]}]


# ---------------------------------------------------------------- the table
def table(args, data, teacher) -> str:
    """Re-time every compared file side by side per device (``--saved``: the last pass's latencies, kept in
    ``front-TASK-latencies.json``); speed-ups, hypervolumes and the searches' efficiency over seeds."""
    import numpy as np

    from autocompress.teacher import trivial_baseline

    rows = _rows(args.task)
    files = {}
    for r in rows:
        if r["part"] in ("search", "random"):
            for m in r["members"]:
                if m["dev"] is None:
                    if teacher is None:           # --saved: nothing is scored again
                        raise SystemExit(f"--saved: {r['name']} #{m['trial']} has no dev score: run --part table")
                    m["dev"] = _dev(m["onnx"], data, teacher)
                files[(r["name"], m["trial"])] = m["onnx"]
        else:
            files[(r["name"], None)] = r["onnx"]
    majority = max(np.bincount(np.asarray(data.dev["label"]))) / len(data.dev) if data.spec.metric == "accuracy" else \
        trivial_baseline(data)["main"]
    saved = RESULTS / f"front-{args.task}-latencies.json"
    if args.saved:
        timed = json.loads(saved.read_text())
        lats = {device: {tuple(k): ms for k, ms in pairs} for device, pairs in timed.items()}
        missing = [k for k in files if any(k not in lats[d] for d in DEVICES)]
        if missing:
            raise SystemExit(f"--saved: {len(missing)} compared file(s) were not in the last timing pass "
                             f"(e.g. {missing[0]}): run --part table without --saved")
    else:
        from autocompress.hardware import obtain_together

        lats = {device: {k: v.median_ms for k, v in obtain_together(files, device).items()} for device in DEVICES}
        saved.write_text(json.dumps({d: [[list(k), ms] for k, ms in v.items()] for d, v in lats.items()}, indent=1) + "\n")
    return render(rows, lats, majority)


def render(rows: list[dict], lats: dict[str, dict[tuple, float]], majority: float) -> str:
    """The table from the rows and one side-by-side pass's latencies per device (``{device: {(row name,
    trial or None): ms}}``)."""
    import numpy as np
    from optuna._hypervolume import compute_hypervolume

    base = next(r for r in rows if r["part"] == "teacher")
    t_key, t_dev = (base["name"], None), base["dev"]
    out = [f"task {rows[0].get('task', '')}: teacher dev {100 * t_dev:.2f}; majority-class dev {100 * majority:.2f}"]
    for device in DEVICES:
        ms_of = lats[device]
        t_ms = ms_of[t_key]
        last = [r for r in rows if r["part"] == "search"][-1:]       # the newest: the default search as it is now
        searched = [(m["dev"], ms_of[(r["name"], m["trial"])], m["trial"]) for r in last for m in r["members"]]
        out.append(f"\n{device} (teacher {t_ms:.2f} ms; re-timed side by side in one pass)")
        out.append(f"  {'row':44} {'<=1 pt':>8} {'<=3 pt':>8} {'hypervol':>9} {'trials':>6} {'wall':>7}  matched by '{last[0]['name'] if last else '-'}'")
        hvs = {}
        for r in rows:
            pts = ([(m["dev"], ms_of[(r["name"], m["trial"])]) for m in r["members"]] if r["part"] in ("search", "random")
                   else [(r["dev"], ms_of[(r["name"], None)])])
            # a hand baseline's point is matched where a member of the default search is as accurate on dev and as
            # fast: within SAME_SPEED of its latency (two files of one graph differ by up to half that in one pass)
            match = "" if r["part"] in ("search", "random") else ", ".join(
                next((f"yes (#{n})" for d2, ms2, n in searched if d2 >= d - 1e-9 and ms2 <= ms * (1 + SAME_SPEED)), "no")
                for d, ms in pts)
            pts.append((t_dev, t_ms))                               # the teacher is always at hand

            def best(points):
                ok = [t_ms / ms for d, ms in pts if d >= t_dev - points / 100 - 1e-9]
                return f"{max(ok):.2f}x" if ok else "-"

            inside = [(-d, ms) for d, ms in pts if d >= majority and ms <= t_ms]   # slower than the teacher: nothing
            hv = compute_hypervolume(np.array(inside), np.array([-majority, t_ms]))
            hvs[r["name"]] = hv
            out.append(f"  {r['name'][:44]:44} {best(1):>8} {best(3):>8} {hv:>9.3f} {r.get('trials', ''):>6} "
                       f"{str(r.get('wall_seconds', r.get('seconds', ''))):>7}  {match}")
        out += efficiency(rows, hvs)
    return "\n".join(out)


def efficiency(rows: list[dict], hvs: dict[str, float]) -> list[str]:
    """Search efficiency over seeds: per variant (a sampler and its ``--label``) with runs of two seeds or
    more, the hypervolume's mean and spread and the trials; the issue's bar is the default sampler's mean
    after N trials at least random search's after 2N."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        if r["part"] in ("search", "random"):
            variant = re.sub(r", seed \d+", "", r["name"])
            groups.setdefault((r["part"], variant), []).append(r)
    lines = []
    for (part, variant), rs in groups.items():
        if len(rs) < 2:
            continue
        v = [hvs[r["name"]] for r in rs]
        seeds = ", ".join(re.search(r"seed (\d+)", r["name"]).group(1) for r in rs)
        lines.append(f"  efficiency: {variant[:40]:40} seeds {seeds}: hypervolume mean {sum(v) / len(v):.3f} "
                     f"(min {min(v):.3f}, max {max(v):.3f}), trials {', '.join(str(r.get('trials')) for r in rs)}")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--part", required=True, choices=("teacher", "shipped", "optimum", "distilbert", "search", "random", "table"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--trials", type=int, help="trials of the searches (default: the space's)")
    ap.add_argument("--space", default="default")
    ap.add_argument("--label", help="a variant's name (an ablation): kept in the run's name and the table's row")
    ap.add_argument("--work", default=os.environ.get("AUTOCOMPRESS_BENCH_WORK", "/tmp/autocompress-front-bench"),
                    help="where the runs and exported files go (not committed)")
    ap.add_argument("--data-dir", default=os.environ.get("AUTOCOMPRESS_GLUE_DIR"))
    ap.add_argument("--again", action="store_true", help="run the part even if its rows are in the results")
    ap.add_argument("--saved", action="store_true",
                    help="--part table: the latencies of the last side-by-side pass, not a new one (e.g. the files are gone)")
    args = ap.parse_args()
    if args.part == "table" and args.saved:                  # nothing re-timed or re-scored: no teacher needed
        from autocompress.tasks import load_task

        print(table(args, load_task(args.task, args.data_dir), None))
        return 0
    data, teacher = _world(args.task, args.data_dir)
    if args.part == "table":
        text = table(args, data, teacher)
        print(text)
        (RESULTS / f"front-{args.task}-table.txt").write_text(text + "\n")
        return 0
    label = {"search": f"tpe search, seed {args.seed}", "random": f"random search, seed {args.seed}"}.get(args.part)
    if label and args.label:
        label += f", {args.label}"
    if not args.again and any(r["part"] == args.part and (label is None or r["name"] == label) for r in _rows(args.task)):
        print(f"{args.part} is in {_out(args.task)} already (--again to run it again)")
        return 0
    fn = {"teacher": part_teacher, "shipped": part_shipped, "optimum": part_optimum, "distilbert": part_distilbert,
          "search": lambda a, d, t: part_search(a, d, t, "tpe"), "random": lambda a, d, t: part_search(a, d, t, "random")}
    for row in fn[args.part](args, data, teacher):
        row.update(task=args.task, date=time.strftime("%Y-%m-%d %H:%M"))
        _append(args.task, row)
        print(json.dumps({k: v for k, v in row.items() if k not in ("summary", "members")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
