"""Bad input: one line naming the problem, exit code 2, no traceback, nothing written to the store."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from autocompress.cli import main
from autocompress.cli.checks import UserError
from autocompress.cli.parser import parse_budget


@pytest.mark.parametrize("text,ms", [("50ms", 50.0), ("50", 50.0), ("0.05s", 50.0), ("12.5ms", 12.5)])
def test_parse_budget(text, ms):
    assert parse_budget(text) == pytest.approx(ms)


@pytest.mark.parametrize("text", ["fast", "-5ms", "0", "0ms", "5 parsecs", ""])
def test_parse_budget_rejects(text):
    with pytest.raises(UserError):
        parse_budget(text)


BAD = {
    "budget-word": (["--budget", "fast"], "--budget 'fast'"),
    "budget-negative": (["--budget", "-5ms"], "positive"),
    "budget-zero": (["--budget", "0"], "positive"),
    "device": (["--budget", "50ms", "--device", "toaster"], "unknown device 'toaster'"),
    "space": (["--budget", "50ms", "--space", "huge"], "unknown search space 'huge'"),
    "space-file": (["--budget", "50ms", "--space", "nope.yaml"], "--space nope.yaml: no such file"),
    "trials": (["--budget", "50ms", "--trials", "0"], "--trials"),
}


def _read_only_folder(tmp_path) -> Path:
    """A folder nobody here can write to: as root (who ignores permissions), a folder under /proc."""
    import os

    if os.geteuid() == 0:
        return Path("/proc/autocompress-no-such-folder")
    ro = tmp_path / "read-only"
    ro.mkdir()
    ro.chmod(0o555)
    return ro


IMPOSSIBLE_SPACE = """
name: impossible
steps:
  - method: prune_heads
    params:
      ratio: {float: [0.0, 1.5]}
"""

# The bad inputs of issue 5: each must be refused before the teacher is fine-tuned or anything written.
EARLY = {
    "impossible-range": (["--space", "{tmp}/impossible.yaml"], "prune_heads.ratio = 1.5"),
    "storage-folder-missing": (["--storage", "sqlite:////nonexistent-autocompress/dir/x.db"], "does not exist"),
    "storage-in-memory": (["--storage", "sqlite://"], "in-memory"),
    "runs-dir-read-only": (["--runs-dir", "{ro}/runs"], "--runs-dir"),
    "ray-address-silent": (["--ray-address", "127.0.0.1:1"], "--ray-address 127.0.0.1:1: nothing answers"),
    "epochs-zero": (["--epochs", "0"], "--epochs must be at least 1"),
    "train-examples-negative": (["--train-examples", "-5"], "--train-examples must be 0"),
    "val-size-zero": (["--val-size", "0"], "--val-size must be at least 1"),
    "model-folder-missing": (["--model", "./no-such-model"], "--model ./no-such-model: no such folder"),
    "teacher-folder-missing": (["--teacher", "no-such-teacher"], "--teacher no-such-teacher: no such folder"),
    "device-file-missing": (["--device", "nope.yaml"], "--device nope.yaml: no such file"),
}


def _refused_early(args, tmp_path, capsys, monkeypatch, glue_dir, expected):
    cache = tmp_path / "cache"
    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    argv = ["search", "--budget", "50ms", "--data-dir", str(glue_dir), *args]
    if "--runs-dir" not in args:
        argv += ["--runs-dir", str(tmp_path / "runs")]
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert expected in err
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists()      # nothing written: no runs folder, no store
    assert not cache.exists()                    # and no teacher fine-tune started


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_search_input(case, tmp_path, capsys, monkeypatch, glue_dir):
    args, expected = BAD[case]
    _refused_early(args, tmp_path, capsys, monkeypatch, glue_dir, expected)


@pytest.mark.parametrize("case", sorted(EARLY))
def test_bad_input_refused_before_the_teacher(case, tmp_path, capsys, monkeypatch, glue_dir):
    (tmp_path / "impossible.yaml").write_text(IMPOSSIBLE_SPACE)
    ro = _read_only_folder(tmp_path)
    args, expected = EARLY[case]
    args = [a.format(tmp=tmp_path, ro=ro) for a in args]
    _refused_early(args, tmp_path, capsys, monkeypatch, glue_dir, expected)


def test_ray_address_auto_without_a_cluster(tmp_path, capsys, monkeypatch, glue_dir):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "ray"))   # no cluster was ever started there
    import ray._private.services as services        # "auto" also takes any Ray process running on this machine
    monkeypatch.setattr(services, "find_gcs_addresses", lambda: [])   # (another job's): as on a machine with none
    _refused_early(["--ray-address", "auto"], tmp_path, capsys, monkeypatch, glue_dir, "no running Ray cluster")


def test_paths_are_resolved_against_the_working_directory(tmp_path, monkeypatch):
    """Every path option and the data folder variable come out absolute, against the user's cwd."""
    from autocompress.cli.checks import resolve_paths
    from autocompress.cli.parser import build_parser

    (tmp_path / "model").mkdir()
    (tmp_path / "teacher").mkdir()
    (tmp_path / "s.yaml").write_text("")
    (tmp_path / "p.yaml").write_text("")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AUTOCOMPRESS_GLUE_DIR", "glue")
    args = build_parser().parse_args(["search", "--runs-dir", "r", "--storage", "sqlite:///db/x.db",
                                      "--space", "s.yaml", "--device", "p.yaml", "--model", "model",
                                      "--teacher", "teacher"])
    resolve_paths(args)
    assert args.data_dir == str(tmp_path / "glue")
    import os
    assert os.environ["AUTOCOMPRESS_GLUE_DIR"] == str(tmp_path / "glue")    # what Ray workers inherit
    assert args.runs_dir == str(tmp_path / "r")
    assert args.storage == f"sqlite:///{tmp_path}/db/x.db"
    assert args.space == str(tmp_path / "s.yaml") and args.device == str(tmp_path / "p.yaml")
    assert args.model == str(tmp_path / "model") and args.teacher == str(tmp_path / "teacher")
    args = build_parser().parse_args(["search", "--space", "quick", "--device", "mobile-cpu",
                                      "--model", "google/bert_uncased_L-2_H-128_A-2"])
    resolve_paths(args)
    assert (args.space, args.device, args.model) == ("quick", "mobile-cpu", "google/bert_uncased_L-2_H-128_A-2")


def test_data_folder_without_task_files(tmp_path, capsys):
    (tmp_path / "glue").mkdir()
    code = main(["search", "--budget", "50ms", "--data-dir", str(tmp_path / "glue"),
                 "--runs-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "SST-2" in err and "--data-dir" in err
    assert not (tmp_path / "runs" / "autocompress.db").exists()


def test_front_unknown_run(tmp_path, capsys):
    code = main(["front", "nosuchrun", "--runs-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "no store at" in err and len(err.splitlines()) == 1


def test_console_script_exit_code_and_one_line(tmp_path):
    """The installed command, as a user runs it."""
    exe = Path(sys.executable).with_name("autocompress")
    r = subprocess.run([str(exe), "search", "--budget", "fast", "--runs-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    assert "--budget 'fast'" in r.stderr
    r = subprocess.run([str(exe), "search", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "--budget" in r.stdout and "--device" in r.stdout


def test_a_plugin_that_cannot_be_imported_is_said_in_one_line(tmp_path):
    """AUTOCOMPRESS_PLUGINS naming a module that is missing or broken: exit 2, one line that names it."""
    exe = Path(sys.executable).with_name("autocompress")
    (tmp_path / "broken_plugin.py").write_text("def (:\n")
    for name, why in (("no_such_plugin_xyz", "ModuleNotFoundError"), ("broken_plugin", "SyntaxError")):
        env = {**os.environ, "AUTOCOMPRESS_PLUGINS": name, "PYTHONPATH": str(tmp_path)}
        r = subprocess.run([str(exe), "runs", "--runs-dir", str(tmp_path / "runs")], capture_output=True, text=True,
                           timeout=120, env=env)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.strip().count("\n") == 0 and f"cannot import {name!r} ({why}" in r.stderr, r.stderr


def test_a_reader_that_goes_away_is_not_an_error():
    """`autocompress profiles | head -1`: the pipe closes before the command writes; no traceback, exit 0."""
    exe = Path(sys.executable).with_name("autocompress")
    p = subprocess.Popen([str(exe), "profiles"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    p.stdout.close()                       # the reader is gone before the first line is written
    err = p.stderr.read()
    assert p.wait(timeout=120) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err


def test_resume_refuses_a_new_lengths_choice(tmp_path, capsys, monkeypatch):
    """--lengths is how the run's latencies were obtained: a resumed run keeps its own."""
    monkeypatch.chdir(tmp_path)
    code = main(["search", "--resume", "any", "--lengths", "task", "--runs-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.endswith("--resume continues the run as it was started: leave out --lengths"), err


def test_predict_says_what_its_calls_cost_with_the_graph_apart():
    from autocompress.cli.commands import call_costs

    line = call_costs([2.0, 4.0, 3.0], [1.0, 1.5, 0.5])
    assert line.startswith("3 calls: mean 3.000 ms per call (median 3.000), of which ONNX Runtime's graph 1.000 ms "
                           "(median 1.000) and the tokenizer and Python around it 2.000 ms")
