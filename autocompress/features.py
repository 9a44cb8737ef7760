"""Tokenised rows -> padded batches: the one place ids are padded.

A *feature* is one tokenised row: a dict of ``input_ids``, ``attention_mask`` and ``token_type_ids``
lists (``encode``). ``pad`` turns rows of different lengths into rectangular int64 arrays; ``batches``
yields length-sorted batches for inference; ``TransferSet`` holds training rows with the teacher's
logits and yields length-bucketed random batches for training; ``augment`` makes augmented copies of a
batch's rows from the batch's own text (distillation's ``augment``).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

KEYS = ("input_ids", "attention_mask", "token_type_ids")
EVAL_MAX_LENGTH = 128       # tokens per input when scoring and shipping


def encode(tokenizer, rows, max_length: int) -> list[dict[str, list[int]]]:
    """Tokenise a Dataset with columns text_a[, text_b]; returns one dict of id lists per row."""
    pair = "text_b" in rows.column_names
    enc = tokenizer(list(rows["text_a"]), list(rows["text_b"]) if pair else None, truncation=True,
                    max_length=max_length, return_token_type_ids=True)
    return [{k: enc[k][i] for k in KEYS} for i in range(len(rows))]


def pad(rows: list[dict[str, list[int]]], pad_id: int, width: int | None = None,
        keys: tuple[str, ...] = KEYS) -> dict[str, np.ndarray]:
    """Rows padded to ``width`` (default: the longest row) as int64 arrays [rows, width]: ``pad_id`` for
    the ids, 0 for the mask (padding is masked out) and the token types."""
    width = width or max(len(r["input_ids"]) for r in rows)
    fill = {"input_ids": pad_id}
    return {k: np.array([r[k] + [fill.get(k, 0)] * (width - len(r[k])) for r in rows], dtype=np.int64)
            for k in keys}


def batches(features: list[dict[str, list[int]]], batch_size: int, pad_id: int
            ) -> Iterator[tuple[list[int], dict[str, np.ndarray]]]:
    """Length-sorted batches (little padding); yields (row indices, padded int64 arrays)."""
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        yield idx, pad([features[i] for i in idx], pad_id)


@dataclass
class TransferSet:
    """Tokenised training rows with the teacher's logits: what importance scores and distillation use.

    ``features`` holds one dict per row (input_ids, attention_mask, token_type_ids as lists).
    """

    features: list[dict[str, list[int]]]
    labels: torch.Tensor          # [N] int64
    teacher_logits: torch.Tensor  # [N, num_labels] float32
    pad_id: int = 0

    def __len__(self) -> int:
        return len(self.features)

    def batches(self, batch_size: int, n_batches: int, seed: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """Length-bucketed random batches (rows of similar length together: ~3x less padding)."""
        rng = random.Random(seed)
        done = 0
        while done < n_batches:
            order = list(range(len(self)))
            rng.shuffle(order)
            chunk = batch_size * 50
            groups = []
            for start in range(0, len(order), chunk):
                part = sorted(order[start:start + chunk], key=lambda i: len(self.features[i]["input_ids"]))
                groups += [part[j:j + batch_size] for j in range(0, len(part), batch_size)]
            rng.shuffle(groups)
            for idx in groups:
                if done == n_batches:
                    return
                yield self.collate(idx)
                done += 1

    def collate(self, idx: list[int]) -> dict[str, torch.Tensor]:
        out = {k: torch.from_numpy(v) for k, v in pad([self.features[i] for i in idx], self.pad_id).items()}
        out["labels"] = self.labels[idx]
        out["teacher_logits"] = self.teacher_logits[idx]
        return out


# ---------------------------------------------------------------- augmentation (distillation's ``augment``)
AUGMENT_MODES = ("replace", "join", "both")
REPLACE_RATE = 0.25          # word pieces swapped in a "replace" row


def augment(batch: dict[str, torch.Tensor], rate: float, mode: str, gen: torch.Generator,
            max_length: int = 128) -> torch.Tensor:
    """Replace a ``rate`` fraction of a padded ``batch``'s rows (in place) by augmented copies made from the
    task's own text, and return which rows [B] bool. ``replace``: a quarter of a row's word pieces (never its
    first and last, [CLS] and [SEP]) swapped for pieces drawn from the batch's other real tokens (TinyBERT's
    word replacement, with the task's own words for candidates); ``join``: a row followed by another row of
    the batch, as one longer input (single-text tasks; SST-2's training rows are mostly phrases, its dev rows
    whole sentences); ``both``: each augmented row one or the other. Augmented rows carry no label of their
    own: the teacher labels them."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    n = ids.shape[0]
    chosen = torch.rand(n, generator=gen) < rate
    if not chosen.any():
        return chosen
    lengths = mask.sum(1)
    inner = mask.bool().clone()
    inner[:, 0] = False
    inner[torch.arange(n), lengths - 1] = False
    pool = ids[inner]
    join = torch.zeros(n, dtype=torch.bool)
    if mode != "replace" and not bool(batch["token_type_ids"].any()):
        join = chosen if mode == "join" else chosen & (torch.rand(n, generator=gen) < 0.5)
    replace = chosen & ~join
    if replace.any() and pool.numel():
        swap = inner & replace[:, None] & (torch.rand(ids.shape, generator=gen) < REPLACE_RATE)
        ids[swap] = pool[torch.randint(len(pool), (int(swap.sum()),), generator=gen)]
    if join.any():
        whole = [ids[i, :lengths[i]].tolist() for i in range(n)]        # partners as they were
        rows = list(whole)
        for i in join.nonzero().flatten().tolist():
            j = (i + 1 + int(torch.randint(n - 1, (1,), generator=gen))) % n if n > 1 else i
            rows[i] = (whole[i][:-1] + whole[j][1:-1])[:max_length - 1] + whole[i][-1:]
        pad_id = int(ids[mask == 0][0]) if bool((mask == 0).any()) else 0
        padded = pad([{"input_ids": r, "attention_mask": [1] * len(r), "token_type_ids": [0] * len(r)} for r in rows],
                     pad_id)
        batch.update({k: torch.from_numpy(v) for k, v in padded.items()})
    return chosen
