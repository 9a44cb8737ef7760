"""How each profile's latency is obtained here: measured on this machine, measured on a Ray node that
offers the profile's custom resource, or predicted. One entry point, ``obtain_latency``; the figure it
returns says which (``Latency.how`` and ``Latency.detail``). Timing itself stays in ``latency``.
"""
from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .. import pipeline
from .latency import Latency, measure_latency, measure_side_by_side
from .profiles import HardwareProfile, ProfileError, load_profile

HERE, RAY, PREDICTED = "here", "ray", "predicted"


@dataclass(frozen=True)
class Route:
    kind: str      # here | ray | predicted
    text: str      # how, in words (the `profiles` command shows it)


def _ray_offers(resource: str) -> bool:
    """A node of the Ray cluster this process is connected to offers ``resource`` (Ray is never
    started here: without a connection there is no node to ask)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return False
    return ray.cluster_resources().get(resource, 0) > 0


def route(profile: HardwareProfile) -> Route:
    """Where ``profile``'s latency comes from, here and now."""
    if profile.measure_here and profile.available():
        threads = "" if profile.provider == "CUDAExecutionProvider" else f", {profile.threads} thread(s)"
        cpu = profile.provider == "CPUExecutionProvider"
        if cpu and profile.pin_threads:
            cpus = profile.cpus()
            threads += (f" pinned to CPU(s) {','.join(map(str, cpus))}" if cpus else
                        f", not pinned: this process may run on fewer than {profile.threads} CPUs")
        scaled = "; scaled to this host's nominal speed by an interleaved reference" if cpu and profile.nominal_speed else ""
        return Route(HERE, f"measured on this machine ({profile.provider}{threads}){scaled}")
    if profile.resource and _ray_offers(profile.resource):
        return Route(RAY, f"measured on a Ray node offering the resource {profile.resource}")
    if profile.predictor:
        why = (f"{profile.provider} is not installed here" if profile.measure_here else "this machine is not the device")
        ray = f", no connected Ray node offers {profile.resource}" if profile.resource else ""
        return Route(PREDICTED, f"predicted by {profile.predictor['name']} ({profile.predictor['kind']}): {why}{ray}")
    raise ProfileError(f"profile '{profile.name}' cannot be obtained here: {profile.provider} is "
                       f"{'not installed' if profile.measure_here else 'not the device'}, "
                       + (f"no connected Ray node offers {profile.resource}, " if profile.resource else "")
                       + "and it names no predictor")


def graph_signature(onnx_path: str | os.PathLike) -> str:
    """What an ONNX graph's latency depends on, as a hash: its operators in order with their domains and
    attributes, how tensors connect, and every weight's type and shape, but no weight values (tensor
    attributes count by type and shape too). Two files with the same signature differ only in weights:
    a recovered (trained) candidate and its untrained structure, say."""
    import hashlib

    import onnx
    from onnx import helper

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    weights = {i.name: f"w{i.data_type}{tuple(i.dims)}" for i in graph.initializer}
    ids: dict[str, str] = {}

    def ref(name: str) -> str:
        return "-" if not name else weights.get(name) or ids.setdefault(name, f"t{len(ids)}")

    def attr(a) -> object:
        if a.type == onnx.AttributeProto.TENSOR:
            return ("tensor", a.t.data_type, tuple(a.t.dims))
        if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
            return "graph"
        return helper.get_attribute_value(a)

    parts: list[object] = [(i.name, str(i.type)) for i in graph.input]
    for node in graph.node:
        parts.append((node.op_type, node.domain, [ref(i) for i in node.input],
                      sorted((a.name, repr(attr(a))) for a in node.attribute), [ref(o) for o in node.output]))
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def _is_quantized(onnx_path: str | os.PathLike) -> bool:
    import onnx

    from .predictor import QUANTIZED_OPS

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return any(n.op_type in QUANTIZED_OPS for n in graph.node)


def source_graph(onnx_path: str | os.PathLike, profile: HardwareProfile, fp32_path: str | os.PathLike | None) -> Path:
    """The graph a profile times: the shipped file, or for an fp16 profile the candidate's fp32 graph
    (a GPU runs the fp16 conversion of it; CPU int8 operators do not belong on a GPU)."""
    if profile.precision != "fp16":
        return Path(onnx_path)
    if fp32_path is not None:
        return Path(fp32_path)
    if _is_quantized(onnx_path):
        raise ProfileError(f"profile '{profile.name}' times the fp16 conversion of a model's fp32 graph, but "
                           f"{onnx_path} is quantized: give the fp32 ONNX file or the model folder")
    return Path(onnx_path)


def obtain_latency(onnx_path: str | os.PathLike, profile: HardwareProfile | str, *,
                   fp32_path: str | os.PathLike | None = None, log=None, **protocol) -> Latency:
    """The latency of an ONNX model on ``profile``, obtained the way ``route`` says. ``fp32_path`` is the
    same candidate before its ONNX steps (what fp16 profiles convert). ``protocol`` passes measurement
    settings (runs, caps) through to ``latency`` when measuring."""
    profile = load_profile(profile)
    if pipeline.is_pipeline(onnx_path):
        return _expected(onnx_path, profile, log=log, **protocol)
    src = source_graph(onnx_path, profile, fp32_path)
    how = route(profile)
    if how.kind == HERE:
        return _measure_here(src, profile, **protocol)
    if how.kind == RAY:
        return _on_ray_node({"model": src}, profile, side_by_side=False, protocol=protocol)["model"]
    from .predictor import predict

    return predict(src, profile, log=log)


def _expected(manifest: str | os.PathLike, profile: HardwareProfile, *, log=None, **protocol) -> Latency:
    """A pipeline's expected latency on ``profile``: each segment's figure obtained the way the profile
    says (its final graph; its fp32 graph for fp16 profiles), weighted by the share of the scored inputs
    that reach it (``pipeline.expected``)."""
    segments = pipeline.read(manifest)["segments"]
    return _combine(manifest, [obtain_latency(s["file"], profile, fp32_path=s["fp32"], log=log, **protocol)
                               for s in segments])


def _combine(manifest: str | os.PathLike, segment_latencies: list[Latency]) -> Latency:
    reach, over = pipeline.reach(manifest)
    m = pipeline.read(manifest, verify=False)
    return pipeline.expected(segment_latencies, reach, over, extra={"exit_rule": f"{m['rule']} {m['threshold']:g}",
                                                                    "exits_after": m.get("exits_after")})


def _measure_here(src: Path, profile: HardwareProfile, **protocol) -> Latency:
    if profile.precision != "fp16":
        return measure_latency(src, profile, **protocol)
    from .. import export

    with tempfile.TemporaryDirectory(prefix="autocompress-fp16-") as tmp:
        lat = measure_latency(export.to_fp16(src, Path(tmp) / "model.fp16.onnx"), profile, **protocol)
    lat.detail["precision"] = "fp16"
    return lat


def obtain_side_by_side(onnx_paths: dict[Any, str | os.PathLike], profile: HardwareProfile | str, *,
                        stored: dict[Any, dict] | None = None,
                        fp32_paths: dict[Any, str | os.PathLike] | None = None) -> dict[Any, Latency]:
    """Several models timed together, so their ratios hold (interleaved rounds on one machine). Measured
    profiles are measured side by side where they are measured (here or on the Ray node); a
    host-operators prediction is redone from a side-by-side host measurement (its operator mix from the
    ``stored`` figure); a roofline has nothing to re-time and returns {}."""
    profile = load_profile(profile)
    fp32_paths = dict(fp32_paths or {})
    # a pipeline (early exit) takes part segment by segment; its expected latency is then made again
    # from its segments' new figures (a host-operators prediction, which needs each segment's stored
    # operator mix, is not redone: its per-trial figure stands)
    onnx_paths, pipes = dict(onnx_paths), {}
    for k, p in list(onnx_paths.items()):
        if pipeline.is_pipeline(p):
            del onnx_paths[k]
            pipes[k] = (p, pipeline.read(p)["segments"])
            for j, seg in enumerate(pipes[k][1]):
                onnx_paths[(_SEGMENT, k, j)], fp32_paths[(_SEGMENT, k, j)] = seg["file"], seg["fp32"]
    out = _side_by_side(onnx_paths, profile, stored or {}, fp32_paths)
    for k, (manifest, segments) in pipes.items():
        lats = [out.pop((_SEGMENT, k, j), None) for j in range(len(segments))]
        if all(lats):
            out[k] = _combine(manifest, lats)
    return out


def obtain_together(onnx_paths: dict[Any, str | os.PathLike], profile: HardwareProfile | str) -> dict[Any, Latency]:
    """Models compared on ``profile`` with no figures stored for them yet (benchmarks): measured side
    by side where the profile is measured; predicted one by one where it is predicted, then a
    host-operators prediction is redone from one side-by-side host measurement. Ratios between the
    models come from one run either way; a pipeline gets its expected latency."""
    profile = load_profile(profile)
    first = {} if route(profile).kind == HERE else {k: obtain_latency(p, profile) for k, p in onnx_paths.items()}
    again = obtain_side_by_side(onnx_paths, profile, stored={k: lat.to_dict() for k, lat in first.items()})
    return {**first, **again}


_SEGMENT = "pipeline segment"


def _side_by_side(onnx_paths: dict[Any, str | os.PathLike], profile: HardwareProfile, stored: dict[Any, dict],
                  fp32_paths: dict[Any, str | os.PathLike]) -> dict[Any, Latency]:
    if not onnx_paths:
        return {}
    srcs = {k: source_graph(p, profile, fp32_paths.get(k)) for k, p in onnx_paths.items()}
    how = route(profile)
    if how.kind == HERE:
        if profile.precision == "fp16":
            return {}      # one fp16 conversion per model: the per-trial measurements stand
        return measure_side_by_side(srcs, profile)
    if how.kind == RAY:
        return _on_ray_node(srcs, profile, side_by_side=True, protocol={})
    if profile.predictor["kind"] != "host-operators" or not stored:
        return {}
    from .predictor import repredict_host_operators

    keys = [k for k in srcs if stored.get(k, {}).get("how") == "predicted" and "host_ms" in stored[k]["detail"]]
    # as the predictions' host timings: scaled to the host's nominal speed; one thread is noisier per run
    # than the profiles measured here, so twice the rounds
    host = measure_side_by_side({k: srcs[k] for k in keys}, profile, threads=profile.predictor["host_threads"],
                                rounds=6, drift_reference=True)
    return {k: repredict_host_operators(profile, stored[k], host[k].median_ms) for k in keys}


# ------------------------------------------------------------------ on a Ray node offering the resource
def _node_task(files: dict[Any, bytes], profile: HardwareProfile, side_by_side: bool, protocol: dict) -> dict:
    """Runs on the node: writes the models to a temporary folder and measures them there."""
    import platform

    import ray

    with tempfile.TemporaryDirectory(prefix="autocompress-node-") as tmp:
        paths = {}
        for i, (k, blob) in enumerate(files.items()):
            paths[k] = Path(tmp) / f"model{i}.onnx"
            paths[k].write_bytes(blob)
        local = replace(profile, measure_here=True, precision="shipped")   # fp16 files come converted
        if side_by_side:
            out = measure_side_by_side(paths, local)
        else:
            out = {k: _measure_here(p, local, **protocol) for k, p in paths.items()}
    ctx = ray.get_runtime_context()
    node = {"ray_node_id": ctx.get_node_id(), "ray_resource": profile.resource, "ray_node_host": platform.node()}
    for lat in out.values():
        lat.detail.update(node)
    return {k: lat.to_dict() for k, lat in out.items()}


def _on_ray_node(srcs: dict[Any, Path], profile: HardwareProfile, *, side_by_side: bool, protocol: dict) -> dict[Any, Latency]:
    """Measure on a node offering the profile's resource: the task asks for one unit of it (and no CPU
    of the cluster's accounting), so Ray places it there and nowhere else; the files travel as bytes."""
    import ray

    files: dict[Any, bytes] = {}
    with tempfile.TemporaryDirectory(prefix="autocompress-fp16-") as tmp:
        for i, (k, p) in enumerate(srcs.items()):
            if profile.precision == "fp16":
                from .. import export

                p = export.to_fp16(p, Path(tmp) / f"model{i}.fp16.onnx")
            files[k] = Path(p).read_bytes()
    task = ray.remote(_node_task).options(num_cpus=0, resources={profile.resource: 1}, max_retries=0)
    out = ray.get(task.remote(files, profile, side_by_side, protocol))
    lats = {k: Latency.from_dict(v) for k, v in out.items()}
    if profile.precision == "fp16":
        for lat in lats.values():
            lat.detail["precision"] = "fp16"
    return lats


# ------------------------------------------------------------------ before a search, and in words
def prepare(profiles, *, log=None, fresh: bool = False) -> None:
    """Calibrate on this host the predictors these profiles will use here (once per host, then cached;
    ``fresh`` calibrates again), so that no trial pays for it."""
    from .predictor import calibrate_host_operators

    for p in map(load_profile, profiles):
        if p.predictor and p.predictor["kind"] == "host-operators" and route(p).kind == PREDICTED:
            calibrate_host_operators(p, log=log, fresh=fresh)


def describe_route(profile: HardwareProfile) -> str:
    """How ``profile``'s latency is obtained here, in words, with the predictor's state where it predicts."""
    try:
        r = route(profile)
    except ProfileError as e:
        return str(e)
    if r.kind == HERE and profile.provider == "CPUExecutionProvider":
        from .latency import cpu_info

        isa = cpu_info()["int8_isa"]
        return f"{r.text}; int8 dot-product instructions: {', '.join(isa) if isa else 'none (int8 brings no speed-up)'}"
    if r.kind != PREDICTED:
        return r.text
    spec = profile.predictor
    if spec["kind"] == "roofline":
        return f"{r.text}; calibrated on {spec.get('calibrated_on')}; held-out error {spec.get('heldout_error')}"
    from .predictor import cached_calibration

    cal = cached_calibration(profile)
    if cal is None:
        return f"{r.text}; not yet calibrated on this host (done on first use, a few minutes, then cached)"
    return (f"{r.text}; calibrated on this host on {cal['date']} on {len(cal['anchors'])} published figures, "
            f"leave-one-out mean |error| {100 * cal['loo_mean_abs_error']:.0f}% "
            f"(max {100 * cal['loo_max_abs_error']:.0f}%)")
