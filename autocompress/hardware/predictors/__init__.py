"""Ways of predicting a device's latency where the device is not at hand: one module per kind, each a
``base.Predictor``; a profile's ``predictor.kind`` picks one here (``get``, ``for_profile``).

- ``host-operators`` (``host_operators.py``): the candidate's operator timings on this host, mapped to
  the device by constants fitted to published figures (calibrated once per host, cached).
- ``roofline`` (``roofline.py``): FLOPs and bytes per operator of the graph against the device's
  published peaks, with constants fitted to published figures (kept in the YAML).

A new kind: a module here with a ``Predictor`` subclass, added to ``REGISTRY``; the contract suite
(``tests/contracts/test_predictors.py``) runs over every registered kind.
"""
from __future__ import annotations

from typing import Any

from .base import QUANTIZED_OPS, Predictor, PredictorError, anchor_points  # noqa: F401
from .host_operators import HostOperators
from .roofline import Roofline

REGISTRY: dict[str, type[Predictor]] = {cls.kind: cls for cls in (HostOperators, Roofline)}
KINDS = tuple(REGISTRY)


def get(kind: Any) -> type[Predictor]:
    """The predictor class of ``kind`` (a one-line ``PredictorError`` naming the known kinds if none)."""
    if not isinstance(kind, str) or kind not in REGISTRY:
        raise PredictorError(f"'kind' must be one of {', '.join(KINDS)}, got {kind!r}")
    return REGISTRY[kind]


def for_profile(profile: Any) -> Predictor:
    """The predictor of a profile that names one (its ``predictor`` spec, checked when it was loaded)."""
    return get(profile.predictor["kind"])(profile)
