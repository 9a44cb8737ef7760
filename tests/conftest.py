"""Shared pytest fixtures."""

import os
from pathlib import Path

import pytest


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

    from autocompress.methods.base import TransferSet

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
