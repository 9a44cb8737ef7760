"""Carving the validation split from train so that it looks like dev.

The search chooses on val and is judged on dev, so val should be drawn like dev. GLUE's SST-2 shows why:
its train split holds every phrase of its sentences (median 7 words, 43% of rows 5 words or fewer), its
dev split whole sentences (median 19 words); a val drawn at random from train is mostly phrases, and its
sentences' own phrases stay in train, so the teacher has seen parts of them: such a val scored 7.5
points above dev and ranked candidates on a different kind of input.

``carve``: (1) rows are drawn from train with weights that match the dev inputs' length distribution
(words per input, in bins at dev's deciles: a train row in a bin that holds 10% of dev and 2% of train
weighs 5); (2) for single-text tasks, every train row that is a proper contiguous part of a val input (one
of its phrases) is left out of train, so val is unseen text, as dev is. ``Carve`` says what was done.
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
    dropped: int              # train rows left out because they are parts of val inputs

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
    (lowercased, up to ``max_words`` words long). A text's exact copies are not its parts: duplicates in
    train are kept, as a dev set drawn like train would hold them too. None where that would be more
    than ``PARTS_BUDGET`` runs (long documents: their rows are rarely parts of others)."""
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


def carve(train, dev, val_size: int, seed: int):
    """(train rest, val, Carve): ``val_size`` rows drawn from ``train`` like ``dev`` (length-matched), and
    train without the rows that are parts of a val input (single-text tasks)."""
    rng = np.random.default_rng(seed)
    train_len, dev_len = _lengths(train), _lengths(dev)
    p = match_weights(train_len, dev_len)
    chosen = rng.choice(len(train), size=val_size, replace=False, p=p) if (p > 0).sum() >= val_size else \
        rng.choice(len(train), size=val_size, replace=False)
    val_set = set(chosen.tolist())
    rest = [i for i in range(len(train)) if i not in val_set]
    dropped = 0
    seen = parts_of(train.select(sorted(val_set))["text_a"]) if "text_b" not in train.column_names else None
    if seen is not None:
        texts = train["text_a"]
        keep = [i for i in rest if " ".join(_words(texts[i])) not in seen]
        dropped = len(rest) - len(keep)
        rest = keep
    val = train.select(sorted(val_set))
    info = Carve(f"{val_size} train rows drawn to match dev's input lengths (median {np.median(train_len[chosen]):.0f} "
                 f"words; dev {np.median(dev_len):.0f}, train {np.median(train_len):.0f})"
                 + (f"; {dropped} train rows that are parts of val inputs left out of train" if dropped else ""),
                 float(np.median(train_len[chosen])), float(np.median(dev_len)), float(np.median(train_len)), dropped)
    return train.select(rest), val, info
