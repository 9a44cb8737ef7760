"""The method registry and what a method may see besides its model.

A method is a function of (model, config, context) that returns a model. Its ``stage`` says where it
sits in a recipe, which always runs the stages in this order:

- ``structure``: changes the PyTorch model's architecture or weights without training (pruning,
  factorization, sharing). After these steps the architecture is final, so latency can be known
  before any training.
- ``recovery``: trains the PyTorch model (distillation from the teacher).
- ``onnx``: turns one ONNX file into another after export (quantization).

Each config is a validated dataclass (checks in ``__post_init__`` with ``check``, never ``assert``); the
recipe stores it as a dict with the config's version (``VERSION`` on the class, 1 if absent), so that a
recipe stored in SQL never silently changes meaning: a config whose fields change meaning bumps its
``VERSION`` and gives ``upgrade(params, version) -> params`` for the old form, else the old form is
refused. A field added later that leaves the others' meaning as it was (its default doing what the config did
before) is named in the class's ``ADDED`` tuple: the recipe hash leaves it out while at its default, so
recipes stored before it keep their hash. Each method also gives its own short label for tables (``label(config) -> str``).
For the contract suite that every registered method must pass (``tests/contracts/test_methods.py``: config
round trip, identity, save -> reload, ONNX export against PyTorch, errors that name themselves, label), a
config declares, as ``typing.ClassVar`` (never fields, which would change the stored form): ``EXAMPLE``, a
small non-identity setting that runs in a second or two on the suite's tiny BERT (4 layers, 4 heads,
hidden 32, FFN 64, vocab 200); ``IDENTITY``, parameters that leave the model's logits unchanged, or None
where there are none; and, for the onnx stage, ``TOLERANCE``, the largest |logit change| it may make there.

Methods that leave training aids in a model register a finalizer (``autocompress.finalize``); methods
that put modules of their own into a model register the module class with ``@module_kind``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Literal

from ..features import TransferSet
from ..finalize import pending_finalizers


class RecipeError(ValueError):
    """A recipe or a method's parameters are invalid; the message names the parameter."""


STAGES = ("structure", "recovery", "onnx")
Stage = Literal["structure", "recovery", "onnx"]


@dataclass(frozen=True)
class Method:
    name: str
    stage: Stage
    config_cls: type
    fn: Callable[..., Any]
    doc: str
    label: Callable[[Any], str]
    size_only: bool = False                 # buys size, never speed on a dense runtime (the front says so)
    not_followed_by: tuple[str, ...] = ()   # methods that may not come after it in a recipe ("*": none may)
    exclusive: str | None = None            # a group of alternatives: at most one step of the group per recipe
    cpu_note: str | None = None             # why it does not pay on a CPU profile (fronts show it there)
    input_dependent_latency: bool = False   # latency depends on the input (early exit): known only after training
    not_with: tuple[tuple[str, str], ...] = ()   # (method, why): methods that may not be in the same recipe

    @property
    def kind(self) -> str:
        """The world the method works in: ``torch`` (a PyTorch model) or ``onnx`` (an ONNX file)."""
        return "onnx" if self.stage == "onnx" else "torch"

    @property
    def version(self) -> int:
        """The version of the config's serialized form."""
        return int(getattr(self.config_cls, "VERSION", 1))

    def upgrade(self, params: dict[str, Any], version: int) -> dict[str, Any]:
        """Parameters stored at ``version`` in today's form (the config class's ``upgrade``), or refused."""
        if version == self.version:
            return params
        upgrade = getattr(self.config_cls, "upgrade", None)
        if version > self.version or upgrade is None:
            raise RecipeError(f"{self.name}: parameters of version {version} cannot be read by this version of "
                              f"autocompress (its {self.name} is version {self.version})")
        return upgrade(dict(params), version)

    def config(self, params: dict[str, Any]) -> Any:
        fields = {f.name for f in dataclasses.fields(self.config_cls)}
        unknown = sorted(set(params) - fields)
        if unknown:
            raise RecipeError(f"{self.name}: unknown parameter {unknown[0]!r}; expected one of {sorted(fields)}")
        try:
            return self.config_cls(**params)
        except TypeError as e:  # wrong types that the dataclass itself rejects
            raise RecipeError(f"{self.name}: {e}") from None


REGISTRY: dict[str, Method] = {}


def register(name: str, stage: Stage, config_cls: type, label: Callable[[Any], str] | None = None, *,
             size_only: bool = False, not_followed_by: tuple[str, ...] = (), exclusive: str | None = None,
             cpu_note: str | None = None, input_dependent_latency: bool = False,
             not_with: dict[str, str] | None = None):
    """Decorator: ``@register("prune_heads", "structure", HeadPruning, label=lambda c: ...)`` on
    ``fn(model, cfg, ctx)`` (``fn(src, dst, cfg, ctx)`` for the onnx stage). Without a label, the
    method's name is its label. ``size_only``: the method makes models smaller but no faster on a
    dense runtime. ``not_followed_by``: methods of the same stage that must not come after it (``"*"``:
    it must be the stage's last), checked when a recipe is built, before any work. ``exclusive``: the
    name of a group of alternatives (``"precision"``: the quantization methods), of which a recipe holds
    at most one step, also checked before any work. ``cpu_note``: one line saying why the method buys
    nothing on a CPU profile (fp16); fronts mark such candidates on CPU devices with it.
    ``input_dependent_latency``: the candidate's latency depends on its input (early exit), so it is
    known only once the model is trained and scored; the search cannot spare it training. ``not_with``:
    methods (of any stage) that may not be in the same recipe -> why, checked when a recipe is built."""
    if stage not in STAGES:
        raise ValueError(f"method {name!r}: stage must be one of {', '.join(STAGES)}, got {stage!r}")

    def wrap(fn):
        if name in REGISTRY:
            raise RuntimeError(f"method {name!r} registered twice")
        doc = (fn.__doc__ or name).strip().splitlines()[0]
        REGISTRY[name] = Method(name, stage, config_cls, fn, doc, label or (lambda cfg: name), size_only,
                                tuple(not_followed_by), exclusive, cpu_note,
                                input_dependent_latency, tuple((not_with or {}).items()))
        return fn

    return wrap


def get_method(name: str) -> Method:
    """The registered method (``autocompress.methods``, the package, registers them all on import)."""
    if name not in REGISTRY:
        raise RecipeError(f"unknown method {name!r}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def check(cond: bool, method: str, message: str) -> None:
    """Parameter validation for config dataclasses (never ``assert``)."""
    if not cond:
        raise RecipeError(f"{method}: {message}")


@dataclass
class Context:
    """What a method may use besides the model: the transfer set (training rows with the teacher's
    logits), a seed, a progress callback, and the fine-tuned teacher itself, loaded on demand (for
    distillation targets inside the network; logits alone come from the transfer set)."""

    transfer: TransferSet
    seed: int = 0
    progress: Callable[[str], None] | None = None
    teacher: Callable[[], Any] | None = None


# ---------------------------------------------------------------- module kinds
MODULE_KINDS: dict[str, type] = {}


def module_kind(name: str) -> Callable[[type], type]:
    """Class decorator: a module type a method puts into models (a factorized Linear, early exit's heads),
    rebuilt from its spec when a checkpoint is loaded: the class gives ``spec()`` and ``from_spec(spec)``
    (``checkpoint`` records and rebuilds them). A class that says ``attached = True`` hangs on the model
    itself rather than replacing one of its parts."""

    def wrap(cls: type) -> type:
        if MODULE_KINDS.get(name, cls) is not cls:
            raise RuntimeError(f"module kind {name!r} registered twice")
        MODULE_KINDS[name] = cls
        cls.kind = name
        return cls

    return wrap


def module_spec(module) -> dict[str, Any]:
    """A module's kind and sizes, as a checkpoint records it (Linear, Embedding, or a registered kind)."""
    import torch

    if isinstance(module, torch.nn.Linear):
        return {"kind": "linear", "in": module.in_features, "out": module.out_features,
                "bias": module.bias is not None}
    if isinstance(module, torch.nn.Embedding):
        return {"kind": "embedding", "num": module.num_embeddings, "dim": module.embedding_dim}
    kind = getattr(module, "kind", None)
    if kind not in MODULE_KINDS:
        raise TypeError(f"cannot record a module of type {type(module).__name__}: register it with @module_kind")
    return {"kind": kind, **module.spec()}


def refuse_after_finalizers(model, method: str) -> None:
    """For structure methods that replace modules: refuse to run on a model still holding another
    method's training state (it would be lost with the replaced modules)."""
    pending = pending_finalizers(model)
    if pending:
        raise RecipeError(f"{method} cannot follow {', '.join(pending)} (its masks would be lost): "
                          f"put {', '.join(pending)} last among the structure steps")
