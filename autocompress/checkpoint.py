"""Save and rebuild (possibly pruned) BERT-family classifiers.

A pruned model no longer matches its config (heads and FFN widths differ per layer), so the config
carries a shape record, ``autocompress_shape``: per layer the heads kept (original indices) and the
FFN width. Loading builds the model from its config, shrinks each layer to the record, then loads the
safetensors weights strictly: nothing is unpickled.
"""
from __future__ import annotations

import os
from pathlib import Path

from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from .methods.pruning import encoder_layers, prune_attention_heads, prune_ffn_neurons


def shape_record(model) -> list[dict]:
    out = []
    for layer in encoder_layers(model):
        sa = layer.attention.self
        out.append({"heads": list(getattr(sa, "kept_heads", range(sa.num_attention_heads))),
                    "ffn": layer.intermediate.dense.out_features})
    return out


def save_model(model, tokenizer, path: str | os.PathLike) -> Path:
    path = Path(path)
    model.config.autocompress_shape = shape_record(model)
    model.save_pretrained(path, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return path


def _shrink(model, shape: list[dict]) -> None:
    """Give each layer the recorded sizes (weights are loaded afterwards, so which rows stay is moot)."""
    for layer, rec in zip(encoder_layers(model), shape):
        n_heads = len(rec["heads"])
        if n_heads != layer.attention.self.num_attention_heads:
            prune_attention_heads(layer.attention, list(range(n_heads)))
        layer.attention.self.kept_heads = list(rec["heads"])
        if rec["ffn"] != layer.intermediate.dense.out_features:
            prune_ffn_neurons(layer, list(range(rec["ffn"])))


def load_model(path: str | os.PathLike, attn_implementation: str = "sdpa"):
    """Rebuild a model saved by ``save_model`` (or any plain fine-tuned BERT-family folder)."""
    path = Path(path)
    config = AutoConfig.from_pretrained(path)
    shape = getattr(config, "autocompress_shape", None)
    if not shape:
        return AutoModelForSequenceClassification.from_pretrained(path, attn_implementation=attn_implementation).eval()
    config.num_hidden_layers = len(shape)
    model = AutoModelForSequenceClassification.from_config(config, attn_implementation=attn_implementation)
    _shrink(model, shape)
    state = load_file(str(path / "model.safetensors"))
    model.load_state_dict(state, strict=False)
    missing = set(model.state_dict()) - set(state)
    # tied or buffer entries (position_ids) may be absent from the file; weights may not
    missing = {k for k in missing if not k.endswith(("position_ids", "token_type_ids"))}
    if missing:
        raise ValueError(f"checkpoint {path} lacks weights: {sorted(missing)[:3]}")
    return model.eval()


def load_tokenizer(path: str | os.PathLike):
    return AutoTokenizer.from_pretrained(str(path))


def size_mb(path: str | os.PathLike) -> float:
    return os.path.getsize(path) / 1e6


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())
