#!/usr/bin/env python3
"""Images/s of PiCIE feature extraction in PyTorch eager: the reference for picie's Rust
forward (PicieNet, `extract` stage).

Model: torchvision ResNet-18 trunk (no avgpool/fc) + the release's minimal FPN decoder
(D = 128) + F.normalize over channels, eval mode, torch.no_grad(), random weights (speed does
not depend on them), input N x 3 x S x S drawn once from a seeded normal.

Usage: extract_ref.py [--batch 16] [--size 320] [--threads 2] [--warmup 2] [--iters 5]
Prints one line `extract_ref: <median images/s> images/s (...)`.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F


sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "python"))
from model_parity import PanopticFPN  # noqa: E402  (the parity tests' model: one definition)


class PicieNet(PanopticFPN):
    """PiCIE's network as the release runs it: backbone, decoder, L2 normalisation."""

    def forward(self, x):
        return F.normalize(super().forward(x)[1], dim=1, p=2)


def parser(batch, size, warmup):
    """The options every extraction reference takes, with its defaults."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=batch)
    ap.add_argument("--size", type=int, default=size)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=warmup)
    ap.add_argument("--iters", type=int, default=5)
    return ap


def median_rate(net, x, warmup, iters):
    """Median images/s of `net(x)` under no_grad over `iters` runs after `warmup`, and the
    last output."""
    rates = []
    with torch.no_grad():
        for i in range(warmup + iters):
            t = time.perf_counter()
            out = net(x)
            dt = time.perf_counter() - t
            if i >= warmup:
                rates.append(x.shape[0] / dt)
    return statistics.median(rates), out


def main():
    a = parser(batch=16, size=320, warmup=2).parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    net = PicieNet().eval()
    x = torch.randn(a.batch, 3, a.size, a.size)
    rate, out = median_rate(net, x, a.warmup, a.iters)
    assert out.shape == (a.batch, 128, a.size // 4, a.size // 4), out.shape
    print(
        f"extract_ref: {rate:.2f} images/s "
        f"(median of {a.iters}, batch {a.batch}, {a.size}x{a.size}, {a.threads} threads, "
        f"torch {torch.__version__})"
    )


if __name__ == "__main__":
    main()
