"""A latency figure and how it was obtained: ``Latency`` (what the store keeps, as a dict) and ``describe``
(how it was obtained, in one line: tables, JSON, plots and model cards all use it). A figure is
``measured`` (where, runs, spread) or ``predicted`` (by which model, its held-out error); an artifact
whose graphs run on a share of the inputs each has an *expected* figure (``obtain.expected``)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields


@dataclass
class Latency:
    profile: str
    median_ms: float
    spread_ms: float  # interquartile range p75 - p25
    p10_ms: float
    p90_ms: float
    n: int
    how: str = "measured"  # "measured" or "predicted"
    detail: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Latency":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def describe(lat: dict) -> str:
    """How a latency was obtained, in one line (see ``_describe``); an expected figure (several graphs,
    each run by a share of the inputs) says what it was weighted by, then how each graph was obtained."""
    text = _describe(lat)
    d = lat.get("detail") or {}
    if not d.get("expected"):
        return text
    shares = ", ".join(f"{100 * r:.0f}%" for r in d.get("reach") or [])
    graphs = ", ".join(f"{ms:.2f}" for ms in d.get("segment_ms") or [])
    how = d.get("expected_how") or d.get("exit_rule") or "?"     # exit_rule: figures stored before expected_how
    return (f"expected over {d.get('expected_over', '?')} ({how}): sum of the graphs' latencies [{graphs}] ms "
            f"weighted by the share of inputs running each [{shares}]; each graph {text}")


def _describe(lat: dict) -> str:
    """How a latency was obtained, in one line (tables, JSON, plots and model cards all use this):
    ``measured on HOST (CPU), PROVIDER, N thread(s), batch 1 x seq 128, n=40, IQR 0.31 ms`` (then, where
    known: the Ray node, the confidence interval, the other shapes) or ``predicted by MODEL, device ...,
    from ..., calibrated on ..., held-out error ...``. A predicted figure never reads as measured."""
    d = lat.get("detail") or {}
    others = "".join(f"; batch {s['batch_size']} x seq {s['seq_len']}: {s['median_ms']:.2f} ms"
                     for s in d.get("other_shapes") or [])
    if lat.get("how") == "measured":
        chip = d.get("gpu") or d.get("cpu")
        where = d.get("host", "?") + (f" ({chip})" if chip else "")
        if d.get("ray_node_id"):
            where += f", Ray node {d['ray_node_id'][:12]} offering {d.get('ray_resource', '?')}"
        pins = f" pinned to CPU(s) {','.join(map(str, d['pinned_cpus']))}" if d.get("pinned_cpus") else ""
        threads = "" if d.get("gpu") else f"{d.get('threads', '?')} thread(s){pins}, "
        text = (f"measured on {where}, {d.get('provider', '?')}, {threads}"
                f"batch {d.get('batch_size', '?')} x seq {d.get('seq_len', '?')}, n={lat.get('n')}, "
                f"IQR {lat.get('spread_ms', 0):.2f} ms")
        if d.get("ci95_rel") is not None:
            text += f", median ±{100 * d['ci95_rel']:.1f}% (95% CI)"
        text += _drift(d)
        if d.get("precision") == "fp16":
            text += ", fp16 conversion of the fp32 graph"
        return text + _before_training(d) + others
    model = d.get("predictor", "an unnamed model")
    labels = {"device": "device", "input": "from", "calibrated_on": "calibrated on", "heldout_error": "held-out error",
              "note": "note"}
    extra = "".join(f", {label} {d[k]}" for k, label in labels.items() if d.get(k))
    return f"predicted by {model}{extra}{_before_training(d)}{others}"


def _drift(d: dict) -> str:
    """How a CPU figure was scaled to the host's nominal speed (``latency.HostReference``), if it was."""
    ref = d.get("host_reference")
    if not ref:
        return ""
    return (f", x{ref['factor']:.3f} to the host's nominal speed (interleaved reference {ref['median_ms']:.2f} ms, "
            f"nominal {ref['nominal_ms']:.2f} ms)")


def _before_training(d: dict) -> str:
    return ", obtained on the untrained structure (same graph as shipped)" if d.get("timed_before_training") else ""


def ratio(baseline: Latency, other: Latency) -> float:
    """Speed-up of `other` over `baseline` (> 1 means `other` is faster)."""
    return baseline.median_ms / other.median_ms
