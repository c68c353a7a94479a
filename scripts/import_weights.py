#!/usr/bin/env python3
"""Convert a PyTorch checkpoint (.pth) to safetensors for `picie weights import`.

Usage: import_weights.py IN.pth OUT.safetensors

Accepts a torchvision state dict (`conv1.weight`, ..., `fc.*`), the PiCIE release's
checkpoint (`{'state_dict': {'module.backbone.*', 'module.decoder.*'}}`, other entries such
as `epoch` or `optimizer` ignored), or a bare state dict. Keys are kept as they are (the Rust
loader understands all three layouts). Floating tensors become contiguous float32; integer
tensors (`num_batches_tracked`, int64) keep their dtype. DINO and DINOv2 ViT files
(`cls_token`, `pos_embed`, `blocks.N.*`, ...) are kept as they are too, and their shape is
summarised (patch, width, blocks, grid) to choose the ViT's settings. Exit status 2 on bad
input. ONNX exports go through import_onnx.py instead.
"""

import os
import sys
from collections import OrderedDict


def fail(msg):
    # Named after the script that runs (import_onnx.py shares this function).
    name = os.path.splitext(os.path.basename(sys.argv[0]))[0]
    print(f"{name}: error: {msg}", file=sys.stderr)
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


def vit_summary(shapes):
    """One line describing a DINO/DINOv2-layout ViT from its tensor shapes (name -> list),
    or None when the tensors are not one."""
    patch = shapes.get("patch_embed.proj.weight")
    pos = shapes.get("pos_embed")
    if not patch or not pos or len(patch) != 4 or len(pos) != 3:
        return None
    dim, grid = patch[0], int(round((pos[1] - 1) ** 0.5))
    depth = 1 + max(
        (int(k.split(".")[1]) for k in shapes if k.startswith("blocks.") and k.split(".")[1].isdigit()),
        default=-1,
    )
    layer_scale = any(k.endswith(".ls1.gamma") for k in shapes)
    registers = shapes.get("register_tokens", [1, 0])[1]
    size = {384: "S", 768: "B", 1024: "L", 1536: "g"}.get(dim, "?")
    family = "DINOv2" if layer_scale else "DINO"
    return (
        f"ViT-{size}/{patch[2]} ({family} layout): {dim} channels, {depth} blocks, trained "
        f"position grid {grid} x {grid}, layer scale {'yes' if layer_scale else 'no'}, "
        f"{registers} register tokens"
    )


def save_and_report(save_file, out, dst, notes=()):
    """Writes `out` (name -> tensor or array) with `save_file`, then prints `notes`, the
    ViT summary if the tensors are one, and the count."""
    try:
        save_file(out, dst)
    except Exception as e:  # noqa: BLE001
        fail(f"cannot write {dst}: {e}")
    for line in notes:
        print(line)
    summary = vit_summary({k: list(v.shape) for k, v in out.items()})
    if summary:
        print(summary)
    print(f"wrote {len(out)} tensors to {dst}")


def main(argv):
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        sys.exit(2)
    src, dst = argv[1], argv[2]
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
    save_and_report(save_file, out, dst)


if __name__ == "__main__":
    main(sys.argv)
