//! Small test-only stage kinds and helpers to plan and run pipelines in a temp folder.

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, RecordBatch, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use picie::exec::{RunOptions, RunReport};
use picie::{Context, Error, ParamError, Plan, Port, Registry, Stage, StageError, Store};
use serde::{Deserialize, Serialize};

pub fn u64_batch(values: &[u64]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![Field::new(
        "value",
        DataType::UInt64,
        false,
    )]));
    RecordBatch::try_new(schema, vec![Arc::new(UInt64Array::from(values.to_vec()))]).unwrap()
}

pub fn values_of(batches: &[RecordBatch]) -> Vec<u64> {
    batches
        .iter()
        .flat_map(|b| {
            let a = b.column(0).as_any().downcast_ref::<UInt64Array>().unwrap();
            (0..a.len()).map(|i| a.value(i)).collect::<Vec<_>>()
        })
        .collect()
}

/// Items in flight between `numbers` and `sum`: for the back-pressure test.
pub static IN_FLIGHT: AtomicI64 = AtomicI64::new(0);
pub static MAX_IN_FLIGHT: AtomicI64 = AtomicI64::new(0);

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NumbersParams {
    pub count: u64,
    pub batch: u64,
    pub start: u64,
    pub delay_ms: u64,
    pub fail_at: Option<u64>,
    pub panic_at: Option<u64>,
}
impl Default for NumbersParams {
    fn default() -> Self {
        Self {
            count: 10,
            batch: 3,
            start: 0,
            delay_ms: 0,
            fail_at: None,
            panic_at: None,
        }
    }
}

/// A source: streams batches of integers and stores them as a table.
pub struct Numbers(NumbersParams);
impl Stage for Numbers {
    type Params = NumbersParams;
    const KIND: &'static str = "numbers";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str = "test source of integers";
    fn inputs(_: &NumbersParams) -> Vec<Port> {
        vec![]
    }
    fn outputs(_: &NumbersParams) -> Vec<Port> {
        vec![
            Port::stream("numbers", "ints"),
            Port::artifact("table", "int_table"),
        ]
    }
    fn validate(p: &NumbersParams) -> Vec<ParamError> {
        let mut e = Vec::new();
        if p.batch == 0 {
            e.push(ParamError::new("batch", "must be at least 1"));
        }
        if p.count > 1_000_000 {
            e.push(ParamError::new("count", "at most 1000000"));
        }
        e
    }
    fn new(p: NumbersParams) -> Self {
        Self(p)
    }
    fn run(&mut self, ctx: &mut Context) -> Result<(), StageError> {
        let p = &self.0;
        let mut i = p.start;
        let end = p.start + p.count;
        while i < end {
            let n = p.batch.min(end - i);
            let v: Vec<u64> = (i..i + n).collect();
            if p.fail_at.is_some_and(|f| f >= i && f < i + n) {
                return Err(StageError::msg(format!(
                    "numbers: refusing value {}",
                    p.fail_at.unwrap()
                )));
            }
            if p.panic_at.is_some_and(|f| f >= i && f < i + n) {
                panic!("numbers: panic at {}", p.panic_at.unwrap());
            }
            ctx.output("table")?.write(&u64_batch(&v))?;
            let now = IN_FLIGHT.fetch_add(1, Ordering::SeqCst) + 1;
            MAX_IN_FLIGHT.fetch_max(now, Ordering::SeqCst);
            ctx.send("numbers", v)?;
            if p.delay_ms > 0 {
                std::thread::sleep(Duration::from_millis(p.delay_ms));
            }
            i += n;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SumParams {
    pub delay_ms: u64,
    pub fail: bool,
}

/// A sink: sums a stream into a one-row table.
pub struct Sum(SumParams);
impl Stage for Sum {
    type Params = SumParams;
    const KIND: &'static str = "sum";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str = "test sink";
    fn inputs(_: &SumParams) -> Vec<Port> {
        vec![
            Port::stream("numbers", "ints"),
            Port::artifact("offset", "int_table").optional(),
        ]
    }
    fn outputs(_: &SumParams) -> Vec<Port> {
        vec![Port::artifact("total", "int_table")]
    }
    fn new(p: SumParams) -> Self {
        Self(p)
    }
    fn run(&mut self, ctx: &mut Context) -> Result<(), StageError> {
        if self.0.fail {
            return Err(StageError::msg("sum: told to fail"));
        }
        let mut total: u64 = if ctx.has_input("offset") {
            values_of(&ctx.input("offset")?.read_all()?).iter().sum()
        } else {
            0
        };
        while let Some(v) = ctx.recv_as::<Vec<u64>>("numbers")? {
            IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
            total += v.iter().sum::<u64>();
            if self.0.delay_ms > 0 {
                std::thread::sleep(Duration::from_millis(self.0.delay_ms));
            }
        }
        ctx.output("total")?.write(&u64_batch(&[total]))?;
        Ok(())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScaleParams {
    pub factor: u64,
}
impl Default for ScaleParams {
    fn default() -> Self {
        Self { factor: 2 }
    }
}

/// A map: multiplies a stream.
pub struct Scale(ScaleParams);
impl Stage for Scale {
    type Params = ScaleParams;
    const KIND: &'static str = "scale";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str = "test map";
    fn inputs(_: &ScaleParams) -> Vec<Port> {
        vec![Port::stream("numbers", "ints")]
    }
    fn outputs(_: &ScaleParams) -> Vec<Port> {
        vec![Port::stream("numbers", "ints")]
    }
    fn new(p: ScaleParams) -> Self {
        Self(p)
    }
    fn run(&mut self, ctx: &mut Context) -> Result<(), StageError> {
        while let Some(v) = ctx.recv_as::<Vec<u64>>("numbers")? {
            IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
            let out: Vec<u64> = v.iter().map(|x| x * self.0.factor).collect();
            IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
            ctx.send("numbers", out)?;
        }
        Ok(())
    }
}

/// Fan-in: merges two streams into one sorted table.
pub struct Merge;
impl Stage for Merge {
    type Params = SumParams;
    const KIND: &'static str = "merge";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str = "test fan-in";
    fn inputs(_: &SumParams) -> Vec<Port> {
        vec![Port::stream("a", "ints"), Port::stream("b", "ints")]
    }
    fn outputs(_: &SumParams) -> Vec<Port> {
        vec![Port::artifact("merged", "int_table")]
    }
    fn new(_: SumParams) -> Self {
        Self
    }
    fn run(&mut self, ctx: &mut Context) -> Result<(), StageError> {
        let mut all = Vec::new();
        while let Some((_, item)) = ctx.recv_any()? {
            IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
            all.extend(item.downcast::<Vec<u64>>().unwrap().iter().copied());
        }
        all.sort();
        ctx.output("merged")?.write(&u64_batch(&all))?;
        Ok(())
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccParams {
    pub add: u64,
}

/// Reads an artifact (and optionally its own previous epoch) and writes a new one: the
/// shape of PiCIE's epoch loop.
pub struct Acc(AccParams);
impl Stage for Acc {
    type Params = AccParams;
    const KIND: &'static str = "acc";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str = "test accumulator";
    fn inputs(_: &AccParams) -> Vec<Port> {
        vec![
            Port::artifact("base", "int_table"),
            Port::artifact("prev", "int_table").optional(),
        ]
    }
    fn outputs(_: &AccParams) -> Vec<Port> {
        vec![Port::artifact("total", "int_table")]
    }
    fn new(p: AccParams) -> Self {
        Self(p)
    }
    fn run(&mut self, ctx: &mut Context) -> Result<(), StageError> {
        let base: u64 = values_of(&ctx.input("base")?.read_all()?).iter().sum();
        let prev: u64 = if ctx.has_input("prev") {
            values_of(&ctx.input("prev")?.read_all()?).iter().sum()
        } else {
            0
        };
        let epoch = ctx.epoch().unwrap_or(0) as u64;
        ctx.output("total")?
            .write(&u64_batch(&[base + prev + self.0.add + 1000 * epoch]))?;
        Ok(())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlowParams {
    pub batches: u64,
    pub rows: u64,
    pub delay_ms: u64,
}
impl Default for SlowParams {
    fn default() -> Self {
        Self {
            batches: 4,
            rows: 1000,
            delay_ms: 0,
        }
    }
}

/// Writes a large artifact slowly, batch by batch: the target of the SIGKILL test.
pub struct Slow(SlowParams);
impl Stage for Slow {
    type Params = SlowParams;
    const KIND: &'static str = "slow";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str = "test slow writer";
    fn inputs(_: &SlowParams) -> Vec<Port> {
        vec![]
    }
    fn outputs(_: &SlowParams) -> Vec<Port> {
        vec![Port::artifact("table", "int_table")]
    }
    fn new(p: SlowParams) -> Self {
        Self(p)
    }
    fn run(&mut self, ctx: &mut Context) -> Result<(), StageError> {
        let w = ctx.output("table")?;
        w.set_part_rows(self.0.rows as usize);
        for b in 0..self.0.batches {
            let v: Vec<u64> = (b * self.0.rows..(b + 1) * self.0.rows)
                .map(|x| x * 7 % 1013)
                .collect();
            w.write(&u64_batch(&v))?;
            std::thread::sleep(Duration::from_millis(self.0.delay_ms));
        }
        Ok(())
    }
}

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
    r.register::<Numbers>()
        .register::<FeatureRows>()
        .register::<LabelRows>()
        .register::<Sum>()
        .register::<Scale>()
        .register::<Merge>()
        .register::<Acc>()
        .register::<Slow>();
    r
}

/// A temp folder with a pipeline file and its store.
pub struct Fixture {
    pub dir: tempfile::TempDir,
}

impl Fixture {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("pipeline.yaml")
    }
    pub fn write(&self, yaml: &str) -> PathBuf {
        std::fs::write(self.path(), yaml).unwrap();
        self.path()
    }
    pub fn plan(&self, yaml: &str) -> Result<Plan, Error> {
        Plan::load(&self.write(yaml), &registry())
    }
    pub fn store(&self) -> Store {
        Store::open(&self.dir.path().join("store")).unwrap()
    }
    pub fn run_with(&self, yaml: &str, opts: &RunOptions) -> Result<(Plan, RunReport), Error> {
        let plan = self.plan(yaml)?;
        let report = picie::run(&plan, &self.store(), opts)?;
        Ok((plan, report))
    }
    pub fn run(&self, yaml: &str) -> Result<(Plan, RunReport), Error> {
        self.run_with(yaml, &RunOptions::default())
    }
    /// The values in a node's artifact output.
    pub fn values(&self, plan: &Plan, node: &str, output: &str) -> Vec<u64> {
        let i = plan
            .index_of(node)
            .unwrap_or_else(|| panic!("no node {node}"));
        let key = &plan.nodes[i].output_keys[output];
        match self.store().lookup(key) {
            picie::store::Lookup::Valid(a) => values_of(&a.read_all().unwrap()),
            other => panic!("{node}.{output}: {other:?}"),
        }
    }
}

/// Names of the nodes that ran in a report.
pub fn ran(report: &RunReport) -> Vec<String> {
    report
        .nodes
        .iter()
        .filter(|(_, o)| matches!(o, picie::exec::Outcome::Ran { .. }))
        .map(|(n, _)| n.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
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
