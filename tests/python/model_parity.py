#!/usr/bin/env python3
"""Reference outputs for picie's Rust network (src/model), from PyTorch + torchvision.

Usage: model_parity.py OUT_DIR

Writes into OUT_DIR (safetensors unless noted):
  r18_release.safetensors      ResNet-18 + PiCIE decoder weights, release layout
                               (module.backbone.*, module.decoder.*), random but seeded,
                               BatchNorm affine params and running stats randomised too
  r18_torchvision.safetensors  the same backbone as a torchvision resnet18 state_dict (with fc)
  r18_reference.safetensors    input, {eval,train}.{res2,res3,res4,res5,fpn,out}
                               (fpn = decoder output, out = F.normalize(fpn, dim=1));
                               eval runs first, then one train-mode forward
  r18_after_train.safetensors  the BatchNorm buffers (release layout) after that train-mode
                               forward
  r50s1_torchvision.safetensors, r50s1_reference.safetensors
                               ResNet-50 with the stride on the bottleneck's 1x1 conv and
                               BatchNorm eps 1e-3: input, r50s1.{eval,train}.res2..res5
  keys_resnet{18,34,50}.txt    torchvision state_dict keys: "name d0,d1,..." per line

Exit status 77 when torchvision or safetensors is missing (the Rust test then skips).
"""
import sys

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    import torchvision
    from safetensors.torch import save_file
except ImportError as e:  # pragma: no cover
    print(f"missing Python package ({e}); pip install torchvision==0.28.0 safetensors", file=sys.stderr)
    sys.exit(77)

from pathlib import Path


class Backbone(torchvision.models.ResNet):
    """torchvision's ResNet without avgpool/fc, returning res2..res5 (as the release's)."""

    def __init__(self, block, layers):
        super().__init__(block, layers)
        del self.avgpool
        del self.fc

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out = {}
        for i, name in enumerate(["res2", "res3", "res4", "res5"]):
            x = getattr(self, f"layer{i + 1}")(x)
            out[name] = x
        return out


class FPNDecoder(nn.Module):
    """The release's decoder: layer1 is res5's lateral, ..., layer4 is res2's."""

    def __init__(self, in_ch, dim):
        super().__init__()
        self.layer4 = nn.Conv2d(in_ch[0], dim, kernel_size=1, stride=1, padding=0)
        self.layer3 = nn.Conv2d(in_ch[1], dim, kernel_size=1, stride=1, padding=0)
        self.layer2 = nn.Conv2d(in_ch[2], dim, kernel_size=1, stride=1, padding=0)
        self.layer1 = nn.Conv2d(in_ch[3], dim, kernel_size=1, stride=1, padding=0)

    def forward(self, x):
        o1 = self.layer1(x["res5"])
        o2 = self.upsample_add(o1, self.layer2(x["res4"]))
        o3 = self.upsample_add(o2, self.layer3(x["res3"]))
        return self.upsample_add(o3, self.layer4(x["res2"]))

    @staticmethod
    def upsample_add(x, y):
        _, _, h, w = y.size()
        return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False) + y


class PanopticFPN(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = Backbone(torchvision.models.resnet.BasicBlock, [2, 2, 2, 2])
        self.decoder = FPNDecoder((64, 128, 256, 512), 128)

    def forward(self, x):
        feats = self.backbone(x)
        return feats, self.decoder(feats)


def randomise_bn(model, gen):
    """Non-trivial BatchNorm parameters and statistics, so eval mode is really tested."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(c, generator=gen) * 0.4 - 0.2)
                m.running_mean.copy_(torch.rand(c, generator=gen) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
                m.num_batches_tracked.fill_(int(torch.randint(0, 100, (1,), generator=gen)))


def contiguous(d):
    return {k: v.detach().contiguous() for k, v in d.items()}


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)

    # --- ResNet-18 + decoder -------------------------------------------------------------
    model = PanopticFPN()
    randomise_bn(model, gen)
    release = {f"module.{k}": v for k, v in model.state_dict().items()}
    save_file(contiguous(release), str(out / "r18_release.safetensors"))

    tv = torchvision.models.resnet18()
    missing, unexpected = tv.load_state_dict(model.backbone.state_dict(), strict=False)
    assert missing == ["fc.weight", "fc.bias"] and not unexpected, (missing, unexpected)
    save_file(contiguous(tv.state_dict()), str(out / "r18_torchvision.safetensors"))

    # Odd sizes on purpose: res5 4x5 -> res4 7x9 -> res3 14x18 -> res2 28x36 exercise
    # upsampling ratios other than 2.
    x = torch.randn(2, 3, 112, 144, generator=gen)
    ref = {"input": x}
    with torch.no_grad():
        for mode in ["eval", "train"]:
            model.train(mode == "train")
            feats, dec = model(x)
            for k, v in feats.items():
                ref[f"{mode}.{k}"] = v
            ref[f"{mode}.fpn"] = dec
            ref[f"{mode}.out"] = F.normalize(dec, dim=1, p=2)
    save_file(contiguous(ref), str(out / "r18_reference.safetensors"))
    after = {
        f"module.{k}": v
        for k, v in model.state_dict().items()
        if "running_" in k or k.endswith("num_batches_tracked")
    }
    save_file(contiguous(after), str(out / "r18_after_train.safetensors"))

    # --- ResNet-50, stride in 1x1, eps 1e-3 (Caffe/Keras style) ---------------------------
    r50 = torchvision.models.resnet50()
    for layer in [r50.layer2, r50.layer3, r50.layer4]:
        layer[0].conv1.stride = (2, 2)
        layer[0].conv2.stride = (1, 1)
    for m in r50.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 1e-3
    randomise_bn(r50, gen)
    save_file(contiguous(r50.state_dict()), str(out / "r50s1_torchvision.safetensors"))
    trunk = Backbone(torchvision.models.resnet.Bottleneck, [3, 4, 6, 3])
    for layer in [trunk.layer2, trunk.layer3, trunk.layer4]:
        layer[0].conv1.stride = (2, 2)
        layer[0].conv2.stride = (1, 1)
    for m in trunk.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 1e-3
    trunk.load_state_dict({k: v for k, v in r50.state_dict().items() if not k.startswith("fc.")})
    x = torch.randn(2, 3, 72, 88, generator=gen)
    ref = {"input": x}
    with torch.no_grad():
        for mode in ["eval", "train"]:
            trunk.train(mode == "train")
            for k, v in trunk(x).items():
                ref[f"r50s1.{mode}.{k}"] = v
    save_file(contiguous(ref), str(out / "r50s1_reference.safetensors"))

    # --- torchvision's key lists ------------------------------------------------------------
    for name in ["resnet18", "resnet34", "resnet50"]:
        sd = getattr(torchvision.models, name)().state_dict()
        lines = [f"{k} {','.join(str(d) for d in v.shape)}" for k, v in sd.items()]
        (out / f"keys_{name}.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
