"""One trial: recipe -> candidate -> one ``TrialResult``, recorded in the store in one call.

Latency depends on the architecture and the precision, not on trained weights. So a trial first
applies the recipe's ``structure`` steps, exports that untrained structure, applies the ONNX steps
(quantization) to it, and obtains its latency on every profile *before any recovery training*. A
candidate over the budget on the target device is not trained: its result is ``over_budget`` with its
latencies, and the searcher gets the budget constraint (Optuna learns to avoid such recipes). Within
budget: recovery steps, export, ONNX steps, and scoring on the very artifact that is shipped; its
latency is the one taken before training when the shipped graph has the same signature (operators,
attributes, tensor shapes and types: see ``graph_signature``), and is obtained again otherwise.

A recipe with a method whose latency depends on the input (``input_dependent_latency`` in the registry)
is trained first; its artifact is scored, scoring says how much of it the inputs ran (``pipeline.Usage``),
and its latency on every profile is the expected one over those inputs.

``evaluate_candidate`` computes a result (plain Python: the teacher baseline and the benchmarks use it);
``run_trial`` starts the trial's row, evaluates, records the result; ``trainable`` wraps it for Ray Tune.
"""
from __future__ import annotations

import functools
import hashlib
import json
import shutil
import socket
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .. import checkpoint, export, fileio, paths, pipeline
from ..evaluate import score_artifact
from ..features import EVAL_MAX_LENGTH, encode
from ..finalize import finalize, finalized_copy
from ..hardware import HardwareProfile, Latency, graph_signature, load_profile, obtain_latency, shared_machine
from ..methods import Context, get_method
from ..recipe import Recipe
from ..store import INTERRUPTED, Store, TrialResult
from ..tasks import load_task_data
from ..teacher import load_teacher

OBJECTIVES = ("val_accuracy", "latency_ms")


@dataclass(frozen=True)
class TrialSetup:
    """Everything a trial needs, as plain values (it travels to Ray workers)."""

    store_url: str
    run: str
    run_dir: str
    data_path: str               # the task's splits, saved in the run folder (tasks.save_task_data)
    teacher_path: str
    profiles: tuple[HardwareProfile | str, ...]  # every profile gets a latency: each device gets its own front
    device: str                   # the target profile's name (the searcher's latency objective)
    budget_ms: float | None
    space_text: str
    num_layers: int
    threads: int                  # CPUs of one trial (the Ray resources it is granted)
    seed: int = 0


def latency_known_before_training(recipe: Recipe) -> bool:
    """Whether the recipe's latency can be known from its untrained structure. Methods whose latency
    depends on the input declare ``input_dependent_latency = True`` on their registry entry: their
    candidates are trained first and timed after, and the budget cannot spare them training."""
    return not any(get_method(s.method).input_dependent_latency for s in recipe.steps)


def run_trial(setup: TrialSetup, number: int, recipe: Recipe, role: str = "candidate", params: dict | None = None,
              data=None, teacher=None, node: str | None = None) -> TrialResult:
    """Start the trial's row (``running``: a crash leaves it so), evaluate the candidate, record its result
    in one call; a failure is recorded with its reason and raised."""
    store = Store(setup.store_url, create=False)
    same = store.find_done(setup.run, recipe.hash)
    trial_id = store.start_trial(setup.run, number, role, recipe.to_json(), recipe.hash, params,
                                 node=node or socket.gethostname())
    if same is not None:   # the searcher proposed a recipe it already has: reuse its figures, don't redo it
        trained = same.status == "done"
        split = "val" if trained else "untrained"
        result = TrialResult("duplicate", error=f"same recipe as trial {same.number}", seconds=0.0,
                             metrics={split: ({k: v for k, v in same.metrics[split].items() if k != "n"},
                                              same.metrics[split]["n"])},
                             latencies=[same.latencies[setup.device]], size_mb=same.size_mb)
        store.finish_trial(trial_id, "duplicate", error=result.error, seconds=0.0)
        return result
    t0 = time.time()
    try:
        result = evaluate_candidate(setup, number, recipe, role, data=data, teacher=teacher,
                                    stage=lambda text: _quietly(store.set_stage, trial_id, text))
    except KeyboardInterrupt:        # Ctrl-C / SIGTERM reached the process running it (the driver's own trials)
        store.record_trial(trial_id, TrialResult("interrupted", error=INTERRUPTED, seconds=time.time() - t0))
        raise
    except BaseException as e:
        store.record_trial(trial_id, TrialResult("failed", error=_reason(e), seconds=time.time() - t0))
        raise
    store.record_trial(trial_id, result)
    return result


def evaluate_candidate(setup: TrialSetup, number: int, recipe: Recipe, role: str = "candidate",
                       data=None, teacher=None, stage=None) -> TrialResult:
    """The candidate of ``recipe`` built, timed (before training where its latency is known then),
    trained, exported, scored and timed: its ``TrialResult`` (``over_budget`` without training where its
    untrained structure is over the budget on the target device). ``stage(text)`` hears what it is doing
    (``run_trial`` keeps it in the store: the search's progress line and its tests read it)."""
    stage = stage or (lambda text: None)
    t0 = time.time()
    torch.set_num_threads(setup.threads)
    out_dir = Path(setup.run_dir) / f"trial-{number:03d}"
    with shared_machine():
        stage("structure")
        data = data or load_task_data(setup.data_path)
        teacher = teacher or load_teacher(setup.teacher_path)
        model = teacher.model()
        ctx = (Context(teacher.transfer_set(data), seed=setup.seed + number, progress=stage,   # steps, recovery progress
                       teacher=functools.cache(teacher.model))     # the teacher model: loaded on first use
               if recipe.steps else None)
        model = recipe.apply_torch(model, ctx, recipe.structure_steps)   # the architecture is final here
    train = bool(recipe.recovery_steps)
    pre_dir = out_dir / "structure" if train else out_dir     # untrained files are shipped only if nothing trains
    early: dict[str, Latency] = {}
    timed: tuple[Path, Path] | None = None
    if latency_known_before_training(recipe):
        # ---- latency before training: the untrained structure in its shipped form (finalized: e.g.
        # pruning masks folded in), quantized as the recipe says
        with shared_machine():
            stage("export of the untrained structure")
            fp32_0 = export.export_onnx(finalized_copy(model), pre_dir / "model.fp32.onnx")
            timed = (export.shipped_form(fp32_0, pre_dir, lambda src, dst: recipe.apply_onnx(src, dst, ctx)), fp32_0)
        stage("timing the untrained structure")
        early = _latencies(setup, *timed)
        target = early[setup.device].median_ms
        if role == "candidate" and setup.budget_ms is not None and target > setup.budget_ms:
            return _over_budget(setup, recipe, model, teacher, data, early, timed[0], out_dir, t0)
    with shared_machine():
        t_rec = time.time()
        reused, recovered = None, None
        if train:
            stage("recovery")
            model, reused, recovered = recover(setup, recipe, model, ctx, teacher, number)
        recovery_s = time.time() - t_rec
        stage("export")
        model = finalize(model)      # e.g. pruning masks become plain zeros
        checkpoint.save_model(model, teacher.tokenizer, out_dir / "checkpoint")
        if train or timed is None:
            final, fp32 = export.export_candidate(model, out_dir, lambda src, dst: recipe.apply_onnx(src, dst, ctx))
        else:
            final, fp32 = timed
        stage("scoring")
        val, usage = _score(final, teacher, data, "val", setup.threads)
        artifact = pipeline.open(final)
        artifact.note_usage(usage)        # the artifact documents it; nothing reads it back from the file
    stage("timing")
    latencies = _reuse_or_obtain(setup, early, timed, final, fp32, usage)
    shipped = [src for src, _, _ in artifact.files()]
    return TrialResult(
        "done", seconds=time.time() - t0, metrics={"val": (val.metrics, val.n)},
        latencies=[lat.to_dict() for lat in latencies.values()],
        artifacts={"onnx": str(final), "onnx_fp32": str(fp32), "checkpoint": str(out_dir / "checkpoint"),
                   **({"recovered": str(recovered)} if recovered else {})},
        size_mb=sum(checkpoint.size_mb(f) for f in shipped), size_zip_mb=sum(checkpoint.zipped_mb(f) for f in shipped),
        n_params=checkpoint.count_params(model),
        recovery_seconds=recovery_s if train and not reused else None,
        reused_from=f"{reused['run']}/{reused['trial']}" if reused else None)


def prefix_key(setup: TrialSetup, recipe: Recipe) -> str:
    """What the trained model of a recipe depends on besides the teacher: its PyTorch steps (structure
    and recovery, with their parameters) and the run's seed; not its ONNX steps."""
    torch_part = Recipe(recipe.torch_steps)
    return hashlib.sha256(f"{torch_part.hash}|seed {setup.seed}".encode()).hexdigest()[:16]


def recover(setup: TrialSetup, recipe: Recipe, model, ctx: Context, teacher, number: int):
    """The recovery steps, done once per (prefix, teacher): recipes that share their structure and recovery
    steps and differ only after them (int8 dynamic or static, fp16, none) train the same model. The trained,
    finalized model is kept in ``paths.prefix_dir`` (beside the teacher, which every worker of a cluster
    reads and which outlives the run: a later search with this teacher reuses it too); the trial records
    that folder as its ``recovered`` artifact. Returns (model, where it came from or None after training,
    the folder or None where it could not be written)."""
    folder = paths.prefix_dir(teacher.path, prefix_key(setup, recipe))
    origin = folder / "origin.json"
    if origin.is_file():
        try:
            return checkpoint.load_model(folder), json.loads(origin.read_text()), folder
        except Exception:            # a damaged entry (e.g. a disk filled up while writing it): train again
            shutil.rmtree(folder, ignore_errors=True)
    model = finalize(recipe.apply_torch(model, ctx, recipe.recovery_steps))
    try:
        with fileio.folder(folder, keep_existing=True) as tmp:   # a parallel trial that finished first keeps its entry
            checkpoint.save_model(model, None, tmp)
            (tmp / "origin.json").write_text(json.dumps({"run": setup.run, "trial": number, "recipe": recipe.to_json()}))
    except OSError:                  # a read-only teacher folder: nothing is cached, nothing is lost
        return model, None, None
    return model, None, folder


def _latencies(setup: TrialSetup, final: Path, fp32: Path, usage: pipeline.Usage | None = None) -> dict[str, Latency]:
    """The candidate's latency on every profile (each obtained as its profile says: measured or predicted)."""
    out = {}
    for p in setup.profiles:
        p = load_profile(p)
        out[p.name] = obtain_latency(final, p, fp32_path=fp32, usage=usage)
    return out


def _reuse_or_obtain(setup: TrialSetup, early: dict[str, Latency], timed: tuple[Path, Path] | None,
                     final: Path, fp32: Path, usage: pipeline.Usage | None) -> dict[str, Latency]:
    """The figures taken before training if the shipped graphs (final and fp32) have the signatures of
    the timed ones (same operators, attributes, tensor shapes and types: only weights differ); else
    obtained again on the shipped files. Untrained files that are not shipped are removed."""
    same = bool(early) and timed is not None and (
        timed == (final, fp32) or (graph_signature(timed[0]) == graph_signature(final)
                                   and graph_signature(timed[1]) == graph_signature(fp32)))
    if timed is not None and timed[0].parent != final.parent:
        shutil.rmtree(timed[0].parent, ignore_errors=True)
    if not same:
        return _latencies(setup, final, fp32, usage)
    if timed != (final, fp32):
        for lat in early.values():
            lat.detail["timed_before_training"] = True
    return early


def _over_budget(setup: TrialSetup, recipe: Recipe, model, teacher, data, early: dict[str, Latency], final_0: Path,
                 out_dir: Path, t0: float) -> TrialResult:
    """An over-budget candidate, not trained: its latencies, and the untrained structure's score on the
    validation split (split ``untrained``; the searcher needs a value, fronts never show it)."""
    with shared_machine():
        untrained, _ = _score(final_0, teacher, data, "untrained", setup.threads)
    size = checkpoint.size_mb(final_0)
    target = early[setup.device].median_ms
    shutil.rmtree(out_dir, ignore_errors=True)       # nothing of it is shipped
    return TrialResult("over_budget", seconds=time.time() - t0, size_mb=size, n_params=checkpoint.count_params(model),
                       metrics={"untrained": (untrained.metrics, untrained.n)},
                       latencies=[lat.to_dict() for lat in early.values()],
                       error=f"{target:.2f} ms on {setup.device} is over the {setup.budget_ms:g} ms budget "
                             f"({early[setup.device].how}): not trained")


def _score(path: Path, teacher, data, split: str, threads: int | None = None):
    """The validation score of the shipped artifact, and how much of it the inputs ran."""
    features = encode(teacher.tokenizer, data.val, EVAL_MAX_LENGTH)
    return score_artifact(path, data.spec, features, data.val["label"], split,
                          pad_id=teacher.tokenizer.pad_token_id or 0, threads=threads)


def objectives(setup: TrialSetup, number: int, recipe: Recipe, result: TrialResult) -> dict:
    """What the searcher sees of a result: the two objectives and the budget constraint. An over-budget
    candidate (``trained`` false) carries its untrained score: the constraint makes it infeasible."""
    trained = result.status == "done" or (result.status == "duplicate" and "val" in result.metrics)
    val = result.score("val" if trained else "untrained")
    latency = result.latency(setup.device)["median_ms"]
    out = {"val_accuracy": val, "latency_ms": latency, "size_mb": result.size_mb, "number": number,
           "recipe": recipe.short(), "trained": trained}
    if setup.budget_ms is not None:
        out["constraint"] = latency - setup.budget_ms   # <= 0: within budget
    return out


def trainable(config: dict, setup: TrialSetup) -> None:
    """The Ray Tune function trainable: config holds the searcher's flat parameters. A failure before
    the trial is under way (its recipe cannot be built) is recorded too, so every failure has a reason
    in the store."""
    import ray
    from ray import tune

    from .space import parse_space

    number = int(config["trial_number"])
    params = {k: v for k, v in config.items() if k != "trial_number"}
    granted = ray.get_runtime_context().get_assigned_resources().get("CPU")
    if granted:     # trials side by side split the cores: torch and ONNX Runtime use what Ray granted
        setup = replace(setup, threads=max(1, int(granted)))
    try:
        recipe = parse_space(setup.space_text).recipe_from_params(params, setup.num_layers)
    except Exception as e:
        Store(setup.store_url, create=False).record_failed(setup.run, number, params, _reason(e))
        raise
    node = f"{socket.gethostname()}/{ray.get_runtime_context().get_node_id()[:8]}"
    tune.report(objectives(setup, number, recipe, run_trial(setup, number, recipe, params=params, node=node)))


def _quietly(fn, *args) -> None:
    """A progress note that must never fail the trial (a busy database: skip this one)."""
    try:
        fn(*args)
    except Exception:
        pass


def _reason(e: BaseException) -> str:
    """The error as stored: its first line says what went wrong, the traceback follows."""
    return f"{type(e).__name__}: {str(e).strip() or repr(e)}\n{traceback.format_exc(limit=5)}"
