"""Size and speed of the size-oriented structure methods (unstructured pruning, low-rank factorization,
embedding factorization, cross-layer sharing), each alone at a few settings, beside the unchanged model.

The packaged MiniLM (all-MiniLM-L6-v2, BERT layout) with a fresh 2-label classifier head: size and
latency depend on the architecture and on where the zeros are, not on trained weights, so no task
and no training are needed (accuracy after recovery is ``benchmarks/methods.py``'s business). Every
variant goes through ``finalize`` and ``export.export_onnx`` like a search trial; latencies are taken
side by side in one run (``hardware.latency.measure_side_by_side``: interleaved rounds on one machine),
so only their ratios to the unchanged model mean anything.

    python benchmarks/structure_methods.py [--profile laptop-cpu] [--rounds 5]
"""
from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification

from autocompress.checkpoint import count_params, size_mb, zipped_mb
from autocompress.export import export_onnx
from autocompress.hardware import describe, measure_side_by_side
from autocompress.hardware import load_profile
from autocompress.finalize import finalize
from autocompress.recipe import Recipe, Step
from autocompress.teacher import DEFAULT_MODEL, resolve_model

VARIANTS = [
    Recipe(),
    Recipe((Step("magnitude_prune", {"sparsity": 0.5}),)),
    Recipe((Step("magnitude_prune", {"sparsity": 0.8}),)),
    Recipe((Step("low_rank", {"rank_ratio": 0.5, "targets": "ffn"}),)),
    Recipe((Step("low_rank", {"rank_ratio": 0.25, "targets": "ffn"}),)),
    Recipe((Step("low_rank", {"rank_ratio": 0.25, "targets": "all"}),)),
    Recipe((Step("factorize_embeddings", {"dim": 128}),)),
    Recipe((Step("factorize_embeddings", {"dim": 64}),)),
    Recipe((Step("share_layers", {"groups": 3, "what": "ffn"}),)),
    Recipe((Step("share_layers", {"groups": 2, "what": "all"}),)),
    Recipe((Step("share_layers", {"groups": 1, "what": "all"}),)),
]


def nonzero(model) -> int:
    return sum(int(p.count_nonzero()) for p in model.parameters())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="laptop-cpu", help="hardware profile for the latency ratios")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (10 runs each per model)")
    args = ap.parse_args()
    profile = load_profile(args.profile)
    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(resolve_model(DEFAULT_MODEL), num_labels=2).eval()
    rows, paths = [], {}
    with tempfile.TemporaryDirectory(prefix="ac-structure-bench-") as tmp:
        for i, recipe in enumerate(VARIANTS):
            model = finalize(recipe.apply_torch(copy.deepcopy(base), None))
            path = export_onnx(model, Path(tmp) / f"v{i}.onnx")
            paths[i] = path
            rows.append((recipe.short(), count_params(model), nonzero(model), size_mb(path), zipped_mb(path)))
            print(f"exported {recipe.short()}", file=sys.stderr)
        lats = measure_side_by_side(paths, profile, rounds=args.rounds)
    ref = lats[0].median_ms
    print(f"{'recipe':28} {'params':>10} {'non-zero':>10} {'ONNX MB':>8} {'zip MB':>7} "
          f"{args.profile + ' speed-up':>20}")
    for i, (name, n, nz, mb, zmb) in enumerate(rows):
        print(f"{name:28} {n:>10,} {nz:>10,} {mb:>8.1f} {zmb:>7.1f} {ref / lats[i].median_ms:>19.2f}x")
    print(f"\nspeed-up = unchanged model's median latency / this model's (> 1: faster), fp32 ONNX, "
          f"{describe(lats[0].to_dict())}; unchanged model {ref:.2f} ms.\n"
          "zip MB = the ONNX file zipped (deflate, level 6). Random classifier head: sizes and latency "
          "do not depend on trained weights.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
