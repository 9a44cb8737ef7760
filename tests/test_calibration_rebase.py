"""The mobile map survives a re-established host reference without a new calibration: its constants are
re-based (``host_operators.rebase``), exactly, and anchors timed across a re-establishment are re-based
onto the last reference instead of refused. Timings mocked as in ``test_host_speed``."""
import numpy as np
import pytest

from autocompress.hardware import latency as L
from autocompress.hardware import load_profile
from autocompress.hardware.predictors import host_operators as H

from test_host_speed import Windows, _anchor_timings, _rows, private_cache, steady  # noqa: F401 (fixture)


def test_rebase_equals_a_refit_on_the_timings_scaled_to_the_new_nominal():
    """Scaled to a nominal k times the old, every anchor's host times are k times theirs: the refit's constants
    are the old ones / k and its held-out errors the same, which is what ``rebase`` gives without a refit."""
    rows = _rows(load_profile("mobile-cpu"), "poor")           # a fit with real residuals, not a perfect one
    old = H.fit_calibration([dict(r) for r in rows]) | {"host_reference": {"id": "a", "nominal_ms": 6.0}}
    k = 5.0 / 6.0
    refit = H.fit_calibration([dict(r, host_classes_ms={c: v * k for c, v in r["host_classes_ms"].items()},
                                    host_ms=1.0) for r in rows])

    class New:
        id, nominal_ms, established = "b", 5.0, True

    got = H.rebase(old | {"anchors": [dict(r, host_ms=1.0) for r in old["anchors"]]}, New)
    assert got["constants"] == pytest.approx(refit["constants"], rel=1e-4)
    assert got["constants"]["matmul"] == pytest.approx(old["constants"]["matmul"] / k, rel=1e-4)
    assert (got["loo_mean_abs_error"], got["loo_max_abs_error"]) == pytest.approx(
        (refit["loo_mean_abs_error"], refit["loo_max_abs_error"]), abs=1e-4)
    assert got["host_reference"] == {"id": "b", "nominal_ms": 5.0, "established": True, "rebased_from": "a"}
    assert got["anchors"][0]["host_classes_ms"]["matmul"] == pytest.approx(
        rows[0]["host_classes_ms"]["matmul"] * k, rel=1e-3)


def test_anchors_timed_across_a_re_established_reference_are_re_based_and_cached(monkeypatch):
    """The reference is established again (at half the nominal) after the second anchor: the later anchors'
    timings are scaled to the new nominal (half of what the old one gave). Re-based onto the last reference,
    the four fit perfectly and the map is cached (before: refused, and calibrated again by every process)."""
    profile, calls, n = _anchor_timings(monkeypatch, ["good"])
    good = L.profile_operators

    def timings(onnx_path, prof, threads=1, **kw):
        if len(calls) == 2:
            monkeypatch.setattr(L, "reference_windows", Windows(steady(2.0)))
            L.host_reference(threads, prof.cpus(threads), fresh=True)
        host, ops = good(onnx_path, prof, threads=threads, **kw)
        k = host.detail["host_reference"]["nominal_ms"] / 4.0        # 1, then 0.5: the same runs, another nominal
        return host, {op: ms * k for op, ms in ops.items()}

    monkeypatch.setattr(L, "profile_operators", timings)
    calib = H.calibrate(profile)
    refs = {a.get("rebased_from") for a in calib["anchors"]}
    assert len(calls) == n and calib["attempts"] == 1 and "refused" not in calib
    assert len(refs - {None}) == 1 and sum(a.get("rebased_from") is None for a in calib["anchors"]) == n - 2
    assert calib["host_reference"]["id"] == L.host_reference(1).id and calib["host_reference"]["nominal_ms"] == pytest.approx(2.0, rel=1e-3)
    assert calib["loo_mean_abs_error"] < 0.01                       # unscaled, the first two would not fit
    assert H.cached_calibration(profile)["constants"] == calib["constants"]
    assert H.calibrate(profile)["constants"] == calib["constants"] and len(calls) == n      # read, not redone
    assert np.isfinite(list(calib["constants"].values())).all()
