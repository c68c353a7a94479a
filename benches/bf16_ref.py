#!/usr/bin/env python3
"""Seconds per ResNet-18 forward + backward step (16 x 3 x 320 x 320, channels-last, 2 threads)
in f32 and under PyTorch's CPU bf16 autocast: whether bf16 can speed up the `fast` profile on
this CPU (it needs avx512_bf16 or AMX; without them it is emulated). Prints the CPU's bf16/AMX
flags. Run: .venv/bin/python benches/bf16_ref.py
"""
import time

import torch
import torchvision

torch.set_num_threads(2)
m = torchvision.models.resnet18().to(memory_format=torch.channels_last)
x = torch.randn(16, 3, 320, 320).to(memory_format=torch.channels_last)


def step(bf16):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        y = m(x).float().sum()
    y.backward()


for name, bf16 in [("f32", False), ("bf16", True)]:
    step(bf16)  # warm-up
    t = time.perf_counter()
    step(bf16)
    step(bf16)
    print(f"{name}: {(time.perf_counter() - t) / 2:.2f} s/step")
flags = open("/proc/cpuinfo").read().split()
print("bf16/AMX flags:", sorted({f for f in flags if "bf16" in f or "amx" in f}) or "none")
