"""Unstructured pruning: global magnitude pruning of the encoder's Linear weights (Han et al., 2015;
for BERT: Gordon et al., 2020; Chen et al., 2020).

The ``sparsity`` fraction of all encoder Linear weights with the smallest magnitude, ranked together
across layers (a global threshold, so layers that matter less lose more), are set to zero. The zeros
are held by ``torch.nn.utils.prune`` masks, so the recovery training that follows in a recipe cannot
revive them; ``finalize`` (``autocompress.finalize``) then makes them permanent and drops the masks.

What it buys here: **size once compressed** (zeros deflate well: the zipped ONNX file shrinks), not
speed — the matrices stay dense, and a dense runtime (ONNX Runtime's CPU kernels) multiplies zeros as
fast as any other number. Biases, LayerNorms, embeddings and the classifier are left dense.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch.nn.utils import prune

from .. import arch
from ..finalize import register_finalizer
from .base import Context, check, register


@dataclass(frozen=True)
class MagnitudePruning:
    sparsity: float           # fraction of the encoder's Linear weights set to zero, in [0, 1)

    EXAMPLE: ClassVar[dict] = {"sparsity": 0.5}         # for the contract suite (methods/base.py)
    IDENTITY: ClassVar[dict | None] = {"sparsity": 0.0}

    def __post_init__(self):
        check(isinstance(self.sparsity, (int, float)) and not isinstance(self.sparsity, bool)
              and 0.0 <= self.sparsity < 1.0, "magnitude_prune", f"sparsity must be in [0, 1), got {self.sparsity!r}")

    def is_identity(self, num_layers: int) -> bool:
        return self.sparsity == 0


def encoder_linears(model) -> list[torch.nn.Linear]:
    """Every ``nn.Linear`` inside the encoder layers' attention and FFN parts (inside factorized ones
    too), each once even where layers share it."""
    seen: dict[int, torch.nn.Linear] = {}
    for layer in arch.layers(model):
        for path in arch.linear_paths(model).values():
            for m in arch.get(layer, path).modules():
                if isinstance(m, torch.nn.Linear):
                    seen.setdefault(id(m), m)
    return list(seen.values())


def sparsity(model) -> float:
    """Fraction of zeros among the encoder's Linear weights (masked weights count as zeros)."""
    weights = [m.weight for m in encoder_linears(model)]
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / sum(w.numel() for w in weights)


@register("magnitude_prune", "structure", MagnitudePruning, label=lambda c: f"sparse {c.sparsity:.0%}",
          size_only=True, not_followed_by=("*",))     # later structure steps would drop or bypass its masks
def magnitude_prune(model, cfg: MagnitudePruning, ctx: Context | None = None):
    """Zero the smallest-magnitude encoder weights, globally, behind masks that hold during recovery."""
    if cfg.sparsity == 0:
        return model
    params = [(m, "weight") for m in encoder_linears(model)]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=float(cfg.sparsity))
    return model


@register_finalizer("magnitude_prune", needed=prune.is_pruned)
def remove_masks(model):
    """Fold the masks into the weights (``prune.remove``): zeros stay, ``weight_orig``/``weight_mask`` go."""
    for m in model.modules():          # each module once, even where layers share it
        for hook in list(m._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(m, hook._tensor_name)
    return model
