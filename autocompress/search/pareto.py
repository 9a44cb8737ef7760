"""Pareto fronts per device (accuracy up; latency and zipped size down), the pick within a budget and a
tolerance, and the hypervolume.

A candidate at or below the task's trivial baseline (always answering one class: its score, ``floor``)
is never a front member: it learned nothing, however fast it is. It stays in the store (``trivial``
lists such trials so that fronts can say they were left out).

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


def trivial(trials: list[TrialRecord], floor: float | None, split: str = "val") -> list[TrialRecord]:
    """Candidates whose score is at or below the trivial baseline's (``floor``)."""
    if floor is None:
        return []
    return [t for t in trials if t.role != "teacher" and t.accuracy(split) is not None and t.accuracy(split) <= floor]


def front(trials: list[TrialRecord], profile: str, split: str = "val", floor: float | None = None,
          size: bool = True) -> list[TrialRecord]:
    """Non-dominated trials on (accuracy on ``split``, median latency on ``profile``, zipped size where
    every trial has one and ``size``), fastest first; candidates at or below ``floor`` (the trivial baseline)
    left out. ``size=False``: the accuracy-latency front alone (what a latency goal is judged on)."""
    low = {t.number for t in trivial(trials, floor, split)}
    scored = [t for t in trials if t.accuracy(split) is not None and profile in t.latencies and t.number not in low]
    with_size = size and bool(scored) and all(t.size_zip_mb is not None for t in scored)
    pts = [(t, _point(t, profile, split, with_size)) for t in scored]
    keep = [(t, p) for t, p in pts if not any(dominates(q, p) for _, q in pts)]
    # equal points: keep the first (lowest trial number) only
    seen, out = set(), []
    for t, p in sorted(keep, key=lambda tp: (tp[1][1], -tp[1][0], tp[1][2:], tp[0].number)):
        if p not in seen:
            seen.add(p)
            out.append(t)
    return out


TOLERANCE = 0.01          # the default: one point of the task's metric
# Latencies within 5% of each other are one speed: on the 2-core VM, two files of one structure timed side by
# side differ by 0.2-1.4%, and one file moves by up to 6% between passes. Without it, a search's pick was the
# 400-step parent of a finished member, 0.01 ms (1.00x) faster and 3.7 dev points worse (README run of
# 2026-12-07 19:26, benchmarks/results/readme-first-command-20261207-1926.txt).
SPEED_TIE = 0.05


def most_accurate(trials: list[TrialRecord], profile: str, budget_ms: float | None,
                  split: str = "val") -> TrialRecord | None:
    """The most accurate trial whose latency on ``profile`` is within the budget (ties: the faster,
    then the smaller download)."""
    ok = [t for t in trials if profile in t.latencies and t.accuracy(split) is not None
          and (budget_ms is None or t.latencies[profile]["median_ms"] <= budget_ms)]
    return max(ok, key=lambda t: (t.accuracy(split), -t.latencies[profile]["median_ms"],
                                  -(t.size_zip_mb if t.size_zip_mb is not None else 0.0)), default=None)


def _within(trials: list[TrialRecord], profile: str, budget_ms: float | None, split: str,
            tolerance: float) -> tuple[TrialRecord | None, list[TrialRecord]]:
    """The most accurate trial within the budget, and every trial within the budget and ``tolerance`` of it."""
    best = most_accurate(trials, profile, budget_ms, split)
    if best is None:
        return None, []
    return best, [t for t in trials if profile in t.latencies and t.accuracy(split) is not None
                  and (budget_ms is None or t.latencies[profile]["median_ms"] <= budget_ms)
                  and t.accuracy(split) >= best.accuracy(split) - tolerance - 1e-12]


def best_within(trials: list[TrialRecord], profile: str, budget_ms: float | None, split: str = "val",
                tolerance: float = TOLERANCE) -> TrialRecord | None:
    """The pick: the fastest trial within the budget whose score is within ``tolerance`` of the most
    accurate one within the budget. A difference of a few tenths on a thousand rows is noise: it should
    never choose a model twice as slow. Latencies within ``SPEED_TIE`` of the fastest such trial's are one
    speed, and the most accurate of them is the pick (then the faster, then the smaller download): a finished
    model should not lose to its own short-recovery parent timed 0.01 ms faster."""
    _, ok = _within(trials, profile, budget_ms, split, tolerance)
    if not ok:
        return None
    fastest = min(t.latencies[profile]["median_ms"] for t in ok)
    tied = [t for t in ok if t.latencies[profile]["median_ms"] <= fastest * (1 + SPEED_TIE)]
    return max(tied, key=lambda t: (t.accuracy(split), -t.latencies[profile]["median_ms"],
                                    -(t.size_zip_mb if t.size_zip_mb is not None else 0.0)))


def pick_reason(trials: list[TrialRecord], profile: str, budget_ms: float | None, split: str = "val",
                tolerance: float = TOLERANCE) -> str | None:
    """What the tolerance chose and why, in one line (None where there is nothing to pick)."""
    best, ok = _within(trials, profile, budget_ms, split, tolerance)
    pick = best_within(trials, profile, budget_ms, split, tolerance)
    if pick is None:
        return None
    within = f" within {budget_ms:g} ms" if budget_ms is not None else ""
    ms = lambda t: t.latencies[profile]["median_ms"]       # noqa: E731
    fastest = min(ok, key=ms)
    tie = (f"; trial {fastest.number} is {ms(pick) / ms(fastest):.2f}x faster still, within the {100 * SPEED_TIE:g}% "
           f"that counts as one speed ({split} {100 * fastest.accuracy(split):.2f})") if ms(fastest) < ms(pick) else ""
    if pick.number == best.number:
        return (f"* = trial {pick.number}, the most accurate{within} ({split} {100 * best.accuracy(split):.2f}); no "
                f"member within {100 * tolerance:g} point(s) of it (--tolerance) is more than {100 * SPEED_TIE:g}% faster"
                + tie)
    return (f"* = trial {pick.number}: the fastest{within} within {100 * tolerance:g} point(s) (--tolerance) of the most "
            f"accurate, trial {best.number} ({split} {100 * pick.accuracy(split):.2f} vs {100 * best.accuracy(split):.2f}); "
            f"{ms(best) / ms(pick):.2f}x faster" + tie)


def hypervolume(points: list[tuple[float, float]], ref: tuple[float, float]) -> float:
    """Area dominated by (accuracy, latency) points and bounded by ref = (worst accuracy, worst latency)."""
    pts = sorted((p for p in points if p[0] > ref[0] and p[1] < ref[1]), key=lambda p: p[1])
    area, best_acc = 0.0, ref[0]
    for i, (acc, lat) in enumerate(pts):
        best_acc = max(best_acc, acc)
        nxt = pts[i + 1][1] if i + 1 < len(pts) else ref[1]
        area += (best_acc - ref[0]) * (nxt - lat)
    return area
