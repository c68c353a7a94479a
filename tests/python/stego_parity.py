#!/usr/bin/env python3
"""STEGO's ContrastiveCorrelationLoss and head in PyTorch, as released
(mhamilton723/STEGO, src/modules.py), the oracle for picie_core::stego.

Usage: stego_parity.py CASE OUT CONFIG_JSON
CASE (safetensors, written by the Rust test):
  feats, feats_pos      B x C x h x w frozen features of the images and of their partners
  linear.weight/.bias, hidden.weight/.bias, out.weight/.bias
                        the head's 1x1 convolutions (cluster1 = linear; cluster2 = hidden,
                        ReLU, out)
  coords1, coords2      B x S x S x 2 sample coordinates (what the release draws with
                        torch.rand(...) * 2 - 1)
  perms                 neg_samples x B: the release's super_perm draws
CONFIG_JSON: pointwise, zero_clamp, stabalize and the three weights and shifts.
OUT (safetensors): intra, inter, neg, total (scalars) and grad.<name> for each head tensor,
after one backward pass of total. The head runs in eval mode (no dropout): dropout masks
cannot be matched across frameworks. Exit status 77 when torch or safetensors is missing.
"""
import json
import sys

try:
    import torch
    import torch.nn.functional as F
    from safetensors.torch import load_file, save_file
except ImportError as e:
    print(f"missing Python package ({e}); pip install torch safetensors", file=sys.stderr)
    sys.exit(77)


# The release's helpers, restated.
def norm(t):
    return F.normalize(t, dim=1, eps=1e-10)


def tensor_correlation(a, b):
    return torch.einsum("nchw,ncij->nhwij", a, b)


def sample(t, coords):
    return F.grid_sample(t, coords.permute(0, 2, 1, 3), padding_mode="border", align_corners=True)


class ContrastiveCorrelationLoss(torch.nn.Module):
    """The release's class, with its random draws (coordinates, super_perm) passed in."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg

    def helper(self, f1, f2, c1, c2, shift):
        with torch.no_grad():
            fd = tensor_correlation(norm(f1), norm(f2))
            if self.cfg["pointwise"]:
                old_mean = fd.mean()
                fd -= fd.mean([3, 4], keepdim=True)
                fd = fd - fd.mean() + old_mean
        cd = tensor_correlation(norm(c1), norm(c2))
        min_val = 0.0 if self.cfg["zero_clamp"] else -9999.0
        if self.cfg["stabalize"]:
            loss = -cd.clamp(min_val, 0.8) * (fd - shift)
        else:
            loss = -cd.clamp(min_val) * (fd - shift)
        return loss, cd

    def forward(self, orig_feats, orig_feats_pos, orig_code, orig_code_pos, coords1, coords2, perms):
        feats = sample(orig_feats, coords1)
        code = sample(orig_code, coords1)
        feats_pos = sample(orig_feats_pos, coords2)
        code_pos = sample(orig_code_pos, coords2)
        pos_intra_loss, _ = self.helper(feats, feats, code, code, self.cfg["pos_intra_shift"])
        pos_inter_loss, _ = self.helper(feats, feats_pos, code, code_pos, self.cfg["pos_inter_shift"])
        neg_losses = []
        for perm_neg in perms:
            feats_neg = sample(orig_feats[perm_neg], coords2)
            code_neg = sample(orig_code[perm_neg], coords2)
            neg_inter_loss, _ = self.helper(feats, feats_neg, code, code_neg, self.cfg["neg_inter_shift"])
            neg_losses.append(neg_inter_loss)
        neg_inter_loss = torch.cat(neg_losses, axis=0)
        return pos_intra_loss.mean(), pos_inter_loss.mean(), neg_inter_loss.mean()


def main():
    case_path, out_path, cfg = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    case = load_file(case_path)
    dtype = case["feats"].dtype
    c, d = case["linear.weight"].shape[1], case["linear.weight"].shape[0]
    cluster1 = torch.nn.Conv2d(c, d, (1, 1)).to(dtype)
    cluster2 = torch.nn.Sequential(
        torch.nn.Conv2d(c, c, (1, 1)), torch.nn.ReLU(), torch.nn.Conv2d(c, d, (1, 1))
    ).to(dtype)
    params = {
        "linear.weight": cluster1.weight,
        "linear.bias": cluster1.bias,
        "hidden.weight": cluster2[0].weight,
        "hidden.bias": cluster2[0].bias,
        "out.weight": cluster2[2].weight,
        "out.bias": cluster2[2].bias,
    }
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(case[name])

    def head(x):
        return cluster1(x) + cluster2(x)

    feats, feats_pos = case["feats"], case["feats_pos"]
    code, code_pos = head(feats), head(feats_pos)
    perms = list(case["perms"].long()) if case["perms"].numel() else []
    loss_fn = ContrastiveCorrelationLoss(cfg)
    intra, inter, neg = loss_fn(feats, feats_pos, code, code_pos, case["coords1"].to(dtype), case["coords2"].to(dtype), perms)
    total = cfg["pos_inter_weight"] * inter + cfg["pos_intra_weight"] * intra + cfg["neg_inter_weight"] * neg
    total.backward()
    out = {"intra": intra.detach(), "inter": inter.detach(), "neg": neg.detach(), "total": total.detach()}
    for name, p in params.items():
        out["grad." + name] = p.grad.detach().contiguous()
    save_file(out, out_path)


if __name__ == "__main__":
    main()
