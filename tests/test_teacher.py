"""The teacher cache: settings keys, adopting an already fine-tuned model, the transfer set."""
import json
import math

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


@pytest.mark.parametrize("rows,epochs", [(400_000, 1), (66349, 3), (20000, 3), (8000, 5), (1500, 20), (400, 20),
                                         (64, 20)])
def test_epochs_scale_with_the_data(rows, epochs):
    """Three passes (one over very large data sets); small ones get enough passes for 600 optimiser steps
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


# ---------------------------------------------------------------- looking at val while fine-tuning
def test_optimise_keeps_the_best_look_and_stops_after_patience(tiny_bert, tiny_transfer):
    """Scripted val scores 0.5, 0.7, 0.6, 0.65, 0.6, ...: the weights of the second look (the best) are
    put back, and three looks without a gain stop the loop before the plan's end."""
    from autocompress import arch
    from autocompress.methods.distillation import Watch, optimise

    scores = iter([0.5, 0.7, 0.6, 0.65, 0.6, 0.9, 0.9])
    snapshots = {}

    def evaluate(step, loss):
        snapshots[step] = {k: v.clone() for k, v in tiny_bert.state_dict().items()}
        return next(scores)

    watch = Watch(evaluate, every=2, patience=3)
    params = [p for p in tiny_bert.parameters() if p.requires_grad]
    optimise(tiny_bert, params, tiny_transfer.batches(8, 40, seed=0),
             lambda b: (tiny_bert(**arch.inputs(tiny_bert, b), labels=b["labels"]).loss, {}),
             steps=40, lr=1e-3, watch=watch)
    assert [c["step"] for c in watch.curve] == [2, 4, 6, 8, 10] and watch.kept_step == 4
    assert "no gain over the best (0.7000 at step 4) in 3 evaluations" in watch.stopped
    now = tiny_bert.state_dict()
    assert all(torch.equal(now[k], v) for k, v in snapshots[4].items())          # the best weights are back
    assert not all(torch.equal(now[k], v) for k, v in snapshots[10].items())


def test_optimise_without_keep_best_keeps_the_last_weights(tiny_bert, tiny_transfer):
    from autocompress import arch
    from autocompress.methods.distillation import Watch, optimise

    scores = iter([0.9, 0.1, 0.1])
    watch = Watch(lambda step, loss: next(scores), every=4, keep_best=False)
    optimise(tiny_bert, list(tiny_bert.parameters()), tiny_transfer.batches(8, 12, seed=0),
             lambda b: (tiny_bert(**arch.inputs(tiny_bert, b), labels=b["labels"]).loss, {}), steps=12, lr=1e-3,
             watch=watch)
    assert watch.kept_step == 12 and watch.stopped == "the planned 12 steps were done"


@pytest.mark.parametrize("n, passed", [(249, False), (2000, True)])
def test_the_margin_over_the_trivial_answer_depends_on_n(n, passed):
    """57.8% right where always answering one class scores ~53%: noise at 249 rows (Wilson's interval
    reaches below 53%), a real gain at 2000."""
    import numpy as np

    from autocompress.evaluate import beats_trivial, wilson
    from autocompress.tasks import get_task

    labels = np.array([1] * round(0.527 * n) + [0] * (n - round(0.527 * n)))
    right = round(0.578 * n)
    preds = labels.copy()
    preds[right:] = 1 - preds[right:]
    m = beats_trivial(get_task("sst2"), preds, labels, answer=1)
    assert m.n == n and m.baseline == pytest.approx(0.527, abs=1e-3) and m.score == pytest.approx(0.578, abs=1e-3)
    assert m.passed is passed and m.lower == pytest.approx(wilson(right, n)[0]) and "Wilson" in m.method
    assert (m.needed > 0.05) is (n == 249)              # ~6 points at 249 rows, ~2 at 2000


def test_the_margin_of_matthews_is_a_paired_bootstrap():
    import numpy as np

    from autocompress.evaluate import beats_trivial
    from autocompress.tasks import get_task

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 600)
    good = np.where(rng.random(600) < 0.8, labels, 1 - labels)
    noise = rng.integers(0, 2, 600)
    assert beats_trivial(get_task("cola"), good, labels, answer=1).passed
    m = beats_trivial(get_task("cola"), noise, labels, answer=1)
    assert not m.passed and "bootstrap" in m.method and m.baseline == 0.0


def test_points_apart_shrink_with_n():
    """How far apart two accuracies near 85% must be to differ: 1.96 x sqrt(2 p (1 - p) / n); a perfect
    score still leaves a margin."""
    import numpy as np

    from autocompress.evaluate import resolution
    from autocompress.tasks import get_task

    def at(n):
        labels = np.zeros(n, dtype=int)
        preds = labels.copy()
        preds[: round(0.15 * n)] = 1
        return resolution(get_task("sst2"), preds, labels)

    acc = (212 + 1.92) / (250 + 3.84)                     # 212 of 250 right (Agresti-Coull's p)
    assert at(250) == pytest.approx(1.96 * (2 * acc * (1 - acc) / 250) ** 0.5, rel=1e-3)  # 6.3 points
    assert at(1000) == pytest.approx(0.0313, abs=3e-4) and at(1000) < at(250) / 1.9
    assert resolution(get_task("sst2"), np.zeros(100, dtype=int), np.zeros(100, dtype=int)) > 0.01


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """A tiny BERT with MiniLM's vocabulary and tokenizer, as a --model folder (fine-tunes in seconds)."""
    import transformers

    from autocompress.teacher import resolve_model

    folder = tmp_path_factory.mktemp("tiny-base")
    tok = transformers.AutoTokenizer.from_pretrained(resolve_model("minilm"))
    cfg = transformers.BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=160)
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _file_task(tmp_path, rows, name="task"):
    import csv

    from autocompress.tasks import FileTask

    for split, part in (("train", rows), ("dev", rows[:80])):
        with open(tmp_path / f"{name}-{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            w.writerows(part)
    return FileTask(str(tmp_path / f"{name}-train.csv"), str(tmp_path / f"{name}-dev.csv"))


def test_a_teacher_on_random_labels_is_refused_with_the_margin_and_n(tiny_base, tmp_path, monkeypatch):
    """Labels drawn at random: whatever the fine-tune memorises, val cannot beat always answering one class
    beyond the noise; the refusal gives the score, the n, the points needed and what to try."""
    import random

    from autocompress.teacher import UselessTeacher, check_learned, get_teacher

    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(tmp_path / "cache"))
    rng = random.Random(0)
    words = ["good", "bad", "film", "plot", "slow", "fun", "long", "dull", "bright", "sad"]
    rows = [(" ".join(rng.choice(words) for _ in range(6)), rng.choice(["a", "b"])) for _ in range(400)]
    task = _file_task(tmp_path, rows)
    data = load_task(task)
    lines = []
    settings = TeacherSettings(model=str(tiny_base), task=data.spec.name, val_size=len(data.val), min_steps=40,
                               max_epochs=6, lr=5e-4, data=task.fingerprint())
    teacher = get_teacher(settings, data, log=lines.append)
    info = json.loads((teacher.path / "teacher.json").read_text())
    assert info["val"]["n"] == 80 and not info["learned"]["passed"]
    with pytest.raises(UselessTeacher) as e:
        check_learned(teacher)
    text = str(e.value)
    assert "within the noise" in text and "(n=80)" in text and "points above that" in text and "Wilson" in text
    steps = max(c["step"] for c in info["curve"])
    assert f"steps run, kept step {info['kept_step']}: {info['stopped']}" in text and f", {steps} steps run" in text
    assert "--val-size" in text and "--model" in text and "--force" in text


def test_the_fine_tune_keeps_the_best_val_step_and_records_its_curve(tiny_base, tmp_path, monkeypatch):
    """A learnable tiny task: teacher.json holds the curve (one entry per look, one log line each), the kept
    step is the step of the best val score, and why it stopped."""
    import random

    from autocompress.teacher import check_learned, get_teacher

    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(tmp_path / "cache"))
    rng = random.Random(1)
    pos, neg = ["good", "fun", "bright", "great"], ["bad", "dull", "slow", "sad"]
    rows = []
    for _ in range(600):
        label = rng.choice(["pos", "neg"])
        rows.append((" ".join(rng.choice(pos if label == "pos" else neg) for _ in range(3)) + " film", label))
    task = _file_task(tmp_path, rows, "easy")
    data = load_task(task)
    lines = []
    settings = TeacherSettings(model=str(tiny_base), task=data.spec.name, val_size=len(data.val), min_steps=160,
                               max_epochs=20, lr=5e-3, patience=3, data=task.fingerprint())
    teacher = get_teacher(settings, data, log=lines.append)
    info = teacher.info
    curve = info["curve"]
    assert len(curve) >= 2 and [c["step"] for c in curve] == sorted(c["step"] for c in curve)
    best = max(curve, key=lambda c: c["val"])
    assert info["kept_step"] == min(c["step"] for c in curve if c["val"] == best["val"])
    assert info["val"]["metrics"]["main"] == pytest.approx(best["val"], abs=1e-6)       # the kept weights' score
    assert info["stopped"] and sum("teacher step" in line for line in lines) == len(curve)
    assert any(f"kept step {info['kept_step']}" in line for line in lines)
    assert 0 < info["resolution"] < 0.2
    check_learned(teacher)                               # it learned: no error


# ---------------------------------------------------------------- the seed makes the run
def test_optimise_with_a_seed_draws_the_same_dropout_and_leaves_the_global_generator_alone(tiny_bert_factory,
                                                                                         tiny_transfer):
    """Dropout masks come from torch's global generator: with ``seed`` two runs from the same weights end on
    the same weights (without it they differ: the masks differ), and the caller's generator is as it was."""
    from autocompress import arch
    from autocompress.methods.distillation import optimise

    def run(seed):
        model = tiny_bert_factory()
        assert model.config.hidden_dropout_prob > 0
        optimise(model, list(model.parameters()), tiny_transfer.batches(8, 6, seed=0),
                 lambda b: (model(**arch.inputs(model, b), labels=b["labels"]).loss, {}), steps=6, lr=1e-3,
                 seed=seed)
        return model.state_dict()

    def same(a, b):
        return all(torch.equal(a[k], b[k]) for k in a)

    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a, b = run(7), run(7)
    assert torch.equal(torch.random.get_rng_state(), before)          # the seeded runs left it alone
    assert same(a, b) and not same(a, run(8))
    assert not same(run(None), run(None))                             # unseeded: the masks differ


def test_the_same_seed_fine_tunes_the_same_teacher(tmp_path, monkeypatch):
    """A base model without a classifier head (like the packaged MiniLM): the head's initial weights and the
    dropout masks follow ``seed``, so the same settings fine-tune the same teacher twice (two caches), and
    another seed another one. (Before, the same seed gave SST-2 teachers 88.76 to 90.02 dev.)"""
    import random

    import transformers

    from autocompress.teacher import get_teacher, resolve_model

    base = tmp_path / "headless"
    tok = transformers.AutoTokenizer.from_pretrained(resolve_model("minilm"))
    cfg = transformers.BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=80)
    transformers.BertModel(cfg).save_pretrained(base)      # no classifier: from_pretrained draws one
    tok.save_pretrained(base)
    rng = random.Random(2)
    rows = [(" ".join(rng.choice(["good", "fun", "bad", "dull", "film"]) for _ in range(4)), rng.choice("ab"))
            for _ in range(200)]
    task = _file_task(tmp_path, rows, "seeded")
    data = load_task(task)

    def teacher(seed, cache):
        monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(tmp_path / cache))
        settings = TeacherSettings(model=str(base), task=data.spec.name, val_size=len(data.val), min_steps=8,
                                   max_epochs=2, lr=1e-3, seed=seed, data=task.fingerprint())
        return checkpoint.load_model(get_teacher(settings, data, log=lambda m: None).path).state_dict()

    a, b, other = teacher(0, "one"), teacher(0, "two"), teacher(1, "three")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["classifier.weight"], other["classifier.weight"])


# ---------------------------------------------------------------- bf16 fine-tune
def test_bf16_leaves_the_keys_of_fp32_teachers_alone():
    """``bf16`` (the default) was added after teachers were cached: a bf16 teacher has a key of its own, and
    ``--no-bf16`` finds the fp32 teacher cached by earlier runs (the default SST-2 teacher's folder)."""
    from types import SimpleNamespace

    from autocompress.cli.checks import teacher_settings
    from autocompress.cli.parser import build_parser

    assert TeacherSettings(bf16=False).key == "3ed35207b71b" != TeacherSettings().key
    data = SimpleNamespace(spec=SimpleNamespace(name="sst2"), val=range(1000))
    for argv, key in ((["finetune"], TeacherSettings().key), (["finetune", "--no-bf16"], "3ed35207b71b")):
        assert teacher_settings(build_parser().parse_args(argv), data, None).key == key


@pytest.mark.parametrize("native", [True, False])
def test_a_bf16_fine_tune_computes_in_bf16_only_where_the_cpu_has_it(native, tiny_bert, tiny_transfer, monkeypatch):
    """Under ``bf16`` the layers compute in bf16 on a CPU with native bf16 (fp32 elsewhere, where it is
    emulated and slower); the weights stay fp32 and they train, with a finite loss at every step."""
    from autocompress import arch, teacher as T

    monkeypatch.setattr(T, "native_bf16", lambda: native)
    seen, losses = set(), []
    linear = next(x for x in arch.layers(tiny_bert)[0].modules() if isinstance(x, torch.nn.Linear))
    linear.register_forward_hook(lambda mod, args, out: seen.add(out.dtype))
    before = linear.weight.detach().clone()
    settings = TeacherSettings(epochs=1, batch_size=8, patience=None, keep_best=False, bf16=True)
    T.finetune(tiny_bert, tiny_transfer, settings, progress=lambda step, total, loss: losses.append(loss))
    assert (torch.bfloat16 in seen) == native and seen
    assert len(losses) == -(-len(tiny_transfer) // 8) and all(math.isfinite(x) for x in losses)
    assert {p.dtype for p in tiny_bert.parameters()} == {torch.float32}
    assert not torch.equal(linear.weight, before)
