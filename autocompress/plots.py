"""The fronts as pictures: a PNG per run (matplotlib, one panel per device) and the same as one
self-contained interactive page (plotly). Both draw ``report.front_data``'s dict."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .hardware import describe
from .report import EXPECTED_MARK
from .search import pareto


def _latency_note(d: dict[str, Any]) -> str:
    """How a device's latencies were obtained, for an axis label: measured, or predicted (by what)."""
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
    notes = {name: _wrap(_latency_note(d), NOTE_CHARS) for name, d in devices.items()}
    note_lines = max((n.count("\n") + 1 for n in notes.values() if n != "measured"), default=0)
    height = 4.8 + 0.16 * note_lines                    # room under the panels for their provenance lines
    fig, axes = plt.subplots(1, max(1, len(devices)), figsize=(6.2 * max(1, len(devices)), height), squeeze=False)
    trial_labels: dict[Any, list] = {}          # per panel: its trial labels, placed once the layout is final
    keep_clear: dict[Any, list] = {}            # per panel: the points (data, radius in points) labels avoid
    for ax, (name, d) in zip(axes[0], devices.items()):
        series = _series(d)
        labels, clear = trial_labels.setdefault(ax, []), keep_clear.setdefault(ax, [])
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
                clear.extend((xy, 3.5) for xy in dev)
            for xi, m in zip(x, front):
                labels.append(ax.annotate(f"#{m['trial']}", (xi, _score(m, "val")), textcoords="offset points",
                                          xytext=(4, 4), fontsize=7, color="C0"))
                clear.append(((xi, _score(m, "val")), 3.5))
            best = _pick(d)
            if best:
                ax.plot(best["latency"]["median_ms"], _score(best, "val"), "*", color="C1", ms=16, zorder=5,
                        label=_pick_label(data, d))
                clear.append(((best["latency"]["median_ms"], _score(best, "val")), 7))
        for m in series["front_size"]:
            ax.plot(m["latency"]["median_ms"], _score(m, "val"), "o", color="C0", mfc="none", ms=7,
                    label="on the front for its zipped size (val)")
            labels.append(ax.annotate(f"#{m['trial']}", (m["latency"]["median_ms"], _score(m, "val")),
                                      textcoords="offset points", xytext=(4, 4), fontsize=7, color="C0"))
            clear.append(((m["latency"]["median_ms"], _score(m, "val")), 4))
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
        if d["budget_ms"] and _budget_in_view(d):
            ax.axvline(d["budget_ms"], ls="--", color="r", label=f"budget {d['budget_ms']:g} ms")
        elif d["budget_ms"]:        # far right of every model: the axis ends near them, the budget said at its edge
            ax.annotate(f"budget {d['budget_ms']:g} ms \u2192", xy=(0.99, 0.02), xycoords="axes fraction", ha="right",
                        va="bottom", fontsize=8, color="r")
        ax.set_title(_panel_title(name, d))
        note = notes[name]
        ax.set_xlabel(_axis_label(d), fontsize=9)
        if note != "measured":             # how the figures were obtained: wrapped to the panel, under its axis
            text = ax.annotate(note, xy=(0, 0), xycoords="axes fraction", xytext=(-30, -30), textcoords="offset points",
                               va="top", ha="left", fontsize=6.5, color="0.3")
            text.set_in_layout(False)        # room is kept for it below (``bottom``), the panels keep their width
        ax.set_ylabel(f"{metric}, % (val; dashed: dev)")
        ax.grid(alpha=0.3)
    legend = {}                                  # one legend for all devices, below the plots
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    fig.legend(legend.values(), legend.keys(), loc="lower center", ncol=min(4, max(1, len(legend))), fontsize=8,
               frameon=False)
    fig.suptitle(f"run {data['run']}: {data['task']}", fontsize=10)
    legend_rows = (len(legend) + 3) // 4
    bottom = (0.3 + 0.1 * note_lines + 0.17 * legend_rows) / height       # inches of notes and legend, as a fraction
    fig.tight_layout(rect=(0, bottom, 1, 1))
    for ax, labels in trial_labels.items():
        _place_labels(ax, labels, keep_clear[ax])
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


# where a trial's label may go, in points from its point: right above first, then right below, left above,
# left below, then a line further up or down
LABEL_SPOTS = ((4, 4, "left", "bottom"), (4, -4, "left", "top"), (-4, 4, "right", "bottom"),
               (-4, -4, "right", "top"), (4, 12, "left", "bottom"), (4, -12, "left", "top"))


def _place_labels(ax, labels: list, keep_clear: list) -> None:
    """Front members close together on screen had their trial labels printed over each other and under the
    pick's star: each label takes the first of ``LABEL_SPOTS`` clear of the labels placed before it and of
    the ``keep_clear`` points (data coordinates, radius in points); where none is clear, the first."""
    from matplotlib.transforms import Bbox

    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    px = fig.dpi / 72
    taken = []
    for (x, y), radius in keep_clear:
        cx, cy = ax.transData.transform((x, y))
        taken.append(Bbox.from_extents(cx - radius * px, cy - radius * px, cx + radius * px, cy + radius * px))
    for label in labels:
        for dx, dy, ha, va in LABEL_SPOTS + (LABEL_SPOTS[0],):
            label.xyann = (dx, dy)
            label.set_horizontalalignment(ha)
            label.set_verticalalignment(va)
            box = label.get_window_extent(renderer)
            if not any(box.overlaps(t) for t in taken):
                break
        taken.append(label.get_window_extent(renderer))


NOTE_CHARS = 105          # characters per provenance line under a panel (6.2 inches at 6.5 points)


def _wrap(text: str, width: int, sep: str = "\n") -> str:
    import textwrap

    return sep.join(textwrap.wrap(text, width)) or text


def _hover(m: dict[str, Any], metric: str) -> str:
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


def _panel_title(name: str, d: dict[str, Any]) -> str:
    how = (d.get("obtained") or {}).get("how", "")
    return f"{name}" + (" (target)" if d.get("target") else "") + (f", {how}" if how else "")


def _axis_label(d: dict[str, Any]) -> str:
    """The latency axis: the shape every figure on it was timed at."""
    shape = (d.get("teacher") or (d.get("front") or [{}])[0]).get("latency", {}).get("detail", {})
    if shape.get("lengths"):
        return f"latency, ms (batch {shape.get('batch_size', '?')}, expected over the task's input lengths, median)"
    return f"latency, ms (batch {shape.get('batch_size', '?')} x seq {shape.get('seq_len', '?')}, median)"


BUDGET_IN_VIEW = 2.0      # the budget line is drawn where it lies within this many times the slowest model


def _budget_in_view(d: dict[str, Any]) -> bool:
    """Whether a device's budget line belongs on its axis: not where it lies far right of every model
    (a 50 ms budget beside models of 1-10 ms would squeeze them all into the axis's left tenth, their
    labels on top of one another)."""
    xs = [m["latency"]["median_ms"] for m in d["candidates"] + d["front"] + d["teacher_quantized"]
          + ([d["teacher"]] if d["teacher"] else [])]
    return not xs or d["budget_ms"] <= BUDGET_IN_VIEW * max(xs)


def _pick(d: dict[str, Any]) -> dict[str, Any] | None:
    """The member the search picks on the target device (the star), None elsewhere."""
    return next((m for m in d.get("front") or [] if m["trial"] == d.get("best_within_budget")), None) if d.get("target") else None


def _pick_label(data: dict[str, Any], d: dict[str, Any]) -> str:
    return (f"the pick: fastest within {100 * data.get('tolerance', 0.01):g} pt of the best"
            + (" within budget" if d.get("budget_ms") else ""))


def plot_html(data: dict[str, Any], path: str | Path) -> Path:
    """The PNG's content as one self-contained interactive page (plotly, its JavaScript inlined)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    devices = data["devices"]
    metric = data.get("metric", "accuracy")
    names = list(devices) or ["(no device)"]
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=[_panel_title(n, devices.get(n, {})) for n in names])
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
        best = _pick(d)
        if best:
            fig.add_trace(go.Scatter(x=[best["latency"]["median_ms"]], y=[_score(best, "val")], mode="markers",
                                     marker=dict(symbol="star", size=18, color="#ff7f0e"), name=_pick_label(data, d),
                                     hovertext=[_hover(best, metric)], hoverinfo="text"), row=1, col=col)
        if d["budget_ms"] and not _budget_in_view(d):
            fig.add_annotation(text=f"budget {d['budget_ms']:g} ms \u2192", xref="x domain", yref="y domain", x=0.99,
                               y=0.02, xanchor="right", yanchor="bottom", showarrow=False, font=dict(color="red"),
                               row=1, col=col)
        elif d["budget_ms"]:
            fig.add_vline(x=d["budget_ms"], line=dict(color="red", dash="dot"), row=1, col=col,
                          annotation_text=f"budget {d['budget_ms']:g} ms")
        note = _latency_note(d)
        fig.update_xaxes(title_text=_axis_label(d) + ("" if note == "measured" else
                                                                      "<br><sup>" + _wrap(note, 70, "<br>") + "</sup>"),
                         row=1, col=col)
        fig.update_yaxes(title_text=f"{metric}, %", row=1, col=col)
    fig.update_layout(title=f"run {data['run']}: {data['task']} ({data['status']}, {data['trials_done']} trials)",
                      template="plotly_white", hoverlabel=dict(align="left"))
    fig.write_html(str(path), include_plotlyjs=True, full_html=True)
    return Path(path)
