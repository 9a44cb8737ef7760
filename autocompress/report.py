"""Fronts as data (JSON-ready), as text tables, as a PNG plot (matplotlib) and as an interactive page
(plotly); the list of a store's runs."""
from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

from .hardware.latency import describe
from .methods.base import get_method
from .recipe import Recipe
from .search import pareto
from .store import RunRecord, Store, TrialRecord, first_line


EXPECTED_MARK = "§"
EXPECTED_LEGEND = (f"{EXPECTED_MARK} = expected latency (early exit): its segments' latencies weighted by the share of\n"
                   "    the validation inputs reaching each")


def _member(t: TrialRecord, profile: str, teacher: TrialRecord | None) -> dict[str, Any]:
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
    }


def _teacher_quantized(t: TrialRecord) -> bool:
    """A candidate that is the teacher with only ONNX steps (int8 of the teacher)."""
    recipe = Recipe.from_json(t.recipe)
    return t.role == "candidate" and bool(recipe.onnx_steps) and not recipe.torch_steps


def front_data(store: Store, run: str) -> dict[str, Any]:
    """Per device: the front members with their figures, the best within budget, the teacher, the teacher
    with only ONNX steps (int8), and every candidate."""
    from .tasks import stored_task

    r: RunRecord = store.get_run(run)
    trials = store.trials(run)
    failed = store.trials(run, status="failed")
    duplicates = store.trials(run, status="duplicate")
    over = store.trials(run, status="over_budget")
    teacher = next((t for t in trials if t.role == "teacher"), None)
    profiles = sorted({p for t in trials for p in t.latencies})
    devices = {}
    for p in profiles:
        budget = r.budget_ms if p == r.device else None
        best = pareto.best_within(trials, p, budget)
        devices[p] = {
            "target": p == r.device,
            "budget_ms": budget,
            "teacher": _member(teacher, p, teacher) if teacher and p in teacher.latencies else None,
            "front": [_member(t, p, teacher) for t in pareto.front(trials, p)],
            "best_within_budget": best.number if best else None,
            "teacher_quantized": [_member(t, p, teacher) for t in trials if _teacher_quantized(t) and p in t.latencies],
            "candidates": [_member(t, p, teacher) for t in trials if t.role == "candidate" and p in t.latencies],
            "obtained": _how(trials, p),
        }
    return {
        "run": r.name, "status": r.status, "task": r.task, "metric": stored_task(r.task, r.settings)[1],
        "model": r.model, "device": r.device,
        "budget_ms": r.budget_ms, "created": r.created.isoformat(timespec="seconds"),
        "trials_done": len([t for t in trials if t.role == "candidate"]), "trials_failed": len(failed),
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
        hdr = (f"  {'':1} {'trial':>5} {'val %':>6} {'dev %':>6} {'latency ms':>16} {'obtained':>17} {'speedup':>7} "
               f"{'MB':>6} {'zip MB':>6}  recipe")
        lines.append(hdr)
        for m in d["front"]:
            mark = "*" if m["trial"] == d["best_within_budget"] else ""
            lat = m["latency"]
            lat_s = f"{lat['median_ms']:.2f} ±{lat['spread_ms'] / 2:.2f}"
            sp = f"{m['speedup']:.2f}x" if m["speedup"] else "-"
            dagger = ((" †" if m["size_only_steps"] else "") + (" ‡" if m.get("cpu_notes") else "")
                      + (f" {EXPECTED_MARK}" if m["latency_expected"] else ""))
            lines.append(f"  {mark:1} {m['trial']:>5} {_pct(m['val']):>6} {_pct(m['dev']):>6} {lat_s:>16} "
                         f"{_tag(lat):>17} {sp:>7} {m['size_mb']:>6} {_mb(m['size_zip_mb']):>6}  {m['recipe']}{dagger}")
        if d["budget_ms"] and d["best_within_budget"] is None:
            lines.append(f"  no model is within {d['budget_ms']:g} ms")
    notes = sorted({n for d in data["devices"].values() for m in d["front"] for n in m.get("cpu_notes", [])})
    lines.append("\nval = validation split carved from train (search decisions); dev = held-out dev set, GLUE's or\n"
                 "your --dev file (fronts only);\n"
                 "MB = the shipped ONNX file; zip MB = that file zipped (deflate): what a download costs;\n"
                 "† = has a size-only step (sparsity, shared weights, factorized embeddings): a dense runtime runs it\n"
                 "    no faster (latency unchanged by that step); it is on the front for its zipped size;\n"
                 + "".join(f"‡ = on a CPU device: {n};\n" for n in notes) +
                 "latency = median ± half the interquartile range at the device's shape (its line above says how it\n"
                 "was obtained: measured, or predicted and by what; fronts and teacher re-timed side by side where\n"
                 "measured or host-predicted, so speed-ups are ratios from one measurement); * = best within budget")
    if any(m["latency_expected"] for d in data["devices"].values() for m in d["front"]):
        lines.append(f"{EXPECTED_LEGEND} (an input's own latency depends on where it leaves; re-timed\n"
                     "    segment by segment beside the others where measured)")
    return "\n".join(lines)


def _latency_note(d: dict[str, Any]) -> str:
    """How a device's latencies were obtained, for an axis label: measured, or predicted (by what)."""
    from .hardware.latency import describe

    lats = [m["latency"] for m in d["candidates"] + ([d["teacher"]] if d["teacher"] else [])]
    predicted = [lat for lat in lats if lat.get("how") == "predicted"]
    if not predicted:
        return "measured"
    plain = [lat for lat in predicted if not (lat.get("detail") or {}).get("expected")]   # not an early exit's sum
    first = describe(plain[0]) if plain else describe(predicted[0]).split("; each segment ", 1)[-1]
    return first if len(predicted) == len(lats) else f"some {first} (hollow markers), the rest measured"


def _score(m: dict[str, Any], split: str) -> float | None:
    return 100 * m[split]["main"] if m.get(split) else None


def _series(d: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """What the plots draw: the front's members that are best on accuracy and latency alone (the line), the
    members on the front only for their zipped size, the other candidates, the teacher, its int8."""
    front_numbers = {m["trial"] for m in d["front"]}
    point = lambda m: (m["val"]["main"], m["latency"]["median_ms"])  # noqa: E731
    line = [m for m in d["front"] if not any(pareto.dominates(point(o), point(m)) for o in d["front"])]
    return {"candidates": [m for m in d["candidates"] if m["trial"] not in front_numbers],
            "front": line, "front_size": [m for m in d["front"] if m not in line],
            "teacher": [d["teacher"]] if d["teacher"] else [], "teacher_quantized": d["teacher_quantized"]}


def plot_png(data: dict[str, Any], path: str | Path) -> Path:
    """Per device: every candidate (grey), the front on val (line) and re-scored on dev (dashed), the
    teacher, the teacher with only ONNX steps (int8), the best within budget (star), the budget line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    devices = data["devices"]
    metric = data.get("metric", "accuracy")
    fig, axes = plt.subplots(1, max(1, len(devices)), figsize=(6.2 * max(1, len(devices)), 4.8), squeeze=False)
    for ax, (name, d) in zip(axes[0], devices.items()):
        series = _series(d)
        predicted = lambda m: m["latency"].get("how") == "predicted"  # noqa: E731
        for m in series["candidates"]:
            ax.plot(m["latency"]["median_ms"], _score(m, "val"), "o", color="0.65", ms=5,
                    mfc="none" if predicted(m) else "0.65", label="other candidates (val)")
        front = series["front"]
        if front:
            x = [m["latency"]["median_ms"] for m in front]
            ax.plot(x, [_score(m, "val") for m in front], "o-", color="C0", label="front (val)")
            dev = [(xi, _score(m, "dev")) for xi, m in zip(x, front) if m.get("dev")]
            if dev:
                ax.plot(*zip(*dev), "o--", color="C0", mfc="none", alpha=0.7, label="front re-scored on dev")
            for xi, m in zip(x, front):
                ax.annotate(f"#{m['trial']}", (xi, _score(m, "val")), textcoords="offset points", xytext=(4, 4),
                            fontsize=7, color="C0")
            best = next((m for m in d["front"] if m["trial"] == d["best_within_budget"]), None)
            if best and d["budget_ms"]:
                ax.plot(best["latency"]["median_ms"], _score(best, "val"), "*", color="C1", ms=16, zorder=5,
                        label="best within budget")
        for m in series["front_size"]:
            ax.plot(m["latency"]["median_ms"], _score(m, "val"), "o", color="C0", mfc="none", ms=7,
                    label="on the front for its zipped size (val)")
            ax.annotate(f"#{m['trial']}", (m["latency"]["median_ms"], _score(m, "val")), textcoords="offset points",
                        xytext=(4, 4), fontsize=7, color="C0")
        for m in series["teacher"]:
            ax.plot(m["latency"]["median_ms"], _score(m, "val"), "s", color="k", ms=8, label="teacher fp32 (val)")
        for m in series["teacher_quantized"]:
            ax.plot(m["latency"]["median_ms"], _score(m, "val"), "D", color="C2", ms=7,
                    label=f"teacher + {m['recipe']} (val)")
        expected = [m for key in ("front", "front_size", "candidates") for m in series[key] if m["latency_expected"]]
        for m in expected:
            ax.annotate(EXPECTED_MARK, (m["latency"]["median_ms"], _score(m, "val")), textcoords="offset points",
                        xytext=(-9, 4), fontsize=8, color="C3")
        if expected:
            ax.plot([], [], ls="none", marker="$" + EXPECTED_MARK + "$", color="C3",
                    label="expected latency (early exit), over the validation inputs")
        if d["budget_ms"]:
            ax.axvline(d["budget_ms"], ls="--", color="r", label=f"budget {d['budget_ms']:g} ms")
        how = (d.get("obtained") or {}).get("how", "")
        shape = (d["teacher"] or (d["front"] or [{}])[0]).get("latency", {}).get("detail", {})
        ax.set_title(f"{name}" + (" (target)" if d["target"] else "") + (f", {how}" if how else ""))
        note = _latency_note(d)
        ax.set_xlabel(f"latency, ms (batch {shape.get('batch_size', '?')} x seq {shape.get('seq_len', '?')}, median)"
                      + ("" if note == "measured" else f"\n{note}"), fontsize=9)
        ax.set_ylabel(f"{metric}, % (val; dashed: dev)")
        ax.grid(alpha=0.3)
    legend = {}                                  # one legend for all devices, below the plots
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    fig.legend(legend.values(), legend.keys(), loc="lower center", ncol=min(4, max(1, len(legend))), fontsize=8,
               frameon=False)
    fig.suptitle(f"run {data['run']}: {data['task']}", fontsize=10)
    fig.tight_layout(rect=(0, 0.05 + 0.035 * ((len(legend) + 3) // 4), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def _hover(m: dict[str, Any], metric: str) -> str:
    from .hardware.latency import describe

    lat = m["latency"]
    rows = [f"<b>trial {m['trial']}</b>: {m['recipe']}" + (f" {EXPECTED_MARK} expected latency" if m.get("latency_expected") else "")]
    for split in ("val", "dev"):
        if m.get(split):
            rows.append(f"{split} {metric} {100 * m[split]['main']:.2f}% (n={m[split]['n']})")
    rows.append(f"latency {lat['median_ms']:.2f} ms ± {lat['spread_ms'] / 2:.2f}"
                + (f", {m['speedup']:.2f}x the teacher" if m.get("speedup") else ""))
    rows.append(describe(lat))
    if m.get("size_mb") is not None:
        rows.append(f"{m['size_mb']} MB" + (f", {m['n_params']:,} parameters" if m.get("n_params") else ""))
    return "<br>".join(rows)


def plot_html(data: dict[str, Any], path: str | Path) -> Path:
    """The PNG's content as one self-contained interactive page (plotly, its JavaScript inlined)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    devices = data["devices"]
    metric = data.get("metric", "accuracy")
    names = list(devices) or ["(no device)"]
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=[
        n + (" (target)" if devices.get(n, {}).get("target") else "") for n in names])
    styles = {"candidates": dict(mode="markers", marker=dict(color="#aaaaaa", size=8), name="other candidates (val)"),
              "front": dict(mode="lines+markers", marker=dict(color="#1f77b4", size=9), name="front (val)"),
              "front_size": dict(mode="markers", marker=dict(color="#1f77b4", size=9, symbol="circle-open"),
                                 name="on the front for its zipped size (val)"),
              "teacher": dict(mode="markers", marker=dict(color="black", symbol="square", size=11),
                              name="teacher fp32 (val)"),
              "teacher_quantized": dict(mode="markers", marker=dict(color="#2ca02c", symbol="diamond", size=10),
                                        name="teacher + ONNX steps only (val)")}
    for col, (name, d) in enumerate(devices.items(), 1):
        for key, members in _series(d).items():
            if not members:
                continue
            fig.add_trace(go.Scatter(x=[m["latency"]["median_ms"] for m in members], y=[_score(m, "val") for m in members],
                                     hovertext=[_hover(m, metric) for m in members], hoverinfo="text",
                                     legendgroup=key, showlegend=col == 1, **styles[key]), row=1, col=col)
        dev = [m for m in _series(d)["front"] if m.get("dev")]
        if dev:
            fig.add_trace(go.Scatter(x=[m["latency"]["median_ms"] for m in dev], y=[_score(m, "dev") for m in dev],
                                     mode="lines+markers", line=dict(dash="dash", color="#1f77b4"),
                                     marker=dict(symbol="circle-open", size=9), name="front re-scored on dev",
                                     hovertext=[_hover(m, metric) for m in dev], hoverinfo="text",
                                     legendgroup="dev", showlegend=col == 1), row=1, col=col)
        if d["budget_ms"]:
            fig.add_vline(x=d["budget_ms"], line=dict(color="red", dash="dot"), row=1, col=col,
                          annotation_text=f"budget {d['budget_ms']:g} ms")
        note = _latency_note(d)
        fig.update_xaxes(title_text="latency, ms (batch 1, median)" + ("" if note == "measured" else f"<br>{note}"),
                         row=1, col=col)
        fig.update_yaxes(title_text=f"{metric}, %", row=1, col=col)
    fig.update_layout(title=f"run {data['run']}: {data['task']} ({data['status']}, {data['trials_done']} trials)",
                      template="plotly_white", hoverlabel=dict(align="left"))
    fig.write_html(str(path), include_plotlyjs=True, full_html=True)
    return Path(path)


def runs_data(store: Store) -> list[dict[str, Any]]:
    """Every run in the store with its trial counts and its best model within budget on its target."""
    out = []
    for r in store.runs():
        trials = store.trials(r.name, status=None)
        done = [t for t in trials if t.status == "done"]
        best = pareto.best_within(done, r.device, r.budget_ms)
        out.append({"name": r.name, "task": r.task, "device": r.device, "budget_ms": r.budget_ms, "status": r.status,
                    "created": r.created.isoformat(timespec="seconds"), "trials_planned": r.settings.get("trials"),
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
