"""Tests for autocompress.tasks: GLUE loading (local TSV, hub fallback) and metrics."""

import socket
import time
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest

from autocompress import tasks
from autocompress.tasks import DataError, compute_metrics, get_task, load_task


def _write(path: Path, lines: list[str], bom: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(("\ufeff" if bom else "") + "\n".join(lines) + "\n", encoding="utf-8")


def _texts(path: Path, col: int, header: bool) -> Counter:
    rows = path.read_text(encoding="utf-8").splitlines()[1 if header else 0:]
    return Counter(r.split("\t")[col] for r in rows)


# ---------- task lookup ----------

@pytest.mark.parametrize("name", ["sst2", "SST-2", "sst-2", "Sst2", " SST2 "])
def test_get_task_aliases(name):
    assert get_task(name) is tasks.TASKS["sst2"]


def test_task_table():
    assert set(tasks.TASKS) == {"sst2", "cola", "mrpc", "qqp", "qnli", "rte", "mnli"}
    assert get_task("MNLI").dev_file == "dev_matched.tsv" and get_task("mnli").num_labels == 3
    assert get_task("cola").metric == "matthews" and get_task("CoLA").glue_dir == "CoLA"
    assert get_task("mrpc").metric == "f1" and get_task("qqp").metric == "f1"
    assert get_task("sst2").text_b is None and get_task("rte").text_b == "sentence2"


def test_unknown_task():
    with pytest.raises(DataError, match="known tasks are .*sst2.*mnli"):
        get_task("stsb")


# ---------- real local files ----------

def test_sst2_local(glue_dir):
    data = load_task("sst2", glue_dir, val_size=1000, seed=0)
    assert data.source == f"local:{glue_dir}"
    for ds in (data.train, data.val, data.dev):
        assert ds.column_names == ["text_a", "label"]
    assert len(data.dev) == 872
    assert Counter(data.dev["label"]) == {0: 428, 1: 444}
    assert data.dev[0]["text_a"] == "it 's a charming and often affecting journey . "
    dropped = data.carve["dropped"]
    assert len(data.val) == 1000 and len(data.train) == 67349 - 1000 - dropped and 5000 < dropped < 15000
    assert set(data.train["label"]) == {0, 1} and set(data.val["label"]) <= {0, 1}
    # val looks like dev (whole sentences, not phrases): its median length is dev's, train's is far below
    assert data.carve["val_median_words"] == data.carve["dev_median_words"] == 19
    assert data.carve["train_median_words"] <= 8
    # train, val and the left-out phrases partition the file (as multisets: SST-2 has duplicate sentences),
    # and no train row is a part of a val sentence: val is unseen text, as dev is
    from autocompress.tasks.split import parts_of

    whole = _texts(glue_dir / "SST-2" / "train.tsv", 0, header=True)
    kept = Counter(data.train["text_a"]) + Counter(data.val["text_a"])
    assert not kept - whole and sum((whole - kept).values()) == dropped
    parts = parts_of(data.val["text_a"])
    assert not any(" ".join(t.lower().split()) in parts for t in data.train["text_a"])
    # deterministic for a seed, different for another seed
    again = load_task("sst2", glue_dir, val_size=1000, seed=0)
    assert again.val["text_a"] == data.val["text_a"]
    other = load_task("sst2", glue_dir, val_size=1000, seed=1)
    assert other.val["text_a"] != data.val["text_a"]


def test_cola_local_headerless(glue_dir):
    data = load_task("CoLA", glue_dir, val_size=500)
    assert get_task("cola").metric == "matthews"
    assert len(data.dev) == 1043
    assert data.dev[0] == {"text_a": "The sailors rode the breeze clear of the rocks.", "label": 1}
    assert "sentence" not in data.dev["text_a"][:1]
    assert Counter(data.dev["label"]) == {0: 322, 1: 721}
    assert len(data.train) + len(data.val) + data.carve["dropped"] == 8551 and len(data.val) == 500
    assert "text_b" not in data.train.column_names


def test_data_dir_from_env(glue_dir, monkeypatch):
    monkeypatch.setenv("AUTOCOMPRESS_GLUE_DIR", str(glue_dir))
    assert tasks.default_data_dir() == str(glue_dir)
    data = load_task("cola", val_size=100)
    assert data.source == f"local:{glue_dir}" and len(data.dev) == 1043


def test_default_data_dir_unset(monkeypatch):
    monkeypatch.delenv("AUTOCOMPRESS_GLUE_DIR", raising=False)
    assert tasks.default_data_dir() is None


# ---------- pair tasks from tiny GLUE-layout fixtures ----------

def test_rte_string_labels(tmp_path):
    head = "index\tsentence1\tsentence2\tlabel"
    _write(tmp_path / "RTE" / "train.tsv", [
        head, '0\tA man "runs.\tSomeone moves.\tentailment',
        "1\tIt rains.\tIt is dry.\tnot_entailment",
        "2\tCats purr.\tCats make sounds.\tentailment"])
    _write(tmp_path / "RTE" / "dev.tsv", [head, "0\tP one.\tH one.\tnot_entailment",
                                          "1\tP two.\tH two.\tentailment"])
    data = load_task("rte", tmp_path, val_size=1)
    assert data.dev.column_names == ["text_a", "text_b", "label"]
    assert data.dev.to_dict() == {"text_a": ["P one.", "P two."], "text_b": ["H one.", "H two."],
                                  "label": [1, 0]}
    rows = {r["text_a"]: r for r in datasets.concatenate_datasets([data.train, data.val])}
    assert rows['A man "runs.'] == {"text_a": 'A man "runs.', "text_b": "Someone moves.", "label": 0}
    assert rows["It rains."]["label"] == 1 and len(rows) == 3


def test_mrpc_quality_label_and_bom(tmp_path):
    head = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"
    _write(tmp_path / "MRPC" / "train.tsv",
           [head, "1\t11\t12\tA first.\tA second.", "0\t21\t22\tB first.\tB second.",
            "1\t31\t32\tC first.\tC second."], bom=True)
    _write(tmp_path / "MRPC" / "dev.tsv", [head, "0\t41\t42\tD first.\tD second."], bom=True)
    data = load_task("MRPC", tmp_path, val_size=1)
    assert data.dev.to_dict() == {"text_a": ["D first."], "text_b": ["D second."], "label": [0]}
    both = datasets.concatenate_datasets([data.train, data.val])
    assert sorted(zip(both["text_a"], both["text_b"], both["label"])) == [
        ("A first.", "A second.", 1), ("B first.", "B second.", 0), ("C first.", "C second.", 1)]


def test_mnli_dev_matched_gold_label_last(tmp_path):
    common = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
              "sentence1_parse\tsentence2_parse\tsentence1\tsentence2")
    parses = "\t".join(["(x)"] * 4)
    train = [common + "\tlabel1\tgold_label"]
    for i, lab in enumerate(["entailment", "neutral", "contradiction", "neutral"]):
        train.append(f"{i}\tp\tq\tfiction\t{parses}\tPrem {i}.\tHyp {i}.\tcontradiction\t{lab}")
    _write(tmp_path / "MNLI" / "train.tsv", train)
    dev_head = common + "\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label"
    _write(tmp_path / "MNLI" / "dev_matched.tsv", [
        dev_head,
        f"0\tp\tq\tslate\t{parses}\tDev p.\tDev h.\tneutral\tneutral\tentailment\tneutral\tneutral\tcontradiction"])
    data = load_task("mnli", tmp_path, val_size=2)
    assert data.dev.to_dict() == {"text_a": ["Dev p."], "text_b": ["Dev h."], "label": [2]}
    both = datasets.concatenate_datasets([data.train, data.val])
    assert sorted(zip(both["text_a"], both["text_b"], both["label"])) == [
        ("Prem 0.", "Hyp 0.", 0), ("Prem 1.", "Hyp 1.", 1), ("Prem 2.", "Hyp 2.", 2),
        ("Prem 3.", "Hyp 3.", 1)]
    assert len(data.val) == 2 and len(data.train) == 2


def test_mnli_needs_dev_matched(tmp_path):
    head = "index\tsentence1\tsentence2\tgold_label"
    _write(tmp_path / "MNLI" / "train.tsv", [head, "0\ta\tb\tneutral", "1\tc\td\tneutral"])
    _write(tmp_path / "MNLI" / "dev.tsv", [head, "0\ta\tb\tneutral"])
    with pytest.raises(DataError, match="dev_matched.tsv.*--data-dir"):
        load_task("mnli", tmp_path, val_size=1)


def test_qqp_skips_malformed_rows(tmp_path):
    head = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate"
    _write(tmp_path / "QQP" / "train.tsv", [
        head, "0\t1\t2\tHow to cook?\tHow do I cook?\t1",
        "1\t3\t4\tbroken row with a missing question\t0",  # 5 columns: skipped
        "2\t5\t6\tWhat is AI?\tWho is Al?\t0",
        "3\t7\t8\tWhy?\tWhy not?\t0"])
    _write(tmp_path / "QQP" / "dev.tsv", [head, "9\t9\t9\tQ a?\tQ b?\t1"])
    data = load_task("qqp", tmp_path, val_size=1)
    both = datasets.concatenate_datasets([data.train, data.val])
    assert len(both) == 3
    assert "broken row with a missing question" not in both["text_a"]
    assert sorted(zip(both["text_a"], both["text_b"], both["label"])) == [
        ("How to cook?", "How do I cook?", 1), ("What is AI?", "Who is Al?", 0), ("Why?", "Why not?", 0)]


def test_qnli_string_labels(tmp_path):
    head = "index\tquestion\tsentence\tlabel"
    rows = [head, "0\tWho?\tHim.\tentailment", "1\tWhere?\tNowhere.\tnot_entailment"]
    _write(tmp_path / "QNLI" / "train.tsv", rows)
    _write(tmp_path / "QNLI" / "dev.tsv", rows)
    data = load_task("qnli", tmp_path, val_size=1)
    assert data.dev.to_dict() == {"text_a": ["Who?", "Where?"], "text_b": ["Him.", "Nowhere."],
                                  "label": [0, 1]}


# ---------- user errors ----------

def test_missing_folder(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match="no SST-2 files in .*--data-dir") as e:
        load_task("sst2", missing)
    assert "\n" not in str(e.value) and str(missing / "SST-2" / "train.tsv") in str(e.value)


def test_folder_without_task(glue_dir):
    with pytest.raises(DataError, match="no RTE files in .*--data-dir"):
        load_task("rte", glue_dir)


def test_missing_dev_file(tmp_path):
    _write(tmp_path / "SST-2" / "train.tsv", ["sentence\tlabel", "good\t1", "bad\t0"])
    with pytest.raises(DataError, match="--data-dir"):
        load_task("sst2", tmp_path, val_size=1)


def test_file_with_no_rows(tmp_path):
    _write(tmp_path / "SST-2" / "train.tsv", ["sentence\tlabel", "good\t1", "bad\t0"])
    _write(tmp_path / "SST-2" / "dev.tsv", ["sentence\tlabel"])
    with pytest.raises(DataError, match="no usable rows in .*dev.tsv"):
        load_task("sst2", tmp_path, val_size=1)


def test_wrong_header(tmp_path):
    _write(tmp_path / "SST-2" / "train.tsv", ["text\ty", "good\t1", "bad\t0"])
    _write(tmp_path / "SST-2" / "dev.tsv", ["sentence\tlabel", "ok\t1"])
    with pytest.raises(DataError, match="lacks the column"):
        load_task("sst2", tmp_path, val_size=1)


@pytest.mark.parametrize("val_size", [0, -3, 2, 10])
def test_bad_val_size(tmp_path, val_size):
    _write(tmp_path / "SST-2" / "train.tsv", ["sentence\tlabel", "good\t1", "bad\t0"])
    _write(tmp_path / "SST-2" / "dev.tsv", ["sentence\tlabel", "ok\t1"])
    with pytest.raises(DataError, match="--val-size"):
        load_task("sst2", tmp_path, val_size=val_size)


# ---------- hub ----------

def test_hub_offline_fails_fast(monkeypatch):
    monkeypatch.delenv("AUTOCOMPRESS_GLUE_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(DataError, match="--data-dir") as e:
        load_task("sst2")
    assert time.monotonic() - start < 15
    assert "hub" in str(e.value) and "AUTOCOMPRESS_GLUE_DIR" in str(e.value)
    assert "\n" not in str(e.value)


def testhub_unreachable_without_offline_env(monkeypatch):
    monkeypatch.delenv("AUTOCOMPRESS_GLUE_DIR", raising=False)
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)

    def no_network(*args, **kwargs):
        raise OSError("unreachable")

    def must_not_call(*args, **kwargs):
        raise AssertionError("load_dataset called although the hub is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(datasets, "load_dataset", must_not_call)
    with pytest.raises(DataError, match="could not load GLUE cola from the hub.*--data-dir"):
        load_task("cola")


def test_hub_load_error_becomes_data_error(monkeypatch):
    monkeypatch.delenv("AUTOCOMPRESS_GLUE_DIR", raising=False)
    monkeypatch.setattr(tasks.glue, "hub_unreachable", lambda: False)

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(datasets, "load_dataset", broken)
    with pytest.raises(DataError, match="--data-dir"):
        load_task("rte")


def test_hub_columns_renamed(monkeypatch):
    """With a (mocked) hub, columns are renamed, idx dropped and MNLI uses validation_matched."""
    monkeypatch.delenv("AUTOCOMPRESS_GLUE_DIR", raising=False)
    monkeypatch.setattr(tasks.glue, "hub_unreachable", lambda: False)
    feats = datasets.Features({
        "premise": datasets.Value("string"), "hypothesis": datasets.Value("string"),
        "label": datasets.ClassLabel(names=["entailment", "neutral", "contradiction"]),
        "idx": datasets.Value("int32")})

    def split(tag, n):
        return datasets.Dataset.from_dict(
            {"premise": [f"{tag} p{i}" for i in range(n)], "hypothesis": [f"{tag} h{i}" for i in range(n)],
             "label": [i % 3 for i in range(n)], "idx": list(range(n))}, features=feats)

    calls = []

    def fake_load(path, config):
        calls.append((path, config))
        return datasets.DatasetDict({"train": split("tr", 10), "validation_matched": split("vm", 4),
                                     "validation_mismatched": split("vmm", 5)})

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    data = load_task("mnli", val_size=3)
    assert calls == [("nyu-mll/glue", "mnli")]
    assert data.source == "hub:nyu-mll/glue"
    for ds in (data.train, data.val, data.dev):
        assert ds.column_names == ["text_a", "text_b", "label"]
        assert ds.features["label"] == datasets.Value("int64")
    assert data.dev.to_dict() == {"text_a": [f"vm p{i}" for i in range(4)],
                                  "text_b": [f"vm h{i}" for i in range(4)], "label": [0, 1, 2, 0]}
    assert len(data.train) == 7 and len(data.val) == 3


# ---------- metrics ----------

def test_metrics_hand_computed():
    preds, labels = [1, 1, 0, 0, 1], [1, 0, 0, 1, 1]  # tp=2 fp=1 fn=1 tn=1
    m = compute_metrics(get_task("mrpc"), preds, labels)
    assert m.keys() == {"accuracy", "f1", "main"}
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["f1"] == pytest.approx(2 / 3) and m["main"] == m["f1"]
    c = compute_metrics(get_task("cola"), preds, labels)
    assert c.keys() == {"accuracy", "matthews", "main"}
    assert c["matthews"] == pytest.approx(1 / 6) and c["main"] == c["matthews"]
    s = compute_metrics(get_task("sst2"), np.array(preds), np.array(labels))
    assert s == {"accuracy": pytest.approx(0.6), "main": pytest.approx(0.6)}


def test_metrics_edge_cases():
    cola, qqp = get_task("cola"), get_task("qqp")
    labels = [1, 0, 1, 1]
    const = compute_metrics(cola, [1, 1, 1, 1], labels)
    assert const["matthews"] == 0.0 and const["accuracy"] == pytest.approx(0.75)
    assert compute_metrics(cola, labels, labels)["matthews"] == pytest.approx(1.0)
    assert compute_metrics(cola, [0, 1, 0, 0], labels)["matthews"] == pytest.approx(-1.0)
    assert compute_metrics(qqp, [0, 0, 0, 0], labels)["f1"] == 0.0
    assert compute_metrics(qqp, [0, 0], [0, 0])["f1"] == 0.0
    # logits are argmaxed; 3-class accuracy for MNLI
    logits = np.array([[0.1, 2.0], [3.0, -1.0], [0.0, 0.5], [0.2, 0.1]])
    assert compute_metrics(cola, logits, labels)["accuracy"] == pytest.approx(0.75)
    assert compute_metrics(get_task("mnli"), [0, 1, 2, 2], [0, 1, 2, 1])["main"] == pytest.approx(0.75)
    with pytest.raises(ValueError):
        compute_metrics(cola, [1, 0], [1, 0, 1])


def test_val_is_carved_like_dev_and_its_parts_leave_train():
    """Train: 900 short phrases, 100 whole sentences whose phrases are among them; dev: whole sentences.
    Val is drawn like dev (long inputs, although train is mostly short) and the phrases of val's
    sentences are left out of train; a random carve would be mostly phrases."""
    from autocompress.tasks.split import carve

    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(300)]
    sentences = [" ".join(rng.choice(vocab, 12)) for _ in range(100)]
    phrases = [" ".join(s.split()[i:i + 3]) for s in sentences for i in range(0, 9)]
    rows = sentences + phrases                                    # 100 long, 900 short
    train = datasets.Dataset.from_dict({"text_a": rows, "label": [i % 2 for i in range(len(rows))]})
    dev = datasets.Dataset.from_dict({"text_a": [" ".join(rng.choice(vocab, 12)) for _ in range(50)], "label": [0] * 50})
    rest, val, how = carve(train, dev, 40, seed=0)
    assert how.val_median_words == how.dev_median_words == 12 and how.train_median_words == 3
    assert all(len(t.split()) == 12 for t in val["text_a"])
    own_parts = {p for s in val["text_a"] for p in phrases if p in s}
    assert how.dropped >= len(own_parts) > 0 and not own_parts & set(rest["text_a"])
    assert len(rest) + len(val) + how.dropped == len(rows)
    assert carve(train, dev, 40, seed=0)[1]["text_a"] == val["text_a"]          # the same for a seed


def test_val_never_lies_inside_a_train_row_and_its_copies_leave_train():
    """SST-2's train split holds sentences and the phrases of longer sentences; a val row that is a phrase
    of a sentence left in train is trained on through that sentence (67-70% of SST-2's val rows were,
    ``benchmarks/val_overlap.py``). Train here: 60 whole 12-word sentences, 60 12-word rows that lie inside
    20-word sentences, and copies of 10 whole sentences; dev: 12 words. Val may only hold whole rows, and
    neither the copies of a val row nor its parts stay in train."""
    from autocompress.tasks.split import carve, hosted

    rng = np.random.default_rng(1)
    vocab = [f"w{i}" for i in range(400)]
    whole = [" ".join(rng.choice(vocab, 12)) for _ in range(60)]
    longer = [" ".join(rng.choice(vocab, 20)) for _ in range(60)]
    inner = [" ".join(s.split()[4:16]) for s in longer]                   # 12 words, inside a longer row
    rows = whole + inner + longer + whole[:10]                          # ten whole sentences twice
    assert hosted(rows).tolist() == [False] * 60 + [True] * 60 + [False] * 70
    train = datasets.Dataset.from_dict({"text_a": rows, "label": [i % 2 for i in range(len(rows))]})
    dev = datasets.Dataset.from_dict({"text_a": [" ".join(rng.choice(vocab, 12)) for _ in range(30)], "label": [0] * 30})
    rest, val, how = carve(train, dev, 30, seed=0)
    assert not set(val["text_a"]) & set(inner)                          # length-matched, yet never a contained row
    assert all(f" {v} " not in f" {t} " for v in val["text_a"] for t in rest["text_a"])   # val unseen, copies too
    assert how.val_median_words == how.dev_median_words == 12 and "whole" in how.how
    assert len(rest) + len(val) + how.dropped == len(rows)
