"""Training aids that must not reach a file.

Some methods leave state in a model that recovery training needs but a checkpoint or an ONNX file must
not hold (unstructured pruning keeps masks so that training cannot revive pruned weights). Such a method
registers a *finalizer* here; ``finalize(model)`` runs the ones a model needs once training is over, and
``check_final(model)`` (called by ``checkpoint.save_model`` and ``export``) refuses a model that still
needs one. A model can only carry such state if the method that put it there was imported, and that
import registered its finalizer: this module needs to know no method.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

import torch


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


def pending_finalizers(model) -> list[str]:
    """Names of the finalizers this model still needs."""
    return [f.name for f in FINALIZERS.values() if f.needed(model)]


def finalize(model):
    """Make what the methods left for training permanent (e.g. pruning masks become plain zeros).
    Run once after the recovery steps, before the model is saved or exported."""
    for f in list(FINALIZERS.values()):
        if f.needed(model):
            model = f.fn(model)
    return model


def finalized_copy(model):
    """The model as it would ship (finalized), leaving ``model`` itself as it is, with its training state
    (e.g. the masks recovery still needs). Tensors that methods recompute from parameters on every forward
    (``torch.nn.utils.prune``'s masked ``weight``) carry autograd history, which ``copy.deepcopy`` refuses:
    they are detached for the copy (the next forward recomputes them anyway)."""
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


def check_final(model, what: str) -> None:
    """Refuse to ``what`` (save, export) a model that still needs a finalizer."""
    pending = pending_finalizers(model)
    if pending:
        raise ValueError(f"cannot {what} a model that still carries {', '.join(pending)}'s training state: "
                         "call autocompress.finalize.finalize(model) first")
