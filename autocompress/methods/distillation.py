"""Recovery by knowledge distillation from the teacher, with the targets the survey reviews (Ganesh et al.,
2021, §knowledge distillation).

Targets, each with its own weight in the loss (weight 0: not a target):

- ``logits`` — KL between the temperature-softened output distributions, plus the hard labels by
  ``1 - alpha`` (Hinton et al., 2015; DistilBERT). The teacher's logits on the transfer set are cached
  beside the teacher, so logits alone cost one student forward and backward per step: the teacher
  never runs.
- ``hidden`` — MSE between the student's layer outputs and the teacher's (PKD, Sun et al., 2019;
  TinyBERT, Jiao et al., 2020), through a learned linear projection where the widths differ.
- ``attention`` — KL between the teacher's and the student's attention distributions, per layer and
  head (MiniLM, Wang et al., 2020; TinyBERT).
- ``embeddings`` — MSE between the embedding layers' outputs (TinyBERT), projected like ``hidden``.

With any of the last three the teacher (``Context.teacher``) runs forward once per batch, without
gradients; with ``attention`` both models run eager attention (the only kind that returns its
probabilities) and the student's dropout on attention probabilities is off while it trains: eager
attention returns the probabilities *after* dropout, zeroed and rescaled, which are no distribution
to compare (hidden-state dropout stays on).

**Layer mapping** (which teacher layer each student layer learns from): ``origin`` (default) — the
teacher layer the student layer was copied from (``config.autocompress_layers``, kept by
``drop_layers``), so a layer is asked to stay what it was; ``uniform`` — student layer i of S learns
from teacher layer (i+1)·T/S − 1 (TinyBERT's mapping: the last learns from the last); ``last`` — only
the last layers are paired (MiniLM). ``benchmarks/methods.py`` compares them.

**Heads**: a student layer paired with the layer it came from compares each head it kept
(``kept_heads``, recorded by ``prune_heads``) with that very head of the teacher — it *is* that head
(same query and key weights), so per-head targets are exact; a mean over heads would blur distinct
patterns into one and let heads trade roles. Layers paired otherwise compare head by head when the
head counts agree (MiniLM), else the mean over heads on both sides.

**Projections** are training aids: they live in ``Targets``, never in the student, so they reach no
checkpoint or ONNX file. Where the widths agree there is none: the student matches the teacher's
states themselves, and the loss is zero when student and teacher agree.
"""
from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Iterator

import torch
import torch.nn.functional as F

from .. import arch
from ..features import AUGMENT_MODES, augment
from ..hardware.host import native_bf16
from .base import Context, RecipeError, check, register

MAPPINGS = ("origin", "uniform", "last")
TARGETS = {"attention": "att", "hidden": "hid", "embeddings": "emb"}   # intermediate targets -> label


@dataclass(frozen=True)
class Distillation:
    steps: int                  # optimiser steps
    lr: float = 1e-4
    batch_size: int = 32
    temperature: float = 2.0
    alpha: float = 0.9          # within the logit loss: weight of the soft (teacher) part; 1 - alpha on the labels
    warmup: float = 0.1         # fraction of steps with a linear warm-up
    logits: float = 1.0         # loss weights; 0: not a target
    hidden: float = 0.0
    attention: float = 0.0
    embeddings: float = 0.0
    mapping: str = "origin"     # student layer -> teacher layer: origin | uniform | last
    augment: float = 0.0        # fraction of each batch's rows replaced by an augmented copy (teacher-labelled)
    augment_mode: str = "replace"   # replace: 25% of word pieces swapped for the batch's own | join: two rows as one | both
    bf16: bool = False          # forward passes under bf16 autocast where the CPU computes bf16 natively (else fp32)

    # for the contract suite (methods/base.py); no identity: every step trains (steps >= 1, lr > 0)
    EXAMPLE: ClassVar[dict] = {"steps": 3, "batch_size": 8, "hidden": 1.0, "attention": 1.0}
    IDENTITY: ClassVar[dict | None] = None
    ADDED: ClassVar[tuple[str, ...]] = ("augment", "augment_mode", "bf16")   # out of the recipe hash at their defaults

    def __post_init__(self):
        check(isinstance(self.steps, int) and self.steps >= 1, "distill", f"steps must be an int >= 1, got {self.steps!r}")
        check(self.lr > 0, "distill", f"lr must be > 0, got {self.lr!r}")
        check(self.batch_size >= 1, "distill", "batch_size must be >= 1")
        check(self.temperature > 0, "distill", "temperature must be > 0")
        check(0.0 <= self.alpha <= 1.0, "distill", f"alpha must be in [0, 1], got {self.alpha!r}")
        check(0.0 <= self.warmup < 1.0, "distill", "warmup must be in [0, 1)")
        for name in ("logits", *TARGETS):
            w = getattr(self, name)
            check(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w >= 0,
                  "distill", f"{name} (a loss weight) must be a number >= 0, got {w!r}")
        check(self.logits > 0 or bool(self.intermediate), "distill",
              "every loss weight is 0: give logits, hidden, attention or embeddings a weight > 0")
        check(self.mapping in MAPPINGS, "distill", f"mapping must be one of {', '.join(MAPPINGS)}, got {self.mapping!r}")
        check(0.0 <= self.augment <= 1.0, "distill", f"augment must be in [0, 1], got {self.augment!r}")
        check(self.augment_mode in AUGMENT_MODES, "distill",
              f"augment_mode must be one of {', '.join(AUGMENT_MODES)}, got {self.augment_mode!r}")
        check(isinstance(self.bf16, bool), "distill", f"bf16 must be true or false, got {self.bf16!r}")

    @property
    def intermediate(self) -> tuple[str, ...]:
        """The targets inside the network (they need the teacher to run)."""
        return tuple(t for t in TARGETS if getattr(self, t) > 0)


def label(c: Distillation) -> str:
    """``kd 400``, ``kd 400 +att+hid``, ``kd 400 +att uniform``, ``kd 400 +hid (no logits)``."""
    text = f"kd {c.steps}"
    if c.intermediate:
        text += " " + "".join(f"+{TARGETS[t]}" for t in c.intermediate)
        if c.mapping != "origin":
            text += f" {c.mapping}"
    text += "" if c.logits > 0 else " (no logits)"
    text += (f" aug {c.augment:.0%}" + ("" if c.augment_mode == "replace" else f" {c.augment_mode}")
             if c.augment > 0 else "")
    return text + (" bf16" if c.bf16 else "")


# ---------------------------------------------------------------- losses
def kd_loss(student_logits, teacher_logits, labels, temperature: float, alpha: float) -> torch.Tensor:
    t = temperature
    soft = F.kl_div(F.log_softmax(student_logits / t, -1), F.softmax(teacher_logits / t, -1),
                    reduction="batchmean") * t * t
    hard = F.cross_entropy(student_logits, labels)
    return alpha * soft + (1 - alpha) * hard


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` [B, T] over the real (unpadded) tokens, ``mask`` [B, T]."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def hidden_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MSE between hidden states [B, T, H] over the real tokens."""
    return _masked_mean((student - teacher).pow(2).mean(-1), mask)


def attention_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor,
                   heads: torch.Tensor | None = None) -> torch.Tensor:
    """KL(teacher || student) between attention distributions [B, heads, T, T] (over keys), averaged
    over heads and real query tokens. ``heads``: the teacher head each student head is compared with;
    None: the mean over heads on both sides."""
    if heads is None:
        student, teacher = student.mean(1, keepdim=True), teacher.mean(1, keepdim=True)
    else:
        teacher = teacher[:, heads]
    tiny = torch.finfo(student.dtype).tiny        # masked keys hold exact zeros on both sides: 0 * log 0 = 0
    kl = (teacher * (teacher.clamp_min(tiny).log() - student.clamp_min(tiny).log())).sum(-1)   # [B, heads, T]
    return _masked_mean(kl.mean(1), mask)


# ---------------------------------------------------------------- layer and head mapping
def origin_layers(model, n_teacher: int) -> list[int] | None:
    """The teacher layer each layer of ``model`` was copied from: ``config.autocompress_layers``, or
    the identity for a model as deep as the teacher; None when unknown."""
    n = len(arch.layers(model))
    recorded = getattr(model.config, "autocompress_layers", None)
    if recorded:
        return list(recorded)
    return list(range(n)) if n == n_teacher else None


def layer_pairs(student, n_teacher: int, mapping: str) -> list[tuple[int, int]]:
    """(student layer, teacher layer) pairs whose outputs and attention maps are compared."""
    n = len(arch.layers(student))
    if mapping == "last":
        return [(n - 1, n_teacher - 1)]
    if mapping == "uniform":
        return [(i, max(0, (i + 1) * n_teacher // n - 1)) for i in range(n)]
    origin = origin_layers(student, n_teacher)
    if origin is None:
        raise RecipeError(f"distill: mapping 'origin' needs the teacher layer each student layer came from "
                          f"(config.autocompress_layers, kept by drop_layers); this student has {n} layers and "
                          f"the teacher {n_teacher}: use mapping 'uniform' or 'last'")
    if len(origin) != n or not all(0 <= t < n_teacher for t in origin):
        raise RecipeError(f"distill: the student's record of its teacher layers {origin} does not fit a "
                          f"{n}-layer student of a {n_teacher}-layer teacher: is this its teacher?")
    return list(enumerate(origin))


def head_map(student, teacher, s_layer: int, t_layer: int) -> torch.Tensor | None:
    """The teacher head compared with each head of student layer ``s_layer``, or None: the mean over heads."""
    s, t = arch.layers(student)[s_layer], arch.layers(teacher)[t_layer]
    ns, nt = arch.num_heads(student, s), arch.num_heads(teacher, t)
    kept = getattr(arch.heads_module(student, s), "kept_heads", None)
    origin = origin_layers(student, len(arch.layers(teacher)))
    if kept is not None and origin is not None and origin[s_layer] == t_layer:
        position = {h: i for i, h in enumerate(getattr(arch.heads_module(teacher, t), "kept_heads", range(nt)))}
        if all(h in position for h in kept):
            return torch.tensor([position[h] for h in kept])
    return torch.arange(ns) if ns == nt else None


# ---------------------------------------------------------------- intermediate targets
class Targets(torch.nn.Module):
    """The intermediate losses between a student and its teacher, with the learned projections
    (training aids: they live here, never in the student)."""

    def __init__(self, cfg: Distillation, student, teacher, widths: dict[str, tuple[int, int]]):
        super().__init__()
        self.cfg = cfg
        self.pairs = layer_pairs(student, len(arch.layers(teacher)), cfg.mapping)
        self.heads = [head_map(student, teacher, s, t) for s, t in self.pairs]
        self.project = torch.nn.ModuleDict({
            name: torch.nn.Linear(*widths[name]) for name in ("hidden", "embeddings")
            if getattr(cfg, name) > 0 and widths[name][0] != widths[name][1]})

    def _projected(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return self.project[name](x) if name in self.project else x

    def forward(self, student_out, teacher_out, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each intermediate target's loss. ``hidden_states[0]`` is the embedding output, ``[i + 1]``
        layer i's output; ``attentions[i]`` layer i's probabilities [B, heads, T, T]."""
        s_h, t_h = _float(student_out.hidden_states), _float(teacher_out.hidden_states)
        losses = {}
        if self.cfg.hidden > 0:
            losses["hidden"] = torch.stack([hidden_loss(self._projected("hidden", s_h[s + 1]), t_h[t + 1], mask)
                                            for s, t in self.pairs]).mean()
        if self.cfg.embeddings > 0:
            losses["embeddings"] = hidden_loss(self._projected("embeddings", s_h[0]), t_h[0], mask)
        if self.cfg.attention > 0:
            s_a, t_a = _float(student_out.attentions), _float(teacher_out.attentions)
            losses["attention"] = torch.stack([attention_loss(s_a[s], t_a[t], mask, heads)
                                               for (s, t), heads in zip(self.pairs, self.heads)]).mean()
        return losses


def _float(states):
    """Outputs computed in bf16 (``Distillation.bf16``) as float32, for the losses; None stays None."""
    return None if states is None else tuple(x.float() for x in states)


def target_widths(student, teacher, batch) -> dict[str, tuple[int, int]]:
    """(student, teacher) widths of the embedding output and of the layer outputs, read off one forward."""
    with torch.no_grad():
        s = student(**arch.inputs(student, batch), output_hidden_states=True).hidden_states
        t = teacher(**arch.inputs(teacher, batch), output_hidden_states=True).hidden_states
    return {"embeddings": (s[0].shape[-1], t[0].shape[-1]), "hidden": (s[-1].shape[-1], t[-1].shape[-1])}


@contextmanager
def attention_maps(student, teacher):
    """Both models on eager attention (it returns its probabilities), the student's attention dropout off."""
    saved = [(m, m.config._attn_implementation) for m in (student, teacher)]
    drops = [arch.attention_dropout(student, layer) for layer in arch.layers(student)]
    rates = [d.p for d in drops]
    for m, _ in saved:
        m.set_attn_implementation("eager")
    for d in drops:
        d.p = 0.0
    try:
        yield
    finally:
        for m, impl in saved:
            m.set_attn_implementation(impl)
        for d, p in zip(drops, rates):
            d.p = p


# ---------------------------------------------------------------- the method
@register("distill", "recovery", Distillation, label=label)
def distill(model, cfg: Distillation, ctx: Context):
    """Recover accuracy by distilling the teacher (logits; optionally hidden states, attention, embeddings)."""
    return train(model, cfg, ctx)[0]


def train(model, cfg: Distillation, ctx: Context) -> tuple[object, Targets | None]:
    """``distill``, also returning its ``Targets`` (the learned projections), which the model never holds."""
    embeddings = arch.vocab_weight(model)
    was_trainable = embeddings.requires_grad
    embeddings.requires_grad_(False)          # a 30k x H matrix: updating it costs more than it helps here
    try:
        return _train(model, cfg, ctx)
    finally:
        embeddings.requires_grad_(was_trainable)


def _teacher(cfg: Distillation, ctx: Context):
    if ctx.teacher is None:
        raise RecipeError(f"distill: the {', '.join(cfg.intermediate)} target(s) need the teacher model, and "
                          "this context has none (Context.teacher)")
    teacher = ctx.teacher().eval()
    arch.layout(teacher)                      # the same adapter must know it
    return teacher


def _train(model, cfg: Distillation, ctx: Context):
    teacher = _teacher(cfg, ctx) if cfg.intermediate or cfg.augment > 0 else None
    gen = torch.Generator().manual_seed(ctx.seed + 2)
    targets = (Targets(cfg, model, teacher, target_widths(model.eval(), teacher, ctx.transfer.collate([0])))
               if cfg.intermediate else None)
    params = [p for p in model.parameters() if p.requires_grad] + (list(targets.parameters()) if targets else [])
    wants = {}
    if cfg.hidden > 0 or cfg.embeddings > 0:
        wants["output_hidden_states"] = True
    if cfg.attention > 0:
        wants["output_attentions"] = True

    low = cfg.bf16 and native_bf16()

    def loss_fn(batch):
        augmented = augment(batch, cfg.augment, cfg.augment_mode, gen) if cfg.augment > 0 else None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=low):
            out = model(**arch.inputs(model, batch), **wants)
            t_out = None
            if teacher is not None:
                with torch.no_grad():
                    t_out = teacher(**arch.inputs(teacher, batch), **wants)
        if augmented is not None and augmented.any():       # the teacher's own answer on rows it never saw
            batch["teacher_logits"] = torch.where(augmented[:, None], t_out.logits.float(), batch["teacher_logits"])
            batch["labels"] = torch.where(augmented, t_out.logits.argmax(-1), batch["labels"])
        losses = {}
        if cfg.logits > 0:
            losses["logits"] = kd_loss(out.logits.float(), batch["teacher_logits"], batch["labels"], cfg.temperature,
                                       cfg.alpha)
        if targets is not None:
            losses.update(targets(out, t_out, batch["attention_mask"]))
        return sum(getattr(cfg, name) * value for name, value in losses.items()), losses

    with attention_maps(model, teacher) if cfg.attention > 0 else nullcontext():
        recover(model, params, cfg, ctx, loss_fn)
    return model, targets


@dataclass
class Watch:
    """Looking at a held-out split while training: every ``every`` steps (and at the end)
    ``evaluate(step, train_loss)`` gives a score (higher is better); with ``keep_best`` the weights of the
    best look are put back at the end; training stops once ``patience`` looks in a row did not beat the
    best by more than ``min_gain`` (None: never early). ``curve`` records every look."""

    evaluate: Callable[[int, float], float]
    every: int
    patience: int | None = None
    keep_best: bool = True
    min_gain: float = 0.0
    curve: list[dict] = field(default_factory=list)
    kept_step: int | None = None
    stopped: str = ""

    def best(self) -> float | None:
        return max((c["val"] for c in self.curve), default=None)


@contextmanager
def seeded(seed: int | None):
    """torch's global generator (dropout masks, a new classifier head's initial weights) seeded for the block and
    restored after it (``None``: left as it is). Unseeded, one --seed gave SST-2 teachers of 88.76 to 90.02 dev."""
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        yield


def optimise(model, params: list, batches: Iterator[dict], loss_fn, *, steps: int, lr: float, warmup: float = 0.1,
             name: str = "train", on_step: Callable[[int, int, torch.Tensor, dict], None] | None = None,
             watch: Watch | None = None, weight_decay: float = 0.01, seed: int | None = None) -> None:
    """The training loop of autocompress (the teacher's fine-tune, recovery, early exit's heads): ``steps``
    AdamW steps on ``params`` over ``batches`` (linear warm-up over a ``warmup`` fraction, then linear decay;
    gradients clipped at 1); ``loss_fn(batch) -> (loss, {part: loss})``. A loss that is not finite stops
    it with a FloatingPointError. ``on_step(step, steps, loss, parts)`` after each step (progress).
    With ``watch``, the held-out score is looked at as it goes (see ``Watch``). ``model`` trains
    meanwhile and is left in eval mode. With ``seed``, its dropout masks are drawn from a generator seeded
    with it (the same seed, the same run)."""
    with seeded(seed):
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        warm = max(1, int(steps * warmup))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / max(1, steps - warm))))
        model.train()
        best_state, since, last_loss, done = None, 0, float("nan"), 0
        for step, batch in enumerate(batches):
            loss, losses = loss_fn(batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{name}: the loss became {loss.item()} at step {step + 1} of {steps} "
                                         f"(lr {lr:g}): the trial is stopped")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            done, last_loss = step + 1, loss.item()
            if on_step:
                on_step(done, steps, loss, losses)
            if watch and (done % watch.every == 0 or done == steps):
                model.eval()
                value = float(watch.evaluate(done, last_loss))
                model.train()
                previous = watch.best()
                watch.curve.append({"step": done, "train_loss": round(last_loss, 5), "val": value})
                if previous is None or value > previous + watch.min_gain:
                    if watch.keep_best:
                        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                    watch.kept_step, since = done, 0
                else:
                    since += 1
                    if watch.patience is not None and since >= watch.patience:
                        watch.stopped = (f"no gain over the best ({previous:.4f} at step {watch.kept_step}) in "
                                         f"{since} evaluations")
                        break
            if done >= steps:
                break
        if watch:
            watch.stopped = watch.stopped or f"the planned {steps} steps were done"
            if not watch.keep_best:
                watch.kept_step = done          # the last weights are kept
            elif best_state is not None and watch.kept_step != done:
                model.load_state_dict(best_state)
        model.eval()


def recover(model, params: list, cfg: Distillation, ctx: Context, loss_fn, name: str = "distill") -> None:
    """``optimise`` as a recovery step runs it: ``cfg.steps`` steps of ``cfg.batch_size`` from the
    transfer set, progress every 50 steps through ``ctx.progress``."""
    def on_step(step, steps, loss, losses):
        if ctx.progress and step % 50 == 0:
            parts = " ".join(f"{k} {v.item():.3f}" for k, v in losses.items())
            ctx.progress(f"{name} {step}/{steps} loss {loss.item():.3f} ({parts})")

    optimise(model, params, ctx.transfer.batches(cfg.batch_size, cfg.steps, seed=ctx.seed + 1), loss_fn,
             steps=cfg.steps, lr=cfg.lr, warmup=cfg.warmup, name=name, on_step=on_step, seed=ctx.seed + 3)
