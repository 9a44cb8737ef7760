"""The contract every way of predicting a device's latency meets (``hardware/predictors``): runs over
every registered kind, with the spec of a bundled profile that uses it. Kept to seconds: the candidate
is a tiny exported BERT, the anchors a predictor would build from their configs are that same tiny
graph, host timings take a few runs, and calibrations go to a fresh folder."""
import dataclasses
import shutil
from pathlib import Path

import pytest

from autocompress import export
from autocompress.hardware import (HardwareProfile, Latency, ProfileError, describe, list_profiles, load_profile,
                                   predictor_for)
from autocompress.hardware import latency
from autocompress.hardware.predictors import REGISTRY, Predictor

KINDS = sorted(REGISTRY)
TINY_BERT = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
             "intermediate_size": 64, "max_position_embeddings": 128}


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    """A tiny BERT exported as candidates are (seq 128 fits; the synthetic token ids fit its vocabulary)."""
    return export.export_anchor(TINY_BERT, tmp_path_factory.mktemp("tiny") / "model.onnx")


@pytest.fixture
def quick(tiny_bert, tmp_path, monkeypatch, brief_host_reference):
    """``quick(kind)``: a bundled profile that uses ``kind``, with a short timing protocol; calibrations
    in a fresh folder; every anchor (and the host reference) built as the tiny BERT: that reference is never
    steady (its runs take microseconds), so it is tried once (``brief_host_reference``)."""
    monkeypatch.setenv("AUTOCOMPRESS_CALIBRATION_DIR", str(tmp_path / "calibration"))
    monkeypatch.setenv("AUTOCOMPRESS_LOCK_FILE", str(tmp_path / "machine.lock"))

    def anchor(config, path, num_layers=None):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copyfile(tiny_bert, path))

    monkeypatch.setattr(export, "export_anchor", anchor)

    def make(kind: str) -> HardwareProfile:
        for name in list_profiles():
            p = load_profile(name)
            if p.predictor and p.predictor["kind"] == kind:
                return dataclasses.replace(p, min_runs=5, max_seconds=0.3, ci_target=0.5)
        pytest.fail(f"no bundled profile uses the predictor kind {kind!r}: give it one (hw_profiles/)")

    return make


def test_every_kind_is_a_predictor():
    assert KINDS
    for kind, cls in REGISTRY.items():
        assert issubclass(cls, Predictor) and cls.kind == kind


def _refused(profile: HardwareProfile, spec: dict) -> str:
    with pytest.raises(ProfileError) as e:
        HardwareProfile.from_dict(dict(profile.to_dict(), predictor=spec))
    return str(e.value)


@pytest.mark.parametrize("kind", KINDS)
def test_a_bad_spec_is_refused_in_one_line_naming_the_field(kind, quick):
    """Every field of the spec that holds a number, a mapping or a list is checked: given a word instead,
    the profile is refused, in one line that names the field. Free-text fields (its name, its sources)
    are shown as they are."""
    profile = quick(kind)
    good = profile.predictor
    assert HardwareProfile.from_dict(profile.to_dict()).predictor == good
    for field, value in good.items():
        if isinstance(value, str) and field != "kind":
            continue
        msg = _refused(profile, dict(good, **{field: "nonsense"}))
        assert f"'{field}'" in msg and "\n" not in msg, (field, msg)
    msg = _refused(profile, dict(good, name=""))
    assert "'name'" in msg and "\n" not in msg
    first = good["anchors"][0]
    for field, value in (("ms", {128: "fast"}), ("use", "sometimes"), ("config", {"layers": 2})):
        msg = _refused(profile, dict(good, anchors=[dict(first, **{field: value})] + good["anchors"][1:]))
        assert f"'{field}'" in msg and "\n" not in msg, (field, msg)
    msg = _refused(profile, dict(good, anchors=[{k: v for k, v in first.items() if k != "source"}] + good["anchors"][1:]))
    assert "source" in msg and "\n" not in msg


@pytest.mark.parametrize("kind", KINDS)
def test_a_prediction_is_labelled_and_names_its_predictor(kind, quick, tiny_bert):
    profile = quick(kind)
    lat = predictor_for(profile).predict(tiny_bert)
    assert isinstance(lat, Latency) and lat.how == "predicted" and lat.profile == profile.name and lat.median_ms > 0
    assert Latency.from_dict(lat.to_dict()) == lat
    text = describe(lat.to_dict())
    assert text.startswith(f"predicted by {profile.predictor['name']}") and "measured" not in text
    assert (profile.device or profile.name) in text and "\n" not in text


@pytest.mark.parametrize("kind", KINDS)
def test_prepare_is_idempotent(kind, quick, tiny_bert, monkeypatch, tmp_path):
    """Once prepared, preparing again times nothing and writes nothing; its state reads the same."""
    profile = quick(kind)
    pred = predictor_for(profile)
    pred.prepare()
    state = pred.describe_state()
    folder = tmp_path / "calibration"
    before = {p: p.read_bytes() for p in folder.rglob("*")} if folder.is_dir() else {}

    def timed_again(*args, **kwargs):
        raise AssertionError("prepare timed again")

    monkeypatch.setattr(latency, "repeat", timed_again)
    pred.prepare()
    predictor_for(profile).prepare()
    after = {p: p.read_bytes() for p in folder.rglob("*")} if folder.is_dir() else {}
    assert after == before
    assert predictor_for(profile).describe_state() == state and state.strip() and "\n" not in state


@pytest.mark.parametrize("kind", KINDS)
def test_a_side_by_side_reprediction_keeps_to_its_keys(kind, quick, tiny_bert):
    """Re-timed together, a kind redoes the figures it can (each still predicted, on the profile) and no
    others; with nothing stored, nothing."""
    profile = quick(kind)
    pred = predictor_for(profile)
    stored = {"a": pred.predict(tiny_bert).to_dict()}
    again = pred.repredict_side_by_side({"a": tiny_bert, "b": tiny_bert}, stored)
    assert set(again) <= {"a"}
    for lat in again.values():
        assert lat.how == "predicted" and lat.profile == profile.name and lat.median_ms > 0
