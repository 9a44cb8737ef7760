"""Ctrl-C as a user presses it: the search runs in a tmux pane (a real terminal); at each stage of a search
C-c is sent with ``tmux send-keys`` (the terminal sends SIGINT to the foreground process group), and the
time to the shell's ``EXIT=`` line is taken, with the exit code, the run's and trials' status in the store,
and the processes of the search left (those whose environment has its folder as PWD).

Stages: the teacher's fine-tune (a cache of its own: nothing may be left in it), the mobile calibration
(an empty calibration folder), a candidate's structure timing, its distillation, its export or scoring,
the final re-timing. All but the first adopt an already fine-tuned teacher folder (``--teacher``)::

    python benchmarks/ctrl_c.py --work /tmp/ctrlc --teacher FOLDER --data-dir ../shared/glue [STAGE ...]

Appends one line per stage to ``WORK/results.jsonl`` and prints it. Needs tmux.
"""
import argparse
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time

HERE = VENV = GLUE = ""
SHORT = """name: short
trials: 1
steps:
  - method: drop_layers
    params: {keep: 4}
  - method: distill
    params: {steps: 30}
"""
LONG = """name: long
trials: 2
steps:
  - method: drop_layers
    params: {keep: 4}
  - method: distill
    params: {steps: 5000}
"""


def pane():
    return subprocess.run(["tmux", "capture-pane", "-p", "-t", "cc", "-S", "-400"], capture_output=True, text=True).stdout


def db_stage(work):
    try:
        return [s or "" for (s,) in sqlite3.connect(os.path.join(work, "runs", "autocompress.db")).execute(
            "select stage from ac_trials where status='running' and number > 0")]     # a candidate, not the teacher's trial 0
    except Exception:
        return []


def one(label, space, extra_env, trigger, delay=3.0, extra_args=""):
    work = os.path.join(HERE, label)
    shutil.rmtree(work, ignore_errors=True); os.makedirs(work)
    (open(os.path.join(work, space), "w")).write(SHORT if space == "short.yaml" else LONG)
    env = " ".join(f"{k}={v}" for k, v in extra_env.items())
    cmd = (f"cd {work} && . {VENV} && {env} autocompress search --space {space} --name {label} --train-examples 1600 "
           f"--val-size 200 --data-dir {GLUE} {extra_args}; echo EXIT=$?")
    subprocess.run(["tmux", "kill-session", "-t", "cc"], capture_output=True)
    subprocess.run(["tmux", "new-session", "-d", "-s", "cc", "-x", "200", "-y", "50"], check=True)
    subprocess.run(["tmux", "send-keys", "-t", "cc", cmd, "Enter"], check=True)
    t0 = time.time()
    while time.time() - t0 < 1200:
        if trigger(pane(), db_stage(work)):
            break
        if re.search(r"EXIT=\d", pane()):
            return {"stage": label, "error": "ended before the stage"}
        time.sleep(0.2)
    else:
        return {"stage": label, "error": "stage not reached"}
    reached = round(time.time() - t0)
    time.sleep(delay)
    t1 = time.time()
    subprocess.run(["tmux", "send-keys", "-t", "cc", "C-c"])
    while not re.search(r"EXIT=\d", pane()) and time.time() - t1 < 120:
        time.sleep(0.1)
    took = round(time.time() - t1, 1)
    text = pane()
    m = re.findall(r"EXIT=(\d+)", text)
    code = m[-1] if m else None
    time.sleep(2)
    ray = 0                      # processes started by this search (they inherit its environment: PWD is its folder)
    for pid in os.listdir("/proc"):
        try:
            if pid.isdigit() and f"PWD={work}\0".encode() in open(f"/proc/{pid}/environ", "rb").read() \
                    and b"tmux" not in open(f"/proc/{pid}/cmdline", "rb").read() and b"bash" not in open(f"/proc/{pid}/cmdline", "rb").read():
                ray += 1
        except OSError:
            pass
    run = trial = None
    try:
        con = sqlite3.connect(os.path.join(work, "runs", "autocompress.db"))
        run = con.execute("select status from ac_runs").fetchone()
        trial = con.execute("select number, status, error from ac_trials").fetchall()
    except Exception as e:
        run = repr(e)
    tail = [l for l in text.splitlines() if l.strip()][-4:]
    return {"stage": label, "reached_after_s": reached, "exit_after_s": took, "exit": code, "ray_left": ray,
            "run": run, "trials": trial, "tail": tail}


def main():
    global HERE, VENV, GLUE
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", required=True, help="a folder for the runs (emptied per stage)")
    ap.add_argument("--teacher", required=True, help="an already fine-tuned SST-2 model folder (e.g. a cached teacher)")
    ap.add_argument("--data-dir", default=os.environ.get("AUTOCOMPRESS_GLUE_DIR"))
    ap.add_argument("stages", nargs="*")
    args = ap.parse_args()
    HERE, GLUE = os.path.abspath(args.work), os.path.abspath(args.data_dir)
    VENV = os.path.join(os.path.dirname(sys.executable), "activate")
    os.makedirs(HERE, exist_ok=True)
    fresh_cache = os.path.join(HERE, "cache-fresh")
    shutil.rmtree(fresh_cache, ignore_errors=True)
    cached = {"AUTOCOMPRESS_CACHE": os.path.join(HERE, "cache")}
    adopt = f"--teacher {os.path.abspath(args.teacher)}"     # a fine-tuned folder: no training
    stages = [
        ("teacher", "short.yaml", {"AUTOCOMPRESS_CACHE": fresh_cache},
         lambda p, s: "fine-tune teacher" in p, 3.0, "--epochs 1 --seed 7"),
        ("calibration", "short.yaml", {**cached, "AUTOCOMPRESS_CALIBRATION_DIR": os.path.join(HERE, "cal-empty")},
         lambda p, s: "calibrating mobile-cpu" in p, 3.0, adopt),
        ("structure-timing", "long.yaml", cached, lambda p, s: any(x.startswith("timing the untrained") for x in s), 1.0, adopt),
        ("distillation", "long.yaml", cached, lambda p, s: any(x.startswith("distill") or x == "recovery" for x in s), 3.0, adopt),
        ("export-or-scoring", "short.yaml", cached, lambda p, s: any(x in ("export", "scoring") for x in s), 0.0, adopt),
        ("final-retiming", "short.yaml", cached, lambda p, s: "re-time fronts side by side" in p, 0.5, adopt),
    ]
    only = args.stages
    for label, space, env, trig, delay, extra in stages:
        if only and label not in only:
            continue
        shutil.rmtree(os.path.join(HERE, "cal-empty"), ignore_errors=True)   # the calibration stage starts from none
        r = one(label, space, env, trig, delay, extra)
        print(json.dumps(r), flush=True)
        with open(os.path.join(HERE, "results.jsonl"), "a") as f:
            f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
