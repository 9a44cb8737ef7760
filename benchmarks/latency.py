"""Device profiles, in one run:

1. the same model re-obtained 5 times on each CPU profile (laptop-cpu measured here; mobile-cpu predicted
   from this host's operator timings): max/min of the medians, target <= 1.03, and the same before the
   figures were scaled to the host's nominal speed by the interleaved reference; and, what the fronts
   rely on, a candidate's speed-up over it obtained side by side 5 times: max/min of the ratios;
2. the mobile predictor calibrated afresh on this host, and its error on published anchors it was not
   fitted on (leave-one-out);
3. the GPU roofline: its constants fitted again from NVIDIA's published figures and its error on the
   held-out architecture (BERT-large); where a CUDA GPU is here, the teacher and several candidates
   measured on it beside their predictions (also written to benchmarks/results/); where none is, it says so;
4. independent calibrations (3 by default), each in a fresh temporary calibration folder: the host
   references established again, the mobile map fitted again, and the packaged MiniLM obtained with them
   on mobile-cpu (predicted) and laptop-cpu (measured): the spread of the references, the constants, the
   held-out error and the teacher's figures, from one calibration to the next.

    python benchmarks/latency.py [--repeats 5] [--no-calibrate] [--section all|repeatability|mobile|gpu|calibrations]
                                 [--calibrations 3]

Timings on a shared machine are disturbed by the other work on it: read ratios, not absolute figures.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from autocompress import checkpoint, export
from autocompress.hardware import cpu_info, load_profile, obtain_latency, obtain_together, predictor_for, route
from autocompress.methods.pruning import LayerDrop, drop_layers
from autocompress.recipe import Recipe, Step
from autocompress.teacher import resolve_model

RESULTS = Path(__file__).resolve().parent / "results"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def models(tmp: Path) -> dict[str, tuple[Path, Path]]:
    """The packaged MiniLM (random 2-label head: latency does not depend on weights) and two candidates:
    name -> (shipped ONNX, fp32 ONNX)."""
    out = {}
    int8 = Recipe((Step("quantize_int8"),))
    for name, keep in (("MiniLM fp32 (6 layers)", None), ("4 layers", 4), ("3 layers", 3)):
        model = checkpoint.load_model(resolve_model("minilm"))
        if keep:
            model = drop_layers(model, LayerDrop(keep=keep))
        fp32 = export.export_onnx(model, tmp / f"{len(out)}" / "model.fp32.onnx")
        out[name] = (fp32, fp32)
        if keep:
            out[name + " + int8"] = (int8.apply_onnx(fp32, fp32.parent), fp32)
    return out


def repeatability(onnx: Path, repeats: int) -> None:
    print(f"\n1. the same model (the packaged MiniLM, fp32) obtained {repeats} times per CPU profile")
    print(f"   {'profile':12} {'how':10} {'medians, ms':48} {'max/min':>8}  target <= 1.03")
    for name in ("laptop-cpu", "mobile-cpu"):
        profile = load_profile(name)
        lats = [obtain_latency(onnx, profile) for _ in range(repeats)]
        medians = [lat.median_ms for lat in lats]
        r = max(medians) / min(medians)
        ok = "ok" if r <= 1.03 else "over"
        cis = ", ".join(f"{100 * _ci(lat):.1f}%" for lat in lats)
        print(f"   {name:12} {lats[0].how:10} {', '.join(f'{m:.2f}' for m in medians):48} {r:8.3f}  {ok}"
              f"  (each median's 95% CI: ±{cis})")
        raw = [lat.median_ms / _factor(lat) for lat in lats]
        print(f"   {'':12} {'as timed':10} {', '.join(f'{m:.2f}' for m in raw):48} {max(raw) / min(raw):8.3f}  "
              f"(before scaling to nominal speed; factors {', '.join(f'{_factor(lat):.3f}' for lat in lats)})")


def ratio_repeatability(teacher: Path, candidate: Path, repeats: int) -> None:
    """What the fronts rely on: speed-ups are ratios of models obtained side by side (interleaved rounds,
    ``obtain_together``), and a ratio holds where a machine's level drifts between measurements."""
    print(f"\n   the speed-up of a candidate (4 layers + int8) over it, obtained side by side {repeats} times")
    print(f"   {'profile':12} {'how':10} {'speed-ups':48} {'max/min':>8}  target <= 1.03")
    for name in ("laptop-cpu", "mobile-cpu"):
        ratios, how = [], ""
        for _ in range(repeats):
            lats = obtain_together({"teacher": teacher, "candidate": candidate}, name)
            ratios.append(lats["teacher"].median_ms / lats["candidate"].median_ms)
            how = lats["teacher"].how
        r = max(ratios) / min(ratios)
        print(f"   {name:12} {how:10} {', '.join(f'{x:.3f}x' for x in ratios):48} {r:8.3f}  "
              f"{'ok' if r <= 1.03 else 'over'}")


def _factor(lat) -> float:
    """The host-speed factor a figure was scaled by (``hardware.latency.HostReference``; 1 where none)."""
    return (lat.detail.get("host_reference") or {}).get("factor", 1.0)


def _ci(lat) -> float:
    """The relative half-width of the median's CI of the run behind a figure (the host run for a prediction)."""
    return lat.detail.get("ci95_rel") or lat.detail.get("host_ci95_rel") or 0.0


def mobile() -> None:
    profile = load_profile("mobile-cpu")
    print(f"\n2. mobile-cpu predictor ({profile.predictor['name']}), device: {profile.device}")
    if route(profile).kind != "predicted":
        print(f"   {route(profile).text}: nothing to predict")
        return
    cal = predictor_for(profile).calibration(log=log)
    print(f"   calibrated on this host ({cal['cpu']}, {cal['host_threads']} thread) on {cal['date']}"
          f" in {cal.get('seconds', '?')} s; constants: " + ", ".join(f"c_{k} {v:.4g}" for k, v in cal["constants"].items()))
    print(f"   {'anchor':20} {'device ms':>9} {'host ms':>8} {'matmul':>7} {'norm_act':>8} {'other':>6} "
          f"{'fitted':>7} {'held-out':>9}  source")
    for a in cal["anchors"]:
        h = a["host_classes_ms"]
        print(f"   {a['name']:20} {a['device_ms']:9.0f} {a['host_ms']:8.1f} {h['matmul']:7.1f} {h['norm_act']:8.1f} "
              f"{h['other']:6.1f} {a['fitted_ms']:7.1f} {100 * a['loo_error']:+8.0f}%  {a['source']}")
    print(f"   held-out (leave-one-out) error: mean |error| {100 * cal['loo_mean_abs_error']:.0f}%, "
          f"max {100 * cal['loo_max_abs_error']:.0f}%")


def gpu(tmp: Path) -> None:
    profile = load_profile("server-gpu")
    spec = profile.predictor
    print(f"\n3. server-gpu roofline ({spec['name']}), reference device: {profile.device}")
    fit = predictor_for(profile).refit(log=log)
    stored = spec["constants"]
    print("   constants fitted now: " + ", ".join(f"{k} {v:g}" for k, v in fit["constants"].items())
          + "; in the YAML: " + ", ".join(f"{k} {v:g}" for k, v in stored.items()))
    print(f"   error on the fitted figures (BERT-base): mean |error| {100 * fit['fit_mean_abs_error']:.1f}%; "
          f"held out (BERT-large): mean |error| {100 * fit['heldout_mean_abs_error']:.1f}%, "
          f"max {100 * fit['heldout_max_abs_error']:.1f}%")
    for a in fit["anchors"]:
        if a["batch_size"] in (1, 8, 128):
            print(f"     {a['name']:10} ({a['use']:7}) seq {a['seq_len']:3} batch {a['batch_size']:3}: published "
                  f"{a['device_ms']:7.2f} ms, roofline {a['predicted_ms']:7.2f} ms ({100 * a['error']:+.0f}%)")
    if not profile.available():
        print("   no CUDA GPU here (onnxruntime has no CUDAExecutionProvider): nothing measured to compare the "
              "roofline with; run this on a CUDA machine with onnxruntime-gpu for predicted vs measured")
        return
    rows = []
    cands = models(tmp)
    print(f"   {'model':28} {'measured b8':>11} {'predicted b8':>12} {'measured b1':>11} {'predicted b1':>12}")
    for name, (_, fp32) in cands.items():
        if name.endswith("int8"):
            continue
        m = obtain_latency(fp32, profile)
        p = predictor_for(profile).predict(fp32)
        mb1, pb1 = m.detail["other_shapes"][0]["median_ms"], p.detail["other_shapes"][0]["median_ms"]
        rows.append({"model": name, "gpu": m.detail.get("gpu"), "measured_b8_ms": m.median_ms, "predicted_b8_ms": p.median_ms,
                     "measured_b1_ms": mb1, "predicted_b1_ms": pb1})
        print(f"   {name:28} {m.median_ms:11.3f} {p.median_ms:12.3f} {mb1:11.3f} {pb1:12.3f}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"gpu_predicted_vs_measured-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"host": platform.node(), "rows": rows,
                               "note": "ONNX Runtime CUDA provider, fp16 conversion, I/O bound on the device; the "
                                       "roofline's reference is an A100 with TensorRT-class kernels"}, indent=2))
    print(f"   written to {out}")


def calibrations(teacher: Path, count: int) -> None:
    """``count`` independent calibrations, each in a fresh temporary calibration folder (so each
    establishes its own host references and fits its own mobile map), and what each gives the teacher."""
    from autocompress import paths
    from autocompress.hardware import latency as L

    laptop, mobile = load_profile("laptop-cpu"), load_profile("mobile-cpu")
    print(f"\n4. {count} independent calibrations (host references and mobile map established afresh each time, "
          "each in its own temporary calibration folder), and the packaged MiniLM (fp32) obtained with each")
    if route(mobile).kind != "predicted":
        print(f"   {route(mobile).text}: nothing to calibrate")
        return
    print(f"   {'run':>3} {'ref 1 thread':>22} {'ref ' + str(laptop.threads) + ' threads':>22} {'c_matmul':>8} "
          f"{'c_norm_act':>10} {'c_other':>7} {'held-out':>13} {'tries':>5} {'mobile ms':>9} {'laptop ms':>9} {'s':>5}")
    rows, saved = [], os.environ.get(paths.ENV_CALIBRATION)
    try:
        for i in range(count):
            with tempfile.TemporaryDirectory(prefix="bench-calibration-") as folder:
                os.environ[paths.ENV_CALIBRATION] = folder
                t0 = time.time()
                one = L.host_reference(1, mobile.cpus(1), log=log)
                more = L.host_reference(laptop.threads, laptop.cpus(), log=log)
                cal = predictor_for(mobile).calibration(log=log)
                m, lap = obtain_latency(teacher, mobile), obtain_latency(teacher, laptop)
                row = {"one": one.nominal_ms, "more": more.nominal_ms, **cal["constants"],
                       "loo_mean": cal["loo_mean_abs_error"], "loo_max": cal["loo_max_abs_error"],
                       "mobile": m.median_ms, "laptop": lap.median_ms}
                rows.append(row)
                print(f"   {i + 1:>3} {_reference(one):>22} {_reference(more):>22} {row['matmul']:8.4g} "
                      f"{row['norm_act']:10.4g} {row['other']:7.4g} "
                      f"{100 * row['loo_mean']:5.0f}% ({100 * row['loo_max']:3.0f}%) {cal.get('attempts', 1):>5} "
                      f"{row['mobile']:9.2f} {row['laptop']:9.2f} {time.time() - t0:5.0f}"
                      + (f"  REFUSED: {cal['refused']}" if cal.get("refused") else "")
                      + (f"  laptop factor {_factor(lap):.3f}" + (" OUT OF BAND" if _out(lap) else "")))
    finally:
        if saved is None:
            os.environ.pop(paths.ENV_CALIBRATION, None)
        else:
            os.environ[paths.ENV_CALIBRATION] = saved
    print("   spread (max/min over the calibrations): " + ", ".join(
        f"{label} {max(r[k] for r in rows) / min(r[k] for r in rows):.3f}" for label, k in (
            ("ref 1 thread", "one"), (f"ref {laptop.threads} threads", "more"), ("c_matmul", "matmul"),
            ("c_norm_act", "norm_act"), ("mobile teacher", "mobile"), ("laptop teacher", "laptop"))
        if min(r[k] for r in rows) > 0))
    print("   held-out mean |error| per calibration: " + ", ".join(f"{100 * r['loo_mean']:.0f}%" for r in rows)
          + "; max: " + ", ".join(f"{100 * r['loo_max']:.0f}%" for r in rows))


def _reference(ref) -> str:
    """A host reference in a table cell: its nominal, its CI and tries where cached, else provisional."""
    from autocompress.hardware import reference as book

    d = book.load(ref.meta) if ref.established else None
    if not d:
        return f"{ref.nominal_ms:.2f} ms provisional"
    return f"{ref.nominal_ms:.2f} ms ±{100 * d['ci95_rel']:.1f}% ({d['tries']} tr)"


def _out(lat) -> bool:
    return bool((lat.detail.get("host_reference") or {}).get("out_of_band"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-calibrate", action="store_true", help="use the cached mobile calibration of this host")
    ap.add_argument("--section", choices=("all", "repeatability", "mobile", "gpu", "calibrations"), default="all",
                    help="run one section only (1: repeatability, 2: mobile, 3: gpu, 4: calibrations)")
    ap.add_argument("--calibrations", type=int, default=3, help="independent calibrations in section 4 (>= 3)")
    args = ap.parse_args()
    info = cpu_info()
    print(f"host {platform.node()}: {info['cpu']}, {info['cores']} cores, int8 instructions: "
          f"{', '.join(info['int8_isa']) or 'none'}; load average {os.getloadavg()[0]:.1f} "
          "(a shared machine disturbs timings: compare ratios)")
    t0 = time.time()
    wants = (lambda name: args.section in ("all", name))
    mobile_profile = load_profile("mobile-cpu")
    if (wants("repeatability") or wants("mobile")) and route(mobile_profile).kind == "predicted":
        # first, so that section 1 predicts with this calibration
        predictor_for(mobile_profile).prepare(log=log, fresh=not args.no_calibrate)
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        teacher = export.export_onnx(checkpoint.load_model(resolve_model("minilm")), Path(tmp) / "minilm.fp32.onnx")
        if wants("repeatability"):
            repeatability(teacher, args.repeats)
            candidate = models(Path(tmp))["4 layers + int8"][0]
            ratio_repeatability(teacher, candidate, args.repeats)
        if wants("mobile"):
            mobile()
        if wants("gpu"):
            gpu(Path(tmp))
        if wants("calibrations"):
            calibrations(teacher, max(args.calibrations, 1))
    print(f"\n(took {time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
