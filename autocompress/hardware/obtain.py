"""How each profile's latency is obtained here: measured on this machine, measured on a Ray node that
offers the profile's custom resource, or predicted (by the profile's predictor: ``predictors``). One
entry point, ``obtain_latency``; the figure it returns says which (``Latency.how`` and
``Latency.detail``). An artifact of several graphs (``pipeline.open``) gets the expected latency of its
graphs under its usage (``expected``). Timing itself stays in ``latency``.
"""
from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .. import pipeline
from ..lengths import LengthMix
from . import predictors
from .figure import Latency, over_lengths
from .host import cpu_info
from .latency import check_reference, host_reference, measure_latency, measure_side_by_side
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

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return any(n.op_type in predictors.QUANTIZED_OPS for n in graph.node)


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


def obtain_latency(path: str | os.PathLike, profile: HardwareProfile | str, *,
                   fp32_path: str | os.PathLike | None = None, usage: pipeline.Usage | None = None, log=None,
                   **protocol) -> Latency:
    """The latency of an artifact (``pipeline.open``: one ONNX graph, or a manifest of several) on
    ``profile``, each graph obtained the way ``route`` says; where the profile times at a run's input
    lengths (``length_mix``), the expected figure over them (``obtain_over_lengths``). ``fp32_path`` is a single graph before its
    ONNX steps (what fp16 profiles convert; an artifact of several graphs names its own). An artifact
    whose graphs run on a share of the inputs each has an expected latency: its graphs' figures weighted
    by ``usage`` (``expected``; a ValueError without it). ``protocol`` passes measurement settings
    (runs, caps) through to ``latency`` when measuring."""
    profile = load_profile(profile)
    if profile.length_mix:
        return obtain_over_lengths(path, profile, LengthMix.from_dict(profile.length_mix), fp32_path=fp32_path,
                                   usage=usage, log=log, **protocol)
    artifact = pipeline.open(path)
    if artifact.input_dependent:
        if usage is None:
            raise ValueError(f"{path} runs each of its {len(artifact.graphs())} graphs on a share of the inputs: "
                             "its latency needs their usage (score it first)")
        return expected([_obtain_graph(g, profile, fp32, log, protocol) for g, fp32 in artifact.graphs()], usage)
    ((graph, own_fp32),) = artifact.graphs()
    return _obtain_graph(graph, profile, fp32_path if fp32_path is not None else own_fp32, log, protocol)


def obtain_over_lengths(path: str | os.PathLike, profile: HardwareProfile | str, mix: LengthMix, *,
                        fp32_path: str | os.PathLike | None = None, usage: pipeline.Usage | None = None, log=None,
                        **protocol) -> Latency:
    """The expected latency of an artifact over inputs whose lengths ``mix`` summarises (``over_lengths``):
    the profile's figure at each of the mix's lengths, its batch size kept, each obtained as
    ``obtain_latency`` obtains the profile's own shape (measured here, on a Ray node or predicted), and
    the figure at the profile's fixed shape beside them."""
    profile = load_profile(profile)
    at = dict(fp32_path=fp32_path, usage=usage, log=log, **protocol)
    fixed = obtain_latency(path, profile.fixed(), **at)
    return over_lengths(fixed, [obtain_latency(path, profile.at_length(q), **at) for q in mix.lengths], mix)


def _obtain_graph(onnx_path: Path, profile: HardwareProfile, fp32_path: str | os.PathLike | None, log,
                  protocol: dict) -> Latency:
    src = source_graph(onnx_path, profile, fp32_path)
    how = route(profile)
    if how.kind == HERE:
        return _measure_here(src, profile, **protocol)
    if how.kind == RAY:
        return _on_ray_node({"model": src}, profile, side_by_side=False, protocol=protocol)["model"]
    return predictors.for_profile(profile).predict(src, log=log)


def expected(latencies: list[Latency], usage: pipeline.Usage) -> Latency:
    """The expected latency of an artifact of several graphs: ``sum_i share_i x latency_i`` for the median
    (and likewise for the spread and percentiles, and the profile's other shapes: weighted sums of the
    graphs' figures, an approximation; at a batch above 1 a graph runs when any row of the batch reaches
    it, on fewer rows, and the per-row share stands for that). Its ``how`` is the graphs' (all obtained
    the same way on one profile); its ``detail`` keeps where and how they were obtained and adds the
    usage (``Usage.to_detail``: what the shares were measured on, the shares, what decided them),
    ``segment_ms`` and ``segment_how``."""
    shares = usage.shares
    if len(latencies) != len(shares):
        raise ValueError(f"{len(latencies)} segment latencies for {len(shares)} reach values")
    lats = latencies
    first = lats[0]

    def weighted(attr: str) -> float:
        return float(sum(r * getattr(lat, attr) for r, lat in zip(shares, lats)))

    per_figure = {"host_ms", "host_n", "host_ci95_rel", "host_classes_ms", "constants", "other_shapes", "ci95_rel",
                  "timed_before_training"}
    detail = {k: v for k, v in first.detail.items() if k not in per_figure}
    detail.update(usage.to_detail(), segment_ms=[round(lat.median_ms, 4) for lat in lats],
                  segment_how=[lat.how for lat in lats])
    shapes = [[(o["batch_size"], o["seq_len"]) for o in lat.detail.get("other_shapes") or []] for lat in lats]
    if shapes[0] and all(s == shapes[0] for s in shapes):
        detail["other_shapes"] = []
        for i, (b, q) in enumerate(shapes[0]):
            figures = [lat.detail["other_shapes"][i] for lat in lats]
            detail["other_shapes"].append({"batch_size": b, "seq_len": q, "median_ms": float(
                sum(r * f["median_ms"] for r, f in zip(shares, figures)))})
    return Latency(first.profile, weighted("median_ms"), weighted("spread_ms"), weighted("p10_ms"),
                   weighted("p90_ms"), min(lat.n for lat in lats), first.how, detail)


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
                        fp32_paths: dict[Any, str | os.PathLike] | None = None,
                        usages: dict[Any, pipeline.Usage] | None = None) -> dict[Any, Latency]:
    """Several artifacts timed together, so their ratios hold (interleaved rounds on one machine). Measured
    profiles are measured side by side where they are measured (here or on the Ray node); a predictor
    redoes what it can from one side-by-side host measurement (``Predictor.repredict_side_by_side``:
    host-operators from each ``stored`` figure's operator mix; a roofline has nothing to re-time and
    returns {}). An artifact of several graphs takes part graph by graph, and its expected latency is
    made again from their new figures with the usage of its stored figure (or ``usages``; a ValueError
    where neither gives one)."""
    profile = load_profile(profile)
    if profile.length_mix:
        return _side_by_side_over_lengths(onnx_paths, profile, stored or {}, fp32_paths, usages)
    stored, fp32_paths, usages = stored or {}, dict(fp32_paths or {}), usages or {}
    # (a host-operators prediction of a graph, which needs that graph's stored operator mix, is not redone:
    # its per-trial figure stands)
    onnx_paths, multi = dict(onnx_paths), {}
    for k, p in list(onnx_paths.items()):
        artifact = pipeline.open(p)
        if not artifact.input_dependent:
            continue
        del onnx_paths[k]
        usage = usages.get(k) or pipeline.Usage.from_detail((stored.get(k) or {}).get("detail") or {})
        if usage is None:
            raise ValueError(f"{p} runs each of its graphs on a share of the inputs: no stored expected figure "
                             "says which share (score it first)")
        graphs = artifact.graphs()
        multi[k] = (usage, len(graphs))
        for j, (graph, fp32) in enumerate(graphs):
            onnx_paths[(_GRAPH, k, j)], fp32_paths[(_GRAPH, k, j)] = graph, fp32
    out = _side_by_side(onnx_paths, profile, stored, fp32_paths)
    for k, (usage, n) in multi.items():
        lats = [out.pop((_GRAPH, k, j), None) for j in range(n)]
        if all(lats):
            out[k] = expected(lats, usage)
    return out


def _side_by_side_over_lengths(onnx_paths, profile: HardwareProfile, stored: dict[Any, dict], fp32_paths,
                               usages) -> dict[Any, Latency]:
    """Side by side at the fixed shape and at each length of the profile's mix, combined per artifact
    (``over_lengths``). Where the profile is predicted, the per-trial figures stand: a prediction over
    lengths keeps no per-length operator mix to redo it from."""
    if route(profile).kind not in (HERE, RAY):
        return {}
    mix = LengthMix.from_dict(profile.length_mix)
    plain = {k: {**v, "detail": {d: x for d, x in (v.get("detail") or {}).items() if d not in ("lengths", "fixed")}}
             for k, v in stored.items()}                # each figure's usage (early exit) is kept

    def at(p: HardwareProfile) -> dict[Any, Latency]:
        return obtain_side_by_side(onnx_paths, p, stored=plain, fp32_paths=fp32_paths, usages=usages)

    fixed, per = at(profile.fixed()), [at(profile.at_length(q)) for q in mix.lengths]
    return {k: over_lengths(lat, [p[k] for p in per], mix) for k, lat in fixed.items() if all(k in p for p in per)}


def obtain_together(onnx_paths: dict[Any, str | os.PathLike], profile: HardwareProfile | str, *,
                    usages: dict[Any, pipeline.Usage] | None = None) -> dict[Any, Latency]:
    """Artifacts compared on ``profile`` with no figures stored for them yet (benchmarks): measured side
    by side where the profile is measured; predicted one by one where it is predicted, then a
    host-operators prediction is redone from one side-by-side host measurement. Ratios between them
    come from one run either way; an artifact of several graphs gets its expected latency, with its
    usage from ``usages``. A profile timing at input lengths (``length_mix``): side by side at its fixed
    shape and at each length, each model's figures combined (``over_lengths``)."""
    profile = load_profile(profile)
    if profile.length_mix:
        mix = LengthMix.from_dict(profile.length_mix)
        fixed = obtain_together(onnx_paths, profile.fixed(), usages=usages)
        per = [obtain_together(onnx_paths, profile.at_length(q), usages=usages) for q in mix.lengths]
        return {k: over_lengths(lat, [p[k] for p in per], mix) for k, lat in fixed.items()}
    usages = usages or {}
    first = {} if route(profile).kind == HERE else {k: obtain_latency(p, profile, usage=usages.get(k))
                                                   for k, p in onnx_paths.items()}
    again = obtain_side_by_side(onnx_paths, profile, stored={k: lat.to_dict() for k, lat in first.items()},
                                usages=usages)
    return {**first, **again}


_GRAPH = "a graph of an artifact"


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
    if not stored:
        return {}
    return predictors.for_profile(profile).repredict_side_by_side(srcs, stored)


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
    """Calibrate on this host the predictors these profiles will use here (once per host, then cached),
    so that no trial pays for it; ``fresh`` establishes the host references they use again first (the old
    ones kept in their records' history), then calibrates again."""
    profiles = [load_profile(p) for p in profiles]
    if fresh:
        for threads, cpus in host_references(profiles):
            ref = host_reference(threads, cpus, fresh=True, log=log)
            if log:
                log(f"host reference, {threads} thread(s): nominal {ref.nominal_ms:.2f} ms "
                    + ("(established, cached)" if ref.established else "(provisional: not cached)"))
    for p in profiles:
        if p.predictor and route(p).kind == PREDICTED:
            predictors.for_profile(p).prepare(log=log, fresh=fresh)


def host_references(profiles) -> dict[tuple[int, tuple[int, ...] | None], list[str]]:
    """The host references these profiles' figures are scaled to here ((threads, CPUs) -> profile names):
    a CPU profile measured here at its nominal speed, a predictor's host timings."""
    out: dict[tuple[int, tuple[int, ...] | None], list[str]] = {}
    for p in map(load_profile, profiles):
        kind, threads = route(p).kind, None
        if kind == HERE and p.provider == "CPUExecutionProvider" and p.nominal_speed:
            threads = p.threads
        elif kind == PREDICTED:
            threads = predictors.for_profile(p).host_threads()
        if threads:
            out.setdefault((threads, p.cpus(threads)), []).append(p.name)
    return out


def check_host(profiles) -> tuple[bool, list[str]]:
    """Each host reference these profiles use timed again now, briefly, against its cached nominal, and
    each predictor's calibration: whether the cached one still holds. (all hold, lines in words)"""
    profiles = [load_profile(p) for p in profiles]
    status: dict = {}
    lines = ["host references (timed again now, briefly, against the cached nominal):"]
    for (threads, cpus), names in host_references(profiles).items():
        status[(threads, cpus)], text = check_reference(threads, cpus)
        pins = f" pinned to CPU(s) {','.join(map(str, cpus))}" if cpus else ""
        lines.append(f"  {threads} thread(s){pins}, for {', '.join(names)}: {text}")
    lines.append("predictor calibrations:")
    for p in profiles:
        if p.predictor and route(p).kind == PREDICTED:
            status[p.name], text = predictors.for_profile(p).check_state(status)
            lines.append(f"  {p.name} ({p.predictor['name']}): {text}")
    return all(s in ("holds", "none") for s in status.values()), lines


def describe_route(profile: HardwareProfile) -> str:
    """How ``profile``'s latency is obtained here, in words, with the predictor's state where it predicts."""
    try:
        r = route(profile)
    except ProfileError as e:
        return str(e)
    if r.kind == HERE and profile.provider == "CPUExecutionProvider":
        isa = cpu_info()["int8_isa"]
        return f"{r.text}; int8 dot-product instructions: {', '.join(isa) if isa else 'none (int8 brings no speed-up)'}"
    if r.kind != PREDICTED:
        return r.text
    return f"{r.text}; {predictors.for_profile(profile).describe_state()}"
