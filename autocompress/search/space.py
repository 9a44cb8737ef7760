"""Search spaces: a YAML file -> Optuna suggestions (define-by-run) -> a Recipe.

```yaml
name: quick
trials: 12                      # default number of trials for this space
steps:                          # in the order they are applied
  - method: drop_layers
    params:
      keep: {int: [3, 6]}       # {int: [lo, hi], step: 1, log: false} | {float: [lo, hi], step, log}
      strategy: top             # a constant                          | {choices: [a, b]}
  - method: distill
    when: changed               # only if an earlier step removed something
    params:
      steps: {int: [100, 300], step: 100}
      attention: {float: [0.5, 4.0], log: true, optional: true}   # a conditional parameter (see below)
  - choose: precision           # alternatives: the searcher picks one of these steps (its name is the value)
    optional: true              # ... or none of them ("none"); on a single step (method: ..., optional: true)
    steps:                      # the parameter is named after the method and is true or false
      - method: quantize_int8
      - method: quantize_static
        params: {calibration: {choices: [minmax, percentile]}}   # exist only when this step is picked
seeds:                          # recipes tried first, as the searcher's parameter names
  - {drop_layers.keep: 4, precision: quantize_int8}
```
A parameter marked ``optional: true`` exists only when the searcher switches it on: a switch named
``method.param.on`` (true/false) comes first, and when it is off the parameter is left out, so the
method's default applies (for distillation's loss weights, 0: that target is not used). The switch
and the value are ordinary Optuna parameters (define-by-run: the value is asked only after the switch).

The same function turns a trial into a recipe for the searcher (``optuna.Trial``) and turns stored
parameters back into a recipe (``optuna.trial.FixedTrial``), so the two can never disagree.
"""
from __future__ import annotations

import importlib.resources
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml

from ..methods.base import RecipeError, get_method
from ..recipe import Recipe, Step


class SpaceError(Exception):
    """A user-facing problem with a search space; one line."""


_STEP_KEYS = {"method", "params", "optional", "when"}
_CHOOSE_KEYS = {"choose", "steps", "optional", "when"}
NONE = "none"     # the value of an optional ``choose`` when no step is picked


def _options(spec: dict[str, Any]) -> list[str]:
    """The values of a ``choose`` parameter: its methods, then ``none`` where it is optional."""
    return [o["method"] for o in spec["steps"]] + ([NONE] if spec.get("optional") else [])


def _not_with(a: str, b: str) -> bool:
    """Whether methods ``a`` and ``b`` may not be in one recipe (either says so)."""
    return any(other == b for other, _ in get_method(a).not_with) or any(other == a for other, _ in get_method(b).not_with)


@dataclass
class Space:
    name: str
    steps: list[dict[str, Any]]
    seeds: list[dict[str, Any]] = field(default_factory=list)
    trials: int = 12
    text: str = ""
    finish: dict[str, Any] | None = None    # the finishing stage (``finishing.py``): members, distill params

    def suggest(self, trial, num_layers: int) -> Recipe:
        """Ask ``trial`` (an optuna Trial or FixedTrial) for every choice; return the recipe it makes.
        A step that changes nothing (``is_identity``, judged on the layers left by earlier steps) is
        left out, and so is a step that cannot be combined with an earlier one (``not_with``: static
        int8 after early exit, say); a ``when: changed`` step only follows a structure step that changed
        something."""
        steps, changed, layers = [], False, num_layers
        for spec in self.steps:
            if spec.get("when") == "changed" and not changed:
                continue
            if "choose" in spec:          # alternatives: one parameter names the step (or none)
                picked = trial.suggest_categorical(spec["choose"], _options(spec))
                if picked == NONE:
                    continue
                spec = next(o for o in spec["steps"] if o["method"] == picked)
            elif spec.get("optional") and not trial.suggest_categorical(spec["method"], [True, False]):
                continue
            method = spec["method"]
            params = {k: _suggest(trial, f"{method}.{k}", v) for k, v in (spec.get("params") or {}).items()
                      if not _optional(v) or trial.suggest_categorical(switch(method, k), [True, False])}
            step = Step(method, params)
            cfg = step.config
            is_identity = getattr(cfg, "is_identity", None)
            if is_identity is not None and is_identity(layers):
                continue
            if any(_not_with(s.method, method) for s in steps):
                continue
            layers = getattr(cfg, "layers_after", lambda n: n)(layers)
            changed = changed or get_method(method).stage == "structure"
            steps.append(step)
        return Recipe(tuple(steps))

    def recipe_from_params(self, params: dict[str, Any], num_layers: int) -> Recipe:
        return self.suggest(optuna.trial.FixedTrial(params), num_layers)

    def method_specs(self) -> list[dict[str, Any]]:
        """Every step spec that names a method: the steps, with the options of each ``choose`` in its place."""
        return [o for spec in self.steps for o in (spec["steps"] if "choose" in spec else [spec])]

    def params(self) -> dict[str, Any]:
        """Every searchable parameter by its searcher name (``method.param``, ``method`` for an
        optional step's on/off switch, the ``choose`` name for a choice of steps) -> its spec."""
        out: dict[str, Any] = {}
        for spec in self.steps:
            if "choose" in spec:
                out[spec["choose"]] = {"choices": _options(spec)}
            elif spec.get("optional"):
                out[spec["method"]] = {"choices": [True, False]}
        for spec in self.method_specs():
            for k, v in (spec.get("params") or {}).items():
                if _optional(v):
                    out[switch(spec["method"], k)] = {"choices": [True, False]}
                if isinstance(v, dict):
                    out[f"{spec['method']}.{k}"] = {key: x for key, x in v.items() if key != "optional"}
        return out

    def switches(self) -> list[str]:
        """The searcher names of every on/off switch: optional single steps and optional parameters (of
        every method, those inside a ``choose`` too)."""
        return [s["method"] for s in self.steps if s.get("optional") and "choose" not in s] + [
            switch(s["method"], k) for s in self.method_specs() for k, v in (s.get("params") or {}).items()
            if _optional(v)]

    def validate(self, num_layers: int) -> None:
        """Reject impossible spaces before anything runs: each range must be a valid Optuna
        distribution; each parameter's extremes (lower and upper bound, every choice) must pass its
        method's own validation; both corners of the whole space (with each alternative of every
        ``choose``) and every seed must build a recipe."""
        where = f"search space {self.name!r}"
        for name, spec in self.params().items():
            _distribution(f"{where}, {name}", spec)
        for spec in self.method_specs():
            method = get_method(spec["method"])
            params = spec.get("params") or {}
            low = {k: _extremes(v)[0] for k, v in params.items()}
            for k, v in params.items():
                for value in _extremes(v):
                    try:
                        method.config({**low, k: value})
                    except RecipeError as e:
                        raise SpaceError(f"{where}, {spec['method']}.{k} = {value!r}: {e}") from None
        base = [{n: _extremes(v)[0] for n, v in self.params().items()},
                {n: _extremes(v)[-1] for n, v in self.params().items()}]
        for c in base:      # optional steps and parameters switched on, so every step and value is built
            c.update({name: True for name in self.switches()})
        choices = [s for s in self.steps if "choose" in s]
        width = max((len(s["steps"]) for s in choices), default=1)
        corners = [{**c, **{s["choose"]: s["steps"][min(i, len(s["steps"]) - 1)]["method"] for s in choices}}
                   for i in range(width) for c in base]      # both corners with each alternative picked
        known = self.params()
        for i, seed in enumerate(self.seeds, start=1):     # seeds are numbered from 1 in messages
            for name, value in seed.items():
                if name not in known:
                    raise SpaceError(f"{where}, seed {i}: {name!r} is not a parameter of this space; "
                                     f"expected one of {', '.join(sorted(known))}")
                dist = _distribution(f"{where}, {name}", known[name])
                if not _contains(dist, value):
                    raise SpaceError(f"{where}, seed {i}: {name} = {value!r} is outside its range {known[name]}")
        for i, params in enumerate(corners + self.seeds):
            what = (f"seed {i - len(corners) + 1}" if i >= len(corners) else ("lower" if i % 2 == 0 else "upper")
                    + " corner" + "".join(f", {s['choose']} = {params[s['choose']]}" for s in choices))
            try:
                self.recipe_from_params({**corners[0], **params}, num_layers)
            except (RecipeError, ValueError) as e:
                raise SpaceError(f"{where}, {what}: {e}") from None


def switch(method: str, param: str) -> str:
    """The searcher name of an optional parameter's on/off switch."""
    return f"{method}.{param}.on"


def _optional(spec: Any) -> bool:
    return isinstance(spec, dict) and spec.get("optional") is True


def _extremes(spec: Any) -> list[Any]:
    """The values a parameter spec can reach at its edges: [lo, hi] for ranges, every choice, or the constant."""
    if not isinstance(spec, dict):
        return [spec]
    if "choices" in spec:
        return list(spec["choices"])
    lo, hi = spec.get("int", spec.get("float"))
    return [lo, hi]


def _distribution(where: str, spec: dict[str, Any]):
    """The Optuna distribution of a spec; Optuna's own checks reject e.g. log with low <= 0."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    try:
        if "int" in spec:
            lo, hi = spec["int"]
            if not all(isinstance(b, int) and not isinstance(b, bool) for b in (lo, hi)):
                raise ValueError(f"int bounds must be integers, got {spec['int']!r}")
            return IntDistribution(lo, hi, log=spec.get("log", False), step=spec.get("step", 1))
        if "float" in spec:
            lo, hi = spec["float"]
            return FloatDistribution(float(lo), float(hi), log=spec.get("log", False), step=spec.get("step"))
        return CategoricalDistribution(spec["choices"])
    except (ValueError, TypeError) as e:
        raise SpaceError(f"{where}: {e}") from None


def _contains(dist, value: Any) -> bool:
    try:
        return dist._contains(dist.to_internal_repr(value))
    except (ValueError, TypeError):
        return False


def _suggest(trial, name: str, spec: Any) -> Any:
    if not isinstance(spec, dict):
        return spec
    if "int" in spec:
        lo, hi = spec["int"]
        return trial.suggest_int(name, lo, hi, step=spec.get("step", 1), log=spec.get("log", False))
    if "float" in spec:
        lo, hi = spec["float"]
        return trial.suggest_float(name, lo, hi, step=spec.get("step"), log=spec.get("log", False))
    return trial.suggest_categorical(name, spec["choices"])


def _check_param(where: str, spec: Any) -> None:
    if not isinstance(spec, dict):
        return
    kinds = [k for k in ("int", "float", "choices") if k in spec]
    if len(kinds) != 1:
        raise SpaceError(f"{where}: give exactly one of int: [lo, hi], float: [lo, hi] or choices: [...]")
    if "optional" in spec and not isinstance(spec["optional"], bool):
        raise SpaceError(f"{where}: optional must be true or false, got {spec['optional']!r}")
    if kinds[0] == "choices":
        if set(spec) - {"choices", "optional"}:
            raise SpaceError(f"{where}: unknown key {sorted(set(spec) - {'choices', 'optional'})[0]!r} "
                             "(choices take only optional)")
        if not isinstance(spec["choices"], list) or not spec["choices"]:
            raise SpaceError(f"{where}: choices must be a non-empty list")
        return
    bounds = spec[kinds[0]]
    if not (isinstance(bounds, list) and len(bounds) == 2 and bounds[0] <= bounds[1]):
        raise SpaceError(f"{where}: {kinds[0]} must be [low, high] with low <= high, got {bounds!r}")
    unknown = set(spec) - {kinds[0], "step", "log", "optional"}
    if unknown:
        raise SpaceError(f"{where}: unknown key {sorted(unknown)[0]!r} (expected step, log or optional)")


def _check_choose(name: str, i: int, spec: dict[str, Any]) -> None:
    """``choose: NAME`` with ``steps: [{method, params}, ...]`` (distinct methods) and optionally ``optional``, ``when``."""
    where = f"search space {name!r}, step {i}"
    unknown = set(spec) - _CHOOSE_KEYS
    if unknown:
        raise SpaceError(f"{where}: unknown key {sorted(unknown)[0]!r} (a choose step takes {', '.join(sorted(_CHOOSE_KEYS))})")
    if not isinstance(spec["choose"], str) or not spec["choose"].strip() or "." in spec["choose"]:
        raise SpaceError(f"{where}: choose must name the choice (a word without dots), got {spec['choose']!r}")
    options = spec.get("steps")
    if not isinstance(options, list) or not options:
        raise SpaceError(f"{where}: choose {spec['choose']!r} needs a non-empty 'steps' list of the methods to pick from")
    for o in options:
        if not isinstance(o, dict) or "method" not in o or set(o) - {"method", "params"}:
            raise SpaceError(f"{where}: each step of choose {spec['choose']!r} takes a 'method' and its 'params' only")
    methods = [o["method"] for o in options]
    if len(set(methods)) != len(methods) or NONE in methods:
        raise SpaceError(f"{where}: the steps of choose {spec['choose']!r} must be distinct methods (and not {NONE!r})")


def parse_space(text: str, default_name: str = "custom") -> Space:
    try:
        d = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SpaceError(f"search space is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(d, dict) or not isinstance(d.get("steps"), list) or not d["steps"]:
        raise SpaceError("search space must be a mapping with a non-empty 'steps' list")
    name = str(d.get("name", default_name))
    specs = []
    for i, spec in enumerate(d["steps"]):
        if isinstance(spec, dict) and "choose" in spec:
            _check_choose(name, i, spec)
            if spec.get("when") not in (None, "changed"):
                raise SpaceError(f"search space {name!r}, step {i}: when must be 'changed'")
            specs += [(f"{i} ({spec['choose']}: {o['method']})", o) for o in spec["steps"]]
        else:
            specs.append((str(i), spec))
    methods = [sp.get("method") for _, sp in specs if isinstance(sp, dict)]
    twice = sorted({o["method"] for spec in d["steps"] if isinstance(spec, dict) and "choose" in spec
                    for o in spec["steps"] if methods.count(o["method"]) > 1})
    if twice:      # its parameters would have two meanings
        raise SpaceError(f"search space {name!r}: {twice[0]} is one of a choose's steps and appears again; list it once")
    for i, spec in specs:
        if not isinstance(spec, dict) or "method" not in spec:
            raise SpaceError(f"search space {name!r}, step {i}: each step needs a 'method' (or 'choose' and 'steps')")
        unknown = set(spec) - _STEP_KEYS
        if unknown:
            raise SpaceError(f"search space {name!r}, step {i}: unknown key {sorted(unknown)[0]!r}")
        try:
            method = get_method(spec["method"])
        except RecipeError as e:
            raise SpaceError(f"search space {name!r}, step {i}: {e}") from None
        if spec.get("when") not in (None, "changed"):
            raise SpaceError(f"search space {name!r}, step {i}: when must be 'changed'")
        fields = set(method.config_cls.__dataclass_fields__)
        for k, v in (spec.get("params") or {}).items():
            if k not in fields:
                raise SpaceError(f"search space {name!r}, {spec['method']}: unknown parameter {k!r}; "
                                 f"expected one of {sorted(fields)}")
            _check_param(f"search space {name!r}, {spec['method']}.{k}", v)
    trials = d.get("trials", 12)
    if not isinstance(trials, int) or trials < 1:
        raise SpaceError(f"search space {name!r}: trials must be a positive integer")
    seeds = d.get("seeds") or []
    if not isinstance(seeds, list) or not all(isinstance(s, dict) for s in seeds):
        raise SpaceError(f"search space {name!r}: seeds must be a list of mappings")
    return Space(name, d["steps"], seeds, trials, text, _check_finish(name, d.get("finish")))


FINISH_KEYS = {"members", "distill", "within"}


def _check_finish(name: str, spec: Any) -> dict[str, Any] | None:
    """The space's ``finish:`` block: ``members`` (how many front members are trained again, >= 1),
    ``within`` (only members whose val score is within this of the teacher's, a fraction; default 0.1),
    ``distill`` (the long recovery's parameters, a valid ``distill`` config)."""
    if spec is None:
        return None
    where = f"search space {name!r}, finish"
    if not isinstance(spec, dict) or set(spec) - FINISH_KEYS:
        raise SpaceError(f"{where}: a mapping of {', '.join(sorted(FINISH_KEYS))}")
    members, within = spec.get("members", 3), spec.get("within", 0.1)
    if not isinstance(members, int) or isinstance(members, bool) or members < 1:
        raise SpaceError(f"{where}.members must be a positive integer, got {members!r}")
    if isinstance(within, bool) or not isinstance(within, (int, float)) or not 0 < within <= 1:
        raise SpaceError(f"{where}.within must be a fraction in (0, 1], got {within!r}")
    distill = spec.get("distill") or {}
    try:
        get_method("distill").config({"steps": 1, **distill})
    except RecipeError as e:
        raise SpaceError(f"{where}.distill: {e}") from None
    return {"members": members, "within": float(within), "distill": dict(distill)}


def bundled_spaces() -> list[str]:
    root = importlib.resources.files("autocompress.search_spaces")
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def load_space(name_or_path: str) -> Space:
    """A bundled space name (quick, default) or a path to a YAML file."""
    root = importlib.resources.files("autocompress.search_spaces")
    if name_or_path in bundled_spaces():
        return parse_space((root / f"{name_or_path}.yaml").read_text(), name_or_path)
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise SpaceError(f"search space file {name_or_path} does not exist")
        return parse_space(path.read_text(), path.stem)
    raise SpaceError(f"unknown search space {name_or_path!r}: choose one of {', '.join(bundled_spaces())} "
                     "or give a .yaml file")
