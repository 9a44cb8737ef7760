"""Picking from a store (budget, minimum score, dev vs val, closest members when none fits), the sha256 check
before export, the plots' labels for predicted latencies, and the list of runs — on a small hand-made store."""
import json
from pathlib import Path

import pytest

from autocompress.recipe import Recipe, Step
from autocompress.ship import IntegrityError, PickError, choose, export
from autocompress.store import Store

# trial: (val, dev, laptop ms, mobile ms); 0 is the teacher. Trial 3 is dominated on laptop-cpu by trial 1.
FIGURES = {0: (0.90, 0.89, 50.0, 80.0), 1: (0.88, 0.86, 20.0, 30.0), 2: (0.85, 0.87, 10.0, 14.0),
           3: (0.80, 0.80, 25.0, 9.0)}
ZIPPED = {0: 20.0, 1: 6.0, 2: 5.0, 3: 4.0}     # trial 3 is the smallest download: on the front for that alone
RECIPES = {0: Recipe(), 1: Recipe((Step("drop_layers", {"keep": 4}),)), 2: Recipe((Step("drop_layers", {"keep": 3}),)),
           3: Recipe((Step("quantize_int8"),))}


def _latency(profile: str, ms: float, how: str = "measured") -> dict:
    detail = ({"host": "box", "cpu": "cpu", "threads": 1, "provider": "CPUExecutionProvider", "batch_size": 1,
               "seq_len": 128} if how == "measured" else {"predictor": "a linear model of FLOPs",
                                                          "calibrated_on": "laptop-cpu"})
    return {"profile": profile, "median_ms": ms, "spread_ms": 0.1, "p10_ms": ms, "p90_ms": ms, "n": 20, "how": how,
            "detail": detail}


def make_store(tmp_path: Path, *, dev: bool = True, mobile: str = "measured") -> Store:
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    store.create_run("r", task="sst2", model="minilm", device="laptop-cpu", budget_ms=30.0, space="", run_dir=str(tmp_path),
                     settings={"trials": 3, "labels": ["negative", "positive"], "metric": "accuracy", "pair": False})
    for n, (val, dv, laptop, phone) in FIGURES.items():
        recipe = RECIPES[n]
        tid = store.start_trial("r", n, "teacher" if n == 0 else "candidate", recipe.to_json(), recipe.hash)
        store.add_metrics(tid, "val", {"accuracy": val, "main": val}, 200)
        if dev and not (n == 2 and dev == "partly"):
            store.add_metrics(tid, "dev", {"accuracy": dv, "main": dv}, 872)
        store.add_latency(tid, _latency("laptop-cpu", laptop))
        store.add_latency(tid, _latency("mobile-cpu", phone, mobile))
        onnx = tmp_path / f"trial-{n}.onnx"
        onnx.write_bytes(f"not really onnx {n}".encode())
        store.add_artifact(tid, "onnx", onnx)
        store.add_artifact(tid, "checkpoint", tmp_path)
        store.finish_trial(tid, "done", size_mb=1.0, size_zip_mb=ZIPPED[n], n_params=1000 * (5 - n))
    tid = store.start_trial("r", 4, "candidate", "{}", "")
    store.finish_trial(tid, "failed", error="RuntimeError: planted")
    return store


def test_most_accurate_on_dev_within_the_runs_budget(tmp_path):
    """Within 30 ms the front holds trials 1 and 2: trial 1 is better on val, trial 2 on dev, and dev decides."""
    c = choose(make_store(tmp_path), "r")
    assert (c.trial.number, c.device, c.budget_ms, c.split) == (2, "laptop-cpu", 30.0, "dev")
    assert c.score == 0.87 and c.latency_ms == 10.0 and c.teacher.number == 0


def test_budget_and_minimum_score(tmp_path):
    store = make_store(tmp_path)
    assert choose(store, "r", budget_ms=100.0).trial.number == 0
    assert choose(store, "r", budget_ms=100.0, min_score=0.865).trial.number == 0
    assert choose(store, "r", budget_ms=25.0, min_score=0.86).trial.number == 2
    assert choose(store, "r", device="mobile-cpu").trial.number == 0       # no budget off the target device
    assert choose(store, "r", device="mobile-cpu", budget_ms=20).trial.number == 2


def test_none_fits_names_the_closest_members(tmp_path):
    store = make_store(tmp_path)
    with pytest.raises(PickError) as e:
        choose(store, "r", budget_ms=5.0)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("no member of run r's laptop-cpu front has latency <= 5 ms:")
    assert ("the fastest is trial 2 (10.00 ms, dev accuracy 0.8700), the most accurate trial 0 (50.00 ms, "
            "dev accuracy 0.8900)") in msg
    with pytest.raises(PickError, match="has latency <= 30 ms and dev accuracy >= 0.95"):
        choose(store, "r", min_score=0.95)
    with pytest.raises(PickError, match="no latencies for device 'toaster': choose --device from laptop-cpu, mobile-cpu"):
        choose(store, "r", device="toaster")


def test_judged_on_val_when_the_front_was_not_rescored(tmp_path):
    c = choose(make_store(tmp_path, dev="partly"), "r")
    assert c.split == "val" and c.trial.number == 1          # the better val score within 30 ms


def test_a_changed_artifact_is_not_exported(tmp_path, capsys):
    store = make_store(tmp_path)
    choice = choose(store, "r")
    (tmp_path / "trial-2.onnx").write_bytes(b"tampered")
    with pytest.raises(IntegrityError, match="not the .* the store recorded when trial 2 was timed and scored"):
        export(store, choice, tmp_path / "out", command="autocompress pick r")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out-*"))   # nothing half-written
    from autocompress.cli import main

    code = main(["pick", "r", "--storage", store.url, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "the file changed since; nothing exported" in err
    (tmp_path / "trial-2.onnx").unlink()
    with pytest.raises(IntegrityError, match="is gone"):
        export(store, choice, tmp_path / "out", command="autocompress pick r")


def test_predicted_latencies_are_labelled_in_plots(tmp_path):
    from autocompress.plots import _latency_note, plot_html, plot_png
    from autocompress.report import front_data

    data = front_data(make_store(tmp_path, mobile="predicted"), "r")
    assert data["metric"] == "accuracy"
    assert _latency_note(data["devices"]["laptop-cpu"]) == "measured"
    assert _latency_note(data["devices"]["mobile-cpu"]).startswith("predicted by a linear model of FLOPs")
    mobile = data["devices"]["mobile-cpu"]
    assert [m["trial"] for m in mobile["candidates"]] == [1, 2, 3]
    assert [m["trial"] for m in mobile["teacher_quantized"]] == [3]         # int8 of the teacher
    page = plot_html(data, tmp_path / "f.html").read_text()
    assert "predicted by a linear model of FLOPs" in page and "<script src=" not in page
    # as the PNG: the shape the figures were timed at, how each panel's were obtained, the pick's star
    assert "latency, ms (batch 1 x seq 128, median)" in page and "mobile-cpu, predicted" in page
    assert page.count("the pick: fastest within 1 pt of the best within budget") == 1    # the target's panel only
    assert plot_png(data, tmp_path / "f.png").stat().st_size > 10_000


def test_runs_list(tmp_path):
    from autocompress.report import runs_data, runs_table

    rows = runs_data(make_store(tmp_path))
    assert len(rows) == 1
    r = rows[0]
    assert (r["name"], r["task"], r["device"], r["budget_ms"], r["status"]) == ("r", "sst2", "laptop-cpu", 30.0, "running")
    assert (r["trials_done"], r["trials_failed"], r["trials_planned"]) == (3, 1, 3)
    assert r["best_within_budget"]["trial"] == 1          # on val, as the search saw it
    line = runs_table(rows).splitlines()[1]
    assert line.split()[:8] == ["r", "sst2", "laptop-cpu", "30", "ms", "running", "3/3", "1"]
    assert "#1 val 88.00% 20.00 ms" in line


def test_plots_draw_the_line_through_accuracy_and_latency_only(tmp_path):
    """With the zipped size as a third objective, trial 3 (slower and less accurate than trial 1 on
    laptop-cpu, but the smallest download) is on the front; the plots draw it apart, not on the line."""
    from autocompress.plots import _series
    from autocompress.report import front_data

    d = front_data(make_store(tmp_path), "r")["devices"]["laptop-cpu"]
    assert [m["trial"] for m in d["front"]] == [2, 1, 3, 0]
    series = _series(d)
    assert [m["trial"] for m in series["front"]] == [2, 1, 0]
    assert [m["trial"] for m in series["front_size"]] == [3]
    assert series["candidates"] == []


def test_front_says_how_far_apart_val_scores_must_be_and_marks_members_within_it(tmp_path):
    """A run that recorded its val split's resolution (3 points at 200 rows): the summary says so, and a
    member within 3 points of the teacher's val score (trial 1: 88 vs 90) is marked; trial 2 (85) is not."""
    from autocompress.report import NOISE_MARK, front_data, tables

    store = make_store(tmp_path)
    with store._session() as s, s.begin():                   # what `search` records from the teacher
        from autocompress.store.tables import RunRow

        row = s.query(RunRow).one()
        row.settings = {**row.settings, "val_size": 200, "resolution": 0.03}
    data = front_data(store, "r")
    front = {m["trial"]: m for m in data["devices"]["laptop-cpu"]["front"]}
    assert front[1]["within_noise_of_teacher"] is True and front[2]["within_noise_of_teacher"] is False
    text = tables(data)
    assert "val has 200 rows: two accuracy scores must be 3.0 points apart to differ at 95%" in text
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("1 ") or " 1 " in ln[:9])
    assert NOISE_MARK in line and f"{NOISE_MARK} = its val score is within the noise" in text
    plain = tables(front_data(make_store(tmp_path / "other"), "r"))
    assert NOISE_MARK not in plain and "points apart" not in plain          # runs that did not record it


def test_a_budget_far_beyond_every_model_is_said_at_the_axis_edge_not_drawn(tmp_path, monkeypatch):
    """A 50 ms budget beside models of 1-10 ms squeezed them into the axis's left tenth: where the budget
    lies beyond twice the slowest model, the axis ends near the models and the budget is written at its
    edge; a budget among the models is still a line."""
    import matplotlib.figure

    from autocompress.plots import _budget_in_view, plot_html, plot_png
    from autocompress.report import front_data

    data = front_data(make_store(tmp_path), "r")
    laptop = data["devices"]["laptop-cpu"]
    slowest = max(m["latency"]["median_ms"] for m in laptop["candidates"] + [laptop["teacher"]])
    assert laptop["budget_ms"] and _budget_in_view(laptop)
    laptop["budget_ms"] = 10 * slowest
    assert not _budget_in_view(laptop)
    limits = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda fig, *a, **k: limits.extend(ax.get_xlim() for ax in fig.axes))
    plot_png(data, tmp_path / "f.png")
    assert limits and all(hi < 2 * slowest for _, hi in limits)              # no panel stretched to the budget
    page = plot_html(data, tmp_path / "f.html").read_text()
    assert f"budget {10 * slowest:g} ms" in page and '"type":"line"' not in page.replace(" ", "")
    laptop["budget_ms"] = slowest                                              # among the models: a line again
    assert '"type":"line"' in plot_html(data, tmp_path / "g.html").read_text().replace(" ", "")


def test_front_refuses_a_plot_file_it_cannot_write_in_one_line(tmp_path, capsys):
    """``--plot front.html`` was a ValueError traceback from matplotlib after the table was printed: the
    suffix is checked first, in one line that points at --html; a .png is written."""
    from autocompress.cli import main

    store = make_store(tmp_path)
    code = main(["front", "r", "--storage", store.url, "--plot", str(tmp_path / "front.html")])
    captured = capsys.readouterr()
    assert code != 0 and not captured.out and len(captured.err.strip().splitlines()) == 1
    assert "the file's name must end in .png, .pdf, .svg; for an interactive page give --html FILE" in captured.err
    assert not (tmp_path / "front.html").exists()
    assert main(["front", "r", "--storage", store.url, "--plot", str(tmp_path / "front.png")]) == 0
    assert (tmp_path / "front.png").stat().st_size > 10_000


def test_trial_labels_of_close_front_members_do_not_cover_each_other_or_the_star(tmp_path, monkeypatch):
    """Front members close together on screen (trials 1 and 2 here, 0.2 ms and 0.1 point apart, the pick's
    star on trial 2) had their '#n' labels printed over each other and under the star: each label now takes
    a place clear of the labels before it and of the star."""
    import matplotlib.figure
    from matplotlib.transforms import Bbox

    from autocompress.plots import plot_png
    from autocompress.report import front_data

    data = front_data(make_store(tmp_path), "r")
    laptop = data["devices"]["laptop-cpu"]
    laptop["best_within_budget"] = 2
    close = {m["trial"]: m for m in laptop["front"]}
    close[1]["latency"] = dict(close[1]["latency"], median_ms=10.2)
    close[1]["val"] = dict(close[1]["val"], main=0.851)
    figures = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",      # as saved (closing it drops its canvas)
                        lambda fig, *a, **k: figures.append((fig, fig.canvas.get_renderer())))
    plot_png(data, tmp_path / "f.png")
    (fig, renderer), = figures
    ax = fig.axes[0]
    labels = {t.get_text(): t.get_window_extent(renderer) for t in ax.texts if t.get_text().startswith("#")}
    assert {"#1", "#2"} <= set(labels)
    boxes = list(labels.values())
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:]), labels
    star = next(line for line in ax.lines if line.get_marker() == "*")
    cx, cy = ax.transData.transform((star.get_xdata()[0], star.get_ydata()[0]))
    r = 5 * fig.dpi / 72                     # the star's inner body (16 points across its tips)
    assert not any(b.overlaps(Bbox.from_extents(cx - r, cy - r, cx + r, cy + r)) for b in boxes), labels


def test_the_cards_figure_at_the_task_lengths_costs_one_figures_time(tmp_path, monkeypatch):
    """`pick` times the model at the run's input lengths for its card: the profile's time cap is shared by
    the shapes it times (the fixed one and each length), not spent on each (laptop-cpu: 10 s)."""
    from autocompress import hardware, ship
    from autocompress.hardware import Latency, load_profile

    store = make_store(tmp_path)
    run = store.get_run("r")
    settings = {**run.settings, "task_lengths": {"lengths": [12, 24, 48], "weights": [0.5, 0.3, 0.2], "n": 200}}
    store.restart_run("r", settings)
    asked = {}

    def obtain(path, profile, mix, **kw):
        asked.update(profile=profile.name, lengths=mix.lengths, **kw)
        return Latency(profile.name, 5.0, 0.1, 5.0, 5.0, 100, "measured", {})

    monkeypatch.setattr(hardware, "obtain_over_lengths", obtain)
    card = ship.typical_latency(choose(store, "r"), tmp_path / "trial-2.onnx")
    assert card["median_ms"] == 5.0 and asked["profile"] == "laptop-cpu" and asked["lengths"] == (12, 24, 48)
    assert asked["max_seconds"] == pytest.approx(load_profile("laptop-cpu").max_seconds / 4)
