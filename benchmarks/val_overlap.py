"""How much of the carved validation split the teacher (and every student) trains on anyway: val rows that
are word-for-word part of a row left in train.

``tasks.split.carve`` draws val from train like dev and removes from train the rows that are parts of a val
input. Until it drew whole inputs only, it did not remove the rows that *contain* a val input: SST-2's
train split holds every phrase of its sentences, so a val row that was a phrase of a longer train sentence
kept that sentence (and its label) in train (67-70% of val rows), and scored what training memorised, not
what it learned to generalise. Now every figure here should be 0
(``benchmarks/results/val-overlap-20261206.txt``: before and after).

    AUTOCOMPRESS_GLUE_DIR=../shared/glue python benchmarks/val_overlap.py --task sst2 --seeds 0 1 2

Per seed: val rows, how many of them lie inside a train row, and how often that train row's label is the
val row's.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict


def overlap(task: str, seed: int, data_dir: str | None) -> dict:
    from autocompress.tasks import load_task
    from autocompress.tasks.split import _words

    data = load_task(task, data_dir, seed=seed)
    if "text_b" in data.train.column_names:
        return {"task": task, "seed": seed, "val": len(data.val), "contained": None}
    train = [" ".join(_words(t)) for t in data.train["text_a"]]
    labels = list(data.train["label"])
    by_word: dict[str, list[int]] = defaultdict(list)      # word -> train rows holding it
    for i, t in enumerate(train):
        for w in set(t.split()):
            by_word[w].append(i)
    contained = same = 0
    for text, label in zip(data.val["text_a"], data.val["label"]):
        v = " ".join(_words(text))
        words = set(v.split())
        if not words:
            continue
        rarest = min(words, key=lambda w: len(by_word.get(w, ())))
        hosts = [i for i in by_word.get(rarest, ()) if f" {v} " in f" {train[i]} "]
        if hosts:
            contained += 1
            same += sum(labels[i] == label for i in hosts) / len(hosts) >= 0.5
    return {"task": task, "seed": seed, "val": len(data.val), "contained": contained, "same_label": same}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--data-dir", default=os.environ.get("AUTOCOMPRESS_GLUE_DIR"))
    args = ap.parse_args()
    for seed in args.seeds:
        r = overlap(args.task, seed, args.data_dir)
        if r["contained"] is None:
            print(f"{args.task} seed {seed}: a pair task (no phrase structure checked)")
            continue
        print(f"{args.task} seed {seed}: {r['contained']} of {r['val']} val rows lie word for word inside a train row "
              f"({100 * r['contained'] / r['val']:.1f}%); for {r['same_label']} of them that row's label is the "
              f"val row's (majority over the rows holding it)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
