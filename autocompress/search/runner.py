"""Ray Tune + OptunaSearch: two objectives (validation accuracy up, target latency down), the latency
budget as an Optuna constraint, every candidate timed on every profile, then the fronts re-scored on
the GLUE dev set."""
from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

# local runs: no auth token, no usage reporting, no result-file loggers (the store keeps the results)
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")

from ray import tune  # noqa: E402
from ray.tune.search.optuna import OptunaSearch  # noqa: E402

from ..evaluate import EVAL_MAX_LENGTH, encode, predict_onnx, score
from ..hardware.obtain import obtain_side_by_side
from ..hardware.profiles import HardwareProfile
from ..recipe import Recipe
from ..store import Store, TrialRecord, first_line
from ..tasks import TaskData
from ..teacher import Teacher
from . import pareto
from .space import Space
from .trial import OBJECTIVES, TrialSetup, evaluate_candidate, trainable


@dataclass
class SearchPlan:
    run: str
    store_url: str
    run_dir: Path
    space: Space
    trials: int
    profiles: tuple[HardwareProfile, ...]
    device: str
    budget_ms: float | None
    ray_address: str | None = None
    seed: int = 0


class ConstrainedOptunaSearch(OptunaSearch):
    """OptunaSearch that sets the trial's latency-budget constraint (``Trial.set_constraint``, <= 0 is
    feasible) before ``tell``, so Optuna's sampler steers away from recipes over the budget."""

    def on_trial_complete(self, trial_id, result=None, error=False):
        if result and "constraint" in result and trial_id in self._ot_trials:
            self._ot_trials[trial_id].set_constraint("latency_budget", float(result["constraint"]))
        super().on_trial_complete(trial_id, result, error)


@dataclass
class DefineByRun:
    """The searcher's define-by-run space (a picklable object: Ray checkpoints the searcher)."""

    space: Space
    num_layers: int

    def __call__(self, trial) -> dict:
        self.space.suggest(trial, self.num_layers)
        return {"trial_number": trial.number + 1}


class Progress(tune.Callback):
    """Keeps the bar current: trials done/total with ETA (tqdm), failures so far with the first line of
    each reason (from the store, where the trial recorded it), and the best model within budget so far."""

    def __init__(self, bar, store: Store, plan: SearchPlan):
        self.bar, self.store, self.plan = bar, store, plan
        self.failed = 0
        self.over_budget = 0
        self.best: tuple[float, float, int] | None = None    # (val, latency, trial) within budget

    def __getstate__(self):   # Ray Tune pickles its callbacks with the experiment state: keep only numbers
        return {"failed": self.failed, "over_budget": self.over_budget, "best": self.best, "bar": None,
                "store": None, "plan": None}

    def _postfix(self, last: str) -> None:
        parts = [last]
        if self.failed:
            parts.append(f"{self.failed} failed")
        if self.over_budget:
            parts.append(f"{self.over_budget} over budget")
        if self.best:
            parts.append(f"best within budget: #{self.best[2]} {100 * self.best[0]:.1f}% {self.best[1]:.1f} ms")
        self.bar.set_postfix_str(" · ".join(parts))

    def on_trial_start(self, iteration, trials, trial, **info):
        self._postfix(f"trial {trial.config.get('trial_number')} running")

    def on_trial_complete(self, iteration, trials, trial, **info):
        r = trial.last_result or {}
        if "val_accuracy" in r and not r.get("trained", True):
            self.over_budget += 1
            self._postfix(f"trial {r['number']}: {r['latency_ms']:.1f} ms, over budget, not trained")
        elif "val_accuracy" in r:
            within = self.plan.budget_ms is None or r["latency_ms"] <= self.plan.budget_ms
            if within and (self.best is None or r["val_accuracy"] > self.best[0]):
                self.best = (r["val_accuracy"], r["latency_ms"], r["number"])
            self._postfix(f"trial {r['number']}: {100 * r['val_accuracy']:.1f}%, {r['latency_ms']:.1f} ms")
        self.bar.update(1)

    def on_trial_error(self, iteration, trials, trial, **info):
        number = trial.config.get("trial_number")
        self.failed += 1
        self.bar.write(f"trial {number} failed: {self.reason(trial, number)}", file=sys.stderr)
        self._postfix(f"trial {number} failed")
        self.bar.update(1)

    def reason(self, trial, number) -> str:
        rec = self.store.trial(self.plan.run, number) if number is not None else None
        if rec is not None and rec.error:
            return first_line(rec.error)[:200]
        try:   # the worker died before it could write to the store: Ray's own record of the error
            lines = [ln for ln in Path(trial.error_file).read_text().splitlines() if ln.strip()]
            return lines[-1][:200]
        except (OSError, TypeError, AttributeError, IndexError):
            return "unknown error (see the Ray logs)"


def run_search(plan: SearchPlan, setup: TrialSetup, data: TaskData, teacher: Teacher) -> str:
    """Run the trials; returns the run's final status (done | interrupted)."""
    import optuna
    import ray
    from tqdm import tqdm

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    bar = tqdm(total=plan.trials + 1, desc="trials", unit="trial", dynamic_ncols=True)
    bar.set_postfix_str("teacher baseline")
    evaluate_candidate(setup, 0, Recipe(), role="teacher", data=data, teacher=teacher)
    bar.update(1)
    progress = Progress(bar, Store(plan.store_url, create=False), plan)

    # seeds first, then random start-up trials, then multi-objective TPE (feasible trials preferred)
    startup = max(len(plan.space.seeds) + 2, plan.trials // 3)
    sampler = optuna.samplers.TPESampler(seed=plan.seed, n_startup_trials=startup)
    searcher = ConstrainedOptunaSearch(space=DefineByRun(plan.space, setup.num_layers), metric=list(OBJECTIVES),
                                       mode=["max", "min"], sampler=sampler,
                                       storage=optuna.storages.RDBStorage(plan.store_url), study_name=plan.run,
                                       points_to_evaluate=plan.space.seeds[: plan.trials] or None)
    logging.getLogger("ray.tune").setLevel(logging.CRITICAL)   # failures are reported by Progress, from the store
    ray.init(address=plan.ray_address, num_cpus=None if plan.ray_address else setup.threads,
             include_dashboard=False, log_to_driver=False, logging_level="ERROR", configure_logging=True)
    status = "done"
    try:
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(trainable, setup=setup), {"cpu": setup.threads}),
            tune_config=tune.TuneConfig(search_alg=searcher, num_samples=plan.trials, max_concurrent_trials=1),
            run_config=tune.RunConfig(name=plan.run, storage_path=str((plan.run_dir / "ray").resolve()),
                                      verbose=0, callbacks=[progress],
                                      failure_config=tune.FailureConfig(max_failures=0)),
        )
        try:
            tuner.fit()
        except KeyboardInterrupt:
            status = "interrupted"
    finally:
        ray.shutdown()
        bar.close()
    return status


def remeasure_fronts(store: Store, run: str, profiles: tuple[HardwareProfile, ...]) -> None:
    """Time the teacher and each device's front again, side by side (interleaved rounds), so that the
    speed-ups shown are ratios from one measurement; repeated if the front changes (at most 3 times).
    Where the profile is measured, that happens where it is measured (here, or on the Ray node); a
    host-operators prediction is made again from a side-by-side host measurement; a roofline prediction
    has nothing to re-time and stands (``obtain_side_by_side``)."""
    from tqdm import tqdm

    for profile in tqdm(profiles, desc="re-time fronts side by side", unit="device", dynamic_ncols=True):
        p, measured = profile.name, set()
        for _ in range(3):
            trials = store.trials(run)
            members = {t.number: t for t in trials if t.role == "teacher"}
            members.update({t.number: t for t in pareto.front(trials, p)})
            members = {n: t for n, t in members.items() if "onnx" in t.artifacts and p in t.latencies}
            if set(members) <= measured:
                break
            again = obtain_side_by_side({n: t.artifacts["onnx"] for n, t in members.items()}, profile,
                                        stored={n: t.latencies[p] for n, t in members.items()},
                                        fp32_paths={n: t.artifacts["onnx_fp32"] for n, t in members.items()
                                                    if "onnx_fp32" in t.artifacts})
            if not again:
                break
            for n, lat in again.items():
                store.add_latency(store.trial_id(run, n), lat.to_dict())
            measured = set(members)


def rescore_fronts(store: Store, run: str, profiles: tuple[HardwareProfile, ...], data: TaskData, teacher: Teacher) -> list[int]:
    """Score the members of every device's front (and the teacher) on the GLUE dev set, once each."""
    trials = store.trials(run)
    members: dict[int, TrialRecord] = {t.number: t for t in trials if t.role == "teacher"}
    for p in profiles:
        members.update({t.number: t for t in pareto.front(trials, p.name)})
    rescore_dev(store, run, list(members.values()), data, teacher)
    return sorted(members)


def rescore_dev(store: Store, run: str, trials: list[TrialRecord], data: TaskData, teacher: Teacher) -> None:
    """Dev-set scores for ``trials`` that have none yet, on their shipped ONNX files."""
    from tqdm import tqdm

    todo = [t for t in trials if "dev" not in t.metrics and "onnx" in t.artifacts]
    features = encode(teacher.tokenizer, data.dev, EVAL_MAX_LENGTH)
    pad = teacher.tokenizer.pad_token_id or 0
    for t in tqdm(todo, desc="dev re-score", unit="model", dynamic_ncols=True):
        s = score(data.spec, predict_onnx(t.artifacts["onnx"], features, pad_id=pad), data.dev["label"], "dev")
        store.add_metrics(store.trial_id(run, t.number), "dev", s.metrics, s.n)
