"""Your own data: CSV, TSV and JSON-lines files with any columns, string or integer labels, any number of
classes; the validation split carved from train; bad files refused in one line; and a real search on a
three-class CSV with string labels, picked from and shipped."""
import csv
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import QUICK_LAPTOP

from autocompress.cli import main
from autocompress.recipe import Recipe
from autocompress.tasks import DataError, FileTask, compute_metrics, default_val_size, load_task

TOPICS = {
    "food": ["pasta", "soup", "bread", "cheese", "salad", "curry", "pizza", "dessert", "noodles", "pancakes"],
    "sport": ["match", "goal", "team", "coach", "referee", "league", "striker", "tennis final", "race", "penalty"],
    "weather": ["rain", "storm", "sunshine", "snow", "wind", "fog", "forecast", "thunder", "heatwave", "frost"],
}
TEMPLATES = ["the {w} was {a}", "everyone talked about the {w} today", "well, the {w} again, as usual",
             "what a {a} {w}", "news about the {w} this morning", "I can't stop thinking about that {w}",
             "honestly the {w} felt {a}", "they said the {w} would be {a} tomorrow"]
ADJECTIVES = ["great", "terrible", "strange", "long", "quiet", "surprising", "dull", "wild"]


def topic_rows(n: int, seed: int) -> list[tuple[str, str]]:
    """A small learnable three-class task: the topic word decides the label; templates and adjectives are
    shared by all classes (some texts hold commas, so the CSV needs quoting)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = sorted(TOPICS)[i % 3]
        rows.append((rng.choice(TEMPLATES).format(w=rng.choice(TOPICS[label]), a=rng.choice(ADJECTIVES)), label))
    rng.shuffle(rows)
    return rows


def write_csv(path: Path, header: list[str], rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


# ---------------------------------------------------------------- loading
def test_csv_with_string_labels_and_three_classes(tmp_path):
    train = write_csv(tmp_path / "reviews.csv", ["id", "text", "label"],
                      [(i, t, lab) for i, (t, lab) in enumerate(topic_rows(240, 0))])
    dev = write_csv(tmp_path / "reviews-dev.csv", ["id", "text", "label"],
                    [(i, t, lab) for i, (t, lab) in enumerate(topic_rows(60, 1))])
    data = load_task(FileTask(str(train), str(dev)))
    assert data.spec.name == "reviews" and data.spec.labels == ("food", "sport", "weather")
    assert data.spec.num_labels == 3 and data.spec.metric == "accuracy" and data.spec.text_b is None
    assert len(data.val) == 48 and len(data.dev) == 60                         # 20% of small data carved
    assert len(data.train) == 192 - data.carve["dropped"]       # less the rows that are parts of val inputs
    rows = dict(zip(data.dev["text_a"], data.dev["label"]))
    for text, label in topic_rows(60, 1):
        assert rows[text] == data.spec.labels.index(label)
    assert any("," in t for t in data.dev["text_a"])          # quoted commas survive
    assert data.source.startswith(f"files:train={train},dev={dev}")


def test_tsv_jsonl_integer_labels_and_text_pairs(tmp_path):
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text('premise\thypothesis\tgold\nA man "runs.\tSomeone moves.\t10\nIt rains.\tIt is dry.\t2\n'
                   "Cats purr.\tCats make sounds.\t1\nDogs bark.\tDogs are silent.\t2\n", encoding="utf-8")
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text('{"premise": "P one.", "hypothesis": "H one.", "gold": 2}\n\n'
                     '{"premise": "P two.", "hypothesis": "H two.", "gold": "10"}\n', encoding="utf-8")
    task = FileTask(str(tsv), str(jsonl), text_column="premise", text_pair_column="hypothesis", label_column="gold",
                    metric="f1")
    data = load_task(task, val_size=1)
    assert data.spec.labels == ("1", "2", "10")          # integers in numeric order
    assert data.spec.metric == "macro_f1" and data.spec.text_b == "hypothesis"
    assert data.dev.to_dict() == {"text_a": ["P one.", "P two."], "text_b": ["H one.", "H two."], "label": [1, 2]}
    both = {r["text_a"]: (r["text_b"], r["label"]) for split in (data.train, data.val) for r in split}
    assert both['A man "runs.'] == ("Someone moves.", 2)       # TSV: no quoting, as GLUE's files


def test_validation_carve_is_small_for_small_data(tmp_path):
    """10% of train, but 20% up to 500 rows on small data (enough rows to tell candidates apart), at most
    1000: not 1000 of 2490 rows (the teacher keeps 80% of them), not 249 either (too few to compare)."""
    assert default_val_size(67349) == 1000 and default_val_size(2490) == 498 and default_val_size(8) == 1
    assert default_val_size(4000) == 500 and default_val_size(8551) == 855 and default_val_size(1000) == 200
    rows = topic_rows(2490, 3)
    train = write_csv(tmp_path / "train.csv", ["text", "label"], rows)
    data = load_task(FileTask(str(train), str(train)))
    assert len(data.val) == 498 and len(data.train) == 1992 - data.carve["dropped"]
    with pytest.raises(DataError, match="--val-size 1300 would leave the teacher 1190 of the 2490"):
        load_task(FileTask(str(train), str(train)), val_size=1300)
    # half passes that check; but these templated rows repeat, and the copies of val's rows leave train too
    with pytest.raises(DataError, match=r"--val-size 1245: after carving val like dev, \d+ of the 2490 .* copies of val"):
        load_task(FileTask(str(train), str(train)), val_size=1245)


def test_fingerprint_follows_the_contents(tmp_path):
    train = write_csv(tmp_path / "a" / "train.csv", ["text", "label"], topic_rows(30, 0))
    task = FileTask(str(train), str(train))
    before = task.fingerprint()
    assert task.name == "a"                    # train.csv takes its folder's name
    assert FileTask(str(train), str(train), metric="f1").fingerprint() != before
    write_csv(train, ["text", "label"], topic_rows(30, 1))
    assert task.fingerprint() != before


def test_macro_f1_and_multiclass_matthews_hand_computed(tmp_path):
    train = write_csv(tmp_path / "t.csv", ["text", "label"], topic_rows(30, 0))
    spec = load_task(FileTask(str(train), str(train), metric="f1")).spec
    y, p = [0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 0]
    m = compute_metrics(spec, p, y)
    # per class F1: 2*1/(2+2), 2*2/(2+3), 2*1/(2+1)
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3) and m["main"] == m["macro_f1"]
    assert m["accuracy"] == pytest.approx(4 / 6)
    mcc = load_task(FileTask(str(train), str(train), metric="matthews")).spec
    # Gorodkin's R_K: (c*n - sum p_k t_k) / sqrt((n^2 - sum p_k^2)(n^2 - sum t_k^2)), p=(2,3,1), t=(2,2,2)
    assert compute_metrics(mcc, p, y)["matthews"] == pytest.approx((4 * 6 - 12) / np.sqrt((36 - 14) * (36 - 12)))
    assert compute_metrics(mcc, y, y)["matthews"] == pytest.approx(1.0)


# ---------------------------------------------------------------- bad files: one line, exit 2, nothing done
GOOD = "text,label\nthe soup was great,food\nthe match was long,sport\nrain again,weather\nmore rain,weather\n"
BAD_FILES = {
    "missing-column": ({"train.csv": "sentence,label\na,food\nb,sport\n"}, [],
                       "has no column 'text' (its header: 'sentence', 'label'); name the right one with --text-column"),
    "missing-label-column": ({}, ["--label-column", "topic"], "has no column 'topic'"),
    "empty-file": ({"train.csv": ""}, [], "train.csv is empty"),
    "header-only": ({"train.csv": "text,label\n"}, [], "has no rows, only a header"),
    "unseen-dev-label": ({"dev.csv": "text,label\nelection news,politics\n"}, [],
                         "dev.csv line 2: label 'politics' does not occur in --train (its labels: food, sport, weather)"),
    "not-utf8": ({"train.csv": b"text,label\ncaf\xe9 au lait,food\nthe match,sport\n"}, [],
                 "not UTF-8 text (byte 0xe9 on line 2)"),
    "unknown-extension": ({"train.xlsx": GOOD}, ["--train", "train.xlsx"], "unknown file type '.xlsx'"),
    "ragged-row": ({"train.csv": "text,label\nthe soup,food\nthe soup, again,food\n"}, [],
                   "line 3: 3 field(s) where the header has 2"),
    "bad-json": ({"train.jsonl": '{"text": "a", "label": "x"}\n{"text": "b", label: y}\n'}, ["--train", "train.jsonl"],
                 "train.jsonl line 2: not valid JSON"),
    "one-label": ({"train.csv": "text,label\na,food\nb,food\n"}, [], "a classifier needs at least two labels"),
    "no-dev": ({}, ["--dev", None], "--dev is missing"),
    "task-and-train": ({}, ["--task", "sst2"], "give --task (a GLUE task) or --train/--dev"),
    "no-such-file": ({}, ["--train", "nope.csv"], "--train nope.csv: no such file"),
    "metric": ({}, ["--metric", "bleu"], "invalid choice: 'bleu'"),
}


def _refused(argv, tmp_path, capsys, monkeypatch, expected):
    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    try:
        code = main(argv)
    except SystemExit as e:          # argparse's own refusals (an invalid choice)
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and expected in err, err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()   # no store, no teacher


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_files_are_refused_before_any_work(case, tmp_path, capsys, monkeypatch):
    files, extra, expected = BAD_FILES[case]
    for name, content in {"train.csv": GOOD, "dev.csv": GOOD, **files}.items():
        (tmp_path / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    args = {"--train": "train.csv", "--dev": "dev.csv"}
    for flag, value in zip(extra[::2], extra[1::2]):
        args[flag] = value
    argv = ["search", "--budget", "50ms", "--runs-dir", "runs"]
    for flag, value in args.items():
        argv += [flag, value] if value is not None else []
    _refused(argv, tmp_path, capsys, monkeypatch, expected)


def test_finetune_refuses_bad_files_too(tmp_path, capsys, monkeypatch):
    (tmp_path / "train.csv").write_text("sentence,label\na,food\nb,sport\n")
    (tmp_path / "dev.csv").write_text(GOOD)
    _refused(["finetune", "--train", "train.csv", "--dev", "dev.csv"], tmp_path, capsys, monkeypatch,
             "has no column 'text'")


def test_file_options_need_own_data(tmp_path, capsys, monkeypatch):
    _refused(["search", "--text-column", "sentence", "--runs-dir", "runs"], tmp_path, capsys, monkeypatch,
             "--text-column describes your own data: give it with --train FILE --dev FILE")


# ---------------------------------------------------------------- a real search on a three-class CSV
ONE_TRIAL = """
name: one
trials: 1
steps:
  - method: drop_layers
    params: {keep: {int: [4, 4]}}
  - method: distill
    when: changed
    params: {steps: {int: [20, 20]}}
  - method: quantize_int8
    optional: true
seeds:
  - {drop_layers.keep: 4, distill.steps: 20, quantize_int8: true}
"""


def _cli(*args, env, cwd, timeout=900):
    exe = Path(sys.executable).with_name("autocompress")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    """`autocompress search` on data/topics.csv + data/topics-dev.csv (relative paths: trial workers must get
    them resolved), string labels, three classes, macro F1, one trial."""
    tmp = tmp_path_factory.mktemp("own")
    write_csv(tmp / "data" / "topics.csv", ["text", "topic"], topic_rows(240, 0))
    write_csv(tmp / "data" / "topics-dev.csv", ["text", "topic"], topic_rows(60, 1))
    (tmp / "one.yaml").write_text(ONE_TRIAL)
    (tmp / "quick.yaml").write_text(QUICK_LAPTOP)       # the figures are not what this tests
    env = {**os.environ, "AUTOCOMPRESS_CACHE": str(tmp / "cache"), "AUTOCOMPRESS_LOCK_FILE": str(tmp / "machine.lock")}
    r = _cli("search", "--train", "data/topics.csv", "--dev", "data/topics-dev.csv", "--label-column", "topic",
             "--metric", "f1", "--space", "one.yaml", "--device", "quick.yaml", "--budget", "1000ms", "--name", "own",
             "--epochs", "2",
             "--train-examples", "0", env=env, cwd=tmp)
    assert r.returncode == 0, r.stderr[-3000:]
    from autocompress.store import Store, default_url

    return {"tmp": tmp, "env": env, "out": r.stdout, "store": Store(default_url(tmp / "runs"), create=False)}


def test_own_data_search_carries_the_label_names(own):
    store = own["store"]
    run = store.get_run("own")
    assert run.status == "done" and run.task == "topics"
    assert run.settings["labels"] == ["food", "sport", "weather"] and run.settings["metric"] == "macro_f1"
    assert run.settings["val_size"] == 48                        # 20% of 240 (small data)
    trials = {t.number: t for t in store.trials("own", status=None)}
    assert set(trials) == {0, 1} and trials[1].status == "done"   # the worker reloaded the files
    from autocompress.search import pareto
    from autocompress.search.settings import RunSettings

    done, floor = store.trials("own"), RunSettings.from_dict(run.settings).floor
    on_front = {m.number for p in {p for t in done for p in t.latencies} for m in pareto.front(done, p, floor=floor)}
    for t in trials.values():
        assert t.metrics["val"]["n"] == 48 and "macro_f1" in t.metrics["val"]
        if t.role == "teacher" or t.number in on_front:             # the front (and teacher) re-scored on dev
            assert t.metrics["dev"]["n"] == 60 and "macro_f1" in t.metrics["dev"], t.number
        else:
            assert "dev" not in t.metrics, t.number
    teacher = json.loads((Path(run.settings["teacher"]) / "config.json").read_text())
    assert teacher["id2label"] == {"0": "food", "1": "sport", "2": "weather"}
    info = json.loads((Path(run.settings["teacher"]) / "teacher.json").read_text())
    from autocompress.tasks import load_task_data

    kept = load_task_data(run.settings["data_path"])
    assert info["train_rows"] == len(kept.train) == 192 - kept.carve["dropped"]       # 240 less val's 48
    assert info["dev"]["metrics"]["macro_f1"] >= 0.8                                  # learnable, and learnt


def test_pick_and_predict_from_own_data(own):
    from autocompress.features import EVAL_MAX_LENGTH, encode
    from autocompress.evaluate import predict_onnx
    from autocompress.ship import ShippedModel
    from autocompress.tasks import FileTask, load_task
    from autocompress.teacher import load_teacher

    store, tmp = own["store"], own["tmp"]
    run = store.get_run("own")
    data = load_task(FileTask(str(tmp / "data" / "topics.csv"), str(tmp / "data" / "topics-dev.csv"),
                              label_column="topic", metric="f1"))
    teacher = load_teacher(run.settings["teacher"])
    features = encode(teacher.tokenizer, data.dev, EVAL_MAX_LENGTH)
    for device in ("laptop-cpu", "mobile-cpu"):
        r = _cli("pick", "own", "--device", device, "--out", f"shipped-{device}", env=own["env"], cwd=tmp)
        assert r.returncode == 0, r.stderr
        assert f"for {device}: dev macro_f1" in r.stdout
        folder = tmp / f"shipped-{device}"
        config = json.loads((folder / "config.json").read_text())
        assert config["id2label"] == {"0": "food", "1": "sport", "2": "weather"}
        assert "labels: `food`, `sport`, `weather`" in (folder / "README.md").read_text()
        stored = predict_onnx(store.trial("own", config["autocompress"]["trial"]).artifacts["onnx"], features,
                              batch_size=1).argmax(-1)
        model = ShippedModel(folder)
        assert [model.predict(t)["label"] for t in data.dev["text_a"]] == [data.spec.labels[i] for i in stored]
    r = _cli("predict", "shipped-laptop-cpu", "the striker scored a late goal", "--json", env=own["env"], cwd=tmp)
    out = json.loads(r.stdout)
    assert r.returncode == 0 and set(out["probabilities"]) == {"food", "sport", "weather"}
    assert out["label"] in TOPICS and abs(sum(out["probabilities"].values()) - 1) < 1e-6


def test_optuna_study_lives_in_the_same_database(own):
    """`optuna-dashboard <storage URL>` opens the study: it is the run's name in the store's database, and its
    trials are the store's candidate trials, one for one, in the same states and with the same val scores."""
    import optuna

    store = own["store"]
    study = optuna.load_study(study_name="own", storage=store.url)
    candidates = [t for t in store.trials("own", status=None) if t.role == "candidate"]
    assert len(study.trials) == len(candidates) == 1
    states = {"done": optuna.trial.TrialState.COMPLETE, "duplicate": optuna.trial.TrialState.COMPLETE,
              "failed": optuna.trial.TrialState.FAIL}
    for ot, t in zip(study.trials, candidates):
        assert ot.number + 1 == t.number and ot.state == states[t.status]
        assert ot.values[0] == pytest.approx(t.accuracy("val"))
        # what each point is, for a user of optuna-dashboard: its recipe and the run's trial number
        assert ot.user_attrs["recipe"] == Recipe.from_json(t.recipe).short() and ot.user_attrs["trial"] == t.number
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert study.metric_names == ["val_accuracy", "latency_ms"]           # not "Objective 0/1"
    rescored = {str(t.number): t.accuracy("dev") for t in store.trials("own") if t.accuracy("dev") is not None}
    assert rescored and study.user_attrs["dev"] == rescored
