"""A recipe is an ordered list of compression steps; it round-trips through JSON and has a stable hash.

Serialized form (version 2): ``{"version": 2, "steps": [{"method", "version", "params"}, ...]}``: each step
carries its method's config version (``Method.version``). Version 1 recipes (stores written before steps
had versions) read as steps of version 1."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .methods import STAGES, Context, RecipeError, get_method

RECIPE_VERSION = 2
READABLE_VERSIONS = (1, 2)


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
        return {"method": self.method, "version": get_method(self.method).version, "params": params}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Step":
        method = get_method(d["method"])
        return cls(d["method"], method.upgrade(dict(d.get("params", {})), int(d.get("version", 1))))


def _hashed(method: str, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` less the config's later fields (``ADDED``) that are at their defaults."""
    cls = get_method(method).config_cls
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    return {k: v for k, v in params.items() if not (k in getattr(cls, "ADDED", ()) and v == defaults[k])}


@dataclass(frozen=True)
class Recipe:
    steps: tuple[Step, ...] = ()

    def __post_init__(self):
        stages = [STAGES.index(get_method(s.method).stage) for s in self.steps]  # also validates names
        for s in self.steps:
            s.config  # validates parameters
        groups: dict[str, list[str]] = {}
        for s in self.steps:                        # alternatives: at most one step of each group
            group = get_method(s.method).exclusive
            if group:
                groups.setdefault(group, []).append(s.method)
        for group, names in groups.items():
            if len(names) > 1:
                raise RecipeError(f"a recipe takes at most one {group} step, got {' and '.join(names)}: "
                                  "they are alternatives, keep one")
        for (a, sa), (b, sb) in zip(zip(self.steps, stages), zip(self.steps[1:], stages[1:])):
            if sb < sa:
                raise RecipeError(f"{b.method} ({STAGES[sb]}) cannot come after {a.method} ({STAGES[sa]}): "
                                  "a recipe runs structure steps, then recovery, then ONNX steps (quantization)")
        for a in self.steps:                        # methods that do not go together in any order
            for other, why in get_method(a.method).not_with:
                if any(b.method == other for b in self.steps):
                    raise RecipeError(f"{other} cannot be combined with {a.method}: {why}")
        for i, a in enumerate(self.steps):          # combinations a method itself rules out
            forbidden = get_method(a.method).not_followed_by
            for b in self.steps[i + 1:]:
                if get_method(b.method).stage == get_method(a.method).stage and (
                        "*" in forbidden and b.method != a.method or b.method in forbidden):
                    raise RecipeError(f"{b.method} cannot come after {a.method}: "
                                      + ("it must be the last step of its stage" if "*" in forbidden
                                         else f"it would undo {a.method}"))

    # ---- serialisation
    def to_dict(self) -> dict[str, Any]:
        return {"version": RECIPE_VERSION, "steps": [s.to_dict() for s in self.steps]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Recipe":
        if d.get("version") not in READABLE_VERSIONS:
            raise RecipeError(f"recipe version {d.get('version')!r} is not supported (expected one of "
                              f"{', '.join(map(str, READABLE_VERSIONS))})")
        return cls(tuple(Step.from_dict(s) for s in d["steps"]))

    @classmethod
    def from_json(cls, text: str) -> "Recipe":
        return cls.from_dict(json.loads(text))

    @property
    def hash(self) -> str:
        """A stable hash of what the recipe does. It is taken over the version-1 form, with a step's config
        version added only where it is above 1: recipes stored before steps carried versions keep their
        hash (duplicates and the recovery cache still find them), and a config whose meaning changed
        (version 2 and up) hashes apart from its old form. Fields a config added later without changing the
        meaning of the others (its ``ADDED`` ClassVar) are left out while at their defaults, for the same
        reason."""
        steps = [{"method": d["method"], "params": _hashed(d["method"], d["params"]),
                  **({"version": d["version"]} if d["version"] != 1 else {})}
                 for d in (s.to_dict() for s in self.steps)]
        text = json.dumps({"version": 1, "steps": steps}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def short(self) -> str:
        """One line for tables, e.g. ``layers 4 · heads -25% · ffn -50% · kd 300 · int8``: each method
        gives its own label."""
        return " · ".join(get_method(s.method).label(s.config) for s in self.steps) or "fp32 (unchanged)"

    def describe(self) -> str:
        """The recipe in words, one step per line (for model cards)."""
        lines = []
        for i, s in enumerate(self.steps, 1):
            m = get_method(s.method)
            params = ", ".join(f"{k}={v}" for k, v in s.to_dict()["params"].items())
            lines.append(f"{i}. {m.doc} ({m.stage}: {s.method}{'; ' + params if params else ''})")
        return "\n".join(lines) or "the fine-tuned teacher, unchanged (fp32)"

    # ---- application
    def stage(self, stage: str) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if get_method(s.method).stage == stage)

    @property
    def structure_steps(self) -> tuple[Step, ...]:
        return self.stage("structure")

    @property
    def recovery_steps(self) -> tuple[Step, ...]:
        return self.stage("recovery")

    @property
    def torch_steps(self) -> tuple[Step, ...]:
        return self.structure_steps + self.recovery_steps

    @property
    def onnx_steps(self) -> tuple[Step, ...]:
        return self.stage("onnx")

    def apply_torch(self, model, ctx: Context | None, steps: tuple[Step, ...] | None = None):
        """Apply the PyTorch steps (by default all: structure, then recovery)."""
        for s in self.torch_steps if steps is None else steps:
            if ctx and ctx.progress:
                ctx.progress(s.method)
            model = get_method(s.method).fn(model, s.config, ctx)
        return model

    def apply_onnx(self, path: str | os.PathLike, out_dir: str | os.PathLike, ctx: Context | None = None) -> Path:
        """Apply the ONNX steps (quantization) to an exported model; returns the final ONNX file."""
        path = Path(path)
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        for i, s in enumerate(self.onnx_steps):
            dst = Path(out_dir) / f"model.{i + 1}.{s.method}.onnx"
            get_method(s.method).fn(path, dst, s.config, ctx)
            path = dst
        return path
