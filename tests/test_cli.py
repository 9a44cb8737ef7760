"""Bad input: one line naming the problem, exit code 2, no traceback, nothing written to the store."""
import subprocess
import sys
from pathlib import Path

import pytest

from autocompress.cli import main, parse_budget, UserError


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
    "space-file": (["--budget", "50ms", "--space", "nope.yaml"], "does not exist"),
    "trials": (["--budget", "50ms", "--trials", "0"], "--trials"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_search_input(case, tmp_path, capsys, glue_dir):
    args, expected = BAD[case]
    code = main(["search", *args, "--data-dir", str(glue_dir), "--runs-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert expected in err
    assert "Traceback" not in err
    assert not (tmp_path / "runs" / "autocompress.db").exists()   # nothing written to the store


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
