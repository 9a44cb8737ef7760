"""A recipe is an ordered list of compression steps; it round-trips through JSON and has a stable hash."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .methods.base import Context, RecipeError, get_method

RECIPE_VERSION = 1


@dataclass(frozen=True)
class Step:
    method: str
    params: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def config(self):
        return get_method(self.method).config(self.params)

    def to_dict(self) -> dict[str, Any]:
        """Parameters with defaults filled in (and 2 read as 2.0 for float fields), so equal steps
        serialise and hash equally."""
        cfg = self.config
        params = {f.name: float(getattr(cfg, f.name)) if f.type in ("float", float) and
                  isinstance(getattr(cfg, f.name), int) and not isinstance(getattr(cfg, f.name), bool)
                  else getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
        return {"method": self.method, "params": params}


@dataclass(frozen=True)
class Recipe:
    steps: tuple[Step, ...] = ()

    def __post_init__(self):
        kinds = [get_method(s.method).kind for s in self.steps]  # also validates each method name
        for s in self.steps:
            s.config  # validates parameters
        if "onnx" in kinds and "torch" in kinds[kinds.index("onnx"):]:
            raise RecipeError("ONNX steps (quantization) must come after every PyTorch step")

    # ---- serialisation
    def to_dict(self) -> dict[str, Any]:
        return {"version": RECIPE_VERSION, "steps": [s.to_dict() for s in self.steps]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Recipe":
        if d.get("version") != RECIPE_VERSION:
            raise RecipeError(f"recipe version {d.get('version')!r} is not supported (expected {RECIPE_VERSION})")
        return cls(tuple(Step(s["method"], dict(s.get("params", {}))) for s in d["steps"]))

    @classmethod
    def from_json(cls, text: str) -> "Recipe":
        return cls.from_dict(json.loads(text))

    @property
    def hash(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def short(self) -> str:
        """One line for tables, e.g. ``layers 4 · heads -25% · ffn -50% · kd 300 · int8``."""
        parts = []
        for s in self.steps:
            c = s.config
            parts.append({
                "drop_layers": lambda: f"layers {c.keep}" + ("" if c.strategy == "top" else " alt"),
                "prune_heads": lambda: f"heads -{c.ratio:.0%}",
                "prune_ffn": lambda: f"ffn -{c.ratio:.0%}",
                "distill": lambda: f"kd {c.steps}",
                "quantize_int8": lambda: "int8",
            }.get(s.method, lambda: s.method)())
        return " · ".join(parts) or "fp32 (unchanged)"

    # ---- application
    @property
    def torch_steps(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if get_method(s.method).kind == "torch")

    @property
    def onnx_steps(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if get_method(s.method).kind == "onnx")

    def apply_torch(self, model, ctx: Context | None):
        for s in self.torch_steps:
            if ctx and ctx.progress:
                ctx.progress(s.method)
            model = get_method(s.method).fn(model, s.config, ctx)
        return model

    def apply_onnx(self, path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
        """Apply the ONNX steps (quantization) to an exported model; returns the final ONNX file."""
        path = Path(path)
        for i, s in enumerate(self.onnx_steps):
            dst = Path(out_dir) / f"model.{i + 1}.{s.method}.onnx"
            get_method(s.method).fn(path, dst, s.config, None)
            path = dst
        return path
