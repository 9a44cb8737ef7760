"""The finishing stage: after the search's trials, a few members of the target device's front are trained
again with a long recovery, each as a trial of its own.

The search ranks recipes on a short recovery (a few hundred distillation steps: cheap, a low fidelity);
the published students (TinyBERT, MiniLM) distil for many passes with intermediate targets. So the long
recovery goes only to the few recipes the front says are worth it (multi-fidelity in two rungs): up to
``members`` front members that were distilled, those whose val score is within ``within`` of the
teacher's first, spread over the front's latencies, then the front's fast end (``members``). Each is
rebuilt with the same structure and ONNX steps and the space's ``finish: distill:`` parameters (more
steps, hidden-state and attention targets) as its recovery; its latency is the member's (same graph), its
score its own. It is stored as a trial of role ``refined`` (``params['refines']``: the member's number),
so the fronts hold both; a resumed search does not refine a member twice. Recipes whose latency depends
on the input (early exit) are left as they are.
"""
from __future__ import annotations

import time
from dataclasses import replace

from ..recipe import Recipe, Step
from ..store import Store, TrialRecord
from . import pareto
from .trial import TrialSetup, latency_known_before_training, run_trial

ROLE = "refined"


def refined_recipe(recipe: Recipe, distill: dict) -> Recipe | None:
    """``recipe`` with its recovery replaced by the long one (``distill`` parameters over the member's own);
    None where there is nothing to refine (no distillation step, or an input-dependent latency)."""
    if not latency_known_before_training(recipe):
        return None
    steps = list(recipe.steps)
    at = next((i for i, s in enumerate(steps) if s.method == "distill"), None)
    if at is None:
        return None
    longer = {**steps[at].params, **distill}
    if longer == steps[at].params:
        return None
    steps[at] = Step("distill", longer)
    return Recipe(tuple(steps))


def members(trials: list[TrialRecord], device: str, spec: dict, floor: float | None) -> list[TrialRecord]:
    """The front members worth a long recovery: distilled, not refined already (nor another member whose long
    recipe is the same: the most accurate of those stands for them), above the task's trivial baseline
    (``floor``). Those within ``spec['within']`` of the teacher's val score come first, up to
    ``spec['members']`` spread evenly over the front's latencies (fastest and slowest first). Where fewer are
    within reach, the slots left go to the most accurate of the members faster than every one chosen (the
    front's fast end, where a long recovery has the most to give: SST-2's 3-layer member went from 88.1 to
    92.1 val), then to the most accurate of the others (the front also keeps slower members for their
    size). So a task whose short recoveries all land far from the teacher (CoLA: of a teacher's 35.4 val
    MCC, the 3-layer members had 13.8-21.4 after 400 steps) still gets its members trained long.

    The slots go to the accuracy-latency front first: a member that is on the device's front only for its
    smaller download (slower and less accurate than another) gets a slot only where one is left over. (SST-2,
    2026-12-07: such a member, 4.90 ms at 84.1 val beside 4.26 ms at 87.9, took the slot of the 3-layer
    full-width one; its long recovery ended at 88.42 dev and 5.36 ms, behind the 4.29 ms member at 90.25.)
    Returned fastest first."""
    teacher = next((t for t in trials if t.role == "teacher"), None)
    top = teacher.accuracy("val") if teacher else max((t.accuracy("val") or 0.0) for t in trials)
    done = {t.params.get("refines") for t in trials if t.role == ROLE}
    seen = {Recipe.from_json(t.recipe).hash for t in trials if t.role == ROLE}
    front = pareto.front(trials, device, floor=floor, size=False)           # fastest first
    on = {t.number for t in front}
    size_only = [t for t in pareto.front(trials, device, floor=floor) if t.number not in on]
    fit, extra = [], []
    for t in sorted(front, key=_val, reverse=True) + sorted(size_only, key=_val, reverse=True):  # one per long recipe
        longer = refined_recipe(Recipe.from_json(t.recipe), spec["distill"]) if t.role == "candidate" else None
        if longer is not None and t.number not in done and longer.hash not in seen:
            seen.add(longer.hash)
            (fit if t.number in on else extra).append(t)
    fit.sort(key=front.index)
    pool = [t for t in fit if t.accuracy("val") >= top - spec["within"]]
    k = min(spec["members"], len(pool))
    if k <= 1:
        chosen = pool[:k]
    else:
        chosen = [pool[i] for i in sorted({round(i * (len(pool) - 1) / (k - 1)) for i in range(k)})]
    cut = min((fit.index(t) for t in chosen), default=len(fit))
    faster, slower = fit[:cut], [t for t in fit[cut:] if t not in chosen]
    rest = sorted(faster, key=_val, reverse=True) + sorted(slower, key=_val, reverse=True) + extra
    chosen += rest[:spec["members"] - len(chosen)]
    return sorted(chosen, key=lambda t: t.latencies[device]["median_ms"])


def _val(t: TrialRecord) -> float:
    return t.accuracy("val") or 0.0


def refine(store: Store, setup: TrialSetup, spec: dict | None, data, teacher, *, floor: float | None = None,
           log=print) -> list[int]:
    """Train the chosen members again with the long recovery (in this process, one after another, with
    every CPU of the trial's share); returns the new trials' numbers."""
    if not spec:
        return []
    from tqdm import tqdm

    trials = store.trials(setup.run, status=None)
    chosen = members([t for t in trials if t.status == "done"], setup.device, spec, floor)
    if not chosen:
        return []
    log(f"finishing: {len(chosen)} front member(s) trained again with a long recovery "
        f"({', '.join(f'#{t.number}' for t in chosen)}; distill {spec['distill']})")
    number = max(t.number for t in trials) + 1
    made = []
    for member in tqdm(chosen, desc="finishing", unit="member", dynamic_ncols=True):
        recipe = refined_recipe(Recipe.from_json(member.recipe), spec["distill"])
        t0 = time.time()
        result = run_trial(replace(setup, budget_ms=None), number, recipe, role=ROLE,
                           params={"refines": member.number}, data=data, teacher=teacher)
        log(f"finishing: trial {number} ({recipe.short()}) from #{member.number}: val "
            f"{100 * (member.accuracy('val') or 0):.2f} -> {100 * (result.score('val') or 0):.2f} in "
            f"{time.time() - t0:.0f} s")
        made.append(number)
        number += 1
    return made
