"""The search strategy, in one place: which Optuna sampler proposes the recipes.

- ``tpe`` (default): the space's seed recipes first, then random start-up trials, then multi-objective
  TPE (Optuna's, with the budget constraint: feasible trials preferred).
- ``random``: the seed recipes, then uniform random sampling (the baseline a strategy must beat).
"""
from __future__ import annotations

from typing import Callable

import optuna

SAMPLERS: dict[str, Callable[..., optuna.samplers.BaseSampler]] = {}


def sampler(name: str):
    def wrap(fn):
        SAMPLERS[name] = fn
        return fn

    return wrap


@sampler("tpe")
def _tpe(seed: int, trials: int, seeds: int) -> optuna.samplers.BaseSampler:
    startup = max(seeds + 2, trials // 3)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)   # reads Trial.set_constraint


@sampler("random")
def _random(seed: int, trials: int, seeds: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=seed)


def make(name: str, *, seed: int, trials: int, seeds: int) -> optuna.samplers.BaseSampler:
    """The sampler ``name`` for a search of ``trials`` trials, ``seeds`` of them the space's seed recipes."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown search strategy {name!r}: choose one of {', '.join(sorted(SAMPLERS))}")
    return SAMPLERS[name](seed=seed, trials=trials, seeds=seeds)
