"""Fronts as data (JSON-ready) and as text tables; the list of a store's runs. (The plots of the same data:
``plots.py``.)"""
from __future__ import annotations

import collections
from typing import Any

from .hardware import describe, host_speed_warning
from .methods.base import get_method
from .recipe import Recipe
from .search import pareto
from .search.settings import RunSettings
from .store import RunRecord, Store, TrialRecord, first_line


EXPECTED_MARK = "§"
EXPECTED_LEGEND = (f"{EXPECTED_MARK} = expected latency (early exit): its segments' latencies weighted by the share of\n"
                   "    the validation inputs reaching each")


def _member(t: TrialRecord, profile: str, teacher: TrialRecord | None, resolution: float | None = None) -> dict[str, Any]:
    lat = t.latencies[profile]
    base = teacher.latencies.get(profile) if teacher else None
    methods = [get_method(s.method) for s in Recipe.from_json(t.recipe).steps]
    on_cpu = (lat.get("detail") or {}).get("provider") == "CPUExecutionProvider"
    return {
        "trial": t.number,
        "role": t.role,
        "recipe": Recipe.from_json(t.recipe).short(),
        "size_only_steps": [m.name for m in methods if m.size_only],
        "cpu_notes": [m.cpu_note for m in methods if m.cpu_note] if on_cpu else [],   # e.g. fp16 on a CPU
        "recipe_json": t.recipe,
        "recipe_hash": t.recipe_hash,
        "val": t.metrics.get("val"),
        "dev": t.metrics.get("dev"),
        "latency": lat,
        "latency_obtained": describe(lat),
        "latency_expected": bool((lat.get("detail") or {}).get("expected")),   # early exit: depends on the input
        "speedup": round(base["median_ms"] / lat["median_ms"], 3) if base else None,
        "size_mb": round(t.size_mb, 2) if t.size_mb is not None else None,
        "size_zip_mb": round(t.size_zip_mb, 2) if t.size_zip_mb is not None else None,
        "n_params": t.n_params,
        "onnx": t.artifacts.get("onnx"),
        # val score within the noise of the teacher's at the split's size (cannot be told apart from it)
        "within_noise_of_teacher": (None if resolution is None or teacher is None or t.role == "teacher"
                                    or t.accuracy("val") is None or teacher.accuracy("val") is None
                                    else abs(t.accuracy("val") - teacher.accuracy("val")) <= resolution),
    }


def _teacher_quantized(t: TrialRecord) -> bool:
    """A candidate that is the teacher with only ONNX steps (int8 of the teacher)."""
    recipe = Recipe.from_json(t.recipe)
    return t.role == "candidate" and bool(recipe.onnx_steps) and not recipe.torch_steps


def front_data(store: Store, run: str) -> dict[str, Any]:
    """Per device: the front members with their figures, the best within budget, the teacher, the teacher
    with only ONNX steps (int8), and every candidate."""
    r: RunRecord = store.get_run(run)
    settings = RunSettings.from_dict(r.settings)
    res, floor = settings.resolution, settings.floor
    tolerance = settings.tolerance if settings.tolerance is not None else pareto.TOLERANCE
    trials = store.trials(run)
    failed = store.trials(run, status="failed")
    duplicates = store.trials(run, status="duplicate")
    over = store.trials(run, status="over_budget")
    teacher = next((t for t in trials if t.role == "teacher"), None)
    profiles = sorted({p for t in trials for p in t.latencies})
    devices = {}
    for p in profiles:
        budget = r.budget_ms if p == r.device else None
        members = pareto.front(trials, p, floor=floor)
        best = pareto.best_within(members, p, budget, tolerance=tolerance)
        devices[p] = {
            "target": p == r.device,
            "budget_ms": budget,
            "teacher": _member(teacher, p, teacher) if teacher and p in teacher.latencies else None,
            "front": [_member(t, p, teacher, res) for t in members],
            "best_within_budget": best.number if best else None,
            "pick": pareto.pick_reason(members, p, budget, tolerance=tolerance),
            "teacher_quantized": [_member(t, p, teacher) for t in trials if _teacher_quantized(t) and p in t.latencies],
            "candidates": [_member(t, p, teacher) for t in trials if t.role in ("candidate", "refined")
                           and p in t.latencies],
            "obtained": _how(trials, p),
        }
    return {
        "run": r.name, "status": r.status, "task": r.task, "metric": settings.task_info(r.task)[1],
        "val_size": settings.val_size, "resolution": res, "baseline": settings.baseline, "carve": settings.carve,
        "tolerance": tolerance,
        "at_trivial_baseline": [{"trial": t.number, "val": t.accuracy("val")} for t in pareto.trivial(trials, floor)],
        "model": r.model, "device": r.device,
        "budget_ms": r.budget_ms, "created": r.created.isoformat(timespec="seconds"),
        "trials_done": len([t for t in trials if t.role == "candidate"]), "trials_failed": len(failed),
        "refined": [{"trial": t.number, "refines": t.params.get("refines"), "val": t.accuracy("val")}
                    for t in trials if t.role == "refined"],
        "trials_duplicate": len(duplicates),
        "over_budget": _over_budget(r, over, trials),
        "error": r.error,
        "failures": [{"trial": t.number, "error": first_line(t.error)} for t in failed],
        "devices": devices,
    }


def _how(trials: list[TrialRecord], profile: str) -> dict[str, Any]:
    """How a device's figures were obtained: measured / predicted / both, and the teacher's figure in words."""
    lats = [t.latencies[profile] for t in trials if profile in t.latencies]
    kinds = sorted({lat["how"] for lat in lats})
    teacher = next((t.latencies[profile] for t in trials if t.role == "teacher" and profile in t.latencies), None)
    return {"how": kinds[0] if len(kinds) == 1 else " and ".join(kinds),
            "example": describe(teacher or lats[0]) if lats else None}


def _over_budget(r: RunRecord, over: list[TrialRecord], trials: list[TrialRecord]) -> dict[str, Any] | None:
    """Candidates over the budget on the target device, not trained, and the recovery time that saved:
    for each one whose recipe has recovery steps, the mean recovery time of the trained candidates."""
    if r.budget_ms is None:
        return None
    rec = [t.recovery_seconds for t in trials if t.role == "candidate" and t.recovery_seconds]
    spared = [t for t in over if Recipe.from_json(t.recipe).recovery_steps]
    mean = sum(rec) / len(rec) if rec else None
    return {"count": len(over), "trials": [t.number for t in over],
            "with_recovery_steps": len(spared),
            "recovery_seconds_mean": round(mean, 1) if mean is not None else None,
            "estimated_from": len(rec),
            "training_saved_seconds": round(mean * len(spared), 1) if mean is not None else None}


def over_budget_line(data: dict[str, Any]) -> str | None:
    """One line on the candidates the budget spared from training; where it spared none, one line that
    says so (a budget every candidate met steered nothing); None without a budget or a candidate."""
    o = data.get("over_budget")
    if not o:
        return None
    if not o["count"]:
        d = data["devices"].get(data["device"]) or {}
        slowest = max((m["latency"]["median_ms"] for m in d.get("candidates") or []), default=None)
        if slowest is None:
            return None
        t = d.get("teacher")
        teacher = ""
        if t:
            ms = t["latency"]["median_ms"]
            teacher = f"; the teacher {ms:.1f} ms, {'over' if ms > data['budget_ms'] else 'within'} it"
        return (f"no candidate was over the {data['budget_ms']:g} ms budget on {data['device']} (the slowest "
                f"{slowest:.1f} ms{teacher}): it spared no training; a tighter budget steers the search")
    line = (f"{o['count']} candidate(s) over the {data['budget_ms']:g} ms budget on {data['device']} were not "
            f"trained (trials {', '.join(map(str, o['trials']))})")
    if o["training_saved_seconds"] is not None:
        line += (f": about {o['training_saved_seconds']:.0f} s of recovery training saved ({o['with_recovery_steps']} "
                 f"x the mean recovery of {o['estimated_from']} trained candidate(s), {o['recovery_seconds_mean']:.0f} s)")
    elif o["with_recovery_steps"]:
        line += ": no trained candidate had recovery steps to estimate the time saved from"
    return line


def _tag(lat: dict) -> str:
    """The short provenance of one figure in a table row."""
    if lat.get("how") != "measured":
        return "predicted"
    return "measured, Ray node" if (lat.get("detail") or {}).get("ray_node_id") else "measured"


def _pct(m: dict | None) -> str:
    return f"{100 * m['main']:.2f}" if m else "-"


def _mb(v: float | None) -> str:
    return "-" if v is None else f"{v:g}"


NOISE_MARK = "≈"


def resolution_line(data: dict[str, Any]) -> str | None:
    """How far apart two val scores must be to differ at the split's size (None for runs that did not
    record it)."""
    res, n = data.get("resolution"), data.get("val_size")
    if res is None or not n:
        return None
    return (f"val has {n} rows: two {data.get('metric', 'accuracy')} scores must be {100 * res:.1f} points apart to "
            f"differ at 95%; a front member within that of the teacher is marked {NOISE_MARK}")


def tables(data: dict[str, Any]) -> str:
    """One text table per device; the most accurate model within budget is marked with *."""
    lines = [f"run {data['run']} ({data['status']}): {data['task']}, {data['trials_done']} trials done"
             + (f", {data['trials_failed']} failed" if data["trials_failed"] else "")
             + (f", {data['trials_duplicate']} repeated an earlier recipe" if data.get("trials_duplicate") else "")]
    if data.get("error"):
        lines.append(f"  {data['error']}")
    reasons = collections.Counter(f["error"] for f in data["failures"])
    for reason, count in reasons.most_common(5):
        lines.append(f"  failed ({count}x): {reason}")
    if len(reasons) > 5:
        lines.append(f"  ... and {len(reasons) - 5} other reasons (autocompress front RUN --json lists them all)")
    over = over_budget_line(data)
    if over:
        lines.append(f"  {over}")
    if data.get("carve"):
        lines.append(f"  val: {data['carve']}")
    if data.get("refined"):
        lines.append("  finishing: " + ", ".join(f"trial {r['trial']} is #{r['refines']} with a long recovery"
                                                  for r in data["refined"]))
    low = data.get("at_trivial_baseline") or []
    if low:
        base = data["baseline"]
        lines.append(f"  {len(low)} candidate(s) at or below the trivial baseline (always answering class {base['answer']}: "
                     f"val {100 * base['main']:.2f}) are kept in the store, off the fronts: trials "
                     + ", ".join(str(x["trial"]) for x in low))
    noise = resolution_line(data)
    if noise:
        lines.append(f"  {noise}")
    host_speed = host_speed_warning(m["latency"] for d in data["devices"].values()     # figures on the fronts
                                    for m in d["front"] + ([d["teacher"]] if d.get("teacher") else []))
    if host_speed:
        lines.append(f"  warning: {host_speed}")
    if not data["trials_done"]:
        lines.append("  no candidate finished, so there is no front")
        return "\n".join(lines)
    for name, d in data["devices"].items():
        t = d["teacher"]
        head = f"\n{name}" + (" (target" + (f", budget {d['budget_ms']:g} ms" if d["budget_ms"] else "") + ")"
                              if d["target"] else "")
        lines.append(head)
        if d.get("obtained", {}).get("example"):
            lines.append(f"  latency {d['obtained']['how']}: {d['obtained']['example']}")
        if t:
            lines.append(f"  teacher fp32 ONNX: val {_pct(t['val'])}  dev {_pct(t['dev'])}  "
                         f"{t['latency']['median_ms']:.2f} ms ({_tag(t['latency'])})  {t['size_mb']} MB "
                         f"({_mb(t['size_zip_mb'])} MB zipped)")
        fixed = all((m["latency"].get("detail") or {}).get("fixed") for m in d["front"]) and d["front"]
        if fixed:
            shape = d["front"][0]["latency"]["detail"]["fixed"]
            lines.append(f"  latency ms: expected over the task's input lengths (budget, pick and fronts use it); "
                         f"'at {shape['seq_len']}': the figure at the fixed shape (batch {shape['batch_size']} x seq "
                         f"{shape['seq_len']})")
        hdr = (f"  {'':1} {'trial':>5} {'val %':>6} {'dev %':>6} {'latency ms':>16} "
               + (f"{'at ' + str(shape['seq_len']):>8} " if fixed else "") + f"{'obtained':>17} {'speedup':>7} "
               f"{'MB':>6} {'zip MB':>6}  recipe")
        lines.append(hdr)
        for m in d["front"]:
            mark = "*" if m["trial"] == d["best_within_budget"] else ""
            lat = m["latency"]
            lat_s = f"{lat['median_ms']:.2f} ±{lat['spread_ms'] / 2:.2f}"
            sp = f"{m['speedup']:.2f}x" if m["speedup"] else "-"
            dagger = ((" †" if m["size_only_steps"] else "") + (" ‡" if m.get("cpu_notes") else "")
                      + (f" {EXPECTED_MARK}" if m["latency_expected"] else "")
                      + (f" {NOISE_MARK}" if m.get("within_noise_of_teacher") else ""))
            at = f"{lat['detail']['fixed']['median_ms']:.2f} " if fixed else ""
            lines.append(f"  {mark:1} {m['trial']:>5} {_pct(m['val']):>6} {_pct(m['dev']):>6} {lat_s:>16} "
                         f"{at:>{9 if fixed else 0}}{_tag(lat):>17} {sp:>7} {m['size_mb']:>6} {_mb(m['size_zip_mb']):>6}  {m['recipe']}{dagger}")
        if d["budget_ms"] and d["best_within_budget"] is None:
            lines.append(f"  no model is within {d['budget_ms']:g} ms")
        elif d.get("pick") and d["target"]:
            lines.append(f"  {d['pick']}")
    notes = sorted({n for d in data["devices"].values() for m in d["front"] for n in m.get("cpu_notes", [])})
    over_lengths = any((m["latency"].get("detail") or {}).get("fixed") for d in data["devices"].values() for m in d["front"])
    lines.append("\nval = validation split carved from train (search decisions); dev = held-out dev set, GLUE's or\n"
                 "your --dev file (fronts only);\n"
                 "MB = the shipped ONNX file; zip MB = that file zipped (deflate): what a download costs;\n"
                 "† = has a size-only step (sparsity, shared weights, factorized embeddings): a dense runtime runs it\n"
                 "    no faster (latency unchanged by that step); it is on the front for its zipped size;\n"
                 + "".join(f"‡ = on a CPU device: {n};\n" for n in notes)
                 + ("latency = median ± half the interquartile range; on a device with an 'at N' column the expected\n"
                    "latency over the task's input lengths, 'at N' the figure at its fixed shape (its line above says how it\n"
                    if over_lengths else
                    "latency = median ± half the interquartile range at the device's shape (its line above says how it\n") +
                 "was obtained: measured, or predicted and by what; fronts and teacher re-timed side by side where\n"
                 "measured or host-predicted, so speed-ups are ratios from one measurement); * = best within budget")
    if any(m.get("within_noise_of_teacher") for d in data["devices"].values() for m in d["front"]):
        lines.append(f"{NOISE_MARK} = its val score is within the noise of the teacher's at this split's size (see the "
                     "line at the top):\n    the two cannot be told apart on val")
    if any(m["latency_expected"] for d in data["devices"].values() for m in d["front"]):
        lines.append(f"{EXPECTED_LEGEND} (an input's own latency depends on where it leaves; re-timed\n"
                     "    segment by segment beside the others where measured)")
    return "\n".join(lines)


def runs_data(store: Store) -> list[dict[str, Any]]:
    """Every run in the store with its trial counts and its best model within budget on its target."""
    out = []
    for r in store.runs():
        trials = store.trials(r.name, status=None)
        done = [t for t in trials if t.status == "done"]
        settings = RunSettings.from_dict(r.settings)
        members = pareto.front(done, r.device, floor=settings.floor) if r.device else []
        best = pareto.best_within(members, r.device, r.budget_ms,
                                  tolerance=settings.tolerance if settings.tolerance is not None else pareto.TOLERANCE)
        out.append({"name": r.name, "task": r.task, "device": r.device, "budget_ms": r.budget_ms, "status": r.status,
                    "created": r.created.isoformat(timespec="seconds"), "trials_planned": settings.trials,
                    "trials_done": sum(t.role == "candidate" for t in done),
                    "trials_failed": sum(t.status == "failed" for t in trials),
                    "best_within_budget": None if best is None else {
                        "trial": best.number, "recipe": Recipe.from_json(best.recipe).short(),
                        "val": best.accuracy("val"), "latency_ms": best.latencies[r.device]["median_ms"]}})
    return out


def runs_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "the store has no runs yet: start one with `autocompress search`"
    head = f"{'name':28} {'task':8} {'device':11} {'budget':>8} {'status':11} {'done':>4} {'failed':>6}  best within budget"
    lines = [head]
    for r in rows:
        b = r["best_within_budget"]
        best = (f"#{b['trial']} val {100 * b['val']:.2f}% {b['latency_ms']:.2f} ms  {b['recipe']}" if b else "-")
        budget = f"{r['budget_ms']:g} ms" if r["budget_ms"] else "-"
        planned = f"/{r['trials_planned']}" if r["trials_planned"] else ""
        lines.append(f"{r['name']:28} {r['task']:8} {r['device']:11} {budget:>8} {r['status']:11} "
                     f"{str(r['trials_done']) + planned:>4} {r['trials_failed']:>6}  {best}")
    return "\n".join(lines)
