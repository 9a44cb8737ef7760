"""Pareto fronts per device (accuracy up; latency and zipped size down), the budget filter, and the
hypervolume.

The zipped size is the third objective because some methods buy size and no speed (unstructured
sparsity, shared or factorized weights run as fast as dense ones on a dense runtime): on an
accuracy-latency front alone they could never appear, though a smaller download is what they are for.
"""
from __future__ import annotations

from ..store import TrialRecord


def dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """(accuracy, latency[, zipped size]): a is at least as good on every figure and better on one
    (accuracy higher is better; the others lower)."""
    at_least = a[0] >= b[0] and all(x <= y for x, y in zip(a[1:], b[1:]))
    better = a[0] > b[0] or any(x < y for x, y in zip(a[1:], b[1:]))
    return at_least and better


def _point(t: TrialRecord, profile: str, split: str, with_size: bool) -> tuple[float, ...]:
    p = (t.accuracy(split), t.latencies[profile]["median_ms"])
    return p + (t.size_zip_mb,) if with_size else p


def front(trials: list[TrialRecord], profile: str, split: str = "val") -> list[TrialRecord]:
    """Non-dominated trials on (accuracy on ``split``, median latency on ``profile``, zipped size where
    every trial has one), fastest first."""
    scored = [t for t in trials if t.accuracy(split) is not None and profile in t.latencies]
    with_size = bool(scored) and all(t.size_zip_mb is not None for t in scored)
    pts = [(t, _point(t, profile, split, with_size)) for t in scored]
    keep = [(t, p) for t, p in pts if not any(dominates(q, p) for _, q in pts)]
    # equal points: keep the first (lowest trial number) only
    seen, out = set(), []
    for t, p in sorted(keep, key=lambda tp: (tp[1][1], -tp[1][0], tp[1][2:], tp[0].number)):
        if p not in seen:
            seen.add(p)
            out.append(t)
    return out


def best_within(trials: list[TrialRecord], profile: str, budget_ms: float | None,
                split: str = "val") -> TrialRecord | None:
    """The most accurate trial whose latency on ``profile`` is within the budget (ties: the faster,
    then the smaller download)."""
    ok = [t for t in trials if profile in t.latencies and t.accuracy(split) is not None
          and (budget_ms is None or t.latencies[profile]["median_ms"] <= budget_ms)]
    return max(ok, key=lambda t: (t.accuracy(split), -t.latencies[profile]["median_ms"],
                                  -(t.size_zip_mb if t.size_zip_mb is not None else 0.0)), default=None)


def hypervolume(points: list[tuple[float, float]], ref: tuple[float, float]) -> float:
    """Area dominated by (accuracy, latency) points and bounded by ref = (worst accuracy, worst latency)."""
    pts = sorted((p for p in points if p[0] > ref[0] and p[1] < ref[1]), key=lambda p: p[1])
    area, best_acc = 0.0, ref[0]
    for i, (acc, lat) in enumerate(pts):
        best_acc = max(best_acc, acc)
        nxt = pts[i + 1][1] if i + 1 < len(pts) else ref[1]
        area += (best_acc - ref[0]) * (nxt - lat)
    return area
