"""Hardware profiles: which runtime/provider/threads/shape a candidate is measured with."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

RUNTIMES = ("onnxruntime",)
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
    batch_size: int = 1
    seq_len: int = 128

    @property
    def threads(self) -> int:
        """Threads actually used on this machine: max_threads capped by the core count."""
        return max(1, min(self.max_threads, os.cpu_count() or 1))

    def available(self) -> bool:
        import onnxruntime as ort

        return self.provider in ort.get_available_providers()

    def session(self, onnx_path: str | os.PathLike) -> "onnxruntime.InferenceSession":  # noqa: F821
        import onnxruntime as ort

        if not self.available():
            raise ProfileError(f"profile '{self.name}': provider {self.provider} is not available in this onnxruntime")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return ort.InferenceSession(str(onnx_path), sess_options=opts, providers=[self.provider])

    @classmethod
    def from_dict(cls, d: Any) -> "HardwareProfile":
        if not isinstance(d, dict):
            raise ProfileError(f"profile must be a mapping of fields, got {type(d).__name__}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ProfileError(f"profile field '{unknown[0]}' is unknown: expected only {', '.join(known)}")
        required = ("name", "description", "runtime", "provider", "max_threads")
        for key in required:
            if key not in d:
                raise ProfileError(f"profile field '{key}' is missing")
        for key in ("name", "description", "runtime", "provider"):
            if not isinstance(d[key], str) or (key != "description" and not d[key].strip()):
                raise ProfileError(f"profile field '{key}' must be a non-empty string, got {d[key]!r}")
        if d["runtime"] not in RUNTIMES:
            raise ProfileError(f"profile field 'runtime' must be one of {', '.join(RUNTIMES)}, got {d['runtime']!r}")
        for key in ("max_threads", "batch_size", "seq_len"):
            if key in d and (not isinstance(d[key], int) or isinstance(d[key], bool) or d[key] < 1):
                raise ProfileError(f"profile field '{key}' must be a positive integer, got {d[key]!r}")
        return cls(**d)


def _bundled() -> dict[str, Any]:
    return {p.name[: -len(".yaml")]: p for p in files(_BUNDLED).iterdir() if p.name.endswith(".yaml")}


def list_profiles() -> list[str]:
    """Names of the bundled profiles, sorted."""
    return sorted(_bundled())


def load_profile(name_or_path: str | os.PathLike) -> HardwareProfile:
    """Load a bundled profile by name (e.g. "laptop-cpu") or a profile .yaml by path."""
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
