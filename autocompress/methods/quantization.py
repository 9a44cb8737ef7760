"""Quantization with ONNX Runtime: int8 dynamic (weights int8 per output channel, activations
quantized on the fly). On ordinary CPUs with int8 dot-product instructions it is the cheapest speed-up.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from .base import check, register


@dataclass(frozen=True)
class DynamicInt8:
    per_channel: bool = True    # per-tensor loses far more accuracy on MiniLM
    reduce_range: bool = False

    def __post_init__(self):
        check(isinstance(self.per_channel, bool), "quantize_int8", "per_channel must be true or false")
        check(isinstance(self.reduce_range, bool), "quantize_int8", "reduce_range must be true or false")


@register("quantize_int8", "onnx", DynamicInt8, label=lambda c: "int8")
def quantize_int8(src: str | os.PathLike, dst: str | os.PathLike, cfg: DynamicInt8, ctx=None):
    """Int8 dynamic quantization with ONNX Runtime (MatMul weights and the embedding tables)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))  # silence its pre-processing advice
    quantize_dynamic(str(src), str(dst), per_channel=cfg.per_channel, reduce_range=cfg.reduce_range,
                     weight_type=QuantType.QInt8)
    return dst
