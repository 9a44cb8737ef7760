"""Shared pytest fixtures."""

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def _shared_calibration():
    """Predictor calibrations are a property of this machine (cached per host key): tests share the user's
    calibration folder even where they move AUTOCOMPRESS_CACHE, so a machine calibrates once, not per test."""
    if not os.environ.get("AUTOCOMPRESS_CALIBRATION_DIR"):
        base = Path(os.environ.get("AUTOCOMPRESS_CACHE") or Path.home() / ".cache" / "autocompress")
        os.environ["AUTOCOMPRESS_CALIBRATION_DIR"] = str(base / "calibration")
    yield


@pytest.fixture
def brief_host_reference(monkeypatch):
    """A host reference established in one try, its windows back to back: for tests that time on a fresh
    calibration folder but test something else than the reference (a steady one takes 16 s of pauses, an
    unsteady one such as a tiny graph's 48 s; tests/test_host_speed.py covers establishing it)."""
    from autocompress.hardware import latency, reference

    monkeypatch.setattr(reference, "TRIES", 1)
    windows = latency.reference_windows
    monkeypatch.setattr(latency, "reference_windows", lambda ref, **kw: windows(ref, **{"gap_s": 0.0, **kw}))


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    """The real GLUE folder (SST-2, CoLA): $AUTOCOMPRESS_GLUE_DIR, else shared/glue beside the repo."""
    env = os.environ.get("AUTOCOMPRESS_GLUE_DIR")
    path = (Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "glue").resolve()
    if not (path / "SST-2" / "train.tsv").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"no GLUE folder at {path}: CI must run the real-data tests")
        pytest.skip(f"no GLUE folder at {path}")
    return path


# ---------------------------------------------------------------- a tiny BERT and its transfer set
# Built from a config (no download), small enough that pruning, distillation and export take seconds.
# initializer_range=0.2 (BERT's default is 0.02): with the default, a random tiny model's logits are
# ~0.01 and padding changes them by ~3e-5, below any tolerance a test could use; at 0.2 logits are ~1
# and masking mistakes show up as differences of ~0.1.

@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """One intra-op thread: the machine is small and shared, and with two spinning OpenMP threads a
    tiny model's step can take 100x longer when another process holds a core."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


TINY_LAYERS, TINY_HEADS, TINY_FFN, TINY_VOCAB = 4, 4, 64, 200


def _tiny_config():
    import transformers

    return transformers.BertConfig(vocab_size=TINY_VOCAB, hidden_size=32, num_hidden_layers=TINY_LAYERS,
                                   num_attention_heads=TINY_HEADS, intermediate_size=TINY_FFN,
                                   max_position_embeddings=64, num_labels=2, initializer_range=0.2)


def tiny_config(model_type: str):
    """A tiny config of any supported layout, same sizes as the tiny BERT (4 layers, 4 heads, hidden 32, FFN 64)."""
    import transformers

    common = dict(vocab_size=TINY_VOCAB, num_labels=2, initializer_range=0.2)
    if model_type == "distilbert":
        return transformers.DistilBertConfig(dim=32, n_layers=TINY_LAYERS, n_heads=TINY_HEADS, hidden_dim=TINY_FFN,
                                             max_position_embeddings=64, **common)
    cls = transformers.AutoConfig.for_model(model_type).__class__
    kw = dict(hidden_size=32, num_hidden_layers=TINY_LAYERS, num_attention_heads=TINY_HEADS,
              intermediate_size=TINY_FFN, max_position_embeddings=64, **common)
    if model_type in ("roberta", "xlm-roberta", "camembert"):
        kw.update(max_position_embeddings=80, pad_token_id=1)   # the test rows carry two segments
    if model_type == "electra":
        kw.update(embedding_size=32)
    return cls(**kw)


LAYOUTS = ("bert", "roberta", "xlm-roberta", "camembert", "electra", "distilbert")


@pytest.fixture(scope="session")
def tiny_model():
    """``tiny_model(model_type)``: a fresh tiny sequence classifier of that layout (seeded, eval mode)."""
    import torch
    import transformers

    def make(model_type: str):
        torch.manual_seed(0)
        return transformers.AutoModelForSequenceClassification.from_config(tiny_config(model_type)).eval()

    return make


@pytest.fixture(scope="session")
def _tiny_bert_master():
    import torch
    import transformers

    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(_tiny_config()).eval()


@pytest.fixture
def tiny_bert(_tiny_bert_master):
    """A fresh deep copy of the tiny BERT classifier (4 layers, 4 heads, FFN 64, 2 labels): safe to mutate."""
    import copy

    return copy.deepcopy(_tiny_bert_master)


@pytest.fixture(scope="session")
def tiny_bert_factory(_tiny_bert_master):
    """Callable returning a fresh deep copy each call (for module-scoped fixtures)."""
    import copy

    return lambda: copy.deepcopy(_tiny_bert_master)


def make_features(n: int, seed: int, min_len: int = 3, max_len: int = 24) -> list[dict[str, list[int]]]:
    """``n`` rows of random token ids in [5, vocab) with lengths in [min_len, max_len]; two segments."""
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        length = rng.randint(min_len, max_len)
        ids = [rng.randrange(5, TINY_VOCAB) for _ in range(length)]
        split = rng.randint(1, length)
        rows.append({"input_ids": ids, "attention_mask": [1] * length,
                     "token_type_ids": [0] * split + [1] * (length - split)})
    return rows


@pytest.fixture(scope="session")
def tiny_transfer():
    """A TransferSet of 64 rows of varying length with random labels and random teacher logits.

    The teacher logits scatter around a fixed offset, so a student can move towards them (distillation
    lowers the KD loss) even though the tokens carry no signal."""
    import torch

    from autocompress.features import TransferSet

    g = torch.Generator().manual_seed(1)
    n = 64
    return TransferSet(features=make_features(n, seed=1), labels=torch.randint(0, 2, (n,), generator=g),
                       teacher_logits=torch.tensor([2.0, -1.0]) + torch.randn(n, 2, generator=g), pad_id=0)


@pytest.fixture
def tiny_ctx(tiny_transfer):
    from autocompress.methods.base import Context

    return Context(tiny_transfer, seed=0)


@pytest.fixture(scope="session")
def feature_rows():
    """``make_features`` as a fixture: ``feature_rows(n, seed, min_len=3, max_len=24)``."""
    return make_features


# ---------------------------------------------------------------- PostgreSQL
@pytest.fixture
def postgres_url():
    """A fresh database on the PostgreSQL server that `.ci/run` starts (AUTOCOMPRESS_TEST_POSTGRES: a URL
    of a role that may create databases); dropped afterwards. Skipped where no server is given."""
    import uuid

    import sqlalchemy as sa

    base = os.environ.get("AUTOCOMPRESS_TEST_POSTGRES")
    if not base:
        pytest.skip("no PostgreSQL server: set AUTOCOMPRESS_TEST_POSTGRES (.ci/run starts one)")
    name = f"ac_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield sa.engine.make_url(base).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as c:
        c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


# A laptop profile of the user's own (`--device quick.yaml`: it takes the bundled laptop-cpu's place), its
# timing protocol short: for end-to-end tests of something else than the figures (stopping and resuming,
# own data); tests/test_hardware.py and test_host_speed.py cover the protocol itself.
QUICK_LAPTOP = """name: laptop-cpu
description: this machine's CPU, timed briefly
runtime: onnxruntime
provider: CPUExecutionProvider
max_threads: 4
min_runs: 20
max_seconds: 1.0
ci_target: 0.05
nominal_speed: true
pin_threads: true
"""


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    """One autocompress cache for the end-to-end tests of a session: the small teacher they share is
    fine-tuned once."""
    return tmp_path_factory.mktemp("autocompress-cache")


def listening_addresses(pids: set[int]) -> list[str]:
    """The local addresses (``ip:port``) of the TCP sockets that processes ``pids`` listen on (from /proc)."""
    import ipaddress

    inodes: dict[str, int] = {}
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes[target[8:-1]] = pid
        except OSError:
            continue
    out = []
    for table, v6 in (("tcp", False), ("tcp6", True)):
        try:
            lines = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if parts[3] != "0A" or parts[9] not in inodes:       # 0A: LISTEN
                continue
            hexaddr, hexport = parts[1].split(":")
            raw = bytes.fromhex(hexaddr)
            # /proc prints each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            addr = ipaddress.ip_address(raw)
            out.append(f"{addr}:{int(hexport, 16)}")
    return out


def process_tree(root: int) -> set[int]:
    """``root`` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(proc.name))
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in tree:
            tree.add(pid)
            todo.extend(children.get(pid, []))
    return tree


def is_loopback(address: str) -> bool:
    import ipaddress

    ip = ipaddress.ip_address(address.rsplit(":", 1)[0])
    return ip.is_loopback or (ip.version == 6 and ip.ipv4_mapped is not None and ip.ipv4_mapped.is_loopback)


# ---------------------------------------------------------------- a real Ray cluster of two nodes on this machine
def _ray_processes(mark: str) -> set[int]:
    """Processes whose command line names ``mark`` (the cluster's own temp folder), and their children."""
    def cmdline(pid: int) -> str:
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return ""

    def parent(pid: int) -> int:
        try:
            return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return -1

    pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    found = {p for p in pids if mark in cmdline(p) and p != os.getpid()}
    grew = True
    while grew:
        more = {p for p in pids if p not in found and parent(p) in found}
        found |= more
        grew = bool(more)
    return found


def _stop_ray(mark: str) -> None:
    """Stop one test cluster by its processes' ids (never `ray stop`, which stops every Ray on the machine)."""
    import signal
    import time

    pids = _ray_processes(mark)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.time() + 10
        while time.time() < deadline and any(Path(f"/proc/{p}").exists() and "Z" not in _state(p) for p in pids):
            time.sleep(0.2)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


@pytest.fixture
def ray_cluster(monkeypatch):
    """``ray_cluster(worker_resources={...}, head_cpus=1, worker_cpus=1) -> address``: a real Ray cluster of
    two nodes on this machine, started with ``ray start`` (a head, then a worker offering the given custom
    resources), node addresses 127.0.0.1, dashboard off, token authentication with a fresh token (this
    process gets the token too, so ``ray.init(address=...)`` connects) unless this process has imported
    Ray already, whose authentication settings the cluster then follows. Stopped at teardown by the ids
    of its own processes. Several clusters may be started in one test. (In Ray's cluster mode its servers
    listen on every interface whatever --node-ip-address says: the token is what keeps others out.)"""
    import json
    import secrets
    import shutil
    import socket
    import subprocess
    import sys
    import tempfile

    ray_exe = str(Path(sys.executable).with_name("ray"))
    env_vars = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"}
    if "ray" in sys.modules:
        # Ray fixed its authentication mode when it was imported (a search run in this process may have
        # changed RAY_AUTH_MODE since): ask Ray itself, and start the cluster in that mode.
        from ray._raylet import AuthenticationMode, get_authentication_mode

        if get_authentication_mode() == AuthenticationMode.TOKEN:
            token = secrets.token_hex(32)
            env_vars.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
        else:
            env_vars["RAY_AUTH_MODE"] = "disabled"
    else:
        env_vars.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    for k, v in env_vars.items():
        monkeypatch.setenv(k, v)
    if "ray" in sys.modules:
        from ray._raylet import AuthenticationTokenLoader

        AuthenticationTokenLoader.instance().reset_cache()     # this process's token is the cluster's
    started: list[str] = []

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def run(args: list[str]) -> None:
        r = subprocess.run([ray_exe, *args, "--disable-usage-stats"], capture_output=True, text=True, timeout=180,
                           env={**os.environ, **env_vars})
        if r.returncode != 0:
            raise RuntimeError(f"ray {' '.join(args[:2])} failed: {(r.stderr or r.stdout)[-2000:]}")

    def start(worker_resources: dict | None = None, head_cpus: int = 1, worker_cpus: int = 1) -> str:
        temp = tempfile.mkdtemp(prefix="acray-", dir="/tmp")    # short: Ray's socket paths must stay short
        started.append(temp)
        port = free_port()
        run(["start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--temp-dir", temp,
             "--include-dashboard", "false", "--num-cpus", str(head_cpus)])
        run(["start", "--address", f"127.0.0.1:{port}", "--node-ip-address", "127.0.0.1",
             "--num-cpus", str(worker_cpus), "--resources", json.dumps(worker_resources or {})])
        return f"127.0.0.1:{port}"

    yield start
    for temp in started:
        _stop_ray(temp)
        shutil.rmtree(temp, ignore_errors=True)


# ---------------------------------------------------------------- the consumer virtual environment
# How an app team meets a folder written by `autocompress pick`: Hugging Face Optimum in an environment
# of its own (optimum-onnx needs transformers < 5, autocompress runs on 5.x). Built once per machine and
# cached, keyed by its requirement files and Python's version.
CONSUMER = Path(__file__).parent / "consumer"


def consumer_venv() -> Path:
    import hashlib
    import sys

    h = hashlib.sha256(sys.version.encode())
    for name in ("requirements.txt", "constraints.txt"):
        h.update((CONSUMER / name).read_bytes())
    base = Path(os.environ.get("AUTOCOMPRESS_CONSUMER_VENVS") or Path.home() / ".cache" / "autocompress-tests")
    return base / f"consumer-{h.hexdigest()[:12]}"


@pytest.fixture(scope="session")
def consumer_python() -> Path:
    """The consumer environment's python (onnxruntime, optimum-onnx[onnxruntime], transformers 4.x, CPU
    torch pinned first, then the constraints file), built on first use from PyPI."""
    import fcntl
    import shutil
    import subprocess
    import sys

    venv = consumer_venv()
    python, done = venv / "bin" / "python", venv / ".complete"
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / ".consumer.lock", "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)           # one build at a time on a machine
        if not done.exists():
            shutil.rmtree(venv, ignore_errors=True)
            pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
            steps = [[sys.executable, "-m", "venv", str(venv)], [*pip, "torch==2.13.0"],
                     [*pip, "-c", str(CONSUMER / "constraints.txt"), "-r", str(CONSUMER / "requirements.txt")]]
            for cmd in steps:
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
                if r.returncode != 0:
                    msg = f"could not build the consumer venv at {venv} ({' '.join(cmd[-3:])}): {r.stderr[-800:]}"
                    if os.environ.get("CI"):
                        pytest.fail(msg)
                    pytest.skip(msg)
            freeze = subprocess.run([str(python), "-m", "pip", "freeze"], capture_output=True, text=True).stdout
            done.write_text(freeze)
    return python


def run_and_report(setup, number, recipe, **kwargs) -> dict:
    """One trial as a search runs it (its row started, evaluated, its result recorded in one call) and
    what the searcher is told of it (``trial.objectives``)."""
    from autocompress.search.trial import objectives, run_trial

    return objectives(setup, number, recipe, run_trial(setup, number, recipe, **kwargs))
