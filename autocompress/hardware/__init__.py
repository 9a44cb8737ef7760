"""Latency on hardware profiles: what the rest of autocompress uses (import from here).

profiles.py (the YAML schema, predictor specs included), figure.py (``Latency``: a figure and how it
was obtained), host.py (this CPU, its flags, pinning), latency.py (the only module that times
things), reference.py (the host reference's record: when a nominal may be cached, what later
observations say of it, the plausible band of a factor), predictors/ (one module per way of predicting
a device that is not here), obtain.py (per profile, how a latency is obtained here:
``obtain_latency(artifact, profile) -> Latency``; ``check_host``: whether the cached references and
calibrations still hold).
"""
from ..locks import measuring as exclusive_machine, training as shared_machine  # noqa: F401
from .figure import Latency, describe, host_speed_warning, ratio  # noqa: F401
from .host import cpu_info  # noqa: F401
from .latency import measure_latency, measure_side_by_side, time_call  # noqa: F401
from .obtain import (check_host, describe_route, expected, graph_signature, host_references,  # noqa: F401
                     obtain_latency, obtain_over_lengths, obtain_side_by_side, obtain_together, prepare, route)
from .predictors import for_profile as predictor_for  # noqa: F401
from .profiles import HardwareProfile, ProfileError, list_profiles, load_profile, with_bundled  # noqa: F401
