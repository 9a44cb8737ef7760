"""Structured pruning: whole layers, attention heads, FFN neurons — physically removed.

Heads and neurons are ranked by a first-order importance score (Michel et al., 2019): a gate of ones
is multiplied into the activations that feed each output projection, and |d loss / d gate| summed
over a few batches says how much the loss depends on each head or neuron. The least important are cut
out of the weight matrices with ``transformers.pytorch_utils.prune_linear_layer``, so the model really
shrinks; ``checkpoint.py`` saves the new per-layer shapes so the model can be rebuilt.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from transformers.pytorch_utils import prune_linear_layer

from .. import arch
from .base import Context, check, register


def encoder_layers(model) -> torch.nn.ModuleList:
    return arch.layers(model)


# ---------------------------------------------------------------- layers
@dataclass(frozen=True)
class LayerDrop:
    keep: int                 # number of encoder layers kept
    strategy: str = "top"     # "top": drop the top layers (Sajjad et al., 2020); "alternate": keep evenly spaced

    EXAMPLE: ClassVar[dict] = {"keep": 2, "strategy": "alternate"}      # for the contract suite (methods/base.py)
    IDENTITY: ClassVar[dict | None] = {"keep": 4}                       # all of the tiny model's 4 layers

    def __post_init__(self):
        check(isinstance(self.keep, int) and self.keep >= 1, "drop_layers", f"keep must be an int >= 1, got {self.keep!r}")
        check(self.strategy in ("top", "alternate"), "drop_layers",
              f"strategy must be 'top' or 'alternate', got {self.strategy!r}")

    def is_identity(self, num_layers: int) -> bool:
        return self.keep >= num_layers

    def layers_after(self, num_layers: int) -> int:
        return min(self.keep, num_layers)


def layers_to_keep(n: int, keep: int, strategy: str) -> list[int]:
    if keep >= n:
        return list(range(n))
    if strategy == "top":
        return list(range(keep))
    # evenly spaced, always keeping the last layer (its output feeds the classifier)
    return sorted({round(i * (n - 1) / max(keep - 1, 1)) for i in range(keep)}) if keep > 1 else [n - 1]


@register("drop_layers", "structure", LayerDrop,
          label=lambda c: f"layers {c.keep}" + ("" if c.strategy == "top" else " alt"))
def drop_layers(model, cfg: LayerDrop, ctx: Context | None = None):
    """Drop whole encoder layers."""
    layers = encoder_layers(model)
    idx = layers_to_keep(len(layers), cfg.keep, cfg.strategy)
    kept_from = getattr(model.config, "autocompress_layers", None) or list(range(len(layers)))
    arch.set_layers(model, [layers[i] for i in idx])
    model.config.autocompress_layers = [kept_from[i] for i in idx]   # teacher layer of each kept layer
    return model


# ---------------------------------------------------------------- importance
def _gated_importance(model, ctx: Context, n_batches: int, batch_size: int, targets) -> list[torch.Tensor]:
    """|d loss/d gate| per unit for each (linear layer, unit count) in ``targets``; gates multiply the
    linear layer's input, viewed as [..., units, width]."""
    gates = [torch.ones(units, requires_grad=True) for _, units in targets]
    hooks = []
    for (linear, units), gate in zip(targets, gates):
        def pre_hook(module, args, gate=gate, units=units):
            x = args[0]                                       # [B, T, units * width]
            shaped = x.view(*x.shape[:-1], units, -1)         # [B, T, units, width]
            return ((shaped * gate[:, None]).view_as(x),)
        hooks.append(linear.register_forward_pre_hook(pre_hook))
    scores = [torch.zeros(units) for _, units in targets]
    was_training = model.training
    model.eval()
    try:
        for batch in ctx.transfer.batches(batch_size, n_batches, seed=ctx.seed):
            logits = model(**arch.inputs(model, batch)).logits
            loss = F.cross_entropy(logits, batch["labels"])
            grads = torch.autograd.grad(loss, gates)
            for s, g in zip(scores, grads):
                s += g.abs()
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return scores


def _keep_count(total: int, ratio: float, multiple: int = 1) -> int:
    keep = round(total * (1.0 - ratio))
    if multiple > 1:
        keep = int(round(keep / multiple) * multiple)
    return max(min(keep, total), max(multiple, 1) if total >= multiple else 1)


def _prune_linear(module, index: torch.Tensor, dim: int):
    """``prune_linear_layer`` for a Linear; a module of a method's own (a factorized Linear) prunes itself."""
    return module.pruned(index, dim) if hasattr(module, "pruned") else prune_linear_layer(module, index, dim=dim)


# ---------------------------------------------------------------- heads
@dataclass(frozen=True)
class HeadPruning:
    ratio: float              # fraction of each layer's heads removed (at least one head stays)
    score_batches: int = 8    # batches used for the importance score
    batch_size: int = 32

    EXAMPLE: ClassVar[dict] = {"ratio": 0.5, "score_batches": 2, "batch_size": 8}
    IDENTITY: ClassVar[dict | None] = {"ratio": 0.0}

    def __post_init__(self):
        check(isinstance(self.ratio, (int, float)) and 0.0 <= self.ratio < 1.0, "prune_heads",
              f"ratio must be in [0, 1), got {self.ratio!r}")
        check(self.score_batches >= 1, "prune_heads", "score_batches must be >= 1")

    def is_identity(self, num_layers: int) -> bool:
        return self.ratio == 0


def prune_attention_heads(model, layer, keep: list[int]) -> None:
    """Keep only heads ``keep`` of one layer: q/k/v rows and the output projection's columns are cut."""
    d = arch.head_size(model, layer)
    index = torch.cat([torch.arange(h * d, (h + 1) * d) for h in keep])
    paths = arch.linear_paths(model)
    for role in ("query", "key", "value"):
        arch.put(layer, paths[role], _prune_linear(arch.get(layer, paths[role]), index, 0))
    arch.put(layer, paths["attn_out"], _prune_linear(arch.get(layer, paths["attn_out"]), index, 1))
    holder = arch.heads_module(model, layer)
    old = getattr(holder, "kept_heads", list(range(arch.num_heads(model, layer))))
    holder.kept_heads = [old[h] for h in keep]      # indices in the original model, for the record
    arch.set_num_heads(model, layer, len(keep))


@register("prune_heads", "structure", HeadPruning, label=lambda c: f"heads -{c.ratio:.0%}")
def prune_heads(model, cfg: HeadPruning, ctx: Context):
    """Remove the least important attention heads of every layer."""
    if cfg.ratio == 0:
        return model
    layers = encoder_layers(model)
    targets = [(arch.attention_linears(model, l)["attn_out"], arch.num_heads(model, l)) for l in layers]
    scores = _gated_importance(model, ctx, cfg.score_batches, cfg.batch_size, targets)
    for layer, s in zip(layers, scores):
        keep = _keep_count(len(s), cfg.ratio)
        kept = sorted(torch.topk(s, keep).indices.tolist())
        if keep < len(s):
            prune_attention_heads(model, layer, kept)
    return model


# ---------------------------------------------------------------- FFN neurons
@dataclass(frozen=True)
class FFNPruning:
    ratio: float              # fraction of each layer's FFN neurons removed
    score_batches: int = 8
    batch_size: int = 32
    multiple: int = 16        # kept width rounded to a multiple of this (GEMM-friendly)

    EXAMPLE: ClassVar[dict] = {"ratio": 0.5, "score_batches": 2, "batch_size": 8}
    IDENTITY: ClassVar[dict | None] = {"ratio": 0.0}

    def __post_init__(self):
        check(isinstance(self.ratio, (int, float)) and 0.0 <= self.ratio < 1.0, "prune_ffn",
              f"ratio must be in [0, 1), got {self.ratio!r}")
        check(self.multiple >= 1, "prune_ffn", "multiple must be >= 1")

    def is_identity(self, num_layers: int) -> bool:
        return self.ratio == 0


def prune_ffn_neurons(model, layer, keep: list[int]) -> None:
    index = torch.tensor(keep)
    paths = arch.linear_paths(model)
    arch.put(layer, paths["ffn_in"], _prune_linear(arch.get(layer, paths["ffn_in"]), index, 0))
    arch.put(layer, paths["ffn_out"], _prune_linear(arch.get(layer, paths["ffn_out"]), index, 1))


@register("prune_ffn", "structure", FFNPruning, label=lambda c: f"ffn -{c.ratio:.0%}")
def prune_ffn(model, cfg: FFNPruning, ctx: Context):
    """Remove the least important FFN (intermediate) neurons of every layer."""
    if cfg.ratio == 0:
        return model
    layers = encoder_layers(model)
    targets = [(f["ffn_out"], f["ffn_in"].out_features) for f in (arch.ffn_linears(model, l) for l in layers)]
    scores = _gated_importance(model, ctx, cfg.score_batches, cfg.batch_size, targets)
    for layer, s in zip(layers, scores):
        keep = _keep_count(len(s), cfg.ratio, cfg.multiple)
        if keep < len(s):
            prune_ffn_neurons(model, layer, sorted(torch.topk(s, keep).indices.tolist()))
    return model
