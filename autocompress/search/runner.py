"""Ray Tune + OptunaSearch: two objectives (validation accuracy up, target latency down), the latency
budget as an Optuna constraint, every candidate timed on every profile (``trial``), the sampler as
``samplers`` says; then the fronts re-timed side by side and re-scored on the GLUE dev set.

A resumed search continues the same Optuna study (``resume``); Ray Tune's own experiment restore is not
used: a new Tuner runs only the trials still owed.

Import ``cluster.configure_environment`` first: this module imports Ray.
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from ray import tune
from ray.tune.search.optuna import OptunaSearch

from ..evaluate import predict_onnx, score
from ..features import EVAL_MAX_LENGTH, encode
from ..hardware import HardwareProfile, obtain_side_by_side
from ..recipe import Recipe
from ..store import INTERRUPTED, Store, StoreError, TrialRecord, first_line
from ..tasks import TaskData
from ..teacher import Teacher
from . import cluster, pareto, samplers
from .resume import (GRACE_S, Heartbeat, fail_stale_trials, finished_count, note_dev_scores, reconcile,  # noqa: F401
                     study_exists)
from .space import Space
from .trial import OBJECTIVES, TrialSetup, run_trial, trainable

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
    parallel: int | None = None          # trials at once (None: one per node of the cluster)
    time_limit_s: float | None = None
    attempt: int = 0                      # 0: the first start; k: the k-th --resume
    sampler: str = "tpe"                  # the search strategy (``samplers``)


class ConstrainedOptunaSearch(OptunaSearch):
    """OptunaSearch that sets the trial's latency-budget constraint (``Trial.set_constraint``, <= 0 is
    feasible) before ``tell``, so Optuna's sampler steers away from recipes over the budget; and keeps
    the list of Optuna trials under way, for the heartbeats."""

    live: dict[str, int]

    def suggest(self, trial_id):
        params = super().suggest(trial_id)
        if not hasattr(self, "live"):
            self.live = {}
        if trial_id in self._ot_trials:
            self.live[trial_id] = self._ot_trials[trial_id]._trial_id
        if not getattr(self, "_named", False) and getattr(self, "_ot_study", None) is not None:
            self._ot_study.set_metric_names(list(OBJECTIVES))      # optuna-dashboard: not "Objective 0/1"
            self._named = True
        return params

    def on_trial_complete(self, trial_id, result=None, error=False):
        if result and trial_id in self._ot_trials:
            trial = self._ot_trials[trial_id]
            if "constraint" in result:
                trial.set_constraint("latency_budget", float(result["constraint"]))
            trial.set_user_attr("recipe", result.get("recipe"))          # what the point is, in the dashboard
            trial.set_user_attr("trial", result.get("number"))           # the run's trial number
            trial.set_user_attr("trained", result.get("trained"))
        getattr(self, "live", {}).pop(trial_id, None)
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
        for t in store.trials(plan.run):                      # a resumed search: the candidates finished before
            if t.role == "candidate" and t.accuracy("val") is not None and plan.device in t.latencies:
                self._consider(t.accuracy("val"), t.latencies[plan.device]["median_ms"], t.number)

    def _consider(self, val: float, latency_ms: float, number: int) -> None:
        within = self.plan.budget_ms is None or latency_ms <= self.plan.budget_ms
        if within and (self.best is None or val > self.best[0]):
            self.best = (val, latency_ms, number)

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

    def refresh(self) -> None:
        """What the running trials are doing (their stage in the store), on the bar: called every heartbeat."""
        running = [t for t in self.store.trials(self.plan.run, status="running") if t.stage]
        if running:
            self._postfix(" · ".join(f"trial {t.number}: {t.stage.split(' (')[0]}" for t in running))

    def on_trial_complete(self, iteration, trials, trial, **info):
        r = trial.last_result or {}
        if "val_accuracy" in r and not r.get("trained", True):
            self.over_budget += 1
            self._postfix(f"trial {r['number']}: {r['latency_ms']:.1f} ms, over budget, not trained")
        elif "val_accuracy" in r:
            self._consider(r["val_accuracy"], r["latency_ms"], r["number"])
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


# ------------------------------------------------------------------ the search
def run_search(plan: SearchPlan, setup: TrialSetup, data: TaskData, teacher: Teacher,
               log=print) -> str:
    """Run the trials still owed; returns the run's status: done, or interrupted (Ctrl-C / SIGTERM)."""
    import optuna
    from tqdm import tqdm

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store = Store(plan.store_url, create=False)
    if plan.attempt > 0:
        for stale, retry in fail_stale_trials(store, plan.run, log):
            log(f"trial {stale} was running when the search stopped: failed as stale"
                + (f", its recipe is proposed again as trial {retry}" if retry else ""))
    baseline = store.trial(plan.run, 0) if plan.attempt > 0 else None
    if baseline is None or baseline.status != "done":     # first, or stopped while the teacher was timed
        run_trial(setup, 0, Recipe(), role="teacher", data=data, teacher=teacher)
    done_before = finished_count(store, plan.run)
    todo = max(0, plan.trials - done_before)
    if todo == 0:
        return "done"
    bar = tqdm(total=plan.trials, initial=done_before, desc="trials", unit="trial", dynamic_ncols=True)
    progress = Progress(bar, store, plan)

    # the space's seeds go to a new study; a resumed one holds its own queue
    seeds = plan.space.seeds[: plan.trials] if plan.attempt == 0 or not study_exists(plan.store_url, plan.run) else []
    sampler = samplers.make(plan.sampler, seed=plan.seed + plan.attempt, trials=plan.trials,
                            seeds=len(plan.space.seeds))
    searcher = ConstrainedOptunaSearch(space=DefineByRun(plan.space, setup.num_layers), metric=list(OBJECTIVES),
                                       mode=["max", "min"], sampler=sampler,
                                       storage=optuna.storages.RDBStorage(plan.store_url), study_name=plan.run,
                                       points_to_evaluate=seeds or None)
    logging.getLogger("ray.tune").setLevel(logging.CRITICAL)   # failures are reported by Progress, from the store
    status, started = "done", time.time()
    cluster.start(plan.ray_address, setup.threads)
    try:
        import ray

        parallel, per_trial = cluster.plan_parallel(plan.parallel, setup.threads)
        setup = replace(setup, threads=per_trial)
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(trainable, setup=setup), {"cpu": per_trial}),
            tune_config=tune.TuneConfig(search_alg=searcher, num_samples=todo, max_concurrent_trials=parallel,
                                        time_budget_s=plan.time_limit_s),
            run_config=tune.RunConfig(name=f"{plan.run}-{plan.attempt}",
                                      storage_path=str((plan.run_dir / "ray").resolve()),
                                      verbose=0, callbacks=[progress],
                                      failure_config=tune.FailureConfig(max_failures=0)),
        )
        log(f"{todo} trial(s) to run, {parallel} at a time with {per_trial} CPU(s) each, on "
            f"{len(cluster.alive_nodes())} node(s)" + (f" ({plan.ray_address})" if plan.ray_address else " (local Ray, 127.0.0.1)"))
        with Heartbeat(searcher, store, plan.run, plan.store_url, on_beat=progress.refresh):
            try:
                tuner.fit()
            except KeyboardInterrupt:
                status = "interrupted"
        timed_out = plan.time_limit_s is not None and time.time() - started >= plan.time_limit_s
        if status == "interrupted":
            store.mark_trials(plan.run, ("running",), "interrupted", INTERRUPTED)
        elif timed_out:
            store.mark_trials(plan.run, ("running",), "stopped", "stopped at the search's time limit")
        ray.shutdown()
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        bar.close()
    if status == "done":
        reconcile(store, plan.run, why="its search ended before it finished")
    return status


# ------------------------------------------------------------------ after the search
def verified(store: Store, run: str, number: int, kind: str = "onnx") -> str:
    """The path of a trial's artifact after checking its sha256 against the store (shared run folders
    can be written by several machines: nothing is read that is not the file that was recorded)."""
    path, ok = store.verify_artifact(store.trial_id(run, number), kind)
    if not ok:
        raise StoreError(f"run {run}, trial {number}: {path} does not match the sha256 recorded in the store")
    return path


def remeasure_fronts(store: Store, run: str, profiles: tuple[HardwareProfile, ...], floor: float | None = None) -> None:
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
            members.update({t.number: t for t in pareto.front(trials, p, floor=floor)})
            members = {n: t for n, t in members.items() if "onnx" in t.artifacts and p in t.latencies}
            if set(members) <= measured or not retime(store, run, profile, list(members.values())):
                break
            measured = set(members)


def retime_candidates(store: Store, run: str, profile: HardwareProfile) -> int:
    """Before the finishing stage chooses its members on ``profile`` (the target device): the teacher and
    every finished candidate timed again side by side, so that the front it chooses from is made of ratios
    from one measurement. A figure taken before a trial's training, while the shared host ran slow, can put
    a member off the front: in the README run of 2026-12-07 16:04 the 3-layer half-width seed was timed at
    3.73 ms beside the 4-layer one's 3.67 (2.82 against 3.61 side by side afterwards), was dominated, and got no long
    recovery. Returns how many were re-timed."""
    trials = [t for t in store.trials(run) if t.role in ("teacher", "candidate")
              and "onnx" in t.artifacts and profile.name in t.latencies]
    return retime(store, run, profile, trials) if len(trials) > 1 else 0


def retime(store: Store, run: str, profile: HardwareProfile, trials: list[TrialRecord]) -> int:
    """``trials`` timed again on ``profile`` side by side (``obtain_side_by_side``), their stored figures
    replaced; returns how many were (0 where the profile has nothing to re-time)."""
    p = profile.name
    again = obtain_side_by_side({t.number: verified(store, run, t.number) for t in trials}, profile,
                                stored={t.number: t.latencies[p] for t in trials},
                                fp32_paths={t.number: verified(store, run, t.number, "onnx_fp32") for t in trials
                                            if "onnx_fp32" in t.artifacts})
    for n, lat in again.items():
        store.add_latency(store.trial_id(run, n), lat.to_dict())
    return len(again)


def rescore_fronts(store: Store, run: str, profiles: tuple[HardwareProfile, ...], data: TaskData, teacher: Teacher,
                   floor: float | None = None) -> list[int]:
    """Score the members of every device's front (and the teacher) on the GLUE dev set, once each."""
    trials = store.trials(run)
    members: dict[int, TrialRecord] = {t.number: t for t in trials if t.role == "teacher"}
    for p in profiles:
        members.update({t.number: t for t in pareto.front(trials, p.name, floor=floor)})
    rescore_dev(store, run, list(members.values()), data, teacher)
    return sorted(members)


def rescore_dev(store: Store, run: str, trials: list[TrialRecord], data: TaskData, teacher: Teacher) -> None:
    """Dev-set scores for ``trials`` that have none yet, on their shipped ONNX files."""
    from tqdm import tqdm

    todo = [t for t in trials if "dev" not in t.metrics and "onnx" in t.artifacts]
    features = encode(teacher.tokenizer, data.dev, EVAL_MAX_LENGTH)
    pad = teacher.tokenizer.pad_token_id or 0
    for t in tqdm(todo, desc="dev re-score", unit="model", dynamic_ncols=True):
        logits = predict_onnx(verified(store, run, t.number), features, pad_id=pad)
        s = score(data.spec, logits, data.dev["label"], "dev")
        store.add_metrics(store.trial_id(run, t.number), "dev", s.metrics, s.n)
    note_dev_scores(store, run)
