"""A latency figure and how it was obtained: ``Latency`` (what the store keeps, as a dict) and ``describe``
(how it was obtained, in one line: tables, JSON, plots and model cards all use it). A figure is
``measured`` (where, runs, spread) or ``predicted`` (by which model, its held-out error); an artifact
whose graphs run on a share of the inputs each has an *expected* figure (``obtain.expected``)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from ..lengths import LengthMix


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
    d = lat.get("detail") or {}
    if d.get("lengths"):
        return _over_lengths(lat)
    text = _describe(lat)
    if not d.get("expected"):
        return text
    shares = ", ".join(f"{100 * r:.0f}%" for r in d.get("reach") or [])
    graphs = ", ".join(f"{ms:.2f}" for ms in d.get("segment_ms") or [])
    how = d.get("expected_how") or d.get("exit_rule") or "?"     # exit_rule: figures stored before expected_how
    return (f"expected over {d.get('expected_over', '?')} ({how}): sum of the graphs' latencies [{graphs}] ms "
            f"weighted by the share of inputs running each [{shares}]; each graph {text}")


def _over_lengths(lat: dict) -> str:
    """An expected figure over the lengths of some inputs (``obtain.obtain_over_lengths``), in one line."""
    d = lat["detail"]
    mix, fixed = d["lengths"], d.get("fixed") or {}
    per = ", ".join(f"{q}: {ms:.3g}" for q, ms in zip(mix["lengths"], mix["median_ms"]))
    shares = ", ".join(f"{100 * w:.0f}%" for w in mix["weights"])
    at_fixed = (f"; at the fixed shape (batch {fixed.get('batch_size', '?')} x seq {fixed.get('seq_len', '?')}) "
                f"{fixed['median_ms']:.2f} ms" if fixed.get("median_ms") is not None else "")
    inner = {k: v for k, v in d.items() if k not in ("lengths", "fixed")}
    each = describe({**lat, "detail": {**inner, "seq_len": "each length"}})
    return (f"expected over the lengths of {mix['n']} inputs of {mix['source']}: medians at [{per}] ms "
            f"(tokens: ms) weighted by the share of inputs [{shares}]{at_fixed}; each length {each}")


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
              "note": "note", "shape_note": "note", "warning": "WARNING:"}
    extra = "".join(f", {label} {d[k]}" for k, label in labels.items() if d.get(k))
    return f"predicted by {model}{extra}{_flags(d.get('host_reference'))}{_before_training(d)}{others}"


def _drift(d: dict) -> str:
    """How a CPU figure was scaled to the host's nominal speed (``latency.HostReference``), if it was."""
    ref = d.get("host_reference")
    if not ref:
        return ""
    return (f", x{ref['factor']:.3f} to the host's nominal speed (interleaved reference {ref['median_ms']:.2f} ms, "
            f"nominal {ref['nominal_ms']:.2f} ms)") + _flags(ref)


def _flags(ref: dict | None) -> str:
    """What a figure scaled to the host's nominal speed must not hide (``hardware.reference``): a factor
    outside the plausible band, a nominal used by one process only (its windows never agreed)."""
    ref = ref or {}
    text = ""
    if ref.get("out_of_band"):
        low, high = ref.get("band") or ("?", "?")
        text += (f" — OUT OF BAND: a host-speed factor of {ref['factor']:.2f} is outside {low}-{high} (a nominal timed "
                 "under load, or a host overloaded now): this figure is doubtful")
    if ref.get("established") is False:
        text += (" — PROVISIONAL nominal: its windows never agreed, so it was used by this process only and not "
                 "cached")
    return text


def host_speed_warning(lats) -> str | None:
    """One line for a run's summary where any of these figures (dicts) was scaled by a factor out of band
    or by a provisional nominal; None where none was."""
    refs = [(lat.get("detail") or {}).get("host_reference") or {} for lat in lats]
    out = sorted({round(r["factor"], 2) for r in refs if r.get("out_of_band")})
    provisional = sum(r.get("established") is False for r in refs)
    if not out and not provisional:
        return None
    parts = [f"{sum(r.get('out_of_band', False) for r in refs)} figure(s) scaled to the host's nominal speed by a "
             f"factor out of band ({', '.join(f'{f:.2f}' for f in out)})"] if out else []
    if provisional:
        parts.append(f"{provisional} scaled by a provisional nominal (not cached: the host was unsteady)")
    return ("; ".join(parts) + ": their milliseconds are doubtful (ratios side by side hold); see "
            "`autocompress profiles --check`")


def _before_training(d: dict) -> str:
    return ", obtained on the untrained structure (same graph as shipped)" if d.get("timed_before_training") else ""


def ratio(baseline: Latency, other: Latency) -> float:
    """Speed-up of `other` over `baseline` (> 1 means `other` is faster)."""
    return baseline.median_ms / other.median_ms


def over_lengths(fixed: Latency, per_length: list[Latency], mix: LengthMix) -> Latency:
    """One figure from a model's figures at each of ``mix``'s lengths: their weighted sum by the share of
    the inputs each length stands for (median, spread and percentiles alike: an approximation for the
    spread). ``detail['lengths']`` keeps the mix and the figure at each length; ``detail['fixed']`` the
    figure at the profile's own shape."""
    lats, w = per_length, mix.weights

    def weighted(attr: str) -> float:
        return float(sum(wi * getattr(lat, attr) for wi, lat in zip(w, lats)))

    def figures(ms: float) -> float:
        return float(f"{ms:.6g}")              # 6 significant figures: tiny models' figures too

    per_figure = {"host_ms", "host_n", "host_ci95_rel", "host_classes_ms", "other_shapes", "ci95_rel", "seq_len",
                  "raw_median_ms", "timed_before_training", "shape_note"}
    detail = {k: v for k, v in lats[-1].detail.items() if k not in per_figure}
    if any(lat.detail.get("shape_note") for lat in lats):
        detail["shape_note"] = next(lat.detail["shape_note"] for lat in lats if lat.detail.get("shape_note"))
    detail["lengths"] = {**mix.to_dict(), "median_ms": [figures(lat.median_ms) for lat in lats],
                         "n_runs": [lat.n for lat in lats]}
    detail["fixed"] = {"batch_size": fixed.detail.get("batch_size"), "seq_len": fixed.detail.get("seq_len"),
                       "median_ms": figures(fixed.median_ms), "n": fixed.n}
    return Latency(fixed.profile, weighted("median_ms"), weighted("spread_ms"), weighted("p10_ms"),
                   weighted("p90_ms"), min(lat.n for lat in lats), fixed.how, detail)
