#!/usr/bin/env python3
"""Seconds per PiCIE training step in PyTorch eager, as the release runs it: the reference for
picie's `train` stage (`picie-bench train`).

One step: z1 = f(x1), z2 = G(f(x2)) (per-image crop of the feature map, bilinear resize back,
optional flip), L = 1/2 (L_within + L_cross) with weighted cross-entropy against frozen
centroid classifiers, backward, torch.optim.Adam(lr 1e-4). Model: the parity tests'
ResNet-18 + FPN (benches/extract_ref.py), train mode, default memory format, the process's
default allocator: the release's configuration. Inputs, labels and G drawn once, seeded.

Usage: train_ref.py [--batch 16] [--size 320] [--k 11] [--threads 2] [--warmup 1] [--iters 3]
Prints one line `train_ref: <median s> s/step (...)`.
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from extract_ref import PicieNet  # also puts tests/python on the path
from loss_parity import geometric  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--k", type=int, default=11)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iters", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    net = PicieNet().train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    b, s, k, h = a.batch, a.size, a.k, a.size // 4
    x1, x2 = torch.randn(b, 3, s, s), torch.randn(b, 3, s, s)
    c1, c2 = (F.normalize(torch.randn(k, 128), dim=1).view(k, 128, 1, 1) for _ in range(2))
    y1, y2 = (torch.randint(0, k, (b, h, h)) for _ in range(2))
    w1, w2 = torch.rand(k) + 0.5, torch.rand(k) + 0.5
    side = 3 * h // 4
    crops = [((i * 7) % (h - side), (i * 3) % (h - side), side, i % 2 == 0) for i in range(b)]

    def ce(z, c, y, w):
        return F.cross_entropy(F.conv2d(z, c), y, weight=w)

    times = []
    for i in range(a.warmup + a.iters):
        t = time.perf_counter()
        opt.zero_grad()
        z1 = net(x1)
        z2 = geometric(net(x2), crops)
        within = (ce(z1, c1, y1, w1) + ce(z2, c2, y2, w2)) / 2
        cross = (ce(z1, c2, y2, w2) + ce(z2, c1, y1, w1)) / 2
        loss = (within + cross) / 2
        loss.backward()
        opt.step()
        dt = time.perf_counter() - t
        if i >= a.warmup:
            times.append(dt)
    assert torch.isfinite(loss), loss
    print(
        f"train_ref: {statistics.median(times):.3f} s/step (median of {a.iters}, batch {b} x 2 "
        f"views, {s}x{s}, K {k}, {a.threads} threads, torch {torch.__version__})"
    )


if __name__ == "__main__":
    main()
