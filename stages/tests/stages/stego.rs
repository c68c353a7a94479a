//! The `stego` stage: STEGO's head training on a frozen ViT's stored tokens with partners
//! from a `knn` table, in the epoch loop, evaluated as any trained network; per-term losses
//! in its metrics; every draw a function of (seed, epoch, step); bad params refused at plan
//! time at their place.

use std::collections::HashMap;

use arrow::array::{Float64Array, UInt32Array};
use picie_engine::testing::{ran, Fixture};
use tch::Tensor;

fn fixture() -> Fixture {
    Fixture::new(picie_stages::builtin())
}

/// A frozen ViT (random DINOv2-S weights, one block) on synthetic scenes at 28 px (2 x 2
/// tokens), 6 training images; knn k = 4, partners among ranks 1..=2; two epochs of stego,
/// each evaluated. `extra` goes into stego's params.
fn pipeline(extra: &str) -> String {
    format!(
        "name: stego
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
  - name: knn
    kind: knn
    params: {{k: 4}}
    inputs: {{tokens: train_tokens.tokens}}
loop:
  epochs: 2
  stages:
    - name: stego
      kind: stego
      params: {{batch: 3, num_neighbors: 2, feature_samples: 3, neg_samples: 2{extra}}}
      inputs:
        tokens: train_tokens.tokens
        knn: knn.knn
        checkpoint: {{from: stego.checkpoint, epoch: prev, first: init.checkpoint}}
    - name: evaluate
      kind: evaluate
      params: {{res: 28, k: 3, bn: eval, n_iter: 3}}
      inputs:
        checkpoint: stego.checkpoint
        train_tokens: train_tokens.tokens
        val_tokens: val_tokens.tokens
"
    )
}

fn weights(f: &Fixture, plan: &picie_engine::Plan, node: &str) -> HashMap<String, Tensor> {
    let a = f.artifact(plan, node, "checkpoint");
    Tensor::read_safetensors(a.file("model.safetensors").unwrap())
        .unwrap()
        .into_iter()
        .collect()
}

/// (step, loss, intra, inter, neg) rows of a stego node's metrics.
fn losses(f: &Fixture, plan: &picie_engine::Plan, node: &str) -> Vec<[f64; 5]> {
    let mut out = Vec::new();
    for b in f.artifact(plan, node, "metrics").batches() {
        let b = b.unwrap();
        let col = |n: &str| {
            b.column_by_name(n)
                .unwrap_or_else(|| panic!("no column {n}"))
                .as_any()
                .downcast_ref::<Float64Array>()
                .unwrap()
                .clone()
        };
        let step = b
            .column_by_name("step")
            .unwrap()
            .as_any()
            .downcast_ref::<UInt32Array>()
            .unwrap()
            .clone();
        let (l, i, x, n) = (
            col("loss"),
            col("loss_intra"),
            col("loss_inter"),
            col("loss_neg"),
        );
        for r in 0..b.num_rows() {
            out.push([
                step.value(r) as f64,
                l.value(r),
                i.value(r),
                x.value(r),
                n.value(r),
            ]);
        }
    }
    out
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn stego_trains_the_head_only_and_evaluates_and_repeats() {
    let f = fixture();
    let (plan, report) = f.run(&pipeline("")).unwrap();
    let did = ran(&report);
    for node in ["knn", "stego@1", "stego@2", "evaluate@2"] {
        assert!(did.contains(&node.to_string()), "{node}: {did:?}");
    }
    // Two steps per epoch (6 images, batch 3); the total is the weighted sum of its terms.
    let rows = losses(&f, &plan, "stego@2");
    assert_eq!(rows.len(), 2);
    for [step, l, intra, inter, neg] in &rows {
        assert!([l, intra, inter, neg].iter().all(|v| v.is_finite()));
        let want = 0.67 * intra + 0.25 * inter + 0.63 * neg;
        assert!((l - want).abs() < 1e-6, "step {step}: {l} vs {want}");
    }
    // Only the head moved.
    let (w0, w2) = (weights(&f, &plan, "init"), weights(&f, &plan, "stego@2"));
    let mut moved = Vec::new();
    for (name, t) in &w0 {
        if max_diff(t, &w2[name]) > 0.0 {
            moved.push(name.clone());
        }
    }
    moved.sort();
    assert_eq!(
        moved,
        [
            "head.hidden.bias",
            "head.hidden.weight",
            "head.linear.bias",
            "head.linear.weight",
            "head.out.bias",
            "head.out.weight"
        ]
    );

    // A fresh store gives the same weights and losses: every draw is seeded.
    let g = fixture();
    let (plan2, _) = g.run(&pipeline("")).unwrap();
    let again = weights(&g, &plan2, "stego@2");
    for (name, t) in &w2 {
        assert_eq!(max_diff(t, &again[name]), 0.0, "{name}");
    }
    assert_eq!(rows, losses(&g, &plan2, "stego@2"));

    // Another shift: only stego and evaluate run again, no tokens, no knn.
    let (_, changed) = f.run(&pipeline(", pos_inter_shift: 0.3")).unwrap();
    let did = ran(&changed);
    assert!(
        did.iter()
            .all(|n| n.starts_with("stego@") || n.starts_with("evaluate@")),
        "{did:?}"
    );
    assert!(did.contains(&"stego@1".to_string()));
}

fn plan_errors(f: &Fixture, yaml: &str) -> String {
    match f.plan(yaml) {
        Err(picie_engine::Error::Invalid(d)) => d.to_string(),
        other => panic!("expected plan errors, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn bad_counts_shifts_and_inputs_are_refused_at_plan_time() {
    let f = fixture();
    let msg = plan_errors(
        &f,
        &pipeline("").replace(
            "neg_samples: 2}",
            "neg_samples: -1, pos_inter_shift: 1e999, batch: 1}",
        ),
    );
    // stego's params are on line 25 of the file. (1e999 reads as infinity; YAML's `.nan`
    // is refused by the parser itself, as an invalid float literal at its place.)
    for want in [
        "neg_samples",
        "must be 0 or more",
        "pos_inter_shift",
        "must be a finite number",
        "batch",
        ":25:",
    ] {
        assert!(msg.contains(want), "missing {want:?} in:\n{msg}");
    }
    eprintln!("{msg}");
    // Something that is not a split's stored tokens: refused, naming both stages.
    let msg = plan_errors(
        &f,
        &pipeline("").replace(
            "tokens: train_tokens.tokens\n        knn",
            "tokens: init.checkpoint\n        knn",
        ),
    );
    assert!(msg.contains("stego") && msg.contains("init"), "{msg}");

    // num_neighbors beyond the knn table's k: refused when the table is read.
    let err = f
        .run(&pipeline("").replace("num_neighbors: 2", "num_neighbors: 4"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`num_neighbors: 4`") && err.contains("k = 4"),
        "{err}"
    );
}
