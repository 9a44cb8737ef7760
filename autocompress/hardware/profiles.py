"""Hardware profiles: which device a latency stands for, and how it can be obtained.

A profile names a device and the shape a candidate is timed at. How its figure is obtained depends on
what is at hand (``hardware.obtain`` decides, in this order):

- ``measure_here: true`` and the profile's ONNX Runtime provider is installed here: measured on this
  machine (the laptop CPU; the server GPU where CUDA is present).
- ``resource: NAME`` and a node of the connected Ray cluster offers that custom resource: measured on
  that node (a real phone or ARM board running a Ray worker started with ``--resources '{"NAME": 1}'``).
- ``predictor:``: predicted, and labelled so (``hardware.predictors``: the spec's common fields, kind,
  name and anchors, are checked here, the rest by the kind's own ``check``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from .. import pipeline
from . import predictors
from .host import pin_cpus
from .predictors import PredictorError

RUNTIMES = ("onnxruntime",)
PRECISIONS = ("shipped", "fp16")
LENGTHS = ("fixed", "task")     # what a profile times at: its fixed shape, or the task's input lengths
_BUNDLED = "autocompress.hw_profiles"


class ProfileError(Exception):
    """A profile could not be found or is invalid (one-line, user-facing message)."""


@dataclass(frozen=True)
class HardwareProfile:
    name: str
    description: str
    runtime: str
    provider: str
    max_threads: int
    batch_size: int = 1           # the primary shape: the figure fronts, budgets and the searcher use
    seq_len: int = 128
    device: str = ""              # the device the figure stands for, in words
    measure_here: bool = True     # a local run with `provider` is this device (false: this host is not it)
    resource: str | None = None   # Ray custom resource offered by nodes that are this device
    precision: str = "shipped"    # "shipped": the candidate's own file; "fp16": its fp32 graph converted to fp16
    extra_shapes: tuple[tuple[int, int], ...] = ()   # further (batch, seq) shapes, reported in the detail
    ci_target: float = 0.02       # repeat until the median's 95% confidence half-width is within this fraction
    max_seconds: float = 6.0      # ... or this much time has passed
    min_runs: int = 10            # ... but never fewer runs than this (a short window is one phase of the machine)
    nominal_speed: bool = False   # CPU: scale measurements to this host's nominal speed (latency.HostReference)
    pin_threads: bool = False     # CPU: each thread pinned to its own logical CPU while timing (pin_cpus)
    predictor: dict | None = None  # how to predict where the device is absent (see hardware.predictors)
    lengths: str = "fixed"        # "fixed": time at (batch_size, seq_len); "task": at the task's input lengths
    length_mix: dict | None = None  # the lengths a run times at (lengths.LengthMix.to_dict), set by the run for "task"

    @property
    def threads(self) -> int:
        """Threads used on this machine: max_threads capped by the core count."""
        return max(1, min(self.max_threads, os.cpu_count() or 1))

    @property
    def shapes(self) -> tuple[tuple[int, int], ...]:
        """Every (batch, seq) shape the profile reports, the primary first."""
        return ((self.batch_size, self.seq_len),) + tuple(s for s in self.extra_shapes
                                                          if s != (self.batch_size, self.seq_len))

    def at_length(self, seq_len: int) -> HardwareProfile:
        """This profile at ``seq_len`` tokens per input (its batch size kept), that shape only."""
        return replace(self, seq_len=int(seq_len), extra_shapes=(), lengths="fixed", length_mix=None)

    def fixed(self) -> HardwareProfile:
        """This profile timing at its fixed shape(s) only (no length mix)."""
        return replace(self, lengths="fixed", length_mix=None)

    def with_mix(self, mix: dict | None) -> HardwareProfile:
        """This profile timing at the lengths of ``mix`` (``LengthMix.to_dict``) where it says ``lengths: task``."""
        return replace(self, length_mix=mix) if self.lengths == "task" else self

    def cpus(self, threads: int | None = None) -> tuple[int, ...] | None:
        """The logical CPUs a measurement on ``threads`` threads (default: the profile's) is pinned to,
        where the profile says ``pin_threads`` and this process may run on that many (``pin_cpus``)."""
        return pin_cpus(threads or self.threads) if self.pin_threads else None

    def available(self) -> bool:
        """The profile's provider is installed in this onnxruntime."""
        import onnxruntime as ort

        return self.provider in ort.get_available_providers()

    def session(self, onnx_path: str | os.PathLike, *, threads: int | None = None, provider: str | None = None,
                options: Any = None, cpus: tuple[int, ...] | None = None) -> "onnxruntime.InferenceSession":  # noqa: F821
        """An ONNX Runtime session as the profile says: its provider, its threads, pinned to ``cpus`` if
        given (see ``pipeline.session``; the calling thread is pinned by ``host.pinned``)."""
        provider = provider or self.provider
        import onnxruntime as ort

        if provider not in ort.get_available_providers():
            raise ProfileError(f"profile '{self.name}': provider {provider} is not available in this onnxruntime")
        return pipeline.session(onnx_path, threads=threads or self.threads, provider=provider, options=options, cpus=cpus)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values; ``from_dict`` reads it back (the store keeps a run's profiles this way)."""
        import dataclasses

        d = dataclasses.asdict(self)
        d["extra_shapes"] = [list(s) for s in self.extra_shapes]
        return d

    @classmethod
    def from_dict(cls, d: Any) -> "HardwareProfile":
        if not isinstance(d, dict):
            raise ProfileError(f"profile must be a mapping of fields, got {type(d).__name__}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ProfileError(f"profile field '{unknown[0]}' is unknown: expected only {', '.join(known)}")
        for key in ("name", "description", "runtime", "provider", "max_threads"):
            if key not in d:
                raise ProfileError(f"profile field '{key}' is missing")
        for key in ("name", "description", "runtime", "provider", "device"):
            if key in d and (not isinstance(d[key], str) or (key not in ("description", "device") and not d[key].strip())):
                raise ProfileError(f"profile field '{key}' must be a non-empty string, got {d[key]!r}")
        if d["runtime"] not in RUNTIMES:
            raise ProfileError(f"profile field 'runtime' must be one of {', '.join(RUNTIMES)}, got {d['runtime']!r}")
        for key in ("max_threads", "batch_size", "seq_len", "min_runs"):
            if key in d and (not isinstance(d[key], int) or isinstance(d[key], bool) or d[key] < 1):
                raise ProfileError(f"profile field '{key}' must be a positive integer, got {d[key]!r}")
        for key in ("measure_here", "nominal_speed", "pin_threads"):
            if key in d and not isinstance(d[key], bool):
                raise ProfileError(f"profile field '{key}' must be true or false, got {d[key]!r}")
        if d.get("resource") is not None and (not isinstance(d["resource"], str) or not d["resource"].strip()):
            raise ProfileError(f"profile field 'resource' must be a Ray resource name like hw-mobile-cpu, got {d['resource']!r}")
        if "lengths" in d and d["lengths"] not in LENGTHS:
            raise ProfileError(f"profile field 'lengths' must be one of {', '.join(LENGTHS)}, got {d['lengths']!r}")
        mix = d.get("length_mix")
        if mix is not None and not (isinstance(mix, dict) and isinstance(mix.get("lengths"), list)
                                    and isinstance(mix.get("weights"), list) and len(mix["lengths"]) == len(mix["weights"]) > 0):
            raise ProfileError(f"profile field 'length_mix' must be a record of lengths and weights, got {mix!r}")
        if "precision" in d and d["precision"] not in PRECISIONS:
            raise ProfileError(f"profile field 'precision' must be one of {', '.join(PRECISIONS)}, got {d['precision']!r}")
        for key, low, high in (("ci_target", 0.001, 0.5), ("max_seconds", 0.1, 600.0)):
            v = d.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not low <= v <= high):
                raise ProfileError(f"profile field '{key}' must be a number in [{low}, {high}], got {v!r}")
        shapes = d.get("extra_shapes") or []
        if not isinstance(shapes, (list, tuple)) or not all(
                isinstance(s, (list, tuple)) and len(s) == 2 and all(isinstance(x, int) and not isinstance(x, bool) and x > 0
                                                            for x in s) for s in shapes):
            raise ProfileError(f"profile field 'extra_shapes' must be a list of [batch, seq] pairs, got {shapes!r}")
        if not d.get("measure_here", True) and not d.get("resource") and not d.get("predictor"):
            raise ProfileError("profile says measure_here: false but names neither a Ray 'resource' nor a "
                               "'predictor': its latency could never be obtained")
        values = dict(d, extra_shapes=tuple(tuple(s) for s in shapes))
        if d.get("predictor") is not None:
            try:
                values["predictor"] = check_predictor(_int_keys(d["predictor"]))
            except PredictorError as e:
                raise ProfileError(f"profile field 'predictor': {e}") from None
        return cls(**values)


def check_predictor(d: Any) -> dict:
    """Validate a profile's ``predictor:`` mapping: the fields every kind has (kind, name, anchors: each
    with name, config, source, ms and use) here, the rest by the kind's ``check``; returns it with
    defaults filled in. A ``PredictorError`` (one line) names the field."""
    if not isinstance(d, dict):
        raise PredictorError(f"must be a mapping with a 'kind', got {type(d).__name__}")
    kind = d.get("kind")
    cls = predictors.get(kind)
    if "name" in d and (not isinstance(d["name"], str) or not d["name"].strip()):
        raise PredictorError(f"'name' must be a non-empty string (the model's name in every figure), got {d['name']!r}")
    anchors = d.get("anchors")
    if not isinstance(anchors, list) or len(anchors) < 2:
        raise PredictorError("'anchors' must list at least two published measurements (name, config, source, ms)")
    for a in anchors:
        if not isinstance(a, dict) or not {"name", "config", "source", "ms"} <= set(a):
            raise PredictorError(f"each anchor needs name, config, source and ms, got {a!r}")
        if not isinstance(a["config"], dict) or "model_type" not in a["config"]:
            raise PredictorError(f"anchor {a['name']!r}: 'config' must give a transformers model_type and its settings")
        ms = a["ms"]
        if not isinstance(ms, dict) or not ms or not all(
                isinstance(seq, int) and isinstance(row, dict) and row and
                all(isinstance(b, int) and isinstance(v, (int, float)) and v > 0 for b, v in row.items())
                for seq, row in ms.items()):
            raise PredictorError(f"anchor {a['name']!r}: 'ms' must map sequence length -> batch size -> milliseconds")
        if a.get("use", "fit") not in ("fit", "heldout"):
            raise PredictorError(f"anchor {a['name']!r}: 'use' must be fit or heldout, got {a.get('use')!r}")
    out = dict(d)
    out.setdefault("name", f"{kind} map")
    return cls.check(out)


def _int_keys(spec: Any) -> Any:
    """JSON turns the anchors' integer keys (sequence length, batch size) into strings: turn them back."""
    if isinstance(spec, dict):
        return {int(k) if isinstance(k, str) and k.isdigit() else k: _int_keys(v) for k, v in spec.items()}
    if isinstance(spec, list):
        return [_int_keys(v) for v in spec]
    return spec


def _bundled() -> dict[str, Any]:
    return {p.name[: -len(".yaml")]: p for p in files(_BUNDLED).iterdir() if p.name.endswith(".yaml")}


def list_profiles() -> list[str]:
    """Names of the bundled profiles, sorted."""
    return sorted(_bundled())


def load_profile(name_or_path: str | os.PathLike | HardwareProfile) -> HardwareProfile:
    """Load a bundled profile by name (e.g. "laptop-cpu") or a profile .yaml by path (a profile is
    returned as it is)."""
    if isinstance(name_or_path, HardwareProfile):
        return name_or_path
    bundled = _bundled()
    key = str(name_or_path)
    if key in bundled:
        text, where = bundled[key].read_text(encoding="utf-8"), key
    elif key.endswith((".yaml", ".yml")) or Path(key).is_file():
        path = Path(key)
        if not path.is_file():
            raise ProfileError(f"profile file '{key}' does not exist")
        text, where = path.read_text(encoding="utf-8"), key
    else:
        names = sorted(bundled)
        choices = " or ".join([", ".join(names[:-1]), names[-1]]) if len(names) > 1 else "".join(names)
        raise ProfileError(f"unknown device '{key}': choose one of {choices} or give a profile .yaml")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ProfileError(f"profile '{where}' is not valid YAML: {str(e).splitlines()[0]}") from None
    try:
        return HardwareProfile.from_dict(data)
    except ProfileError as e:
        raise ProfileError(f"{where}: {e}") from None


def with_bundled(target: HardwareProfile) -> tuple[HardwareProfile, ...]:
    """The profiles a search times on: its target as given (a profile file of the user's own keeps its
    settings where it takes a bundled profile's name, e.g. a laptop-cpu of a different protocol), then
    every other bundled profile."""
    return (target, *(p for p in map(load_profile, list_profiles()) if p.name != target.name))
