#!/usr/bin/env python3
"""PiCIE's loss and gradients in PyTorch, the oracle for picie's `train` stage.

Usage: loss_parity.py OUT_DIR
Writes into OUT_DIR:
  weights.safetensors  ResNet-18 + PiCIE decoder (picie's names: backbone.*, decoder.*)
  case.safetensors     x1, x2 (2 x 3 x 64 x 64), c1, c2 (K x 128), y1, y2 (2 x 16 x 16), w1, w2
  ref.safetensors      loss, within, cross and the gradients of backbone.conv1.weight and
                       decoder.layer1.weight, after one backward pass in train mode
G (shared by both views): image 0 crops 8x8 at (x 2, y 6) of the 16x16 map and flips;
image 1 crops 12x12 at (x 1, y 3) without flip; both resized back to 16x16 (bilinear,
align_corners False), as the release's equivariance transform.
z1 = f(x1) (x1 is taken as already transformed), z2 = G(f(x2)),
L = 1/2 (L_within + L_cross), CE weighted, PyTorch's mean. Exit status 77 when torchvision or
safetensors is missing (the Rust test then skips).
"""
import sys
from pathlib import Path

try:
    import torch
    import torch.nn.functional as F
    from safetensors.torch import save_file

    sys.path.insert(0, str(Path(__file__).parent))
    from model_parity import PanopticFPN, randomise_bn
except ImportError as e:
    print(f"missing Python package ({e}); pip install torchvision==0.28.0 safetensors", file=sys.stderr)
    sys.exit(77)

# (x0, y0, size, flip) per image, on the 16x16 feature map.
G = [(2, 6, 8, True), (1, 3, 12, False)]


def geometric(z, crops=G):
    """The release's G on a feature map: per image, crop (x0, y0, size), resize back, flip."""
    out = []
    for i, (x0, y0, s, flip) in enumerate(crops):
        c = z[i : i + 1, :, y0 : y0 + s, x0 : x0 + s]
        c = F.interpolate(c, size=z.shape[-2:], mode="bilinear", align_corners=False)
        out.append(c.flip(-1) if flip else c)
    return torch.cat(out, 0)


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(2)
    model = PanopticFPN()
    randomise_bn(model, gen)
    model.train()
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(out / "weights.safetensors"))

    k = 5
    case = {
        "x1": torch.randn(2, 3, 64, 64, generator=gen),
        "x2": torch.randn(2, 3, 64, 64, generator=gen),
        "c1": F.normalize(torch.randn(k, 128, generator=gen), dim=1) * 0.9,
        "c2": F.normalize(torch.randn(k, 128, generator=gen), dim=1) * 1.1,
        "y1": torch.randint(0, k, (2, 16, 16), generator=gen),
        "y2": torch.randint(0, k, (2, 16, 16), generator=gen),
        "w1": torch.rand(k, generator=gen) + 0.1,
        "w2": torch.rand(k, generator=gen) + 0.1,
    }
    save_file(case, str(out / "case.safetensors"))

    def f(x):
        return F.normalize(model(x)[1], dim=1, p=2)

    def ce(z, c, y, w):
        logits = F.conv2d(z, c.view(k, 128, 1, 1))
        return F.cross_entropy(logits, y, weight=w)

    z1 = f(case["x1"])
    z2 = geometric(f(case["x2"]))
    c1, c2, y1, y2, w1, w2 = (case[n] for n in ["c1", "c2", "y1", "y2", "w1", "w2"])
    within = (ce(z1, c1, y1, w1) + ce(z2, c2, y2, w2)) / 2
    cross = (ce(z1, c2, y2, w2) + ce(z2, c1, y1, w1)) / 2
    loss = (within + cross) / 2
    loss.backward()
    save_file(
        {
            "loss": loss.detach().reshape(1),
            "within": within.detach().reshape(1),
            "cross": cross.detach().reshape(1),
            "grad_conv1": model.backbone.conv1.weight.grad.contiguous(),
            "grad_decoder_layer1": model.decoder.layer1.weight.grad.contiguous(),
        },
        str(out / "ref.safetensors"),
    )


if __name__ == "__main__":
    main()
