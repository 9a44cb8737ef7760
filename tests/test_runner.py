"""The searcher: Optuna inside Ray Tune's OptunaSearch, with the latency budget as an Optuna constraint."""
import optuna
import pytest

from autocompress.search.runner import ConstrainedOptunaSearch, DefineByRun
from autocompress.search.space import load_space


@pytest.fixture
def searcher():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_space("quick")
    return ConstrainedOptunaSearch(space=DefineByRun(space, 6), metric=["val_accuracy", "latency_ms"],
                                   mode=["max", "min"], sampler=optuna.samplers.TPESampler(seed=0),
                                   points_to_evaluate=space.seeds)


def test_seeds_come_first_and_trials_are_numbered(searcher):
    first = searcher.suggest("a")
    assert first["trial_number"] == 1
    assert first["quantize_int8"] is True and first["drop_layers.keep"] == 6      # quick.yaml's first seed
    second = searcher.suggest("b")
    assert second["trial_number"] == 2 and second["drop_layers.keep"] == 5


def test_budget_reaches_the_sampler_as_a_constraint(searcher):
    """A trial over budget is infeasible for Optuna itself, not only filtered afterwards."""
    searcher.suggest("over")
    searcher.on_trial_complete("over", {"val_accuracy": 0.95, "latency_ms": 80.0, "constraint": 30.0})
    searcher.suggest("within")
    searcher.on_trial_complete("within", {"val_accuracy": 0.90, "latency_ms": 20.0, "constraint": -30.0})
    study = searcher._ot_study
    over, within = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert over.constraints == {"latency_budget": 30.0} and within.constraints == {"latency_budget": -30.0}
    # the more accurate trial is over budget: Optuna's own Pareto front holds only the feasible one
    assert [t.number for t in study.best_trials] == [within.number]


def test_no_budget_means_no_constraint(searcher):
    searcher.suggest("x")
    searcher.on_trial_complete("x", {"val_accuracy": 0.9, "latency_ms": 20.0})
    (t,) = searcher._ot_study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert t.constraints == {} and t.values == [0.9, 20.0]
