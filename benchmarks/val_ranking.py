"""How well the validation split ranks a search's candidates as dev does: Spearman's rank correlation over
the finished trials of one run, for the val the search chose on (carved like dev, ``tasks.split``) and for a
split of the kind the old carving drew (short phrases: SST-2's train rows are mostly phrases of its
sentences).

The phrase split is held out for real: the train rows that the carving left out because they are parts of
val sentences (the teacher and the students never trained on them), ``--phrases`` of them drawn at random.
Every candidate's shipped file is scored on all three splits here, so the comparison is side by side on the
same models::

    AUTOCOMPRESS_GLUE_DIR=../shared/glue python benchmarks/val_ranking.py --runs-dir /tmp/bench/runs --name RUN

Appends one line to ``benchmarks/results/val-ranking.jsonl`` and prints the table.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def held_out_phrases(task: str, data_dir: str | None, data, n: int, seed: int):
    """Train rows left out of train because they are parts of val inputs (never trained on), ``n`` drawn."""
    from autocompress.tasks import get_task
    from autocompress.tasks.glue import _load_local
    from autocompress.tasks.split import _words, parts_of

    train, _ = _load_local(get_task(task), os.path.abspath(data_dir))
    seen = parts_of(data.val["text_a"])
    kept = {" ".join(_words(t)) for t in data.train["text_a"]}
    idx = [i for i, t in enumerate(train["text_a"]) if (k := " ".join(_words(t))) in seen and k not in kept]
    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(len(idx), size=min(n, len(idx)), replace=False).tolist())
    return train.select([idx[i] for i in pick])


def spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs-dir", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--data-dir", default=os.environ.get("AUTOCOMPRESS_GLUE_DIR"))
    ap.add_argument("--phrases", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not args.data_dir:
        raise SystemExit("give --data-dir (or AUTOCOMPRESS_GLUE_DIR): the GLUE folder the run was made from")

    from autocompress.evaluate import score_artifact
    from autocompress.features import EVAL_MAX_LENGTH, encode
    from autocompress.store import Store, default_url
    from autocompress.tasks import load_task_data
    from autocompress.teacher import load_teacher

    store = Store(default_url(args.runs_dir), create=False)
    run = store.get_run(args.name)
    data = load_task_data(run.settings["data_path"])
    trials = [t for t in store.trials(args.name) if t.artifacts.get("onnx")]
    teacher = load_teacher(run.settings["teacher"])
    pad = teacher.tokenizer.pad_token_id or 0
    splits = {"val": data.val, "dev": data.dev, "phrases": held_out_phrases(run.task, args.data_dir, data,
                                                                            args.phrases, args.seed)}
    feats = {k: encode(teacher.tokenizer, ds, EVAL_MAX_LENGTH) for k, ds in splits.items()}
    scores: dict[str, list[float]] = {k: [] for k in splits}
    for t in trials:
        for k, ds in splits.items():
            scores[k].append(score_artifact(t.artifacts["onnx"], data.spec, feats[k], ds["label"], k, pad_id=pad)[0].main)
        print(f"  #{t.number:<3} {t.recipe[:60]:60} " + " ".join(f"{k} {100 * v[-1]:.2f}" for k, v in scores.items()),
              file=sys.stderr, flush=True)
    words = {k: float(np.median([len(x.split()) for x in ds["text_a"]])) for k, ds in splits.items()}
    row = {"run": args.name, "task": run.task, "trials": len(trials), "n": {k: len(ds) for k, ds in splits.items()},
           "median_words": words,
           "spearman_val_dev": spearman(scores["val"], scores["dev"]),
           "spearman_phrases_dev": spearman(scores["phrases"], scores["dev"]),
           "mean_gap_to_dev": {k: float(np.mean(np.array(scores[k]) - np.array(scores["dev"]))) for k in ("val", "phrases")},
           "scores": scores, "date": time.strftime("%Y-%m-%d %H:%M")}
    out = HERE / "results" / "val-ranking.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(f"run {args.name}: {len(trials)} trials scored on val (carved like dev, median {words['val']:.0f} words, "
          f"n={len(data.val)}), held-out phrases (median {words['phrases']:.0f} words, n={len(splits['phrases'])}), "
          f"dev (median {words['dev']:.0f} words, n={len(data.dev)})")
    print(f"  Spearman with dev: val {row['spearman_val_dev']:.3f}; phrases {row['spearman_phrases_dev']:.3f}")
    print(f"  mean score above dev: val {100 * row['mean_gap_to_dev']['val']:+.2f} pt; phrases "
          f"{100 * row['mean_gap_to_dev']['phrases']:+.2f} pt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
