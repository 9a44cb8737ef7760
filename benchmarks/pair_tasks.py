"""Two small own-data pair tasks (2,500 training rows, two classes) built from SST-2's sentences, for the
teacher's loop on small data (issue 18; ``../shared/glue`` holds no GLUE pair task):

- ``pairs``: two sentences; label ``same`` when their sentiments agree, else ``different``. It needs both
  sentiments and their agreement (an XOR): hard to learn from 2,000 rows.
- ``quote``: a sentence and 3-8 consecutive words; label ``contains`` when the words are the sentence's,
  ``not`` when they come from another sentence: learnable from the overlap.

Train rows come from SST-2 train's full sentences (8 or 12 words and more), dev rows from SST-2 dev::

    python benchmarks/pair_tasks.py --glue ../shared/glue --out /tmp/pairs
    cd /tmp/pairs && autocompress finetune --train pairs-train.csv --dev pairs-dev.csv \\
        --text-column first --text-pair-column second
    cd /tmp/pairs && autocompress finetune --train quote-train.csv --dev quote-dev.csv \\
        --text-column sentence --text-pair-column quote
"""
from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path


def read(path: Path) -> list[tuple[str, int]]:
    rows = list(csv.reader(path.open(encoding="utf-8"), delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    return [(s, int(label)) for s, label in rows]


def write(path: Path, header: list[str], rows: list[tuple]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def sentiment_pairs(src: list[tuple[str, int]], n: int, rng: random.Random) -> list[tuple]:
    out = []
    for _ in range(n):
        a, b = rng.sample(src, 2)
        out.append((a[0], b[0], "same" if a[1] == b[1] else "different"))
    return out


def quote_pairs(src: list[str], n: int, rng: random.Random) -> list[tuple]:
    def span(s: str) -> str:
        w = s.split()
        k = rng.randint(3, 8)
        i = rng.randint(0, len(w) - k)
        return " ".join(w[i:i + k])

    out = []
    for _ in range(n):
        a, b = rng.sample(src, 2)
        out.append((a, span(a), "contains") if rng.random() < 0.5 else (a, span(b), "not"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--glue", required=True, help="GLUE folder (SST-2/train.tsv, SST-2/dev.tsv)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--train-rows", type=int, default=2500)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train, dev = read(Path(args.glue) / "SST-2" / "train.tsv"), read(Path(args.glue) / "SST-2" / "dev.tsv")

    rng = random.Random(0)
    seen: set[str] = set()
    long = [r for r in train if len(r[0].split()) >= 8 and not (r[0] in seen or seen.add(r[0]))]
    rng.shuffle(long)
    write(out / "pairs-train.csv", ["first", "second", "label"], sentiment_pairs(long[:5000], args.train_rows, rng))
    write(out / "pairs-dev.csv", ["first", "second", "label"], sentiment_pairs(dev, len(dev), rng))

    rng = random.Random(1)
    longer = sorted({s for s, _ in train if len(s.split()) >= 12})
    rng.shuffle(longer)
    dev12 = [s for s, _ in dev if len(s.split()) >= 12]
    write(out / "quote-train.csv", ["sentence", "quote", "label"], quote_pairs(longer[:4000], args.train_rows, rng))
    write(out / "quote-dev.csv", ["sentence", "quote", "label"], quote_pairs(dev12, len(dev), rng))
    print(f"wrote {out}/pairs-{{train,dev}}.csv and {out}/quote-{{train,dev}}.csv")


if __name__ == "__main__":
    main()
