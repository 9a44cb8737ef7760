"""Single methods vs compound recipes, side by side in one run (the survey's claim, measured here).

Every recipe goes through the same path as a search trial (evaluate_candidate: apply, export, quantize,
score on the validation split, time on every profile), then all are re-scored on the GLUE dev set and
printed as the usual per-device table, so latencies are ratios taken in one run on one machine.

    AUTOCOMPRESS_GLUE_DIR=../shared/glue python benchmarks/single_vs_compound.py [--steps 600]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from autocompress.hardware import list_profiles
from autocompress.recipe import Recipe, Step
from autocompress.report import front_data, tables
from autocompress.search.runner import rescore_dev
from autocompress.search.trial import TrialSetup, evaluate_candidate
from autocompress.store import Store, default_url
from autocompress.tasks import load_task
from autocompress.teacher import TeacherSettings, get_teacher


def recipes(steps: int) -> list[Recipe]:
    kd = Step("distill", {"steps": steps, "lr": 2e-4})
    int8 = Step("quantize_int8")
    return [
        Recipe((int8,)),                                                             # quantization alone
        Recipe((Step("drop_layers", {"keep": 3}), kd)),                              # depth alone, pushed hard
        Recipe((Step("drop_layers", {"keep": 4}), kd, int8)),                        # compound
        Recipe((Step("drop_layers", {"keep": 5}), Step("prune_ffn", {"ratio": 0.25}), kd, int8)),
        Recipe((Step("prune_heads", {"ratio": 0.25}), Step("prune_ffn", {"ratio": 0.5}), kd, int8)),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=600, help="distillation steps of each recipe")
    ap.add_argument("--runs-dir", default="runs")
    args = ap.parse_args()
    data = load_task("sst2", os.environ.get("AUTOCOMPRESS_GLUE_DIR"))
    teacher = get_teacher(TeacherSettings(), data)
    store = Store(default_url(args.runs_dir))
    name = f"bench-single-vs-compound-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(args.runs_dir).resolve() / name
    profiles = tuple(list_profiles())
    store.create_run(name, task="sst2", model="minilm", device="laptop-cpu", budget_ms=None, space="benchmark",
                     run_dir=str(run_dir), settings={"benchmark": "single_vs_compound", "steps": args.steps})
    setup = TrialSetup(store_url=store.url, run=name, run_dir=str(run_dir), task="sst2",
                       data_dir=os.environ.get("AUTOCOMPRESS_GLUE_DIR"), val_size=1000,
                       teacher_path=str(teacher.path), profiles=profiles, device="laptop-cpu", budget_ms=None,
                       space_text="", num_layers=6, threads=min(4, os.cpu_count() or 1))
    evaluate_candidate(setup, 0, Recipe(), role="teacher", data=data, teacher=teacher)
    for i, r in enumerate(recipes(args.steps), start=1):
        t0 = time.time()
        out = evaluate_candidate(setup, i, r, data=data, teacher=teacher)
        print(f"{r.short():55} val {out['val_accuracy']:.4f}  {out['latency_ms']:.2f} ms  ({time.time() - t0:.0f} s)",
              file=sys.stderr)
    rescore_dev(store, name, store.trials(name), data, teacher)   # every recipe, not only the fronts
    store.finish_run(name, "done")
    print(tables(front_data(store, name)))
    print("\nall recipes (dev %, speed-up on each profile):")
    trials = store.trials(name)
    base = next(t for t in trials if t.role == "teacher")
    for t in trials:
        sp = "  ".join(f"{p} {base.latencies[p]['median_ms'] / t.latencies[p]['median_ms']:.2f}x" for p in profiles)
        print(f"  {Recipe.from_json(t.recipe).short():55} dev {100 * t.accuracy('dev'):.2f}  {sp}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
