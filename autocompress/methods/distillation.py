"""Recovery by knowledge distillation from the teacher's logits (Hinton et al., 2015).

The teacher's logits on the transfer set are computed once when the teacher is built and cached
beside it, so a distillation step costs one student forward and backward only.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import arch
from .base import Context, check, register


@dataclass(frozen=True)
class Distillation:
    steps: int                  # optimiser steps
    lr: float = 1e-4
    batch_size: int = 32
    temperature: float = 2.0
    alpha: float = 0.9          # weight of the soft (teacher) loss; 1 - alpha on the hard labels
    warmup: float = 0.1         # fraction of steps with a linear warm-up

    def __post_init__(self):
        check(isinstance(self.steps, int) and self.steps >= 1, "distill", f"steps must be an int >= 1, got {self.steps!r}")
        check(self.lr > 0, "distill", f"lr must be > 0, got {self.lr!r}")
        check(self.batch_size >= 1, "distill", "batch_size must be >= 1")
        check(self.temperature > 0, "distill", "temperature must be > 0")
        check(0.0 <= self.alpha <= 1.0, "distill", f"alpha must be in [0, 1], got {self.alpha!r}")
        check(0.0 <= self.warmup < 1.0, "distill", "warmup must be in [0, 1)")


def kd_loss(student_logits, teacher_logits, labels, temperature: float, alpha: float) -> torch.Tensor:
    t = temperature
    soft = F.kl_div(F.log_softmax(student_logits / t, -1), F.softmax(teacher_logits / t, -1),
                    reduction="batchmean") * t * t
    hard = F.cross_entropy(student_logits, labels)
    return alpha * soft + (1 - alpha) * hard


@register("distill", "recovery", Distillation, label=lambda c: f"kd {c.steps}")
def distill(model, cfg: Distillation, ctx: Context):
    """Recover accuracy by distilling the teacher's logits into the model."""
    embeddings = arch.vocab_weight(model)
    was_trainable = embeddings.requires_grad
    embeddings.requires_grad_(False)          # a 30k x H matrix: updating it costs more than it helps here
    try:
        return train(model, cfg, ctx, lambda batch: kd_loss(model(**arch.inputs(model, batch)).logits,
                                                            batch["teacher_logits"], batch["labels"],
                                                            cfg.temperature, cfg.alpha))
    finally:
        embeddings.requires_grad_(was_trainable)


def train(model, cfg: Distillation, ctx: Context, loss_fn, params: list | None = None, name: str = "distill"):
    """The recovery training loop: ``cfg.steps`` AdamW steps (linear warm-up and decay, gradients clipped
    at 1) on ``loss_fn(batch)`` over the transfer set's batches, updating ``params`` (default: every
    parameter that requires a gradient). Early exit trains its exit heads with it."""
    params = [p for p in model.parameters() if p.requires_grad] if params is None else params
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    warm = max(1, int(cfg.steps * cfg.warmup))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (cfg.steps - s) / max(1, cfg.steps - warm))))
    model.train()
    for step, batch in enumerate(ctx.transfer.batches(cfg.batch_size, cfg.steps, seed=ctx.seed + 1)):
        loss = loss_fn(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{name}: the loss became {loss.item()} at step {step + 1} of {cfg.steps} "
                                     f"(lr {cfg.lr:g}): the trial is stopped")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if ctx.progress and (step + 1) % 50 == 0:
            ctx.progress(f"{name} {step + 1}/{cfg.steps} loss {loss.item():.3f}")
    model.eval()
    return model
