"""Low-rank factorization: truncated SVD of Linear layers, and of the word-embedding matrix (ALBERT).

``low_rank``: each chosen Linear W (out x in) becomes two smaller ones, in -> r (no bias) and r -> out
(with W's bias), from the best rank-r approximation of W (truncated SVD, sqrt of the singular values
on each side). The rank is ``rank_ratio`` x min(in, out), rounded to a multiple of ``multiple``. The
pair has fewer parameters than W only when r < in*out / (in+out): for a square matrix below half
rank, for BERT's 1:4 FFN matrices below 80%. Two thin matrix products can also run *slower* than one
dense one (the survey's warning; more kernel launches, less efficient GEMMs): the benchmark and the
front show the latency as measured, whichever way it goes.

``factorize_embeddings``: the vocabulary x hidden matrix (V x H) becomes V x E followed by an E x H
projection (ALBERT's factorized embedding parameterization, Lan et al., 2020), from the SVD of the
fine-tuned matrix. Embeddings are a lookup, so this buys size, hardly any time.

Both modules are registered with ``methods.base.module_kind`` so a saved model is rebuilt from its
structure record.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .. import arch
from .base import Context, check, module_kind, refuse_after_finalizers, register

ATTENTION = ("query", "key", "value", "attn_out")
FFN = ("ffn_in", "ffn_out")
TARGETS = {"attention": ATTENTION, "ffn": FFN, "all": ATTENTION + FFN}


# ---------------------------------------------------------------- modules
@module_kind("low_rank_linear")
class LowRankLinear(torch.nn.Module):
    """x -> up(down(x)): in -> rank (no bias) -> out (with bias). Behaves like the Linear it replaces."""

    def __init__(self, in_features: int, rank: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.rank, self.out_features = in_features, rank, out_features
        self.down = torch.nn.Linear(in_features, rank, bias=False)
        self.up = torch.nn.Linear(rank, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))

    def spec(self) -> dict[str, Any]:
        return {"in": self.in_features, "rank": self.rank, "out": self.out_features, "bias": self.up.bias is not None}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "LowRankLinear":
        return cls(spec["in"], spec["rank"], spec["out"], spec.get("bias", True))

    def dense_weight(self) -> torch.Tensor:
        """The out x in matrix this pair computes."""
        return self.up.weight @ self.down.weight

    def pruned(self, index: torch.Tensor, dim: int) -> "LowRankLinear":
        """Keep only outputs (dim 0) or inputs (dim 1) ``index``, as structured pruning does to a Linear."""
        from transformers.pytorch_utils import prune_linear_layer

        out = LowRankLinear(self.in_features if dim == 0 else len(index), self.rank,
                            len(index) if dim == 0 else self.out_features, self.up.bias is not None)
        out.down = self.down if dim == 0 else prune_linear_layer(self.down, index, dim=1)
        out.up = prune_linear_layer(self.up, index, dim=0) if dim == 0 else self.up
        return out


@module_kind("factorized_embedding")
class FactorizedEmbedding(torch.nn.Module):
    """ids -> project(embed(ids)): a V x E table and an E x H projection, in place of a V x H table."""

    def __init__(self, num_embeddings: int, dim: int, embedding_dim: int, padding_idx: int | None = None):
        super().__init__()
        self.num_embeddings, self.dim, self.embedding_dim = num_embeddings, dim, embedding_dim
        self.padding_idx = padding_idx
        self.embed = torch.nn.Embedding(num_embeddings, dim, padding_idx=padding_idx)
        self.project = torch.nn.Linear(dim, embedding_dim, bias=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.project(self.embed(input_ids))

    def spec(self) -> dict[str, Any]:
        return {"num": self.num_embeddings, "dim": self.dim, "out": self.embedding_dim, "padding_idx": self.padding_idx}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "FactorizedEmbedding":
        return cls(spec["num"], spec["dim"], spec["out"], spec.get("padding_idx"))

    def dense_weight(self) -> torch.Tensor:
        return self.embed.weight @ self.project.weight.T


def _svd(w: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Truncated SVD in float64 (exact to float32 precision at full rank): U_r [m, r], S_r [r], Vh_r [r, n]."""
    u, s, vh = torch.linalg.svd(w.detach().double(), full_matrices=False)
    return u[:, :rank], s[:rank], vh[:rank]


def _dense(module: torch.nn.Module) -> torch.Tensor:
    return module.weight if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)) else module.dense_weight()


def low_rank_linear(module: torch.nn.Module, rank: int) -> LowRankLinear:
    """The rank-``rank`` factorization of a Linear (or of a LowRankLinear, through its product)."""
    w = _dense(module)                                     # [out, in]
    bias = module.bias if isinstance(module, torch.nn.Linear) else module.up.bias
    out = LowRankLinear(w.shape[1], rank, w.shape[0], bias is not None)
    u, s, vh = _svd(w, rank)
    root = s.sqrt()
    with torch.no_grad():
        out.down.weight.copy_(root[:, None] * vh)          # [rank, in]
        out.up.weight.copy_(u * root)                      # [out, rank]
        if bias is not None:
            out.up.bias.copy_(bias)
    return out


def factorized_embedding(module: torch.nn.Module, dim: int) -> FactorizedEmbedding:
    """V x H table -> V x dim table (U_E S_E) and dim -> H projection (Vh_E)."""
    w = _dense(module)                                     # [V, H]
    out = FactorizedEmbedding(w.shape[0], dim, w.shape[1], module.padding_idx)
    u, s, vh = _svd(w, dim)
    with torch.no_grad():
        out.embed.weight.copy_(u * s)                      # [V, dim]
        out.project.weight.copy_(vh.T)                     # [H, dim]
    return out


# ---------------------------------------------------------------- low_rank
@dataclass(frozen=True)
class LowRank:
    rank_ratio: float         # kept rank as a fraction of min(in, out); 1.0 changes nothing
    targets: str = "ffn"      # which Linears: ffn | attention | all
    multiple: int = 8         # rank rounded to a multiple of this (GEMM-friendly)

    EXAMPLE: ClassVar[dict] = {"rank_ratio": 0.5, "targets": "all"}    # for the contract suite (methods/base.py)
    IDENTITY: ClassVar[dict | None] = {"rank_ratio": 1.0}

    def __post_init__(self):
        check(isinstance(self.rank_ratio, (int, float)) and not isinstance(self.rank_ratio, bool)
              and 0.0 < self.rank_ratio <= 1.0, "low_rank", f"rank_ratio must be in (0, 1], got {self.rank_ratio!r}")
        check(self.targets in TARGETS, "low_rank", f"targets must be one of {', '.join(TARGETS)}, got {self.targets!r}")
        check(isinstance(self.multiple, int) and self.multiple >= 1, "low_rank",
              f"multiple must be an int >= 1, got {self.multiple!r}")

    def is_identity(self, num_layers: int) -> bool:
        return self.rank_ratio == 1.0

    def rank(self, full: int) -> int:
        """The rank kept of a matrix of full rank ``full`` (at least one multiple, at most ``full``)."""
        r = int(round(self.rank_ratio * full / self.multiple)) * self.multiple
        return min(full, max(r, min(self.multiple, full)))


@register("low_rank", "structure", LowRank, label=lambda c: f"rank {c.rank_ratio:.0%} {c.targets}")
def low_rank(model, cfg: LowRank, ctx: Context | None = None):
    """Replace chosen Linears by two thinner ones (truncated SVD)."""
    if cfg.is_identity(0):
        return model
    refuse_after_finalizers(model, "low_rank")
    paths = arch.linear_paths(model)
    done: dict[int, torch.nn.Module] = {}      # a module shared by several layers is factorized once
    for layer in arch.layers(model):
        for role in TARGETS[cfg.targets]:
            module = arch.get(layer, paths[role])
            if id(module) not in done:
                full = min(module.in_features, module.out_features)
                rank = cfg.rank(full)
                done[id(module)] = module if rank >= full else low_rank_linear(module, rank)
            arch.put(layer, paths[role], done[id(module)])
    return model


# ---------------------------------------------------------------- factorize_embeddings
@dataclass(frozen=True)
class EmbeddingFactorization:
    dim: int                  # E: the inner width of V x E . E x H; must be below the embedding width H

    EXAMPLE: ClassVar[dict] = {"dim": 16}              # for the contract suite (methods/base.py)
    IDENTITY: ClassVar[dict | None] = None             # none: dim must be below the width (at H it is no smaller)

    def __post_init__(self):
        check(isinstance(self.dim, int) and not isinstance(self.dim, bool) and self.dim >= 1,
              "factorize_embeddings", f"dim must be an int >= 1, got {self.dim!r}")


@register("factorize_embeddings", "structure", EmbeddingFactorization, label=lambda c: f"emb {c.dim}",
          size_only=True)
def factorize_embeddings(model, cfg: EmbeddingFactorization, ctx: Context | None = None):
    """Factorize the word-embedding matrix V x H into V x E and E x H (ALBERT-style, by SVD)."""
    module = arch.word_embeddings(model)
    width = module.embedding_dim
    check(cfg.dim < width, "factorize_embeddings",
          f"dim must be below the embedding width {width} (at {cfg.dim} the factors are no smaller), got {cfg.dim}")
    arch.set_word_embeddings(model, factorized_embedding(module, cfg.dim))
    return model
