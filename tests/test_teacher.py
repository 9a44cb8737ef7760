"""The teacher cache: settings keys, adopting an already fine-tuned model, the transfer set."""
import json

import pytest
import torch

from autocompress import checkpoint
from autocompress.tasks import load_task
from autocompress.teacher import TeacherError, TeacherSettings, adopt_teacher, resolve_model


def test_settings_key_changes_with_settings():
    a = TeacherSettings()
    assert a.key == TeacherSettings().key
    assert a.key != TeacherSettings(epochs=1).key != TeacherSettings(task="cola").key
    assert a.cache_dir().name.startswith("sst2-minilm-")


def test_resolve_model_packaged_and_bad_folder(tmp_path):
    assert (resolve_model("minilm") and (__import__("pathlib").Path(resolve_model("minilm")) / "config.json").exists())
    with pytest.raises(TeacherError, match="config.json"):
        resolve_model(str(tmp_path))


def test_adopt_teacher_scores_and_caches_transfer_logits(tmp_path, monkeypatch, glue_dir):
    """--teacher PATH: a fine-tuned folder is scored, its transfer logits cached, and reused."""
    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(tmp_path / "cache"))
    data = load_task("sst2", glue_dir, val_size=100)
    src = resolve_model("minilm")
    model = checkpoint.load_model(src)               # the packaged MiniLM with a fresh 2-label head
    tok = checkpoint.load_tokenizer(src)
    folder = checkpoint.save_model(model, tok, tmp_path / "mine")
    settings = TeacherSettings(train_examples=96, val_size=100, transfer_examples=64)
    teacher = adopt_teacher(str(folder), settings, data, log=lambda m: None)
    info = json.loads((teacher.path / "teacher.json").read_text())
    assert info["val"]["n"] == 100 and info["dev"]["n"] == 872 and info["train_seconds"] == 0.0
    assert teacher.onnx_path.is_file()
    transfer = teacher.transfer_set(data)
    assert len(transfer) == 64 and transfer.teacher_logits.shape == (64, 2)
    # the cached logits are the model's own logits on those rows
    batch = transfer.collate([0, 1, 2])
    with torch.no_grad():
        own = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    token_type_ids=batch["token_type_ids"]).logits
    assert torch.allclose(own, batch["teacher_logits"], atol=1e-4)
    again = adopt_teacher(str(folder), settings, data, log=lambda m: pytest.fail("not cached"))
    assert again.path == teacher.path


def test_adopt_teacher_rejects_a_folder_without_a_model(tmp_path, glue_dir):
    data = load_task("sst2", glue_dir, val_size=100)
    with pytest.raises(TeacherError, match="--teacher"):
        adopt_teacher(str(tmp_path), TeacherSettings(), data)


def test_hub_model_offline_fails_fast_naming_the_alternative(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TeacherError, match="local model folder"):
        resolve_model("bert-base-uncased")


@pytest.mark.parametrize("rows,epochs", [(400_000, 1), (66349, 2), (20000, 2), (8000, 5), (1500, 20), (400, 20),
                                         (64, 20)])
def test_epochs_scale_with_the_data(rows, epochs):
    """Two passes (one over very large data sets); small ones get enough passes for 600 optimiser steps
    of 64 rows (at most 20)."""
    assert TeacherSettings().plan_epochs(rows) == epochs
    assert TeacherSettings(epochs=2).plan_epochs(rows) == 2          # asked for: as asked


def _teacher_with(val: float, baseline: float, metric: str = "accuracy"):
    from autocompress.teacher import Teacher

    return Teacher(path=None, tokenizer=None, info={
        "val": {"metrics": {"main": val}}, "train_rows": 1500, "epochs": 2,
        "baseline": {"answer": 1, "main": baseline, "metric": metric}})


def test_a_teacher_no_better_than_one_answer_is_refused():
    from autocompress.teacher import UselessTeacher, check_learned

    with pytest.raises(UselessTeacher, match=r"learned nothing: its val accuracy is 55.0, and always answering "
                                             r"class 1 scores 55.8 .*--force"):
        check_learned(_teacher_with(0.55, 0.558))
    with pytest.raises(UselessTeacher):
        check_learned(_teacher_with(0.565, 0.558))          # within a point of the baseline: still nothing
    check_learned(_teacher_with(0.85, 0.558))               # learned: no error
    check_learned(_teacher_with(0.30, 0.0, "matthews"))     # MCC 0.30 beats answering one class (0)


def test_trivial_baseline_is_the_best_single_answer(glue_dir):
    from autocompress.tasks import load_task
    from autocompress.teacher import trivial_baseline

    data = load_task("sst2", glue_dir, val_size=500)
    base = trivial_baseline(data)
    ones = sum(data.val["label"]) / len(data.val)
    assert base["metric"] == "accuracy" and base["answer"] == int(ones > 0.5)
    assert base["main"] == pytest.approx(max(ones, 1 - ones))
    cola = trivial_baseline(load_task("cola", glue_dir, val_size=500))
    assert cola["metric"] == "matthews" and cola["main"] == 0.0
