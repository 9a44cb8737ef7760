"""Fronts as data (JSON-ready), as text tables, and as a PNG plot (matplotlib)."""
from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

from .methods.base import get_method
from .recipe import Recipe
from .search import pareto
from .store import RunRecord, Store, TrialRecord, first_line


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
        "speedup": round(base["median_ms"] / lat["median_ms"], 3) if base else None,
        "size_mb": round(t.size_mb, 2) if t.size_mb is not None else None,
        "size_zip_mb": round(t.size_zip_mb, 2) if t.size_zip_mb is not None else None,
        "n_params": t.n_params,
        "onnx": t.artifacts.get("onnx"),
    }


def front_data(store: Store, run: str) -> dict[str, Any]:
    """Per device: the front members with their figures, the best within budget, and the teacher."""
    r: RunRecord = store.get_run(run)
    trials = store.trials(run)
    failed = store.trials(run, status="failed")
    duplicates = store.trials(run, status="duplicate")
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
        }
    return {
        "run": r.name, "status": r.status, "task": r.task, "model": r.model, "device": r.device,
        "budget_ms": r.budget_ms, "created": r.created.isoformat(timespec="seconds"),
        "trials_done": len([t for t in trials if t.role == "candidate"]), "trials_failed": len(failed),
        "trials_duplicate": len(duplicates),
        "error": r.error,
        "failures": [{"trial": t.number, "error": first_line(t.error)} for t in failed],
        "devices": devices,
    }


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
    if not data["trials_done"]:
        lines.append("  no candidate finished, so there is no front")
        return "\n".join(lines)
    for name, d in data["devices"].items():
        t = d["teacher"]
        head = f"\n{name}" + (" (target" + (f", budget {d['budget_ms']:g} ms" if d["budget_ms"] else "") + ")"
                              if d["target"] else "")
        lines.append(head)
        if t:
            lines.append(f"  teacher fp32 ONNX: val {_pct(t['val'])}  dev {_pct(t['dev'])}  "
                         f"{t['latency']['median_ms']:.2f} ms  {t['size_mb']} MB ({_mb(t['size_zip_mb'])} MB zipped)")
        hdr = f"  {'':1} {'trial':>5} {'val %':>6} {'dev %':>6} {'latency ms':>16} {'speedup':>7} {'MB':>6} {'zip MB':>6}  recipe"
        lines.append(hdr)
        for m in d["front"]:
            mark = "*" if m["trial"] == d["best_within_budget"] else ""
            lat = m["latency"]
            lat_s = f"{lat['median_ms']:.2f} ±{lat['spread_ms'] / 2:.2f}"
            sp = f"{m['speedup']:.2f}x" if m["speedup"] else "-"
            dagger = (" †" if m["size_only_steps"] else "") + (" ‡" if m.get("cpu_notes") else "")
            lines.append(f"  {mark:1} {m['trial']:>5} {_pct(m['val']):>6} {_pct(m['dev']):>6} {lat_s:>16} "
                         f"{sp:>7} {m['size_mb']:>6} {_mb(m['size_zip_mb']):>6}  {m['recipe']}{dagger}")
        if d["budget_ms"] and d["best_within_budget"] is None:
            lines.append(f"  no model is within {d['budget_ms']:g} ms")
    notes = sorted({n for d in data["devices"].values() for m in d["front"] for n in m.get("cpu_notes", [])})
    lines.append("\nval = validation split carved from train (search decisions); dev = GLUE dev set (fronts only);\n"
                 "MB = the shipped ONNX file; zip MB = that file zipped (deflate): what a download costs;\n"
                 "† = has a size-only step (sparsity, shared weights, factorized embeddings): a dense runtime runs it\n"
                 "    no faster (latency unchanged by that step); it is on the front for its zipped size;\n"
                 + "".join(f"‡ = on a CPU device: {n};\n" for n in notes) +
                 "latency = median ± half the interquartile range, batch 1, measured (fronts and teacher re-timed"
                 " side by side, so speed-ups are ratios from one measurement); * = best within budget")
    return "\n".join(lines)


def plot_png(data: dict[str, Any], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    devices = data["devices"]
    fig, axes = plt.subplots(1, len(devices), figsize=(5.5 * len(devices), 4.2), squeeze=False)
    for ax, (name, d) in zip(axes[0], devices.items()):
        pts = [(m["latency"]["median_ms"], 100 * (m["dev"] or m["val"])["main"]) for m in d["front"]]
        ax.plot(*zip(*pts), "o-", label="front") if pts else None
        if d["teacher"]:
            t = d["teacher"]
            ax.plot(t["latency"]["median_ms"], 100 * (t["dev"] or t["val"])["main"], "s", color="k",
                    label="teacher fp32")
        if d["budget_ms"]:
            ax.axvline(d["budget_ms"], ls="--", color="r", label="budget")
        ax.set_title(name)
        ax.set_xlabel("latency, ms (batch 1)")
        ax.set_ylabel("accuracy % (dev where scored)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
