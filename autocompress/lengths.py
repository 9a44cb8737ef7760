"""The lengths a task's inputs have, in tokens, summarised for timing: a ``LengthMix``.

A latency at one fixed shape (batch 1 x 128 tokens) says little about inputs that are mostly 10-30 tokens
long: at short lengths attention is a small part of the work, so the speed-up of a recipe moves with the
length. A ``LengthMix`` is the token-length distribution of some inputs (after the tokenizer, capped at the
length the model is run at) as a few representative lengths with the share of the inputs each stands for;
``hardware.obtain_over_lengths`` times a model at each and weights the figures into the *expected* latency
over those inputs.

The summary: the inputs sorted by length and cut into ``bins`` groups of equal count; each group is
represented by its mean length (within a narrow group latency is close to linear in length, so the
group's mean length has the group's mean latency) and weighted by its share of the inputs. Groups whose
representative lengths coincide are merged.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

BINS = 4          # representative lengths per summary (each timed: a few keep timing cheap)


@dataclass(frozen=True)
class LengthMix:
    lengths: tuple[int, ...]     # representative token lengths, ascending
    weights: tuple[float, ...]   # the share of the inputs each stands for (sum 1)
    n: int                       # inputs counted
    source: str                  # what they were counted on, in words
    max_length: int              # the cap the lengths were counted under

    def mean(self) -> float:
        return float(sum(w * q for w, q in zip(self.weights, self.lengths)))

    def to_dict(self) -> dict[str, Any]:
        return {"lengths": list(self.lengths), "weights": [round(w, 6) for w in self.weights], "n": self.n,
                "source": self.source, "max_length": self.max_length}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LengthMix:
        return cls(tuple(int(q) for q in d["lengths"]), tuple(float(w) for w in d["weights"]), int(d["n"]),
                   str(d.get("source", "")), int(d.get("max_length", max(d["lengths"]))))

    def describe(self) -> str:
        mix = ", ".join(f"{q} ({100 * w:.0f}%)" for q, w in zip(self.lengths, self.weights))
        return f"{self.n} inputs of {self.source} (tokens, capped at {self.max_length}): {mix}"


def summarise(counts: Sequence[int], *, source: str, max_length: int, bins: int = BINS) -> LengthMix:
    """The mix of token counts ``counts`` (each already capped at ``max_length``), in ``bins`` equal-count
    groups (fewer where there are fewer inputs or distinct lengths)."""
    c = np.sort(np.asarray(counts, dtype=np.int64))
    if c.size == 0:
        raise ValueError(f"no inputs to count lengths on ({source})")
    if c.min() < 1 or c.max() > max_length:
        raise ValueError(f"token counts must lie in 1..{max_length}, got {c.min()}..{c.max()}")
    merged: dict[int, float] = {}
    for group in np.array_split(c, min(bins, c.size)):
        q = int(np.floor(group.mean() + 0.5))           # half up (round() would take 4.5 to 4)
        merged[q] = merged.get(q, 0.0) + group.size / c.size
    lengths = tuple(sorted(merged))
    return LengthMix(lengths, tuple(merged[q] for q in lengths), int(c.size), source, max_length)


def token_counts(tokenizer, texts: Sequence[str], pairs: Sequence[str] | None = None, *, max_length: int) -> list[int]:
    """Tokens per input as the model receives it (special tokens included, truncated at ``max_length``)."""
    enc = tokenizer(list(texts), list(pairs) if pairs is not None else None, truncation=True, max_length=max_length)
    return [len(ids) for ids in enc["input_ids"]]


def of_texts(tokenizer, texts: Sequence[str], pairs: Sequence[str] | None = None, *, source: str, max_length: int,
             bins: int = BINS) -> LengthMix:
    """The mix of some inputs' lengths after ``tokenizer``."""
    return summarise(token_counts(tokenizer, texts, pairs, max_length=max_length), source=source,
                     max_length=max_length, bins=bins)

