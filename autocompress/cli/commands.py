"""The commands other than search: front, runs, pick, predict, finetune, profiles, bench. Each checks
its input (``checks``), calls the module that does the work, and prints what it returns."""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from .checks import (PLOT_SUFFIXES, UserError, check_bench_model, check_numbers, check_out_folder, check_output_file,
                     check_predict_input, check_task_options, load_profile_checked, log, model_config, read_examples,
                     resolve_paths, store_url, task_source, teacher_settings)
from .parser import parse_budget, parse_points, parse_score


def cmd_front(args) -> int:
    from ..plots import plot_html, plot_png
    from ..report import front_data, tables
    from ..store import Store

    resolve_paths(args)
    check_output_file("--plot", args.plot, PLOT_SUFFIXES)
    check_output_file("--html", args.html)

    store = Store(store_url(args), create=False)
    data = front_data(store, args.run)
    if args.device:
        if args.device not in data["devices"]:
            raise UserError(f"run {args.run} has no figures for device {args.device!r}: "
                            f"choose one of {', '.join(data['devices'])}")
        data["devices"] = {args.device: data["devices"][args.device]}
    if args.json:
        print(json.dumps(data, indent=2, default=str))
    else:
        print(tables(data))
    if args.plot:
        log(f"plot written to {plot_png(data, args.plot)}")
    if args.html:
        log(f"interactive page written to {plot_html(data, args.html)}")
    return 0


def cmd_runs(args) -> int:
    from ..report import runs_data, runs_table
    from ..store import Store

    resolve_paths(args)
    rows = runs_data(Store(store_url(args), create=False))
    print(json.dumps(rows, indent=2, default=str) if args.json else runs_table(rows))
    return 0


def cmd_pick(args) -> int:
    budget = parse_budget(args.budget) if args.budget is not None else None
    floor = parse_score(args.min_accuracy) if args.min_accuracy is not None else None
    tolerance = parse_points(args.tolerance) if args.tolerance is not None else None
    resolve_paths(args)
    out = Path(args.out)
    check_out_folder(out)
    from .. import ship
    from ..recipe import Recipe
    from ..store import Store

    store = Store(store_url(args), create=False)
    choice = ship.choose(store, args.run, device=args.device, budget_ms=budget, min_score=floor, tolerance=tolerance)
    folder = ship.export(store, choice, out, command=args.command_line, log=log)
    t, m = choice.trial, choice.trial.metrics[choice.split]
    within = f", within {choice.budget_ms:g} ms" if choice.budget_ms is not None else ""
    print(f"picked trial {t.number} of run {args.run} for {choice.device}: {choice.split} {choice.metric} "
          f"{choice.score:.4f} (n={m['n']}), {choice.latency_ms:.2f} ms{within}; recipe: "
          f"{Recipe.from_json(t.recipe).short()}")
    print(f"the fastest member within {100 * choice.tolerance:g} point(s) of the most accurate one"
          + (f" within {choice.budget_ms:g} ms" if choice.budget_ms is not None else "") + " (--tolerance)")
    if choice.split == "val":
        print("judged on the validation split: this run's front was not re-scored on the dev set")
    print(f"wrote {folder}: {', '.join(sorted(p.name for p in folder.iterdir()))}")
    return 0


def cmd_predict(args) -> int:
    resolve_paths(args)
    folder = check_predict_input(args)
    from ..hardware import time_call
    from ..ship import ShippedModel

    model = ShippedModel(folder)
    want = 2 if model.pair else 1
    if args.texts and len(args.texts) != want:
        raise UserError(f"this model classifies {'text pairs: give two texts' if model.pair else 'single texts: give one text'}"
                        f" (got {len(args.texts)}); for many examples use --file")
    examples = [tuple(args.texts)] if args.texts else read_examples(args.file, model.pair)
    model.predict(*examples[0])              # warm-up: the first call also sets ONNX Runtime up
    calls, graphs = [], []
    for example in examples:
        out, ms = time_call(model.predict, *example)
        calls.append(ms)
        graphs.append(out["graph_ms"])
        ran = out.get("ran") or {}           # what a pipeline ran (early exit: where the input left), in its words
        if args.json:
            print(json.dumps({"label": out["label"], "probability": round(out["probability"], 6),
                              "latency_ms": round(ms, 3), "graph_ms": round(out["graph_ms"], 3), "texts": list(example),
                              "probabilities": out["probabilities"],
                              **{k: v for k, v in ran.items() if k != "note"}}))
        else:
            note = f"\t{ran['note']}" if ran.get("note") else ""
            print(f"{out['label']}\t{out['probability']:.4f}\t{ms:.2f} ms{note}\t{' | '.join(example)}")
    log(f"label, probability, latency of the call (tokenizer + ONNX Runtime, batch 1, {model.threads} CPU "
        "thread(s), after one warm-up call)")
    if len(calls) > 1:
        log(call_costs(calls, graphs))
    return 0


def call_costs(calls: list[float], graphs: list[float]) -> str:
    """What the calls cost, the graph's part apart: the model card's and ``bench``'s figures time the graph
    alone (their expected figure over a file's lengths is the graph's mean over its inputs)."""
    import numpy as np

    mean, graph = float(np.mean(calls)), float(np.mean(graphs))
    return (f"{len(calls)} calls: mean {mean:.3f} ms per call (median {float(np.median(calls)):.3f}), of which "
            f"ONNX Runtime's graph {graph:.3f} ms (median {float(np.median(graphs)):.3f}) and the tokenizer and "
            f"Python around it {mean - graph:.3f} ms; the model card's and `bench --lengths FILE`'s figures time "
            "the graph alone")


def cmd_finetune(args) -> int:
    from ..locks import search_slot
    from ..search.session import obtain_teacher
    from ..tasks import load_task
    from ..teacher import UselessTeacher, check_learned
    from .search import TeacherBar

    check_numbers(args)
    check_task_options(args)
    resolve_paths(args)
    model_config(args)

    source = task_source(args)
    data = load_task(source, args.data_dir, val_size=args.val_size, seed=args.seed)
    settings = teacher_settings(args, data, source)
    cached = not args.teacher and not args.fresh and (settings.cache_dir() / "teacher.json").exists()
    with search_slot(f"pid {os.getpid()}, finetune", wait=lambda holder: log(
            f"a search is using this machine ({holder}): waiting for it to finish (Ctrl-C to stop)")), TeacherBar() as bar:
        teacher = obtain_teacher(settings, data, adopt=args.teacher, log=log, progress=bar, fresh=args.fresh)
    info = teacher.info
    print(json.dumps({"path": str(teacher.path), "task": info["task"], "labels": list(data.spec.label_names),
                      "train_rows": info["train_rows"],
                      "epochs": info.get("epochs"), "train_seconds": info["train_seconds"], "val": info["val"],
                      "dev": info["dev"], "baseline": info.get("baseline"), "learned": info.get("learned"),
                      "resolution": info.get("resolution"), "kept_step": info.get("kept_step"),
                      "stopped": info.get("stopped"), "curve": info.get("curve"), "cached": cached}, indent=2))
    try:
        check_learned(teacher)
    except UselessTeacher as e:
        log(f"autocompress finetune: warning: {e}")
        return 1
    return 0


def cmd_profiles(args) -> int:
    """The profiles and how each is obtained here; ``--recalibrate`` (alias ``--calibrate``) establishes
    the host references again and calibrates the predictors again first; ``--check`` times the references
    again briefly and says whether each cached one, and each calibration, still holds (exit 1 if not)."""
    from ..hardware import check_host, describe_route, list_profiles, load_profile, prepare

    _join_cluster_checked(args.ray_address)
    profiles = [load_profile(name) for name in list_profiles()]
    with _ray(args.ray_address):
        if args.recalibrate:
            prepare(profiles, log=log, fresh=True)
        for p in profiles:
            shapes = ", ".join(f"batch {b} x seq {s}" for b, s in p.shapes)
            print(f"{p.name}: {p.device or p.description}\n  {shapes}; {describe_route(p)}")
        if args.check:
            ok, lines = check_host(profiles)
            print("\n".join(lines))
            return 0 if ok else 1
    return 0


def cmd_bench(args) -> int:
    """Latency of a model folder or ONNX file on one profile, with how it was obtained."""
    import tempfile

    from ..hardware import describe, obtain_latency, obtain_over_lengths

    path = check_bench_model(args.model)
    profile = load_profile_checked(args.device)
    mix = _bench_lengths(path, args.lengths) if args.lengths else None
    _join_cluster_checked(args.ray_address)
    with tempfile.TemporaryDirectory(prefix="autocompress-bench-") as tmp, _ray(args.ray_address):
        onnx_path = path
        if path.is_dir() and (path / "model.onnx").is_file():       # a folder written by pick: the file it ships
            onnx_path = path / "model.onnx"
        elif path.is_dir():
            from .. import checkpoint, export

            onnx_path = export.export_onnx(checkpoint.load_model(path), Path(tmp) / "model.fp32.onnx")
        lat = (obtain_over_lengths(onnx_path, profile, mix, log=log) if mix else obtain_latency(onnx_path, profile, log=log))
    d = lat.to_dict()
    if args.json:
        print(json.dumps({**d, "obtained": describe(d)}, indent=2, default=str))
    else:
        print(f"{profile.name}: {lat.median_ms:.3f} ms ({lat.how}) — {describe(d)}")
    return 0


def _bench_lengths(model: Path, file: str):
    """bench --lengths FILE: the mix of the file's inputs' token lengths, by the model folder's tokenizer."""
    from transformers import AutoTokenizer

    from .. import lengths
    from ..features import EVAL_MAX_LENGTH

    if not model.is_dir():
        raise UserError("--lengths counts tokens with the model's tokenizer: give the model folder (written by pick, "
                        "or a saved model), not a bare ONNX file")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model))
    except Exception as e:
        raise UserError(f"{model}: no tokenizer to count --lengths with ({str(e).splitlines()[0][:120]})") from None
    if not Path(file).is_file():
        raise UserError(f"--lengths {file}: no such file; give a text file, one input per line")
    lines = [e[0] for e in read_examples(file, False, "--lengths")]
    pair = all("\t" in x for x in lines)                  # text<TAB>second text on every line: pairs
    texts = [x.split("\t", 1)[0] for x in lines] if pair else lines
    pairs = [x.split("\t", 1)[1] for x in lines] if pair else None
    return lengths.of_texts(tokenizer, texts, pairs, source=Path(file).name, max_length=EVAL_MAX_LENGTH)


def _join_cluster_checked(address: str | None) -> None:
    """Ray's environment for a cluster (token auth) set before Ray is imported, and the address checked."""
    from ..search import cluster

    if address:
        cluster.configure_environment(address)
        cluster.check_ray_address(address)


@contextlib.contextmanager
def _ray(address: str | None):
    """A connection to the Ray cluster at ``address`` for the duration (nothing without one)."""
    if not address:
        yield
        return
    import ray

    from ..search import cluster

    cluster.start(address, 0)
    try:
        yield
    finally:
        ray.shutdown()
