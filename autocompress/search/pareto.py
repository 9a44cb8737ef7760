"""Pareto fronts per device (accuracy up, latency down), the budget filter, and the hypervolume."""
from __future__ import annotations

from ..store import TrialRecord


def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """(accuracy, latency): a is at least as good on both and better on one."""
    return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])


def front(trials: list[TrialRecord], profile: str, split: str = "val") -> list[TrialRecord]:
    """Non-dominated trials on (accuracy on ``split``, median latency on ``profile``), fastest first."""
    pts = [(t, (t.accuracy(split), t.latencies[profile]["median_ms"])) for t in trials
           if t.accuracy(split) is not None and profile in t.latencies]
    keep = [t for t, p in pts if not any(dominates(q, p) for _, q in pts)]
    # equal points: keep the first (lowest trial number) only
    seen, out = set(), []
    for t in sorted(keep, key=lambda t: (t.latencies[profile]["median_ms"], -t.accuracy(split), t.number)):
        key = (t.accuracy(split), t.latencies[profile]["median_ms"])
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out


def best_within(trials: list[TrialRecord], profile: str, budget_ms: float | None,
                split: str = "val") -> TrialRecord | None:
    """The most accurate trial whose latency on ``profile`` is within the budget (ties: the faster)."""
    ok = [t for t in trials if profile in t.latencies and t.accuracy(split) is not None
          and (budget_ms is None or t.latencies[profile]["median_ms"] <= budget_ms)]
    return max(ok, key=lambda t: (t.accuracy(split), -t.latencies[profile]["median_ms"]), default=None)


def hypervolume(points: list[tuple[float, float]], ref: tuple[float, float]) -> float:
    """Area dominated by (accuracy, latency) points and bounded by ref = (worst accuracy, worst latency)."""
    pts = sorted((p for p in points if p[0] > ref[0] and p[1] < ref[1]), key=lambda p: p[1])
    area, best_acc = 0.0, ref[0]
    for i, (acc, lat) in enumerate(pts):
        best_acc = max(best_acc, acc)
        nxt = pts[i + 1][1] if i + 1 < len(pts) else ref[1]
        area += (best_acc - ref[0]) * (nxt - lat)
    return area
