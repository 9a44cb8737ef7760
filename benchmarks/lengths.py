"""Latency at the lengths a task's inputs have vs at the fixed 128 tokens: does the ranking of a search's
recipes, and their speed-up over the teacher, change?

Every front member of one run (each device's front, the teacher with it) is timed side by side at the
profile's fixed shape and at the representative lengths of the task's inputs (``autocompress.lengths``:
the validation split, and the dev set, counted by the teacher's tokenizer), in one pass per device
(``hardware.obtain_together`` at each length, ``over_lengths`` combining them: laptop-cpu measured here, mobile-cpu predicted). Per model: the
fixed-shape figure, the expected figure over each mix, the speed-up over the teacher under each, and the
rank of the model by speed under each::

    python benchmarks/lengths.py --runs-dir /tmp/bench/runs --name RUN [--device laptop-cpu mobile-cpu]

Appends one JSON line to ``benchmarks/results/lengths.jsonl`` and prints the table. Run it on a quiet
machine: the measured figures are compared as ratios, but a busy phase during one length skews that one.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs-dir", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--device", nargs="+", default=["laptop-cpu", "mobile-cpu"])
    args = ap.parse_args()

    from autocompress import lengths
    from autocompress.features import EVAL_MAX_LENGTH
    from autocompress.hardware import load_profile, obtain_together
    from autocompress.hardware.figure import over_lengths
    from autocompress.recipe import Recipe
    from autocompress.search import pareto
    from autocompress.search.settings import RunSettings
    from autocompress.store import Store, default_url
    from autocompress.tasks import load_task_data
    from autocompress.teacher import load_teacher

    store = Store(default_url(args.runs_dir), create=False)
    run = store.get_run(args.name)
    data = load_task_data(run.settings["data_path"])
    teacher = load_teacher(run.settings["teacher"])
    trials = store.trials(args.name)
    floor = RunSettings.from_dict(run.settings).floor
    mixes = {}
    for split, ds in (("val", data.val), ("dev", data.dev)):
        pairs = list(ds["text_b"]) if "text_b" in ds.column_names else None
        mixes[split] = lengths.of_texts(teacher.tokenizer, list(ds["text_a"]), pairs,
                                        source=f"{run.task} {split}", max_length=EVAL_MAX_LENGTH)
    lines = [f"run {args.name} ({run.task}); token lengths (capped at {EVAL_MAX_LENGTH}):"]
    lines += [f"  {split}: {m.describe()}; mean {m.mean():.1f}" for split, m in mixes.items()]
    row = {"run": args.name, "task": run.task, "mixes": {k: m.to_dict() for k, m in mixes.items()}, "devices": {},
           "date": time.strftime("%Y-%m-%d %H:%M")}
    for device in args.device:
        profile = load_profile(device)
        members = {t.number: t for t in pareto.front(trials, device, floor=floor)}
        members.update({t.number: t for t in trials if t.role == "teacher"})
        shipped = "onnx_fp32" if profile.precision == "fp16" else "onnx"      # a GPU runs the fp16 of the fp32 graph
        files = {n: t.artifacts.get(shipped) or t.artifacts["onnx"] for n, t in sorted(members.items())}
        t0 = time.time()                 # the fixed shape and every length of either mix, each timed once
        fixed = obtain_together(files, profile)
        at = {q: obtain_together(files, profile.at_length(q)) for q in sorted({q for m in mixes.values() for q in m.lengths})}
        fixed_and = {split: {k: over_lengths(fixed[k], [at[q][k] for q in m.lengths], m) for k in files}
                     for split, m in mixes.items()}
        seconds = time.time() - t0
        teacher_n = next(n for n, t in members.items() if t.role == "teacher")
        figs = {n: {"fixed": fixed_and["val"][n].detail["fixed"]["median_ms"],
                    **{split: fixed_and[split][n].median_ms for split in mixes}} for n in files}
        rank = {k: {n: i + 1 for i, n in enumerate(sorted(figs, key=lambda n: figs[n][k]))} for k in ("fixed", *mixes)}
        lines.append(f"\n{device} ({fixed_and['val'][teacher_n].how}; side by side, {seconds:.0f} s): ms, speed-up over "
                     f"the teacher, rank by speed")
        lines.append(f"  {'model':58} {'fixed 128':>18} " + " ".join(f"{'expected ' + s:>20}" for s in mixes))
        out = []
        for n in sorted(files, key=lambda n: figs[n]["fixed"]):
            t = members[n]
            label = f"#{n} " + Recipe.from_json(t.recipe).short()
            cells = []
            for k in ("fixed", *mixes):
                speed = figs[teacher_n][k] / figs[n][k]
                cells.append(f"{figs[n][k]:7.3g} {speed:5.2f}x ({rank[k][n]:>2})")
            lines.append(f"  {label[:58]:58} " + " ".join(f"{c:>20}" for c in cells))
            out.append({"trial": n, "recipe": label, **{k: figs[n][k] for k in figs[n]},
                        "val_score": t.accuracy("val"), "dev_score": t.accuracy("dev")})
        row["devices"][device] = {"how": fixed_and["val"][teacher_n].how, "seconds": round(seconds), "models": out,
                                  "teacher": teacher_n}
    text = "\n".join(lines)
    print(text)
    out_path = HERE / "results" / "lengths.jsonl"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with open(out_path, "a") as f:
        f.write(json.dumps(row) + "\n")
    (HERE / "results" / f"lengths-{run.task}.txt").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
