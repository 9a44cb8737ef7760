"""One trial: recipe -> candidate -> metrics, recorded in the store as it goes.

``evaluate_candidate`` is plain Python (the teacher baseline uses it directly); ``trainable`` wraps it
for Ray Tune. Accuracy is measured on the very ONNX file that is timed and would be shipped.
"""
from __future__ import annotations

import functools
import socket
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .. import checkpoint, export
from ..evaluate import EVAL_MAX_LENGTH, encode, predict_onnx, score
from ..hardware.latency import measure_latency, shared_machine
from ..hardware.profiles import HardwareProfile
from ..methods.base import Context, finalize
from ..recipe import Recipe
from ..store import Store
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
    profiles: tuple[HardwareProfile, ...]  # every profile is measured: each device gets its own front
    device: str                   # the target profile's name (the searcher's latency objective)
    budget_ms: float | None
    space_text: str
    num_layers: int
    threads: int                  # CPUs of one trial (the Ray resources it is granted)
    seed: int = 0


def evaluate_candidate(setup: TrialSetup, number: int, recipe: Recipe, role: str = "candidate",
                       params: dict | None = None, data=None, teacher=None, node: str | None = None) -> dict:
    store = Store(setup.store_url, create=False)
    same = store.find_done(setup.run, recipe.hash)
    trial_id = store.start_trial(setup.run, number, role, recipe.to_json(), recipe.hash, params,
                                 node=node or socket.gethostname())
    if same is not None:   # the searcher proposed a recipe it already has: reuse its figures, don't redo it
        store.finish_trial(trial_id, "duplicate", error=f"same recipe as trial {same.number}", seconds=0.0)
        return _result(setup, number, recipe, same.accuracy("val"),
                       same.latencies[setup.device]["median_ms"], same.size_mb)
    t0 = time.time()
    try:
        torch.set_num_threads(setup.threads)
        out_dir = Path(setup.run_dir) / f"trial-{number:03d}"
        with shared_machine():
            data = data or load_task_data(setup.data_path)
            teacher = teacher or load_teacher(setup.teacher_path)
            model = teacher.model()
            if recipe.torch_steps:
                ctx = Context(teacher.transfer_set(data), seed=setup.seed + number,
                              teacher=functools.cache(teacher.model))   # loaded on first use, once per trial
                model = recipe.apply_torch(model, ctx)
            model = finalize(model)      # e.g. pruning masks become plain zeros
            checkpoint.save_model(model, teacher.tokenizer, out_dir / "checkpoint")
            fp32 = export.export_onnx(model, out_dir / "model.fp32.onnx")
            final = recipe.apply_onnx(fp32, out_dir)
            pad = teacher.tokenizer.pad_token_id or 0
            logits = predict_onnx(final, encode(teacher.tokenizer, data.val, EVAL_MAX_LENGTH), pad_id=pad,
                                  threads=setup.threads)
            val = score(data.spec, logits, data.val["label"], "val")
        latencies = {p.name: measure_latency(final, p) for p in setup.profiles}
        store.add_metrics(trial_id, "val", val.metrics, val.n)
        for lat in latencies.values():
            store.add_latency(trial_id, lat.to_dict())
        store.add_artifact(trial_id, "onnx", final)
        store.add_artifact(trial_id, "checkpoint", out_dir / "checkpoint")
        size = checkpoint.size_mb(final)
        store.finish_trial(trial_id, "done", seconds=time.time() - t0, size_mb=size,
                           size_zip_mb=checkpoint.zipped_mb(final), n_params=checkpoint.count_params(model))
    except BaseException as e:
        store.finish_trial(trial_id, "failed", error=_reason(e), seconds=time.time() - t0)
        raise
    return _result(setup, number, recipe, val.main, latencies[setup.device].median_ms, size)


def _result(setup: TrialSetup, number: int, recipe: Recipe, val: float, latency_ms: float, size: float) -> dict:
    """What the searcher sees: the two objectives and the budget constraint."""
    result = {"val_accuracy": val, "latency_ms": latency_ms, "size_mb": size, "number": number,
              "recipe": recipe.short()}
    if setup.budget_ms is not None:
        result["constraint"] = latency_ms - setup.budget_ms   # <= 0: within budget
    return result


def trainable(config: dict, setup: TrialSetup) -> None:
    """The Ray Tune function trainable: config holds the searcher's flat parameters. A failure before
    the trial is under way (its recipe cannot be built) is recorded too, so every failure has a reason
    in the store."""
    from ray import tune

    from .space import parse_space

    import ray

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
    tune.report(evaluate_candidate(setup, number, recipe, params=params, node=node))


def _reason(e: BaseException) -> str:
    """The error as stored: its first line says what went wrong, the traceback follows."""
    return f"{type(e).__name__}: {str(e).strip() or repr(e)}\n{traceback.format_exc(limit=5)}"

