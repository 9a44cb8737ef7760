"""The method registry and what a method may see besides its model.

A method is a function of (model, config, context) that returns a model. Its ``stage`` says where it
sits in a recipe, which always runs the stages in this order:

- ``structure``: changes the PyTorch model's architecture or weights without training (pruning,
  factorization, sharing). After these steps the architecture is final, so latency can be known
  before any training.
- ``recovery``: trains the PyTorch model (distillation from the teacher).
- ``onnx``: turns one ONNX file into another after export (quantization).

Each config is a validated dataclass; the recipe stores it as a dict. Each method also gives its own
short label for tables (``label(config) -> str``).

Some methods leave training aids in the model that must not reach a checkpoint or an ONNX file
(unstructured pruning keeps masks so that recovery training cannot revive pruned weights). They
register a *finalizer*; ``finalize(model)`` runs them all once training is over, and
``check_final(model)`` (called by ``checkpoint.save_model`` and ``export.export_onnx``) refuses a
model that still needs one.
"""
from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal

import torch


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
    import autocompress.methods  # noqa: F401  (fills the registry)

    if name not in REGISTRY:
        raise RecipeError(f"unknown method {name!r}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def check(cond: bool, method: str, message: str) -> None:
    """Parameter validation for config dataclasses (never ``assert``)."""
    if not cond:
        raise RecipeError(f"{method}: {message}")


@dataclass
class TransferSet:
    """Tokenised training rows with the teacher's logits: what importance scores and distillation use.

    ``features`` holds one dict per row (input_ids, attention_mask, token_type_ids as lists).
    """

    features: list[dict[str, list[int]]]
    labels: torch.Tensor          # [N] int64
    teacher_logits: torch.Tensor  # [N, num_labels] float32
    pad_id: int = 0

    def __len__(self) -> int:
        return len(self.features)

    def batches(self, batch_size: int, n_batches: int, seed: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """Length-bucketed random batches (rows of similar length together: ~3x less padding)."""
        rng = random.Random(seed)
        done = 0
        while done < n_batches:
            order = list(range(len(self)))
            rng.shuffle(order)
            chunk = batch_size * 50
            batches = []
            for start in range(0, len(order), chunk):
                part = sorted(order[start:start + chunk], key=lambda i: len(self.features[i]["input_ids"]))
                batches += [part[j:j + batch_size] for j in range(0, len(part), batch_size)]
            rng.shuffle(batches)
            for idx in batches:
                if done == n_batches:
                    return
                yield self.collate(idx)
                done += 1

    def collate(self, idx: list[int]) -> dict[str, torch.Tensor]:
        rows = [self.features[i] for i in idx]
        width = max(len(r["input_ids"]) for r in rows)
        out = {}
        for key, pad in (("input_ids", self.pad_id), ("attention_mask", 0), ("token_type_ids", 0)):
            out[key] = torch.tensor([r[key] + [pad] * (width - len(r[key])) for r in rows], dtype=torch.long)
        out["labels"] = self.labels[idx]
        out["teacher_logits"] = self.teacher_logits[idx]
        return out


@dataclass
class Context:
    """What a method may use besides the model: the transfer set (training rows with the teacher's
    logits), a seed, a progress callback, and the fine-tuned teacher itself, loaded on demand (for
    distillation targets inside the network; logits alone come from the transfer set)."""

    transfer: TransferSet
    seed: int = 0
    progress: Callable[[str], None] | None = None
    teacher: Callable[[], Any] | None = None


# ---------------------------------------------------------------- finalizers
@dataclass(frozen=True)
class Finalizer:
    name: str
    needed: Callable[[Any], bool]      # does this model still carry what the finalizer removes?
    fn: Callable[[Any], Any]           # model -> model, with it removed for good


FINALIZERS: dict[str, Finalizer] = {}


def register_finalizer(name: str, needed: Callable[[Any], bool]):
    """Decorator: ``@register_finalizer("magnitude_prune", needed=is_pruned)`` on ``fn(model) -> model``."""

    def wrap(fn):
        if name in FINALIZERS:
            raise RuntimeError(f"finalizer {name!r} registered twice")
        FINALIZERS[name] = Finalizer(name, needed, fn)
        return fn

    return wrap


def _finalizers() -> list[Finalizer]:
    import autocompress.methods  # noqa: F401  (fills the registries)

    return list(FINALIZERS.values())


def finalize(model):
    """Make what the methods left for training permanent (e.g. pruning masks become plain zeros).
    Run once after the recovery steps, before the model is saved or exported."""
    for f in _finalizers():
        if f.needed(model):
            model = f.fn(model)
    return model


def finalized_copy(model):
    """The model as it would ship (finalized), leaving ``model`` itself as it is, with its training state
    (e.g. the masks recovery still needs). Tensors that methods recompute from parameters on every forward
    (``torch.nn.utils.prune``'s masked ``weight``) carry autograd history, which ``copy.deepcopy`` refuses:
    they are detached for the copy (the next forward recomputes them anyway)."""
    import copy

    if not pending_finalizers(model):
        return model
    computed = [(m, name, v) for m in model.modules() for name, v in vars(m).items()
                if torch.is_tensor(v) and v.grad_fn is not None]
    for m, name, v in computed:
        setattr(m, name, v.detach())
    try:
        return finalize(copy.deepcopy(model))
    finally:
        for m, name, v in computed:
            setattr(m, name, v)


def pending_finalizers(model) -> list[str]:
    """Names of the finalizers this model still needs."""
    return [f.name for f in _finalizers() if f.needed(model)]


def refuse_after_finalizers(model, method: str) -> None:
    """For structure methods that replace modules: refuse to run on a model still holding another
    method's training state (it would be lost with the replaced modules)."""
    pending = pending_finalizers(model)
    if pending:
        raise RecipeError(f"{method} cannot follow {', '.join(pending)} (its masks would be lost): "
                          f"put {', '.join(pending)} last among the structure steps")


def check_final(model, what: str) -> None:
    """Refuse to ``what`` (save, export) a model that still needs a finalizer."""
    pending = pending_finalizers(model)
    if pending:
        raise ValueError(f"cannot {what} a model that still carries {', '.join(pending)}'s training state: "
                         "call autocompress.methods.base.finalize(model) first")
