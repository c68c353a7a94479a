//! Test-only sources of picie's artifact types, the registry with them, and a tiny real
//! pipeline. The engine's own toy stages and its tests live in `engine/tests/`.

use picie::{Context, Port, Registry, Stage, StageError};
pub use picie_engine::testing::{ran, Fixture};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeatureRowsParams {
    pub images: u32,
    pub side: i64,
    pub dim: i64,
    /// Poison one value of view 2 with NaN.
    pub nan: bool,
}
impl Default for FeatureRowsParams {
    fn default() -> Self {
        Self {
            images: 4,
            side: 4,
            dim: 8,
            nan: false,
        }
    }
}

/// A source of a `features` artifact (both views) with chosen contents, for the k-means
/// stage's bad-input tests.
pub struct FeatureRows(FeatureRowsParams);
impl Stage for FeatureRows {
    type Params = FeatureRowsParams;
    const KIND: &'static str = "feature_rows";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str = "test source of pixel features";
    fn inputs(_: &FeatureRowsParams) -> Vec<Port> {
        vec![]
    }
    fn outputs(_: &FeatureRowsParams) -> Vec<Port> {
        vec![Port::artifact("features", "features")]
    }
    fn new(p: FeatureRowsParams) -> Self {
        Self(p)
    }
    fn run(&mut self, ctx: &mut Context) -> Result<(), StageError> {
        let p = &self.0;
        let n = p.images as i64 * p.dim * p.side * p.side;
        let values: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
        let map =
            tch::Tensor::from_slice(&values).reshape([p.images as i64, p.dim, p.side, p.side]);
        let ids: Vec<u32> = (0..p.images).collect();
        let w = ctx.output("features")?;
        w.write(&picie::tables::features_batch(&ids, 1, &map)?)?;
        if p.nan && n > 0 {
            let _ = map.get(0).get(0).get(0).get(0).fill_(f64::NAN);
        }
        w.write(&picie::tables::features_batch(&ids, 2, &map)?)?;
        Ok(())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LabelRowsParams {
    pub k: i64,
}
impl Default for LabelRowsParams {
    fn default() -> Self {
        Self { k: 3 }
    }
}

/// Labels of 3 images x 2 views, 5x7 pixels, value (image * 31 + view * 7 + pixel) mod K,
/// in two batches: a known `labels` artifact for the round-trip test.
pub struct LabelRows(LabelRowsParams);
impl LabelRows {
    pub fn expected(k: i64, image: u32, view: u8) -> Vec<i64> {
        (0..35)
            .map(|p| (image as i64 * 31 + view as i64 * 7 + p) % k)
            .collect()
    }
}
impl Stage for LabelRows {
    type Params = LabelRowsParams;
    const KIND: &'static str = "label_rows";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str = "test source of pseudo-labels";
    fn inputs(_: &LabelRowsParams) -> Vec<Port> {
        vec![]
    }
    fn outputs(_: &LabelRowsParams) -> Vec<Port> {
        vec![Port::artifact("labels", "labels")]
    }
    fn new(p: LabelRowsParams) -> Self {
        Self(p)
    }
    fn run(&mut self, ctx: &mut Context) -> Result<(), StageError> {
        let k = self.0.k;
        for images in [vec![0u32, 1], vec![2]] {
            for view in [1u8, 2] {
                let v: Vec<i64> = images
                    .iter()
                    .flat_map(|&i| Self::expected(k, i, view))
                    .collect();
                let t = tch::Tensor::from_slice(&v).reshape([images.len() as i64, 5, 7]);
                ctx.output("labels")?
                    .write(&picie::tables::labels_batch(&images, view, &t, k as usize)?)?;
            }
        }
        Ok(())
    }
}

pub fn registry() -> Registry {
    let mut r = picie::stages::builtin();
    r.register::<FeatureRows>().register::<LabelRows>();
    r
}

pub fn fixture() -> Fixture {
    Fixture::new(registry())
}

pub const HEADER: &str = "name: t\nseed: 1\ndevice: cpu\nstore: store\n";

/// A small real PiCIE pipeline on synthetic data (8 train / 4 val 48x48 images, 3 classes,
/// inputs at 32x32), epochs chained through the previous checkpoint as in pipeline.yaml.
pub fn tiny_pipeline(name: &str, epochs: u32) -> String {
    format!(
        "name: {name}
seed: 3
device: cpu
store: store
dataset: {{kind: synthetic, train_images: 8, val_images: 4, width: 48, height: 48, classes: 3}}
stages:
  - name: init
    kind: init
  - name: eval0
    kind: evaluate
    params: {{res: 32, batch: 4, n_iter: 5}}
    inputs: {{checkpoint: init.checkpoint}}
loop:
  epochs: {epochs}
  stages:
    - name: aug
      kind: augment
      params: {{size: 48, res: 32, batch: 4}}
    - name: features
      kind: extract
      inputs:
        batches: aug.batches
        checkpoint: {{from: train.checkpoint, epoch: prev, first: init.checkpoint}}
    - name: kmeans
      kind: kmeans
      params: {{k: 3, mode: lloyd, n_iter: 5}}
      inputs: {{features: features.features}}
    - name: aug_label
      kind: augment
      params: {{size: 48, res: 32, batch: 4}}
    - name: label
      kind: label
      inputs:
        batches: aug_label.batches
        checkpoint: features.checkpoint
        centroids: kmeans.centroids
    - name: aug_train
      kind: augment
      params: {{size: 48, res: 32, batch: 4}}
    - name: train
      kind: train
      inputs:
        batches: aug_train.batches
        checkpoint: features.checkpoint
        centroids: kmeans.centroids
        labels: label.labels
        weights: label.weights
    - name: evaluate
      kind: evaluate
      params: {{res: 32, batch: 4, n_iter: 5}}
      inputs:
        checkpoint: train.checkpoint
        history: {{from: evaluate.metrics, epoch: prev, first: eval0.metrics}}
"
    )
}

/// A store in `dir/store` with odd contents, as a hand, a crash or another tool leaves them:
/// a stray file and a stray short folder under objects/, an artifact folder with a short
/// name, one with a non-ASCII name, one whose manifest is truncated, and a run record
/// `odd` naming all of them (and one whole artifact key with no folder). Returns the
/// truncated artifact's key.
pub fn seed_odd_store(dir: &std::path::Path) -> String {
    let store = picie::Store::open(&dir.join("store")).expect("store opens");
    let objects = store.root().join("objects");
    std::fs::write(objects.join("x"), b"stray").unwrap();
    std::fs::create_dir_all(objects.join("y").join("z")).unwrap();
    let short = objects.join("ab").join("a");
    std::fs::create_dir_all(&short).unwrap();
    std::fs::write(short.join("manifest.json"), r#"{"key": "a"}"#).unwrap();
    let wide = objects.join("ab").join("abé");
    std::fs::create_dir_all(&wide).unwrap();
    std::fs::write(wide.join("manifest.json"), r#"{"key": "aé"}"#).unwrap();
    let key = "cd".to_string() + &"0".repeat(62);
    let cut = objects.join("cd").join(&key);
    std::fs::create_dir_all(&cut).unwrap();
    std::fs::write(
        cut.join("manifest.json"),
        format!(r#"{{"key": "{key}", "node"#),
    )
    .unwrap();
    let record = serde_json::json!({
        "name": "odd", "pipeline": "odd.yaml", "started": "", "finished": "", "ok": true,
        "error": null, "device": "cpu",
        "nodes": [{
            "name": "evaluate@0", "stage": "evaluate", "kind": "evaluate", "epoch": 0,
            "status": "ran", "seconds": 0.0,
            "outputs": {"metrics": "a", "confusion": "aé", "samples": key,
                        "history": "ef".to_string() + &"1".repeat(62)}
        }]
    });
    let rec: picie::store::RunRecord = serde_json::from_value(record).unwrap();
    store.write_run_record(&rec).unwrap();
    key
}
