"""Where a model keeps its parts: one small adapter per supported transformers layout.

Methods never spell module names: they ask this module for the encoder's layers, a layer's attention
projections and FFN linears, the word embeddings, and which inputs the model takes. Adding a layout
means adding one ``Layout`` below; nothing else needs to learn its names.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


class ArchitectureError(ValueError):
    """The model's architecture is not one the methods know; one line naming the supported ones."""


@dataclass(frozen=True)
class Layout:
    name: str
    layers: str                 # path of the encoder's ModuleList, from the base model
    query: str                  # paths inside one layer ...
    key: str
    value: str
    attn_out: str               # the attention output projection (input: concatenated heads)
    heads: str                  # module that keeps the head count and head size
    heads_attr: str             # its attribute holding the head count
    ffn_in: str                 # hidden -> intermediate
    ffn_out: str                # intermediate -> hidden
    token_type_ids: bool        # whether the model takes segment ids
    attn_dropout: str = "dropout"   # inside the heads module: the dropout on the attention probabilities


_BERT = Layout("bert", "encoder.layer", "attention.self.query", "attention.self.key", "attention.self.value",
               "attention.output.dense", "attention.self", "num_attention_heads", "intermediate.dense",
               "output.dense", True)
_DISTILBERT = Layout("distilbert", "transformer.layer", "attention.q_lin", "attention.k_lin", "attention.v_lin",
                     "attention.out_lin", "attention", "n_heads", "ffn.lin1", "ffn.lin2", False)

# model_type (as in config.json) -> layout. RoBERTa-style models share BERT's module names.
LAYOUTS: dict[str, Layout] = {
    "bert": _BERT,
    "roberta": _BERT,
    "xlm-roberta": _BERT,
    "camembert": _BERT,
    "electra": _BERT,
    "distilbert": _DISTILBERT,
}


def supported() -> str:
    return ", ".join(sorted(LAYOUTS))


def check_config(config: Any) -> Layout:
    """The layout for a transformers config, or an ArchitectureError naming the supported ones."""
    model_type = getattr(config, "model_type", None)
    if model_type not in LAYOUTS:
        raise ArchitectureError(f"architecture {model_type!r} is not supported: the methods know {supported()}")
    return LAYOUTS[model_type]


def layout(model: Any) -> Layout:
    return check_config(model.config)


def get(root: torch.nn.Module, path: str) -> Any:
    for part in path.split("."):
        root = getattr(root, part)
    return root


def put(root: torch.nn.Module, path: str, value: Any) -> None:
    parent, _, name = path.rpartition(".")
    setattr(get(root, parent) if parent else root, name, value)


def layers(model) -> torch.nn.ModuleList:
    return get(model.base_model, layout(model).layers)


def set_layers(model, kept: list[torch.nn.Module]) -> None:
    put(model.base_model, layout(model).layers, torch.nn.ModuleList(kept))
    model.config.num_hidden_layers = len(kept)      # DistilBertConfig maps it to n_layers


def num_layers(config: Any) -> int:
    return int(config.num_hidden_layers)


def word_embeddings(model) -> torch.nn.Module:
    """The word-embedding module: an ``nn.Embedding``, or a factorized one (V x E table, E x H projection)."""
    return model.base_model.embeddings.word_embeddings


def set_word_embeddings(model, module: torch.nn.Module) -> None:
    model.base_model.embeddings.word_embeddings = module


def vocab_weight(model) -> torch.nn.Parameter:
    """The vocabulary-sized matrix of the word embeddings (V x H, or V x E once factorized): the
    parameter that training keeps frozen (its gradient and optimiser state cost more than they help)."""
    vocab = int(model.config.vocab_size)
    found = [p for p in word_embeddings(model).parameters() if p.dim() == 2 and p.shape[0] == vocab]
    if len(found) != 1:
        raise ValueError(f"the word embeddings hold {len(found)} matrices with {vocab} rows; expected one")
    return found[0]


def input_names(model_or_config: Any) -> tuple[str, ...]:
    config = getattr(model_or_config, "config", model_or_config)
    names = ("input_ids", "attention_mask")
    return names + ("token_type_ids",) if check_config(config).token_type_ids else names


def inputs(model, batch: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``batch`` that ``model`` takes as inputs."""
    return {k: batch[k] for k in input_names(model) if k in batch}


# ---------------------------------------------------------------- one layer's parts
def attention_linears(model, layer) -> dict[str, torch.nn.Linear]:
    lay = layout(model)
    return {"query": get(layer, lay.query), "key": get(layer, lay.key), "value": get(layer, lay.value),
            "attn_out": get(layer, lay.attn_out)}


def ffn_linears(model, layer) -> dict[str, torch.nn.Linear]:
    lay = layout(model)
    return {"ffn_in": get(layer, lay.ffn_in), "ffn_out": get(layer, lay.ffn_out)}


def linear_paths(model) -> dict[str, str]:
    """Role -> path inside a layer, for every Linear a layer holds (query, key, value, attn_out, ffn_in, ffn_out)."""
    lay = layout(model)
    return {"query": lay.query, "key": lay.key, "value": lay.value, "attn_out": lay.attn_out,
            "ffn_in": lay.ffn_in, "ffn_out": lay.ffn_out}


def heads_module(model, layer) -> torch.nn.Module:
    return get(layer, layout(model).heads)


def num_heads(model, layer) -> int:
    return int(getattr(heads_module(model, layer), layout(model).heads_attr))


def head_size(model, layer) -> int:
    return int(heads_module(model, layer).attention_head_size)


def attention_dropout(model, layer) -> torch.nn.Dropout:
    """The dropout applied to a layer's attention probabilities (eager attention returns them after it)."""
    return get(heads_module(model, layer), layout(model).attn_dropout)


def set_num_heads(model, layer, n: int) -> None:
    m = heads_module(model, layer)
    setattr(m, layout(model).heads_attr, n)
    if hasattr(m, "all_head_size"):
        m.all_head_size = n * m.attention_head_size


# ---------------------------------------------------------------- running a model from a hidden state
def hidden_size(model) -> int:
    return int(model.config.hidden_size)      # DistilBertConfig maps it to dim


class _PassThrough(torch.nn.Module):
    """Stands in for the embeddings: returns the hidden state given as ``inputs_embeds`` unchanged
    (BERT-style models pass it by keyword, DistilBERT by position)."""

    def forward(self, *args, **kwargs):
        x = kwargs.get("inputs_embeds")
        if x is None:
            x = next(a for a in args if torch.is_tensor(a) and a.is_floating_point())
        return x


def bypass_embeddings(model) -> None:
    """Make ``model(inputs_embeds=h, attention_mask=m)`` run its encoder layers (and head) on the hidden
    state ``h`` as it is: the embeddings (lookup, positions, segment ids, LayerNorm) and any projection
    after them (ELECTRA's ``embeddings_project``) are taken out, while the model's own attention-mask
    code still runs. Early exit's later segments are models treated so."""
    base = model.base_model
    base.embeddings = _PassThrough()
    if hasattr(base, "embeddings_project"):
        del base.embeddings_project
