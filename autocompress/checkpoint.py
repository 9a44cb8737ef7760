"""Save and rebuild compressed BERT-family classifiers.

A compressed model no longer matches its config (heads, FFN widths, factorized or shared modules
differ per layer), so ``config.json`` carries a structure record, ``autocompress_structure``: the
encoder's layer count and, for every Linear of every layer (by role: query, key, value, attn_out,
ffn_in, ffn_out) and for the word embeddings, a *module spec* — its kind and sizes. Loading builds
the model from its config, gives each part the recorded kind and size, then loads the safetensors
weights strictly: nothing is unpickled.

Methods that put modules of their own into a model (a factorized Linear, say) register the module
class with ``@module_kind("name")`` (``methods.base``); the class gives ``spec()`` and ``from_spec(spec)``.
Parameters shared between layers are saved once and tied again on load (``config.autocompress_tied``).
Modules a method hangs on the model itself (a registered kind whose class says ``attached = True``, such
as early exit's heads) are recorded in ``config.autocompress_attached`` (attribute -> spec) and hung again.
"""
from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from . import arch
from .finalize import check_final
from .methods import MODULE_KINDS, module_spec      # (the package: every method's module kinds registered)

STRUCTURE_VERSION = 2


def _build(spec: dict[str, Any], like: torch.nn.Module) -> torch.nn.Module:
    kind = spec["kind"]
    if kind == "linear":
        if isinstance(like, torch.nn.Linear) and (like.in_features, like.out_features) == (spec["in"], spec["out"]):
            return like
        return torch.nn.Linear(spec["in"], spec["out"], bias=spec.get("bias", True))
    if kind == "embedding":
        if isinstance(like, torch.nn.Embedding) and like.weight.shape == (spec["num"], spec["dim"]):
            return like
        return torch.nn.Embedding(spec["num"], spec["dim"], padding_idx=like.padding_idx)
    if kind not in MODULE_KINDS:
        raise ValueError(f"checkpoint holds a module of kind {kind!r}, which no loaded method provides")
    return MODULE_KINDS[kind].from_spec({k: v for k, v in spec.items() if k != "kind"})


def structure_record(model) -> dict[str, Any]:
    layers = []
    for layer in arch.layers(model):
        rec = {role: module_spec(arch.get(layer, path)) for role, path in arch.linear_paths(model).items()}
        holder = arch.heads_module(model, layer)
        rec["heads"] = list(getattr(holder, "kept_heads", range(arch.num_heads(model, layer))))
        layers.append(rec)
    return {"version": STRUCTURE_VERSION, "layers": layers,
            "word_embeddings": module_spec(arch.word_embeddings(model))}


def rebuild(model, record: dict[str, Any]) -> None:
    """Give a freshly built model the recorded structure (its weights are loaded afterwards)."""
    if record.get("version") != STRUCTURE_VERSION:
        raise ValueError(f"checkpoint structure version {record.get('version')!r} is not {STRUCTURE_VERSION}: "
                         "re-create it with this version of autocompress")
    paths = arch.linear_paths(model)
    for layer, rec in zip(arch.layers(model), record["layers"]):
        for role, path in paths.items():
            arch.put(layer, path, _build(rec[role], arch.get(layer, path)))
        arch.set_num_heads(model, layer, len(rec["heads"]))
        arch.heads_module(model, layer).kept_heads = list(rec["heads"])
    arch.set_word_embeddings(model, _build(record["word_embeddings"], arch.word_embeddings(model)))


def _tied(model) -> dict[str, str]:
    """Parameters that are the very same tensor as an earlier one: name -> the name saved."""
    seen: dict[int, str] = {}
    tied = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            tied[name] = seen[id(p)]
        else:
            seen[id(p)] = name
    return tied


def save_model(model, tokenizer, path: str | os.PathLike) -> Path:
    check_final(model, "save")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.config.autocompress_structure = structure_record(model)
    tied = _tied(model)
    model.config.autocompress_tied = tied
    model.config.autocompress_attached = {name: module_spec(m) for name, m in model.named_children()
                                          if getattr(m, "attached", False)}
    model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(path)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items() if k not in tied}
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return path


def load_model(path: str | os.PathLike, attn_implementation: str = "sdpa"):
    """Rebuild a model saved by ``save_model`` (or load any plain fine-tuned BERT-family folder)."""
    path = Path(path)
    config = AutoConfig.from_pretrained(path)
    record = getattr(config, "autocompress_structure", None)
    if not record:
        return AutoModelForSequenceClassification.from_pretrained(path, attn_implementation=attn_implementation).eval()
    arch.check_config(config)
    config.num_hidden_layers = len(record["layers"])
    model = AutoModelForSequenceClassification.from_config(config, attn_implementation=attn_implementation)
    rebuild(model, record)
    for name, spec in (getattr(config, "autocompress_attached", None) or {}).items():
        setattr(model, name, _build(spec, None))      # modules a method hung on the model (early exit's heads)
    tied = dict(getattr(config, "autocompress_tied", None) or {})
    for name, source in tied.items():       # tie before loading, so the saved tensor fills both
        _set_parameter(model, name, _get_parameter(model, source))
    state = load_file(str(path / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # buffers such as position_ids may be absent from the file; weights may not
    missing = {k for k in missing if k not in tied and not k.endswith(("position_ids", "token_type_ids"))}
    if missing or unexpected:
        raise ValueError(f"checkpoint {path} does not match its structure: missing {sorted(missing)[:3]}, "
                         f"unexpected {sorted(unexpected)[:3]}")
    return model.eval()


def _get_parameter(model, name: str) -> torch.nn.Parameter:
    return arch.get(model, name)


def _set_parameter(model, name: str, value: torch.nn.Parameter) -> None:
    arch.put(model, name, value)


def load_tokenizer(path: str | os.PathLike):
    return AutoTokenizer.from_pretrained(str(path))


def size_mb(path: str | os.PathLike) -> float:
    return os.path.getsize(path) / 1e6


class _Count(io.RawIOBase):
    """A write-only sink that only counts the bytes written to it."""

    def __init__(self):
        self.n = 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.n += len(b)
        return len(b)


def zipped_mb(path: str | os.PathLike, level: int = 6) -> float:
    """Size in MB of ``path`` inside a zip archive (deflate, zlib level ``level``; 6 is zip's default):
    what downloading it as a compressed archive costs. Zeros (unstructured pruning) and repeated
    values compress; dense random-looking float weights hardly do. The archive is counted as it is
    written, never stored."""
    sink = _Count()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=level) as zf:
        zf.write(path, arcname=Path(path).name)
    return sink.n / 1e6


def count_params(model) -> int:
    """Distinct parameters (a tensor shared by several layers counts once)."""
    return sum(p.numel() for p in model.parameters())
