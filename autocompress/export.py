"""torch -> ONNX: the one place that turns a PyTorch model into ONNX files (a candidate, one of a pipeline's
segments, a reference architecture built from a config), and the one fp16 conversion. ONNX-stage methods
write where ``Recipe.apply_onnx`` tells them, through ``save``."""
from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path

import onnx
import torch
import onnx_ir as ir
from onnx_ir.passes.common import DeduplicateInitializersPass, LiftConstantsToInitializersPass, RemoveUnusedNodesPass
from onnxscript.optimizer import fold_constants

from . import arch
from .finalize import check_final


class _Logits(torch.nn.Module):
    """Wraps a sequence classifier so the graph has the model's named int64 inputs (input_ids,
    attention_mask, and token_type_ids where the model takes them) and one output, ``logits``."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits


def export_onnx(model, path: str | os.PathLike, input_names: tuple[str, ...] | None = None) -> Path:
    """Export ``model`` to a single self-contained ONNX file with dynamic batch and sequence axes.

    Eager attention is used for the export: ONNX Runtime fuses its pattern into its own attention kernel.
    Weights that several layers share are stored once, each as the initializer its MatMuls read
    (``_store_shared_weights_once``).
    ``input_names`` defaults to what the layout adapter says the model takes (give them for models the
    methods do not know, such as the latency predictors' reference architectures).
    """
    check_final(model, "export")
    names = input_names or arch.input_names(model)
    ids = torch.randint(0, model.config.vocab_size, (2, 16))
    example = (ids, torch.ones_like(ids), torch.zeros_like(ids))[: len(names)]
    with eager_attention(model):
        return export_module(_Logits(model), example, path, names, ("logits",))


def export_candidate(model, out_dir: str | os.PathLike, apply_onnx) -> tuple[Path, Path]:
    """A candidate's shipped form and its fp32 form: ``out_dir/model.fp32.onnx`` with the recipe's ONNX
    steps applied (``apply_onnx(fp32, out_dir) -> final``), or, for a model carrying a module that
    writes a pipeline (early exit's heads: ``write_pipeline``), the pipeline folder ``out_dir/pipeline``,
    whose manifest stands for both (it names each segment's final and fp32 graphs)."""
    out_dir = Path(out_dir)
    writer = next((m for _, m in model.named_children() if hasattr(m, "write_pipeline")), None)
    if writer is not None:
        check_final(model, "export")
        manifest = writer.write_pipeline(model, out_dir / "pipeline", apply_onnx)
        return manifest, manifest
    fp32 = export_onnx(model, out_dir / "model.fp32.onnx")
    return shipped_form(fp32, out_dir, apply_onnx), fp32


def shipped_form(fp32: str | os.PathLike, out_dir: str | os.PathLike, apply_onnx) -> Path:
    """What ships of an exported fp32 graph: the recipe's ONNX steps applied (``apply_onnx(fp32, out_dir)``;
    int8 fuses first itself), or, where the recipe has none, ``out_dir/model.fused.onnx``: the graph with
    ONNX Runtime's fused kernels (``fuse_for_ort``), as Optimum's O2 would ship it (the fp32 graph itself
    where nothing fused). The fp32 graph stays as exported: a GPU profile converts it to fp16."""
    fp32 = Path(fp32)
    final = Path(apply_onnx(fp32, out_dir))
    if final != fp32:
        return final
    fused = Path(out_dir) / "model.fused.onnx"
    try:
        if fuse_for_ort(fp32, fused).get("attention") and _same_logits(fp32, fused):
            return fused
    except Exception:       # a graph the fusions do not know ships as exported: fusion only buys speed
        pass
    fused.unlink(missing_ok=True)
    return fp32


def _same_logits(a: Path, b: Path, atol: float = 1e-3) -> bool:
    """Whether two graphs of one model give the same logits on random rows, one of them padded."""
    import numpy as np
    import onnxruntime as ort

    sa, sb = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (a, b))
    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(1, 100, (2, 24), dtype=np.int64)}
    for i in sa.get_inputs():
        if i.name == "attention_mask":
            feeds[i.name] = np.ones((2, 24), np.int64)
            feeds[i.name][1, 15:] = 0
        elif i.name != "input_ids":
            feeds[i.name] = np.zeros((2, 24), np.int64)
    return bool(np.abs(sa.run(None, feeds)[0] - sb.run(None, feeds)[0]).max() <= atol)


@contextlib.contextmanager
def eager_attention(model):
    """The model with eager attention while the block runs (ONNX Runtime fuses its pattern), in eval mode."""
    impl = model.config._attn_implementation
    model.set_attn_implementation("eager")
    model.eval()
    try:
        yield model
    finally:
        model.set_attn_implementation(impl)


def export_module(module: torch.nn.Module, example: tuple, path: str | os.PathLike, input_names: tuple[str, ...],
                  output_names: tuple[str, ...]) -> Path:
    """Export any module of the project (a whole classifier, or one of early exit's segments) to a single
    self-contained ONNX file. Every input has a dynamic batch (axis 0) and sequence (axis 1) axis."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    dims = tuple({0: batch, 1: seq} for _ in input_names)       # positional: the module's own argument names may differ
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        program = torch.onnx.export(module.eval(), tuple(example), input_names=list(input_names),
                                    output_names=list(output_names), dynamic_shapes=dims, dynamo=True, optimize=True)
    _store_shared_weights_once(program.model)
    program.save(str(path), external_data=False)
    return path


def _store_shared_weights_once(model: ir.Model) -> None:
    """The exporter folds ``Transpose(W)`` into a transposed initializer only where W has one consumer
    (or is small): a weight shared by several layers stays fp32 behind a Transpose per layer, which
    int8 quantization cannot quantize (its MatMuls no longer read an initializer). Fold those
    transposes too, then merge identical initializers whatever their size (the exporter's own
    de-duplication stops at 1,024 elements): one transposed copy per shared weight remains."""
    def weight_transpose(node: ir.Node) -> bool | None:
        return True if node.op_type == "Transpose" and node.inputs[0].is_initializer() else None

    fold_constants(model, output_size_limit=2**62, should_fold=weight_transpose)
    ir.passes.Sequential(LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
                         RemoveUnusedNodesPass(),
                         DeduplicateInitializersPass(size_limit=2**62))(model)   # compares bytes: exact


def save(model_proto: onnx.ModelProto, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model_proto, str(path))
    return path


def to_fp16(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """An fp16 copy of an fp32 ONNX graph (ONNX Runtime's converter; inputs and outputs keep their
    types), as a GPU would run it."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    return save(model, dst)


def export_anchor(config: dict, path: str | os.PathLike, num_layers: int | None = None) -> Path:
    """Export the architecture a config describes (``model_type`` and its settings; random weights, 2
    labels) as candidates are exported: the latency predictors' anchors and the host reference."""
    import inspect

    import transformers

    settings = {k: v for k, v in config.items() if k != "model_type"}
    if num_layers is not None:
        settings["num_hidden_layers"] = num_layers
    cfg = transformers.AutoConfig.for_model(config["model_type"], num_labels=2, **settings)
    torch.manual_seed(0)
    model = transformers.AutoModelForSequenceClassification.from_config(cfg).eval()
    takes = inspect.signature(model.forward).parameters
    names = ("input_ids", "attention_mask") + (("token_type_ids",) if "token_type_ids" in takes else ())
    return export_onnx(model, path, input_names=names)


# ---------------------------------------------------------------- ONNX Runtime's fused transformer kernels
def fuse_for_ort(src: str | os.PathLike, dst: str | os.PathLike) -> dict[str, int]:
    """Rewrite an exported graph with ONNX Runtime's fused transformer operators (com.microsoft Attention,
    SkipLayerNormalization, BiasGelu), as Hugging Face Optimum's O2 does, so that dynamic int8 turns the
    attention into one QAttention kernel. ONNX Runtime's own BERT optimizer finds no Attention in the dynamo
    exporter's graph (its mask patterns are the TorchScript exporter's, and transformers 5's reshapes hide
    the head count); onnxscript's fusions match it and read each layer's head count from the shapes, so
    pruned heads fuse too. Then the packed QKV weights are folded into initializers, and each Attention's
    padding mask is handed as ``mask_index`` (the raw 2-D mask: any padding side) rather than as an additive
    bias, which QAttention lacks. Returns the count of each fusion (empty where nothing fused: ``dst`` is
    then ``src``'s copy). Measured here (MiniLM, 2 threads, seq 16-128): int8 of the fused graph
    0.90-0.95x the time of int8 of the plain one, as Optimum's O2 + int8; logits unchanged (fp32, 1e-7)."""
    from onnx_ir.passes.common import LiftConstantsToInitializersPass, RemoveUnusedNodesPass
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    model = ir.load(str(src))
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        model, counts = optimize_for_ort(model)
        fold_constants(model, output_size_limit=2**62, input_size_limit=2**62)   # packed QKV weights
        counts = {k: v for k, v in counts.items() if v}
        counts["mask_index"] = _bias_to_mask_index(model)
        ir.passes.Sequential(LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
                             RemoveUnusedNodesPass())(model)
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    ir.save(model, str(dst))
    return counts


def _from_mask(value: ir.Value, mask: ir.Value) -> bool:
    """Whether ``value`` is computed from the graph input ``mask`` alone (other graph inputs reach it only
    through their shapes): the padding mask as an additive bias."""
    seen, stack, inputs = set(), [value], set()
    while stack:
        v = stack.pop()
        if id(v) in seen:
            continue
        seen.add(id(v))
        if v.is_graph_input():
            inputs.add(v.name)
            continue
        node = v.producer()
        if node is None or node.op_type == "Shape":
            continue
        stack.extend(x for x in node.inputs if x is not None)
    return inputs == {mask.name}


def _bias_to_mask_index(model: ir.Model) -> int:
    """Each fused Attention whose ``attention_bias`` is the padding mask gets the mask as ``mask_index``
    instead (int32 [batch, seq], 1 = attend), and loses ``qkv_hidden_sizes`` where Q, K and V are equally
    wide: what ONNX Runtime's dynamic quantizer needs to make it a QAttention. Returns how many changed."""
    graph = model.graph
    mask = next((v for v in graph.inputs if v.name == "attention_mask"), None)
    if mask is None:
        return 0
    mask32, changed = None, 0
    for node in list(graph):
        if node.op_type != "Attention" or node.domain != "com.microsoft":
            continue
        sizes = node.attributes.get("qkv_hidden_sizes")
        if sizes is not None and len(set(sizes.as_ints())) == 1:
            node.attributes.pop("qkv_hidden_sizes")
        ins = list(node.inputs)
        bias = ins[5] if len(ins) > 5 else None
        if bias is None or any(len(ins) > i and ins[i] is not None for i in (3, 4)) or not _from_mask(bias, mask):
            continue
        if mask32 is None:
            cast = ir.node("Cast", [mask], attributes={"to": ir.DataType.INT32}, name="attention_mask_int32")
            cast.outputs[0].name = "attention_mask_int32"
            graph.insert_before(graph.node(0), cast)
            mask32 = cast.outputs[0]
        new = ir.node("Attention", [*ins[:3], mask32], attributes=dict(node.attributes), domain="com.microsoft",
                      name=node.name, num_outputs=len(node.outputs))
        graph.insert_after(node, new)
        for old, nw in zip(node.outputs, new.outputs):
            nw.name, nw.shape, nw.type = old.name, old.shape, old.type
        ir.convenience.replace_all_uses_with(node.outputs, new.outputs)
        for old, nw in zip(node.outputs, new.outputs):
            if old in graph.outputs:
                graph.outputs[graph.outputs.index(old)] = nw
        graph.remove(node, safe=True)
        changed += 1
    return changed
