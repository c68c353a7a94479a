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
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision


class Backbone(torchvision.models.ResNet):
    """torchvision's ResNet without avgpool/fc, returning res2..res5 (as the release's)."""

    def __init__(self, block, layers):
        super().__init__(block, layers)
        del self.avgpool
        del self.fc

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out = []
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
            out.append(x)
        return out


class FPNDecoder(nn.Module):
    """The release's decoder: layer1 is res5's lateral, ..., layer4 is res2's."""

    def __init__(self, in_ch, dim):
        super().__init__()
        self.layer4 = nn.Conv2d(in_ch[0], dim, 1)
        self.layer3 = nn.Conv2d(in_ch[1], dim, 1)
        self.layer2 = nn.Conv2d(in_ch[2], dim, 1)
        self.layer1 = nn.Conv2d(in_ch[3], dim, 1)

    def forward(self, f):
        o = self.layer1(f[3])
        for lateral, x in ((self.layer2, f[2]), (self.layer3, f[1]), (self.layer4, f[0])):
            y = lateral(x)
            o = F.interpolate(o, size=y.shape[-2:], mode="bilinear", align_corners=False) + y
        return o


class PicieNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = Backbone(torchvision.models.resnet.BasicBlock, [2, 2, 2, 2])
        self.decoder = FPNDecoder((64, 128, 256, 512), 128)

    def forward(self, x):
        return F.normalize(self.decoder(self.backbone(x)), dim=1, p=2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    net = PicieNet().eval()
    x = torch.randn(a.batch, 3, a.size, a.size)
    rates = []
    with torch.no_grad():
        for i in range(a.warmup + a.iters):
            t = time.perf_counter()
            out = net(x)
            dt = time.perf_counter() - t
            if i >= a.warmup:
                rates.append(a.batch / dt)
    assert out.shape == (a.batch, 128, a.size // 4, a.size // 4), out.shape
    print(
        f"extract_ref: {statistics.median(rates):.2f} images/s "
        f"(median of {a.iters}, batch {a.batch}, {a.size}x{a.size}, {a.threads} threads, "
        f"torch {torch.__version__})"
    )


if __name__ == "__main__":
    main()
