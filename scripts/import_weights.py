#!/usr/bin/env python3
"""Convert a PyTorch checkpoint (.pth) to safetensors for `picie weights import`.

Usage: import_weights.py IN.pth OUT.safetensors

Accepts a torchvision state dict (`conv1.weight`, ..., `fc.*`), the PiCIE release's
checkpoint (`{'state_dict': {'module.backbone.*', 'module.decoder.*'}}`, other entries such
as `epoch` or `optimizer` ignored), or a bare state dict. Keys are kept as they are (the Rust
loader understands all three layouts). Floating tensors become contiguous float32; integer
tensors (`num_batches_tracked`, int64) keep their dtype. Exit status 2 on bad input.
"""

import sys
from collections import OrderedDict


def fail(msg):
    print(f"import_weights: error: {msg}", file=sys.stderr)
    sys.exit(2)


def extract_state_dict(obj, path):
    # The release saves {'epoch', 'state_dict', 'optimizer', ...}; some tools use 'model'.
    if isinstance(obj, dict):
        for wrapper in ("state_dict", "model"):
            inner = obj.get(wrapper)
            if isinstance(inner, dict) and inner and all(
                isinstance(k, str) for k in inner
            ):
                obj = inner
                break
    if not isinstance(obj, dict) or not obj:
        kind = type(obj).__name__
        fail(f"{path} is not a state dict (got {kind}{' (empty)' if obj == {} else ''})")
    return obj


def main(argv):
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        sys.exit(2)
    src, dst = argv[1], argv[2]
    import os

    if not os.path.isfile(src):
        fail(f"input file {src} does not exist")
    try:
        import torch
        from safetensors.torch import save_file
    except ImportError as e:
        fail(f"needs torch and safetensors ({e})")

    try:
        # weights_only: a checkpoint is data; refuse to run pickled code from it.
        obj = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not a checkpoint"
        fail(f"cannot read {src} as a PyTorch checkpoint ({type(e).__name__}: {e})")

    sd = extract_state_dict(obj, src)
    out = OrderedDict()
    bad = []
    for k, v in sd.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            bad.append(f"{k!r} ({type(v).__name__})")
            continue
        if v.is_floating_point():
            v = v.detach().to(torch.float32)
        elif v.dtype in (torch.int64, torch.int32, torch.uint8, torch.bool):
            v = v.detach()
        else:
            bad.append(f"{k} (dtype {v.dtype})")
            continue
        # clone: safetensors refuses tensors that share storage (tied or sliced views).
        out[k] = v.contiguous().clone()
    if bad:
        shown = ", ".join(bad[:10]) + (f", ... ({len(bad) - 10} more)" if len(bad) > 10 else "")
        fail(f"{src} is not a state dict of tensors: {shown}")
    try:
        save_file(out, dst)
    except Exception as e:  # noqa: BLE001
        fail(f"cannot write {dst}: {e}")
    print(f"wrote {len(out)} tensors to {dst}")


if __name__ == "__main__":
    main(sys.argv)
