"""Carving the validation split from train so that it looks like dev.

The search chooses on val and is judged on dev, so val should be drawn like dev. GLUE's SST-2 shows why:
its train split holds every phrase of its sentences (median 7 words, 43% of rows 5 words or fewer), its
dev split whole sentences (median 19 words); a val drawn at random from train is mostly phrases, and its
sentences' own phrases stay in train, so the teacher has seen parts of them: such a val scored 7.5
points above dev and ranked candidates on a different kind of input.

``carve``: (1) rows are drawn from train with weights that match the dev inputs' length distribution
(words per input, in bins at dev's deciles: a train row in a bin that holds 10% of dev and 2% of train
weighs 5); (2) for single-text tasks, only whole inputs are drawn: a row that lies word for word inside
another train row (a phrase of a sentence that stays in train) is never a val row, or the teacher would
train on it (and its label) through the longer row: before this rule 67-70% of SST-2's val rows lay
inside a train row, 93% of them with the same label (``benchmarks/val_overlap.py``); (3) every train row
that is a part of a val input (one of its phrases) or a copy of one is left out of train, so val is
unseen text, as dev is. ``Carve`` says what was done.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

_WORD = re.compile(r"\S+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _lengths(ds) -> np.ndarray:
    cols = ["text_a"] + (["text_b"] if "text_b" in ds.column_names else [])
    out = np.zeros(len(ds), dtype=np.int64)
    for c in cols:
        out += np.array([len(_words(t)) for t in ds[c]], dtype=np.int64)
    return out


@dataclass(frozen=True)
class Carve:
    how: str                  # in words, for the run's summary
    val_median_words: float
    dev_median_words: float
    train_median_words: float
    dropped: int              # train rows left out because they are parts or copies of val inputs

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def match_weights(train_len: np.ndarray, dev_len: np.ndarray, bins: int = 10) -> np.ndarray:
    """A weight per train row so that rows drawn with these weights have dev's length distribution:
    dev's share of the row's length bin over train's share (bins at dev's deciles; rows outside dev's
    range fall in the end bins)."""
    edges = np.unique(np.quantile(dev_len, np.linspace(0, 1, bins + 1)[1:-1]))
    dev_bin, train_bin = np.searchsorted(edges, dev_len, side="right"), np.searchsorted(edges, train_len, side="right")
    k = len(edges) + 1
    dev_share = np.bincount(dev_bin, minlength=k) / len(dev_len)
    train_share = np.bincount(train_bin, minlength=k) / len(train_len)
    w = dev_share[train_bin] / np.maximum(train_share[train_bin], 1e-12)
    return w / w.sum()


PARTS_BUDGET = 3_000_000      # word runs kept at most (long texts: the check is skipped, and said so)


def parts_of(texts: list[str], max_words: int = 64) -> set[str] | None:
    """Every proper part of every text: each contiguous run of its words, shorter than the text itself
    (lowercased, up to ``max_words`` words long). A text's exact copies are not its parts (``carve`` adds
    the copies of val inputs itself). None where that would be more than ``PARTS_BUDGET`` runs (long
    documents: their rows are rarely parts of others)."""
    words = [_words(t) for t in texts]
    if sum(len(w) * min(len(w), max_words) for w in words) > PARTS_BUDGET:
        return None
    out = set()
    for w in words:
        for i in range(len(w)):
            for j in range(i + 1, min(len(w), i + max_words) + 1):
                if j - i < len(w):
                    out.add(" ".join(w[i:j]))
    return out


def hosted(texts: list[str]) -> np.ndarray:
    """For each text, whether it lies word for word (lowercased, as a contiguous run of whole words) inside
    another, longer text of the list. Each distinct text is checked only against the distinct texts that
    hold its rarest word (many repeats of a few short texts stay cheap)."""
    norm = [" ".join(_words(t)) for t in texts]
    distinct = list(dict.fromkeys(norm))
    holders: dict[str, list[int]] = {}
    for i, t in enumerate(distinct):
        for w in set(t.split()):
            holders.setdefault(w, []).append(i)
    inside = {}
    for t in distinct:
        words = set(t.split())
        rarest = min(words, key=lambda w: len(holders[w])) if words else None
        pad = f" {t} "
        inside[t] = rarest is not None and any(len(distinct[j]) > len(t) and pad in f" {distinct[j]} "
                                               for j in holders[rarest])
    return np.array([inside[t] for t in norm], dtype=bool)


def carve(train, dev, val_size: int, seed: int):
    """(train rest, val, Carve): ``val_size`` rows drawn from ``train`` like ``dev`` (length-matched; for
    single-text tasks whole inputs only, where there are enough), and train without the rows that are
    parts or copies of a val input (single-text tasks)."""
    rng = np.random.default_rng(seed)
    train_len, dev_len = _lengths(train), _lengths(dev)
    single = "text_b" not in train.column_names
    inside = hosted(train["text_a"]) if single else np.zeros(len(train), dtype=bool)
    if not inside.any() or (~inside).sum() < val_size:           # no phrase structure, or too few whole inputs
        inside = np.zeros(len(train), dtype=bool)
    p = np.zeros(len(train))
    p[~inside] = match_weights(train_len[~inside], dev_len)       # dev's lengths among the rows that may be drawn
    if (p > 0).sum() < val_size:                                  # too few of them in dev's length range
        p[~inside] = 1.0 / (~inside).sum()
    chosen = rng.choice(len(train), size=val_size, replace=False, p=p)
    val_set = set(chosen.tolist())
    rest = [i for i in range(len(train)) if i not in val_set]
    dropped = 0
    val = train.select(sorted(val_set))
    seen = parts_of(val["text_a"]) if single else None
    if seen is not None:
        seen |= {" ".join(_words(t)) for t in val["text_a"]}      # copies of a val input too
        texts = train["text_a"]
        keep = [i for i in rest if " ".join(_words(texts[i])) not in seen]
        dropped = len(rest) - len(keep)
        rest = keep
    whole = bool(inside.any())
    info = Carve(f"{val_size} {'whole ' if whole else ''}train rows drawn to match dev's input lengths (median {np.median(train_len[chosen]):.0f} "
                 f"words; dev {np.median(dev_len):.0f}, train {np.median(train_len):.0f})"
                 + (f"; {int(inside.sum())} train rows that lie inside longer ones not drawn" if whole else "")
                 + (f"; {dropped} train rows that are parts or copies of val inputs left out of train" if dropped else ""),
                 float(np.median(train_len[chosen])), float(np.median(dev_len)), float(np.median(train_len)), dropped)
    return train.select(rest), val, info
