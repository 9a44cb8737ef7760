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


def test_a_resumed_search_shows_the_best_within_budget_of_what_finished_before():
    """The bar's "best within budget" starts from the store's candidates (a resumed search showed the first
    new trial, #13 at 80.8%, beside #1 at 87.6% finished before the stop); the teacher and trials over the
    budget are not it; a better new trial takes over."""
    from types import SimpleNamespace

    from autocompress.recipe import Recipe
    from autocompress.search.runner import Progress
    from autocompress.store import TrialRecord

    def trial(number, val, ms, role="candidate"):
        t = TrialRecord(number, role, Recipe().to_json(), Recipe().hash, "done", None, 1.0, 1.0, 100, {})
        t.metrics["val"] = {"n": 1000, "main": val}
        t.latencies["laptop-cpu"] = {"profile": "laptop-cpu", "median_ms": ms}
        return t

    done = [trial(0, 0.90, 17.0, role="teacher"), trial(1, 0.876, 7.9), trial(2, 0.89, 60.0), trial(3, 0.85, 3.4)]
    store = SimpleNamespace(trials=lambda run: done)
    bar = SimpleNamespace(set_postfix_str=lambda text: shown.append(text), update=lambda n: None)
    shown = []
    progress = Progress(bar, store, SimpleNamespace(run="r", device="laptop-cpu", budget_ms=50.0))
    assert progress.best == (0.876, 7.9, 1)
    new = SimpleNamespace(last_result={"val_accuracy": 0.808, "latency_ms": 2.0, "number": 13, "trained": True})
    progress.on_trial_complete(0, [], new)
    assert progress.best == (0.876, 7.9, 1) and "best within budget: #1 87.6% 7.9 ms" in shown[-1]
    progress.on_trial_complete(0, [], SimpleNamespace(last_result={"val_accuracy": 0.88, "latency_ms": 4.0,
                                                                   "number": 14, "trained": True}))
    assert progress.best == (0.88, 4.0, 14)
