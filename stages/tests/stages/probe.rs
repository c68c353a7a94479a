//! The `probe` stage and evaluate's probe, flip and upsample options: the probes train on a
//! frozen ViT's stored tokens (cluster loss falls, the supervised linear probe beats
//! chance), `predictor: cluster_probe` evaluates with the probe's centroids (not a fresh
//! k-means), the linear probe's supervised columns appear only with a probe, flipped val
//! crops are stored and averaged, the code can be upsampled before the scores, bad params
//! and wirings are refused with the field named, and the same seed gives the same probe.

use arrow::array::{Array, Float64Array, RecordBatch, StringArray, UInt32Array, UInt64Array};
use picie_engine::testing::{ran, Fixture};
use picie_engine::Plan;
use picie_stages::io::tokens::Tokens;

fn fixture() -> Fixture {
    Fixture::new(picie_stages::builtin())
}

/// A frozen ViT (random DINOv2-S weights, one block) on 3-class synthetic scenes at 56 px
/// (4 x 4 tokens), 16 training and 4 val images. A probe on init's head; evaluate with fresh
/// k-means (`kmeans`) and with the cluster probe (`probed`, with a CRF), both with flips
/// stored for val. `probe` and `probed` take extra params.
fn pipeline(probe: &str, probed: &str) -> String {
    format!(
        "name: probe
seed: 1
device: cpu
store: store
dataset: {{kind: synthetic, train_images: 16, val_images: 4, width: 56, height: 56, classes: 3}}
stages:
  - name: init
    kind: init
    params: {{arch: dinov2_vits14, dim: 32, feature_block: 1}}
  - name: train_tokens
    kind: backbone
    params: {{feature_block: 1, split: train, res: 56, precision: f32}}
  - name: val_tokens
    kind: backbone
    params: {{feature_block: 1, split: val, res: 56, precision: f32, flip: true}}
  - name: probe
    kind: probe
    params: {{res: 56, batch: 4, passes: 30, lr: 0.05{probe}}}
    inputs:
      checkpoint: init.checkpoint
      train_tokens: train_tokens.tokens
  - name: kmeans
    kind: evaluate
    params: {{res: 56, k: 3, bn: eval, n_iter: 3}}
    inputs:
      checkpoint: init.checkpoint
      train_tokens: train_tokens.tokens
      val_tokens: val_tokens.tokens
  - name: probed
    kind: evaluate
    params: {{res: 56, predictor: cluster_probe, crf: {{iterations: 2}}{probed}}}
    inputs:
      checkpoint: init.checkpoint
      val_tokens: val_tokens.tokens
      probe: probe.probe
"
    )
}

fn batches(f: &Fixture, plan: &Plan, node: &str, output: &str) -> Vec<RecordBatch> {
    f.artifact(plan, node, output)
        .batches()
        .map(|b| b.unwrap())
        .collect()
}

/// Column `name` of the metrics' last row, as f64 (None when null).
fn metric(f: &Fixture, plan: &Plan, node: &str, name: &str) -> Option<f64> {
    let b = batches(f, plan, node, "metrics").pop().unwrap();
    let c = b
        .column_by_name(name)
        .unwrap_or_else(|| panic!("no column {name}"))
        .as_any()
        .downcast_ref::<Float64Array>()
        .unwrap();
    let i = b.num_rows() - 1;
    c.is_valid(i).then(|| c.value(i))
}

fn predictor(f: &Fixture, plan: &Plan, node: &str) -> String {
    let b = batches(f, plan, node, "metrics").pop().unwrap();
    let c = b
        .column_by_name("predictor")
        .unwrap()
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap();
    c.value(b.num_rows() - 1).to_string()
}

/// (pass, cluster loss, linear loss) per step of a probe node.
fn losses(f: &Fixture, plan: &Plan, node: &str) -> Vec<(u32, f64, Option<f64>)> {
    let mut out = Vec::new();
    for b in batches(f, plan, node, "metrics") {
        let pass = b
            .column_by_name("pass")
            .unwrap()
            .as_any()
            .downcast_ref::<UInt32Array>()
            .unwrap()
            .clone();
        let f64s = |n: &str| {
            b.column_by_name(n)
                .unwrap()
                .as_any()
                .downcast_ref::<Float64Array>()
                .unwrap()
                .clone()
        };
        let (c, l) = (f64s("cluster_loss"), f64s("linear_loss"));
        for r in 0..b.num_rows() {
            out.push((pass.value(r), c.value(r), l.is_valid(r).then(|| l.value(r))));
        }
    }
    out
}

/// Mean of a pass's values.
fn pass_mean(rows: &[(u32, f64, Option<f64>)], pass: u32, linear: bool) -> f64 {
    let v: Vec<f64> = rows
        .iter()
        .filter(|r| r.0 == pass)
        .map(|r| if linear { r.2.unwrap() } else { r.1 })
        .collect();
    v.iter().sum::<f64>() / v.len() as f64
}

#[test]
fn probes_train_and_evaluate_apart_from_the_unsupervised_scores() {
    let f = fixture();
    let (plan, report) = f.run(&pipeline("", "")).unwrap();
    let did = ran(&report);
    for node in ["probe", "kmeans", "probed"] {
        assert!(did.contains(&node.to_string()), "{node}: {did:?}");
    }
    // 30 passes of 4 steps; both losses fall.
    let rows = losses(&f, &plan, "probe");
    assert_eq!(rows.len(), 120);
    let (c0, c30) = (pass_mean(&rows, 1, false), pass_mean(&rows, 30, false));
    assert!(c30 < c0, "cluster loss {c0} -> {c30}");
    assert!((-1.0..=1.0).contains(&c30), "{c30}");
    let (l0, l30) = (pass_mean(&rows, 1, true), pass_mean(&rows, 30, true));
    assert!(l30 < 0.7 * l0, "linear loss {l0} -> {l30}");

    // The probe table: K = 3 centroids of D = 8 (null bias), 3 classes with biases.
    let probe = batches(&f, &plan, "probe", "probe");
    let rows: usize = probe.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 6);
    let a = f.artifact(&plan, "probe", "probe");
    assert_eq!(a.meta("k").and_then(|v| v.as_u64()), Some(3));
    let init_ckpt = f.artifact(&plan, "init", "checkpoint");
    assert_eq!(
        a.meta("checkpoint").and_then(|v| v.as_str()),
        Some(init_ckpt.key())
    );

    // Fresh k-means: no linear columns. The cluster probe: its own predictions, and the
    // linear probe's supervised scores beside them, before and after the CRF.
    assert_eq!(predictor(&f, &plan, "kmeans"), "nearest_centroid");
    assert_eq!(predictor(&f, &plan, "probed"), "cluster_probe");
    for col in [
        "linear_miou_supervised",
        "linear_accuracy_supervised",
        "linear_miou_supervised_crf",
        "linear_accuracy_supervised_crf",
    ] {
        assert_eq!(metric(&f, &plan, "kmeans", col), None, "{col}");
        let v = metric(&f, &plan, "probed", col).unwrap_or_else(|| panic!("{col}"));
        assert!((0.0..=100.0).contains(&v), "{col} {v}");
    }
    // The scenes' labelling is learnt from random features: clearly better than the best
    // constant prediction (the val split's most frequent class), in accuracy and mIoU.
    let mut px = [0u64; 3];
    for b in batches(&f, &plan, "probed", "confusion") {
        let class = b.column_by_name("class").unwrap();
        let class = class.as_any().downcast_ref::<UInt32Array>().unwrap();
        let pixels = b.column_by_name("pixels").unwrap();
        let pixels = pixels.as_any().downcast_ref::<UInt64Array>().unwrap();
        for r in 0..b.num_rows() {
            px[class.value(r) as usize] += pixels.value(r);
        }
    }
    let total = px.iter().sum::<u64>() as f64;
    let majority = 100.0 * *px.iter().max().unwrap() as f64 / total;
    let acc = metric(&f, &plan, "probed", "linear_accuracy_supervised").unwrap();
    assert!(
        acc > majority + 5.0,
        "linear probe accuracy {acc}, majority {majority}"
    );
    let miou = metric(&f, &plan, "probed", "linear_miou_supervised").unwrap();
    assert!(miou > majority / 3.0 + 10.0, "linear probe mIoU {miou}");
    let (miou_k, miou_p) = (
        metric(&f, &plan, "kmeans", "miou").unwrap(),
        metric(&f, &plan, "probed", "miou").unwrap(),
    );
    assert!((0.0..=100.0).contains(&miou_p));
    assert_ne!(miou_k, miou_p, "cluster probe vs fresh k-means");
    assert!(metric(&f, &plan, "probed", "miou_crf").is_some());
    // The centroids evaluate used are the probe's, normalised.
    let c = f.artifact(&plan, "probed", "centroids");
    assert_eq!(c.meta("k").and_then(|v| v.as_u64()), Some(3));

    // The val tokens: the crops as ever, and their flipped copies beside them.
    let t = Tokens::open(&f.artifact(&plan, "val_tokens", "tokens")).unwrap();
    assert!(t.has_flips());
    let mut n = 0;
    for b in t.eval_batches_with_flips_in(0..usize::MAX) {
        let (ids, crops, flips) = b.unwrap();
        let flips = flips.expect("flipped crops");
        assert_eq!(crops.size(), flips.size());
        assert!((&crops - &flips).abs().max().double_value(&[]) > 0.0);
        n += ids.len();
    }
    assert_eq!(n, 4);
    assert_eq!(
        t.eval_batches().map(|b| b.unwrap().0.len()).sum::<usize>(),
        4
    );

    // The same seed, a fresh store: the same probe, value for value; another seed differs.
    let g = fixture();
    let (plan2, _) = g.run(&pipeline("", "")).unwrap();
    assert_eq!(probe, batches(&g, &plan2, "probe", "probe"));
    let h = fixture();
    let other = pipeline("", "").replace("seed: 1", "seed: 2");
    let (plan3, _) = h.run(&other).unwrap();
    assert_ne!(probe, batches(&h, &plan3, "probe", "probe"));

    // Another evaluation of the same probe: no probe training again.
    let (plan4, again) = f
        .run(&pipeline("", ", upsample: code, flip: true"))
        .unwrap();
    assert_eq!(ran(&again), ["probed"]);
    for col in ["miou", "pixel_accuracy", "linear_miou_supervised"] {
        let v = metric(&f, &plan4, "probed", col).unwrap();
        assert!((0.0..=100.0).contains(&v), "{col} {v}");
    }
}

/// Flip averaging and code upsampling, with stored tokens and with images, every
/// predictor; flip averaging from the network and from stored flipped tokens agree.
#[test]
fn flip_and_upsample_run_with_tokens_and_with_images() {
    let f = fixture();
    let mut yaml = pipeline("", "");
    for (name, params, tokens) in [
        ("tok_flip", "flip: true", true),
        ("img_flip", "flip: true", false),
        ("img_code", "upsample: code", false),
        ("tok_code_flip", "upsample: code, flip: true", true),
        (
            "tok_probe",
            "predictor: cluster_probe, upsample: code, flip: true",
            true,
        ),
    ] {
        yaml.push_str(&format!(
            "  - name: {name}
    kind: evaluate
    params: {{res: 56, k: 3, bn: eval, n_iter: 3, {params}}}
    inputs:
      checkpoint: init.checkpoint
{}      probe: probe.probe
",
            if tokens {
                "      train_tokens: train_tokens.tokens\n      val_tokens: val_tokens.tokens\n"
            } else {
                ""
            }
        ));
    }
    // `bn` and `k` are refused with the cluster probe: the last one only keeps upsample/flip.
    let yaml = yaml.replace(
        "k: 3, bn: eval, n_iter: 3, predictor: cluster_probe",
        "predictor: cluster_probe",
    );
    let (plan, _) = f.run(&yaml).unwrap();
    for node in [
        "tok_flip",
        "img_flip",
        "img_code",
        "tok_code_flip",
        "tok_probe",
    ] {
        for col in ["miou", "pixel_accuracy", "linear_accuracy_supervised"] {
            let v = metric(&f, &plan, node, col).unwrap_or_else(|| panic!("{node} {col}"));
            assert!((0.0..=100.0).contains(&v), "{node} {col} {v}");
        }
    }
    // The linear probe does not depend on the fresh k-means: the network's flipped image
    // and the stored flipped crop's tokens give the same code (f32 tokens), so the same
    // supervised scores.
    let (a, b) = (
        metric(&f, &plan, "tok_flip", "linear_accuracy_supervised").unwrap(),
        metric(&f, &plan, "img_flip", "linear_accuracy_supervised").unwrap(),
    );
    assert!((a - b).abs() < 0.5, "{a} vs {b}");
}

/// `flip: false` leaves the backbone's cache key as it was; `flip` needs `split`.
#[test]
fn backbone_flip_is_keyed_only_when_set() {
    use picie_engine::Stage;
    use picie_stages::backbone::{Backbone, BackboneParams, EvalSplit};
    let p = BackboneParams::default();
    assert!(serde_json::to_value(&p).unwrap().get("flip").is_none());
    let on = BackboneParams {
        flip: true,
        split: Some(EvalSplit::Val),
        ..p.clone()
    };
    assert_eq!(serde_json::to_value(&on).unwrap()["flip"], true);
    assert!(Backbone::validate(&on).is_empty());
    let bad = BackboneParams { flip: true, ..p };
    assert!(Backbone::validate(&bad).iter().any(|e| e.field == "flip"));
}

fn plan_errors(f: &Fixture, yaml: &str) -> String {
    match f.plan(yaml) {
        Err(picie_engine::Error::Invalid(d)) => d.to_string(),
        other => panic!("expected plan errors, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn bad_params_and_wirings_are_refused_with_the_field_named() {
    let f = fixture();
    let base = pipeline("", "");
    // The probe's own params.
    let msg = plan_errors(
        &f,
        &base.replace("passes: 30, lr: 0.05", "passes: 0, lr: -1, batch: 0, k: 1"),
    );
    for want in ["passes", "lr", "batch", "`k`", "must be at least 1", ":18:"] {
        assert!(msg.contains(want), "missing {want:?} in:\n{msg}");
    }
    let msg = plan_errors(&f, &base.replace("lr: 0.05", "lr: 1e999"));
    assert!(msg.contains("lr") && msg.contains("finite"), "{msg}");

    // cluster_probe without a probe input; with bn; with a k the probe does not have.
    let msg = plan_errors(&f, &base.replace("      probe: probe.probe\n", ""));
    assert!(
        msg.contains("predictor") && msg.contains("`probe` input"),
        "{msg}"
    );
    let msg = plan_errors(
        &f,
        &base.replace(
            "predictor: cluster_probe,",
            "predictor: cluster_probe, bn: eval,",
        ),
    );
    assert!(msg.contains("bn") && msg.contains("cluster_probe"), "{msg}");
    // The probe's k is null (the classes): checked when the probe is read (below).
    let k4 = base.replace(
        "predictor: cluster_probe,",
        "predictor: cluster_probe, k: 4,",
    );
    assert!(f.plan(&k4).is_ok());
    let msg = plan_errors(&f, &pipeline(", k: 3", ", k: 4"));
    assert!(msg.contains("`k: 4`") && msg.contains("`k: 3`"), "{msg}");

    // flip: only for split tokens; evaluate's flip needs tokens that store flips.
    let msg = plan_errors(
        &f,
        &base
            .replace(
                "split: val, res: 56, precision: f32, flip: true",
                "split: val, res: 56, precision: f32",
            )
            .replace("crf: {iterations: 2}", "crf: {iterations: 2}, flip: true"),
    );
    assert!(
        msg.contains("flip") && msg.contains("no flipped crops"),
        "{msg}"
    );
    // Training tokens with flips are fine for the probe (it reads the crops alone) ...
    let flipped_train = base.replace(
        "split: train, res: 56,",
        "split: train, res: 56, flip: true,",
    );
    assert!(f.plan(&flipped_train).is_ok());
    // ... but not for knn, which would rank every image twice.
    let knn = format!(
        "{}  - name: knn\n    kind: knn\n    params: {{k: 3}}\n    inputs: {{tokens: val_tokens.tokens}}\n",
        base
    );
    let msg = plan_errors(&f, &knn);
    assert!(msg.contains("flip") && msg.contains("knn"), "{msg}");

    // The probe's res must be its tokens'.
    let msg = plan_errors(&f, &base.replace("res: 56, batch: 4", "res: 42, batch: 4"));
    assert!(
        msg.contains("res: 42") && msg.contains("train_tokens"),
        "{msg}"
    );

    // cluster_probe with k unlike the probe's null k: refused when the probe is read.
    let err = f.run(&k4).unwrap_err().to_string();
    assert!(
        err.contains("k = 4") && err.contains("3 centroids"),
        "{err}"
    );
}

/// In the epoch loop: a fresh probe on each epoch's STEGO head, evaluated with it, one
/// metrics table across the epochs.
#[test]
fn probes_follow_the_head_in_the_epoch_loop() {
    let f = fixture();
    let yaml = "name: probe-loop
seed: 1
device: cpu
store: store
dataset: {kind: synthetic, train_images: 6, val_images: 3, width: 28, height: 28, classes: 3}
stages:
  - name: init
    kind: init
    params: {arch: dinov2_vits14, dim: 8, feature_block: 1}
  - name: train_tokens
    kind: backbone
    params: {feature_block: 1, split: train, res: 28, precision: f32}
  - name: val_tokens
    kind: backbone
    params: {feature_block: 1, split: val, res: 28, precision: f32}
  - name: knn
    kind: knn
    params: {k: 4}
    inputs: {tokens: train_tokens.tokens}
loop:
  epochs: 2
  stages:
    - name: stego
      kind: stego
      params: {batch: 3, num_neighbors: 2, feature_samples: 3, neg_samples: 2}
      inputs:
        tokens: train_tokens.tokens
        knn: knn.knn
        checkpoint: {from: stego.checkpoint, epoch: prev, first: init.checkpoint}
    - name: probe
      kind: probe
      params: {res: 28, batch: 3, passes: 3}
      inputs:
        checkpoint: stego.checkpoint
        train_tokens: train_tokens.tokens
    - name: evaluate
      kind: evaluate
      params: {res: 28, predictor: cluster_probe}
      inputs:
        checkpoint: stego.checkpoint
        val_tokens: val_tokens.tokens
        probe: probe.probe
        history: {from: evaluate.metrics, epoch: prev}
";
    let (plan, report) = f.run(yaml).unwrap();
    let did = ran(&report);
    for node in ["probe@1", "probe@2", "evaluate@2"] {
        assert!(did.contains(&node.to_string()), "{node}: {did:?}");
    }
    // Each epoch's probe was trained on that epoch's checkpoint.
    for e in [1, 2] {
        let probe = f.artifact(&plan, &format!("probe@{e}"), "probe");
        let ckpt = f.artifact(&plan, &format!("stego@{e}"), "checkpoint");
        assert_eq!(
            probe.meta("checkpoint").and_then(|v| v.as_str()),
            Some(ckpt.key())
        );
        assert_eq!(losses(&f, &plan, &format!("probe@{e}")).len(), 6);
    }
    let b = batches(&f, &plan, "evaluate@2", "metrics");
    let rows: usize = b.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 2);
    assert_eq!(predictor(&f, &plan, "evaluate@2"), "cluster_probe");
    assert!(metric(&f, &plan, "evaluate@2", "linear_miou_supervised").is_some());
}
