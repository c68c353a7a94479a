#!/usr/bin/env python3
"""Reference ImageNet forward of Keras' ResNet-50 v1 from its TensorFlow.js files.

Usage: keras_reference.py MODEL_JSON OUT.safetensors IMAGE...

Builds the network in plain torch straight from model.json + shards: conv biases kept (not
folded), BatchNorm eps 1e-3, stride on the first 1x1 conv of each stage's first block, as in
keras.applications.ResNet50. Each image is read with Pillow, converted to RGB, resized to
224x224 (bilinear), flipped to BGR and Caffe-mean-subtracted. Writes `input` (N x 3 x 224 x
224) and `logits` (N x 1000, before the softmax) and prints the top-1 class per image.
Exit status 77 when torch / safetensors / Pillow are missing (the Rust test then skips).
"""

import json
import os
import sys

try:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image
    from safetensors.torch import save_file
except ImportError as e:
    print(f"missing Python package: {e}", file=sys.stderr)
    sys.exit(77)

CAFFE_BGR_MEAN = [103.939, 116.779, 123.68]
EPS = 1e-3
STAGES = [("2", 3, 1), ("3", 4, 2), ("4", 6, 2), ("5", 3, 2)]  # (stage, blocks, stride)


def read_tfjs(model_json):
    with open(model_json) as f:
        model = json.load(f)
    base = os.path.dirname(model_json)
    out = {}
    for group in model["weightsManifest"]:
        blob = b"".join(open(os.path.join(base, p), "rb").read() for p in group["paths"])
        off = 0
        for w in group["weights"]:
            assert w["dtype"] == "float32", w
            n = int(np.prod(w["shape"])) if w["shape"] else 1
            a = np.frombuffer(blob, dtype="<f4", count=n, offset=off).reshape(w["shape"])
            out[w["name"]] = torch.from_numpy(a.copy())
            off += 4 * n
        assert off == len(blob), (off, len(blob))
    return out


def conv(w, x, name, stride=1, pad=0):
    kernel = w[f"{name}/kernel"].permute(3, 2, 0, 1)  # HWIO -> OIHW
    return F.conv2d(x, kernel, w[f"{name}/bias"], stride=stride, padding=pad)


def bn(w, x, name):
    return F.batch_norm(
        x,
        w[f"{name}/moving_mean"],
        w[f"{name}/moving_variance"],
        w[f"{name}/gamma"],
        w[f"{name}/beta"],
        training=False,
        eps=EPS,
    )


def forward(w, x):
    y = F.relu(bn(w, conv(w, x, "conv1", 2, 3), "bn_conv1"))
    # Keras zero-pads then max-pools; after the ReLU, zeros equal PyTorch's -inf padding.
    y = F.max_pool2d(F.pad(y, (1, 1, 1, 1)), 3, 2)
    for stage, blocks, stride in STAGES:
        for i in range(blocks):
            b = f"{stage}{chr(ord('a') + i)}"
            s = stride if i == 0 else 1
            z = F.relu(bn(w, conv(w, y, f"res{b}_branch2a", s), f"bn{b}_branch2a"))
            z = F.relu(bn(w, conv(w, z, f"res{b}_branch2b", 1, 1), f"bn{b}_branch2b"))
            z = bn(w, conv(w, z, f"res{b}_branch2c"), f"bn{b}_branch2c")
            sc = bn(w, conv(w, y, f"res{b}_branch1", s), f"bn{b}_branch1") if i == 0 else y
            y = F.relu(z + sc)
    pooled = y.mean(dim=(2, 3))
    return pooled @ w["fc1000/kernel"] + w["fc1000/bias"]


def preprocess(path):
    img = Image.open(path).convert("RGB").resize((224, 224), Image.BILINEAR)
    a = np.asarray(img, dtype=np.float32)[:, :, ::-1]  # RGB -> BGR
    a = a - np.array(CAFFE_BGR_MEAN, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))


def main():
    if len(sys.argv) < 4:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        sys.exit(2)
    model_json, out_path, images = sys.argv[1], sys.argv[2], sys.argv[3:]
    torch.set_num_threads(2)
    w = read_tfjs(model_json)
    x = torch.stack([preprocess(p) for p in images])
    with torch.no_grad():
        logits = forward(w, x)
    labels_path = os.path.join(os.path.dirname(model_json), "..", "assets", "labels.json")
    labels = json.load(open(labels_path)) if os.path.exists(labels_path) else {}
    for p, row in zip(images, logits):
        k = int(row.argmax())
        print(f"{os.path.basename(p)}: top-1 {k} {labels.get(str(k), '?')}")
    save_file({"input": x.contiguous(), "logits": logits.contiguous()}, out_path)


if __name__ == "__main__":
    main()
