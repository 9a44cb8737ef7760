"""Dynamic inference by early exit (DeeBERT, Xin et al. 2020; PABEE, Zhou et al. 2020).

Exit classifiers sit after chosen encoder layers; an input leaves at the first exit whose rule says it
is sure enough (``entropy``: the normalised entropy of its prediction is below the threshold;
``patience``: that many exits in a row agreed), else it runs the whole model. The backbone and its own
classifier are kept as they are (frozen): the exits are trained by distillation from the teacher's
logits with the recovery training loop, so a threshold that never exits gives the model's own logits.

ONNX cannot leave a graph half-way, so such a model ships as a *pipeline* (``autocompress.pipeline``):
one graph per segment (segment 0: embeddings, layers up to the first exit, that exit; then layers to
the next exit, taking the hidden state handed on; the last: the remaining layers and the model's own
classifier). Its latency depends on the input: it is the expected latency over the validation inputs,
sum over segments of (share of inputs reaching it) x (its latency).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar
from pathlib import Path

import numpy as np
import torch

from .. import arch
from ..pipeline import RULES, ExitRule
from .base import Context, RecipeError, check, module_kind, register
from .distillation import Distillation, kd_loss, recover, seeded

EXITS_ATTR = "early_exits"        # where the heads hang on the classifier (a direct child module)


@dataclass(frozen=True)
class EarlyExit:
    exits: int | tuple[int, ...] = 2     # an exit every k layers, or after these layers (1-based, < the depth)
    rule: str = "entropy"                # entropy | patience
    threshold: float = 0.3               # entropy: normalised entropy (0..1) below which an input leaves;
    #                                      patience: how many exits in a row must agree with the previous one
    steps: int = 200                     # distillation steps for the exit heads (the backbone stays frozen)
    lr: float = 1e-3
    batch_size: int = 32
    temperature: float = 2.0
    alpha: float = 0.9

    # for the contract suite (methods/base.py): at 0.85 about half the tiny model's rows leave at the first
    # exit (the rest run on, from the hidden states handed on); threshold 0: none leaves, the model's own logits
    EXAMPLE: ClassVar[dict] = {"exits": [1, 3], "threshold": 0.85, "steps": 3, "batch_size": 8}
    IDENTITY: ClassVar[dict | None] = {"exits": 2, "threshold": 0.0, "steps": 1, "batch_size": 8}

    def __post_init__(self):
        if isinstance(self.exits, list):
            object.__setattr__(self, "exits", tuple(self.exits))
        if isinstance(self.exits, tuple):
            check(len(self.exits) > 0 and all(isinstance(k, int) and not isinstance(k, bool) and k >= 1
                                              for k in self.exits) and len(set(self.exits)) == len(self.exits),
                  "early_exit", f"exits must be an int k >= 1 (every k layers) or a list of distinct layer numbers "
                                f">= 1, got {list(self.exits)!r}")
            object.__setattr__(self, "exits", tuple(sorted(self.exits)))
        else:
            check(isinstance(self.exits, int) and not isinstance(self.exits, bool) and self.exits >= 1, "early_exit",
                  f"exits must be an int k >= 1 (every k layers) or a list of layer numbers, got {self.exits!r}")
        check(self.rule in RULES, "early_exit", f"rule must be one of {', '.join(RULES)}, got {self.rule!r}")
        check(isinstance(self.threshold, (int, float)) and not isinstance(self.threshold, bool), "early_exit",
              f"threshold must be a number, got {self.threshold!r}")
        if self.rule == "entropy":
            check(0.0 <= self.threshold <= 1.0, "early_exit",
                  f"threshold for rule entropy is a normalised entropy in [0, 1], got {self.threshold!r}")
        else:
            check(float(self.threshold).is_integer() and self.threshold >= 1, "early_exit",
                  f"threshold for rule patience is a whole number of exits >= 1, got {self.threshold!r}")
        # the training settings are checked (and named) as distillation's
        Distillation(self.steps, self.lr, self.batch_size, self.temperature, self.alpha)

    def positions(self, num_layers: int) -> list[int]:
        """The layers (1-based) after which an exit sits, for a model of ``num_layers`` layers."""
        if isinstance(self.exits, int):
            return list(range(self.exits, num_layers, self.exits))
        return [k for k in self.exits if k < num_layers]

    def is_identity(self, num_layers: int) -> bool:
        return not self.positions(num_layers)


def _label(c: EarlyExit) -> str:
    where = f"/{c.exits}" if isinstance(c.exits, int) else "@" + ",".join(map(str, c.exits))
    return f"exit{where} " + (f"H<{c.threshold:g}" if c.rule == "entropy" else f"pat {int(c.threshold)}")


@module_kind("early_exit_heads")
class ExitHeads(torch.nn.Module):
    """One classifier per exit on the first token's hidden state (BERT's pooler shape: Linear, tanh,
    Linear): ``hidden`` -> ``labels``. Hung on the model as ``model.early_exits`` (saved and rebuilt by
    ``checkpoint`` like any attached module); it carries its exit rule."""

    attached = True

    def __init__(self, hidden: int, labels: int, after: list[int], rule: str, threshold: float):
        super().__init__()
        self.hidden, self.labels, self.after = int(hidden), int(labels), [int(k) for k in after]
        self.rule, self.threshold = rule, float(threshold)
        self.heads = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.Linear(hidden, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, labels))
            for _ in after)

    def spec(self) -> dict:
        return {"hidden": self.hidden, "labels": self.labels, "after": self.after, "rule": self.rule,
                "threshold": self.threshold}

    @classmethod
    def from_spec(cls, spec: dict) -> "ExitHeads":
        return cls(spec["hidden"], spec["labels"], spec["after"], spec["rule"], spec["threshold"])

    def forward(self, hidden_states) -> list[torch.Tensor]:
        """Each exit's logits from the encoder's hidden states (``hidden_states[k]``: after layer k)."""
        return [head(hidden_states[k][:, 0]) for k, head in zip(self.after, self.heads)]

    def write_pipeline(self, model, folder: str | Path, apply_onnx) -> Path:
        """Export the model as a pipeline folder: one fp32 graph per segment (``export.export_module``),
        the recipe's ONNX steps applied to each (``apply_onnx(fp32, out_dir) -> final``), and the manifest."""
        from .. import export, pipeline

        folder = Path(folder)
        bounds = [0] + self.after + [arch.num_layers(model.config)]
        names = arch.input_names(model)
        segments = []
        for j, (start, stop) in enumerate(zip(bounds, bounds[1:])):
            last = j == len(bounds) - 2
            module = _Segment(model, start, stop, None if last else self.heads[j])
            if j == 0:
                ids = torch.randint(0, model.config.vocab_size, (2, 16))
                example, inputs = (ids, torch.ones_like(ids), torch.zeros_like(ids))[: len(names)], names
            else:
                example, inputs = (torch.randn(2, 16, self.hidden), torch.ones(2, 16, dtype=torch.long)), \
                    ("hidden_in", "attention_mask")
            outputs = ("logits",) if last else ("logits", "hidden_out")
            with export.eager_attention(module.model):
                fp32 = export.export_module(module, example, folder / f"segment{j}" / "model.fp32.onnx", inputs, outputs)
            final = Path(apply_onnx(fp32, folder / f"segment{j}"))
            segments.append({"file": str(final.relative_to(folder)), "fp32": str(fp32.relative_to(folder)),
                             "layers": [start, stop], "exit": None if last else self.after[j],
                             "inputs": list(inputs), "outputs": list(outputs)})
        return pipeline.write(folder, {"kind": "early_exit", "segments": segments, "rule": self.rule,
                                       "threshold": self.threshold, "exits_after": self.after,
                                       "num_layers": arch.num_layers(model.config), "labels": self.labels})


class _Segment(torch.nn.Module):
    """Layers ``start:stop`` of ``model`` (0-based) with an exit head (outputs logits, then the hidden
    state for the next segment), or without one (the model's own classifier: logits only). Segment 0
    takes the model's token inputs; the others take the hidden state (``arch.bypass_embeddings``)."""

    def __init__(self, model, start: int, stop: int, head: torch.nn.Module | None):
        super().__init__()
        m = copy.deepcopy(model)
        if hasattr(m, EXITS_ATTR):
            delattr(m, EXITS_ATTR)
        arch.set_layers(m, list(arch.layers(m))[start:stop])
        if start > 0:
            arch.bypass_embeddings(m)
        self.first, self.head = start == 0, head
        self.model = m

    def forward(self, x, attention_mask, token_type_ids=None):
        if self.first:
            kw = {"input_ids": x, "attention_mask": attention_mask}
            if token_type_ids is not None:
                kw["token_type_ids"] = token_type_ids
        else:
            kw = {"inputs_embeds": x, "attention_mask": attention_mask}
        if self.head is None:
            return self.model(**kw).logits
        hidden = self.model.base_model(**kw).last_hidden_state      # [B, T, H]
        return self.head(hidden[:, 0]), hidden


def heads_of(model) -> ExitHeads | None:
    return getattr(model, EXITS_ATTR, None)


_CALIBRATED = ("its calibration feeds the model's token inputs, and an early-exit pipeline's later segments take "
               "hidden states: use quantize_int8 (dynamic) with early_exit")


@register("early_exit", "recovery", EarlyExit, label=_label, not_followed_by=("*",), input_dependent_latency=True,
          not_with={"quantize_static": _CALIBRATED, "quantize_mixed": _CALIBRATED})
def early_exit(model, cfg: EarlyExit, ctx: Context):
    """Add early exits (DeeBERT/PABEE) after chosen layers, trained by distillation from the teacher's logits."""
    check(heads_of(model) is None, "early_exit", "the model has exits already: give one early_exit step")
    depth = arch.num_layers(model.config)
    check(isinstance(cfg.exits, int) or max(cfg.exits) < depth, "early_exit",
          f"exits: an exit after layer {max(cfg.exits) if isinstance(cfg.exits, tuple) else cfg.exits} needs more "
          f"than that many layers, and the model has {depth}: give layers below {depth}")
    after = cfg.positions(depth)
    if not after:
        raise RecipeError(f"early_exit: no exit fits a model of {depth} layers with exits={cfg.exits!r}")
    if ctx is None:
        raise RecipeError("early_exit trains its exits by distillation: it needs the transfer set")
    with seeded(ctx.seed):
        heads = ExitHeads(arch.hidden_size(model), int(model.config.num_labels), after, cfg.rule, cfg.threshold)
    setattr(model, EXITS_ATTR, heads)
    frozen = [p for p in model.parameters() if p.requires_grad and not any(p is q for q in heads.parameters())]
    for p in frozen:
        p.requires_grad_(False)

    def loss(batch):
        with torch.no_grad():
            states = model(**arch.inputs(model, batch), output_hidden_states=True).hidden_states
        losses = {f"exit{k}": kd_loss(lg, batch["teacher_logits"], batch["labels"], cfg.temperature, cfg.alpha)
                  for k, lg in zip(heads.after, heads(states))}
        return sum(losses.values()) / len(losses), losses

    kd = Distillation(cfg.steps, cfg.lr, cfg.batch_size, cfg.temperature, cfg.alpha)
    try:
        recover(model, list(heads.parameters()), kd, ctx, loss, name="early_exit")
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return model


@torch.no_grad()
def predict_torch(model, batch: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch reference of the shipped pipeline: (logits, segment each row left at) for one batch,
    every exit computed for every row and the manifest's rule applied in order."""
    heads = heads_of(model)
    model.eval()
    out = model(**arch.inputs(model, batch), output_hidden_states=True)
    exits = [lg.float().numpy() for lg in heads(out.hidden_states)] + [out.logits.float().numpy()]
    rule = ExitRule(heads.rule, heads.threshold)
    n = len(exits[0])
    state, done = rule.start(n), np.zeros(n, dtype=bool)
    logits, where = exits[-1].copy(), np.full(n, len(exits) - 1, dtype=np.int64)
    for j, lg in enumerate(exits[:-1]):
        leave = rule.step(lg, state) & ~done
        logits[leave], where[leave] = lg[leave], j
        done |= leave
    return logits, where

