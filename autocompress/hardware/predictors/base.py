"""The base of a way of predicting a device's latency where the device is not at hand. A profile's
``predictor:`` spec names its ``kind``; the registry (``predictors.get``) gives the class, which checks
its own fields of the spec (``profiles`` checks the common ones: kind, name, anchors) and, made for a
profile, predicts. Every figure a predictor gives is labelled ``predicted``, with the model, what it was
calibrated on and its error on held-out published figures."""
from __future__ import annotations

import os
from typing import Any, Callable, ClassVar

from ..figure import Latency

Log = Callable[[str], None]
# operators of an int8 graph (ONNX Runtime's dynamic and static quantization)
QUANTIZED_OPS = frozenset({"MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "DynamicQuantizeLinear",
                           "QGemm", "QLinearMatMul", "QAttention", "ConvInteger", "QLinearConv", "QuantizeLinear",
                           "DequantizeLinear", "MatMulNBits"})


class PredictorError(ValueError):
    """A predictor spec is invalid, or a prediction cannot be made (one line)."""


class Predictor:
    """One way of predicting a device's latency. ``profile`` is a ``HardwareProfile`` whose ``predictor``
    spec has this ``kind`` (checked)."""

    kind: ClassVar[str]

    @classmethod
    def check(cls, spec: dict) -> dict:
        """The spec with this kind's fields checked (a one-line ``PredictorError`` naming the field) and
        their defaults filled in."""
        return spec

    def __init__(self, profile: Any):
        self.profile, self.spec = profile, profile.predictor

    def predict(self, onnx_path: str | os.PathLike, log: Log | None = None) -> Latency:
        """The device's latency of one ONNX graph, at every shape of the profile."""
        raise NotImplementedError

    def prepare(self, log: Log | None = None, fresh: bool = False) -> None:
        """Calibrate on this host if the kind needs it (cached: a second call does nothing; ``fresh``
        calibrates again)."""

    def repredict_side_by_side(self, srcs: dict[Any, os.PathLike], stored: dict[Any, dict]) -> dict[Any, Latency]:
        """Figures of several graphs made again together, so their ratios hold, from their ``stored``
        figures; {} where there is nothing to re-time."""
        return {}

    def describe_state(self) -> str:
        """What it was calibrated on and its held-out error, in words (``obtain.describe_route``)."""
        raise NotImplementedError

    def host_threads(self) -> int | None:
        """The threads of the host reference its host timings are scaled to; None where it times nothing here."""
        return None

    def check_state(self, references: dict) -> tuple[str, str]:
        """Whether its calibration on this host still holds, given how each host reference held when timed
        again (``references``: (threads, cpus) -> "holds" | "does not hold" | "unsure" | "none"): ("holds" |
        "does not hold" | "unsure" | "none", in words). Nothing calibrated here: "none"."""
        return "none", "nothing calibrated on this host (its constants come with the profile)"


def anchor_points(spec: dict) -> list[tuple[dict, int, int, float]]:
    """Every published figure of the spec: (anchor, seq_len, batch_size, device_ms)."""
    return [(a, seq, b, float(ms)) for a in spec["anchors"] for seq, row in sorted(a["ms"].items())
            for b, ms in sorted(row.items())]
