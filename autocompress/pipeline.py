"""A shipped model made of several ONNX graphs run one after another, each input going only as far as it
needs: early exit's segments. One folder holds the graphs and ``manifest.json``; the manifest is the
artifact the store records (its sha256), and it carries the sha256 of every graph it names, so anything
that reads the folder through ``read`` reads the very files that were timed and scored.

Manifest (JSON)::

    {"kind": "early_exit", "version": 1,
     "segments": [{"file": "segment0/model.onnx", "fp32": "segment0/model.fp32.onnx",
                   "sha256": "...", "fp32_sha256": "...", ...}, ...],     # paths relative to the manifest
     "reach": [1.0, 0.41, 0.17],           # share of the inputs that run each segment
     "reach_over": "the validation inputs (1000 rows)",
     ...}                                  # the rest belongs to the writer (early exit: its exits and rule)

Its **expected latency** on a device is ``sum_i reach_i x latency(segment i)`` (``expected``); the
latency module (``hardware.obtain``) obtains each segment's figure the way the profile says.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
VERSION = 1


def is_pipeline(path: str | os.PathLike | None) -> bool:
    return path is not None and Path(path).suffix == ".json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write(folder: str | os.PathLike, manifest: dict[str, Any]) -> Path:
    """Write ``folder/manifest.json`` atomically, with the sha256 of every segment's files filled in."""
    folder = Path(folder)
    m = json.loads(json.dumps(manifest))
    m.setdefault("version", VERSION)
    for seg in m["segments"]:
        seg["sha256"] = _sha256(folder / seg["file"])
        seg["fp32_sha256"] = _sha256(folder / seg["fp32"])
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".manifest-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(m, f, indent=1)
    os.replace(tmp, folder / MANIFEST)
    return folder / MANIFEST


def update(path: str | os.PathLike, **fields) -> Path:
    """Add or replace top-level fields of a manifest (the reach, once it is measured)."""
    path = Path(path)
    m = json.loads(path.read_text())
    m.update(json.loads(json.dumps(fields)))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".manifest-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(m, f, indent=1)
    os.replace(tmp, path)
    return path


def read(path: str | os.PathLike, verify: bool = True) -> dict[str, Any]:
    """The manifest with absolute ``file``/``fp32`` paths; with ``verify``, every graph's sha256 is
    checked against it (a ValueError names the one that changed)."""
    path = Path(path)
    m = json.loads(path.read_text())
    if m.get("version") != VERSION or not m.get("segments"):
        raise ValueError(f"{path} is not a pipeline manifest of version {VERSION}")
    for seg in m["segments"]:
        for key, sha in (("file", "sha256"), ("fp32", "fp32_sha256")):
            seg[key] = str(path.parent / seg[key])
            if verify and _sha256(Path(seg[key])) != seg[sha]:
                raise ValueError(f"{seg[key]} does not match the sha256 recorded in {path}")
    return m


def files(path: str | os.PathLike) -> list[Path]:
    """What is shipped: the manifest and each segment's final graph (not the fp32 forms kept beside
    them for fp16 profiles, unless a segment ships its fp32 form)."""
    m = read(path, verify=False)
    return [Path(path)] + list(dict.fromkeys(Path(s["file"]) for s in m["segments"]))


def reach(path: str | os.PathLike) -> tuple[list[float], str]:
    """(share of the inputs that run each segment, what it was measured on); a ValueError if the
    manifest has not been scored yet."""
    m = read(path, verify=False)
    if "reach" not in m:
        raise ValueError(f"{path}: no reach recorded yet (score the pipeline on the validation inputs first)")
    return [float(r) for r in m["reach"]], str(m.get("reach_over", "?"))


def expected(segment_latencies: list, reach_: list[float], over: str, extra: dict | None = None):
    """The expected latency of a pipeline: ``sum_i reach_i x latency_i`` for the median (and likewise
    for the spread and percentiles: weighted sums of the segments' figures, an approximation). Its
    ``how`` is the segments' (all obtained the same way on one profile); its ``detail`` keeps where and
    how they were obtained and adds ``expected_over`` (what the reach was measured on), ``reach``,
    ``segment_ms`` and whatever ``extra`` says (early exit: the exit rates)."""
    from .hardware.latency import Latency

    if len(segment_latencies) != len(reach_):
        raise ValueError(f"{len(segment_latencies)} segment latencies for {len(reach_)} reach values")
    lats = segment_latencies
    first = lats[0]

    def weighted(attr: str) -> float:
        return float(sum(r * getattr(lat, attr) for r, lat in zip(reach_, lats)))

    per_figure = {"host_ms", "host_n", "host_ci95_rel", "host_classes_ms", "constants", "other_shapes", "ci95_rel",
                  "timed_before_training"}
    detail = {k: v for k, v in first.detail.items() if k not in per_figure}
    detail.update(expected_over=over, reach=[round(r, 4) for r in reach_],
                  segment_ms=[round(lat.median_ms, 4) for lat in lats],
                  segment_how=[lat.how for lat in lats], **(extra or {}))
    return Latency(first.profile, weighted("median_ms"), weighted("spread_ms"), weighted("p10_ms"),
                   weighted("p90_ms"), min(lat.n for lat in lats), first.how, detail)
