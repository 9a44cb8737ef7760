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
