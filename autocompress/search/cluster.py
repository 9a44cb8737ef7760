"""Where trials run: a local Ray that listens on 127.0.0.1 only, or the user's Ray cluster.

Nothing here imports Ray at module level: Ray reads some settings from the environment when it is
first imported, so ``configure_environment`` must run before anything imports it.

- Local searches use Ray's local-only mode (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, what Ray does by
  default on macOS and Windows): every Ray process binds to the loopback address. They also use
  Ray's token authentication with a fresh random token per search, and no dashboard.
- Cluster searches (``--ray-address``) use Ray's token authentication (``RAY_AUTH_MODE=token``) with
  the token the cluster was started with (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or
  ``~/.ray/auth_token``; see the README).
"""
from __future__ import annotations

import os
import secrets
import socket
import sys

LOCAL_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


class ClusterError(Exception):
    """The Ray cluster cannot be used; one line."""


def configure_environment(ray_address: str | None) -> None:
    """Settings every Ray process of this search inherits (call before Ray is imported)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")   # the store keeps the results
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"   # Ctrl-C interrupts the search (Ray would end it "normally")
    if ray_address:
        os.environ.setdefault("RAY_AUTH_MODE", "token")
        return
    os.environ[LOCAL_ONLY] = "0"
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    if "ray" in sys.modules:     # already imported (in-process use): its constant was read at import
        import ray._private.ray_constants as constants

        constants.ENABLE_RAY_CLUSTER = False


def check_ray_address(address: str | None) -> None:
    """The cluster at ``address`` answers (a TCP connection within 3 s), before any work."""
    if not address:
        return
    from ray._private.services import canonicalize_bootstrap_address

    hint = "start its head with `ray start --head`, or leave --ray-address out for a local Ray"
    target = address[len("ray://"):] if address.startswith("ray://") else address
    try:
        resolved = canonicalize_bootstrap_address(target)
    except ConnectionError:       # "auto" and no cluster on this machine
        resolved = None
    except Exception as e:
        raise ClusterError(f"--ray-address {address!r} is not an address like HOST:PORT or auto ({e})") from None
    if resolved is None:
        raise ClusterError(f"--ray-address {address}: no running Ray cluster was found on this machine; {hint}")
    host, _, port = resolved.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=3).close()
    except (OSError, ValueError) as e:
        raise ClusterError(f"--ray-address {address}: nothing answers there ({getattr(e, 'strerror', None) or e}); "
                           f"{hint}") from None


def start(ray_address: str | None, local_cpus: int) -> None:
    """Start the local Ray (loopback only, dashboard off) or connect to the cluster."""
    import ray

    try:
        ray.init(address=ray_address, num_cpus=None if ray_address else local_cpus, include_dashboard=False,
                 log_to_driver=False, logging_level="ERROR", configure_logging=True)
    except Exception as e:      # e.g. a token mismatch, a version mismatch
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ClusterError(f"cannot use the Ray cluster at {ray_address or 'local'}: {first}") from None


def alive_nodes() -> list[dict]:
    import ray

    return [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) >= 1]


def plan_parallel(requested: int | None, max_threads: int = 4) -> tuple[int, int]:
    """(trials at once, CPUs per trial). Default: one trial per node of the cluster (one here), each
    with its node's cores up to ``max_threads``; with ``requested`` trials at once, the cluster's cores
    are split between them, so trials side by side never ask for more cores than exist."""
    nodes = alive_nodes()
    if not nodes:
        raise ClusterError("the Ray cluster has no alive node with a CPU")
    total = sum(int(n["Resources"]["CPU"]) for n in nodes)
    smallest = min(int(n["Resources"]["CPU"]) for n in nodes)
    parallel = requested or len(nodes)
    per_trial = max(1, min(max_threads, smallest, total // parallel))
    return parallel, per_trial
