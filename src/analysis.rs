//! A finished (or failed) run's artifacts as Polars DataFrames, for `picie inspect`, the
//! report, notebooks and tests.
//!
//! Everything is found through the run record (`runs/NAME/latest.json`): nodes are picked by
//! their stage `kind` (never by stage name, which the pipeline file chooses) and their output
//! names, and every artifact is looked up (checksums verified) before it is read.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::{Array, BinaryArray, UInt16Array, UInt32Array, UInt8Array};
use polars::prelude::*;

use crate::artifact::{Artifact, Format};
use crate::error::{StageError, StageFailure};
use crate::metrics::{self, Confusion, MetricsError};
use crate::store::{Lookup, NodeRecord, RunRecord, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum AnalysisError {
    #[error("{path} is not a picie artifact store (it has no objects/ and runs/ folders); pass the folder named by the pipeline's `store:`")]
    NotAStore { path: PathBuf },
    #[error("no run named `{run}` in {store}; runs there: {available}")]
    NoSuchRun {
        run: String,
        store: PathBuf,
        available: String,
    },
    #[error("run record {path}: {message}")]
    BadRecord { path: PathBuf, message: String },
    #[error("run `{run}` has no `{kind}` node{what}")]
    NoNode {
        run: String,
        kind: String,
        what: String,
    },
    #[error("node `{node}` has no `{output}` output in the run record (did it finish?)")]
    NoOutput { node: String, output: String },
    #[error("artifact {key} (`{node}`.{output}) is gone from the store; re-run the pipeline")]
    Missing {
        node: String,
        output: String,
        key: String,
    },
    #[error("artifact {key} (`{node}`.{output}) is corrupt: {why}; re-run the pipeline")]
    Corrupt {
        node: String,
        output: String,
        key: String,
        why: String,
    },
    #[error("artifact {key}: {message}")]
    BadArtifact { key: String, message: String },
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Stage(#[from] StageFailure),
    #[error("Polars: {0}")]
    Polars(#[from] PolarsError),
    #[error("{0}")]
    Metrics(#[from] MetricsError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

impl From<StageError> for AnalysisError {
    fn from(e: StageError) -> Self {
        Self::Stage(StageFailure(e))
    }
}

impl AnalysisError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// One run of a store: its record and the store to read its artifacts from.
pub struct Run {
    pub store: Store,
    pub record: RunRecord,
}

/// The epoch a node counts for: nodes outside the loop (`eval0`) count as epoch 0, which is
/// also the epoch the evaluate stage writes into its metrics row for them.
fn epoch_of(n: &NodeRecord) -> u32 {
    n.epoch.unwrap_or(0)
}

impl Run {
    /// Opens a run without creating anything: a wrong folder is an error, not a new store.
    /// `store_dir` is a folder or a remote store's URL (`s3://bucket/prefix`), whose
    /// records are read through its cache.
    pub fn open(store_dir: &Path, run_name: &str) -> Result<Run, AnalysisError> {
        if !Store::exists(store_dir) {
            return Err(AnalysisError::NotAStore {
                path: store_dir.to_path_buf(),
            });
        }
        let store = Store::open(store_dir)?;
        let path = store.root().join("runs").join(run_name).join("latest.json");
        // A name with a separator could escape runs/; treat it as unknown.
        let plain = crate::target::plain(run_name);
        if !plain || !path.is_file() {
            return Err(AnalysisError::NoSuchRun {
                run: run_name.to_string(),
                store: store_dir.to_path_buf(),
                available: crate::target::recorded(store.root()),
            });
        }
        let text = std::fs::read_to_string(&path).map_err(|e| AnalysisError::io(&path, e))?;
        let record: RunRecord =
            serde_json::from_str(&text).map_err(|e| AnalysisError::BadRecord {
                path: path.clone(),
                message: e.to_string(),
            })?;
        Ok(Run { store, record })
    }

    /// Nodes of a kind that produced `output`, by epoch.
    pub(crate) fn nodes_with(&self, kind: &str, output: &str) -> Vec<&NodeRecord> {
        let mut v: Vec<&NodeRecord> = self
            .record
            .nodes
            .iter()
            .filter(|n| n.kind == kind && n.outputs.contains_key(output))
            .collect();
        v.sort_by_key(|n| epoch_of(n));
        v
    }

    /// The node of a kind at an epoch (epoch 0: the one outside the loop).
    pub(crate) fn node_at(
        &self,
        kind: &str,
        output: &str,
        epoch: u32,
    ) -> Result<&NodeRecord, AnalysisError> {
        let nodes = self.nodes_with(kind, output);
        nodes
            .iter()
            .find(|n| epoch_of(n) == epoch)
            .copied()
            .ok_or_else(|| AnalysisError::NoNode {
                run: self.record.name.clone(),
                kind: kind.into(),
                what: format!(
                    " with a `{output}` output at epoch {epoch} (epochs there: {})",
                    list_epochs(&nodes)
                ),
            })
    }

    /// The last epoch's node of a kind.
    pub(crate) fn last_node(&self, kind: &str, output: &str) -> Result<&NodeRecord, AnalysisError> {
        self.nodes_with(kind, output)
            .last()
            .copied()
            .ok_or_else(|| AnalysisError::NoNode {
                run: self.record.name.clone(),
                kind: kind.into(),
                what: format!(" with a `{output}` output"),
            })
    }

    /// A node's output artifact, verified.
    pub fn artifact(&self, node: &NodeRecord, output: &str) -> Result<Artifact, AnalysisError> {
        let key = node
            .outputs
            .get(output)
            .ok_or_else(|| AnalysisError::NoOutput {
                node: node.name.clone(),
                output: output.into(),
            })?;
        self.artifact_by_key(key, &node.name, output)
    }

    pub(crate) fn artifact_by_key(
        &self,
        key: &str,
        node: &str,
        output: &str,
    ) -> Result<Artifact, AnalysisError> {
        // Store::object_dir slices the key; a hand-edited record must not make it panic.
        if key.len() < 2 || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(AnalysisError::BadRecord {
                path: self
                    .store
                    .root()
                    .join("runs")
                    .join(&self.record.name)
                    .join("latest.json"),
                message: format!("`{node}`.{output} names `{key}`, not an artifact key"),
            });
        }
        // A remote store that cannot be read is its error, not a corrupt artifact.
        match self.store.try_lookup(key)? {
            Lookup::Valid(a) => Ok(*a),
            Lookup::Missing => Err(AnalysisError::Missing {
                node: node.into(),
                output: output.into(),
                key: key.into(),
            }),
            Lookup::Corrupt(why) => Err(AnalysisError::Corrupt {
                node: node.into(),
                output: output.into(),
                key: key.into(),
                why,
            }),
        }
    }

    /// The evaluate metrics table that holds every epoch's row: the end of the `history`
    /// chain, which is the table with the most rows (the last epoch's, or a final evaluation
    /// after the loop, which runs outside it and so sorts first by epoch).
    pub fn metrics(&self) -> Result<DataFrame, AnalysisError> {
        let mut best: Option<DataFrame> = None;
        for node in self.nodes_with("evaluate", "metrics") {
            let df = read_table(&self.artifact(node, "metrics")?)?;
            if best.as_ref().is_none_or(|b| df.height() >= b.height()) {
                best = Some(df);
            }
        }
        best.ok_or_else(|| self.no_node("evaluate", "metrics"))
    }

    /// Every train node's per-step metrics, concatenated in epoch order.
    pub fn train_metrics(&self) -> Result<DataFrame, AnalysisError> {
        self.step_metrics("train")
    }

    /// Every stego node's per-step metrics (STEGO's loss, its three terms and mean code
    /// correlations), concatenated in epoch order.
    pub fn stego_metrics(&self) -> Result<DataFrame, AnalysisError> {
        self.step_metrics("stego")
    }

    /// The `metrics` tables of every node of `kind`, concatenated in epoch order.
    fn step_metrics(&self, kind: &str) -> Result<DataFrame, AnalysisError> {
        let nodes = self.nodes_with(kind, "metrics");
        if nodes.is_empty() {
            return Err(self.no_node(kind, "metrics"));
        }
        let mut out: Option<DataFrame> = None;
        for n in nodes {
            let df = read_table(&self.artifact(n, "metrics")?)?;
            out = Some(match out {
                None => df,
                Some(mut acc) => {
                    acc.vstack_mut_owned(df)?;
                    acc
                }
            });
        }
        Ok(out.unwrap_or_default())
    }

    /// Pixels and loss weight per cluster, per epoch and view (the label nodes' `weights`):
    /// epoch, view, cluster, count, weight.
    pub fn cluster_sizes(&self) -> Result<DataFrame, AnalysisError> {
        let nodes = self.nodes_with("label", "weights");
        if nodes.is_empty() {
            return Err(self.no_node("label", "weights"));
        }
        let mut out: Option<DataFrame> = None;
        for n in nodes {
            let mut df = read_table(&self.artifact(n, "weights")?)?;
            let h = df.height();
            df.with_column(Column::new("epoch".into(), vec![epoch_of(n); h]))?;
            let df = df.select(["epoch", "view", "cluster", "count", "weight"])?;
            out = Some(match out {
                None => df,
                Some(mut acc) => {
                    acc.vstack_mut_owned(df)?;
                    acc
                }
            });
        }
        Ok(out.unwrap_or_default())
    }

    /// One row per pixel of the epoch's pseudo-labels of a view: epoch, view, image, y, x,
    /// cluster.
    pub fn assignments(&self, epoch: u32, view: u8) -> Result<DataFrame, AnalysisError> {
        let node = self.node_at("label", "labels", epoch)?;
        let labels = read_label_maps(&self.artifact(node, "labels")?, view)?;
        let mut ids: Vec<&u32> = labels.keys().collect();
        ids.sort();
        let n: usize = labels.values().map(|m| m.clusters.len()).sum();
        let (mut image, mut ys, mut xs, mut cl) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for id in ids {
            let m = &labels[id];
            for (i, &c) in m.clusters.iter().enumerate() {
                image.push(*id);
                ys.push((i / m.width) as u16);
                xs.push((i % m.width) as u16);
                cl.push(c);
            }
        }
        Ok(df!(
            "epoch" => vec![epoch; n],
            "view" => vec![view; n],
            "image" => image,
            "y" => ys,
            "x" => xs,
            "cluster" => cl,
        )?)
    }

    /// The class x cluster pixel counts of the epoch's evaluation: class, cluster, pixels.
    pub fn contingency(&self, epoch: u32) -> Result<DataFrame, AnalysisError> {
        let node = self.node_at("evaluate", "confusion", epoch)?;
        read_table(&self.artifact(node, "confusion")?)
    }

    /// The epoch's evaluation confusion as a `Confusion` (classes x clusters).
    pub fn confusion(&self, epoch: u32) -> Result<Confusion, AnalysisError> {
        let df = self.contingency(epoch)?;
        confusion_of(&df)
    }

    /// How the pseudo-labels move between consecutive epochs: for each pair and view, the
    /// clusters of the two epochs are matched one-to-one (Hungarian on the cluster x cluster
    /// co-occurrence over the pixels both epochs labelled), and `changed_fraction` is the share
    /// of pixels whose epoch-(e+1) cluster is not the match of their epoch-e cluster.
    /// Cluster ids are arbitrary per k-means run, hence the matching. Note: each epoch labels
    /// its own random augmentations, so a pixel (image, y, x) is the same crop position but
    /// not necessarily the same scene point; the number measures label churn, not only
    /// feature drift.
    pub fn stability(&self) -> Result<DataFrame, AnalysisError> {
        let nodes = self.nodes_with("label", "labels");
        let (mut from, mut to, mut views, mut pixels, mut changed) =
            (vec![], vec![], vec![], vec![], vec![]);
        for pair in nodes.windows(2) {
            let a = self.artifact(pair[0], "labels")?;
            let b = self.artifact(pair[1], "labels")?;
            for view in [1u8, 2] {
                let la = read_label_maps(&a, view)?;
                let lb = read_label_maps(&b, view)?;
                if la.is_empty() && lb.is_empty() {
                    continue;
                }
                let k = label_k(&a, &la).max(label_k(&b, &lb)).max(1);
                // Square, so that Hungarian applies even when K changed between epochs.
                let mut conf = Confusion::new(k, k)?;
                let mut ids: Vec<&u32> = la.keys().collect();
                ids.sort();
                for id in ids {
                    let (Some(ma), Some(mb)) = (la.get(id), lb.get(id)) else {
                        continue;
                    };
                    if ma.clusters.len() != mb.clusters.len() {
                        continue;
                    }
                    let gt: Vec<u16> = mb.clusters.iter().map(|&c| c as u16).collect();
                    conf.add(&gt, &ma.clusters, None)?;
                }
                let total = conf.total();
                let frac = if total == 0 {
                    f64::NAN
                } else {
                    let assign = metrics::hungarian(&conf)?;
                    let kept: u64 = assign
                        .iter()
                        .enumerate()
                        .map(|(c, &m)| conf.get(m, c).unwrap_or(0))
                        .sum();
                    1.0 - kept as f64 / total as f64
                };
                from.push(epoch_of(pair[0]));
                to.push(epoch_of(pair[1]));
                views.push(view);
                pixels.push(total);
                changed.push(frac);
            }
        }
        Ok(df!(
            "epoch_from" => from,
            "epoch_to" => to,
            "view" => views,
            "pixels" => pixels,
            "changed_fraction" => changed,
        )?)
    }

    fn no_node(&self, kind: &str, output: &str) -> AnalysisError {
        AnalysisError::NoNode {
            run: self.record.name.clone(),
            kind: kind.into(),
            what: format!(" with a `{output}` output"),
        }
    }
}

fn list_epochs(nodes: &[&NodeRecord]) -> String {
    if nodes.is_empty() {
        return "none".into();
    }
    nodes
        .iter()
        .map(|n| epoch_of(n).to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A table artifact as one DataFrame (Parquet parts concatenated).
pub(crate) fn read_table(a: &Artifact) -> Result<DataFrame, AnalysisError> {
    let mut out: Option<DataFrame> = None;
    for (path, format) in a.table_files() {
        if format != Format::Parquet {
            return Err(AnalysisError::BadArtifact {
                key: a.key().into(),
                message: format!("{} is not Parquet", path.display()),
            });
        }
        let file = File::open(&path).map_err(|e| AnalysisError::io(&path, e))?;
        let df = ParquetReader::new(file).finish()?;
        out = Some(match out {
            None => df,
            Some(mut acc) => {
                acc.vstack_mut_owned(df)?;
                acc
            }
        });
    }
    Ok(out.unwrap_or_default())
}

/// A confusion table (class, cluster, pixels) as a `Confusion`.
pub(crate) fn confusion_of(df: &DataFrame) -> Result<Confusion, AnalysisError> {
    let class = df.column("class")?.u32()?;
    let cluster = df.column("cluster")?.u32()?;
    let pixels = df.column("pixels")?.u64()?;
    let rows: Vec<(usize, usize, u64)> = class
        .iter()
        .zip(cluster.iter())
        .zip(pixels.iter())
        .filter_map(|((a, b), c)| Some((a? as usize, b? as usize, c?)))
        .collect();
    Ok(Confusion::from_rows(&rows)?)
}

/// One image's pseudo-labels of one view.
pub(crate) struct LabelMap {
    pub width: usize,
    pub clusters: Vec<u32>,
}

/// Every image's labels of a view (image id -> map), decoded from the one- or two-byte blobs.
pub(crate) fn read_label_maps(
    a: &Artifact,
    view: u8,
) -> Result<HashMap<u32, LabelMap>, AnalysisError> {
    let bad = |message: String| AnalysisError::BadArtifact {
        key: a.key().into(),
        message,
    };
    let mut out = HashMap::new();
    for b in a.batches() {
        let b = b?;
        fn col<'a, T: 'static>(b: &'a arrow::array::RecordBatch, name: &str) -> Option<&'a T> {
            b.column_by_name(name)?.as_any().downcast_ref::<T>()
        }
        let (Some(images), Some(views), Some(hs), Some(ws), Some(blobs)) = (
            col::<UInt32Array>(&b, "image"),
            col::<UInt8Array>(&b, "view"),
            col::<UInt16Array>(&b, "height"),
            col::<UInt16Array>(&b, "width"),
            col::<BinaryArray>(&b, "labels"),
        ) else {
            return Err(bad(
                "not a labels table (image, view, height, width, labels)".into(),
            ));
        };
        for i in 0..b.num_rows() {
            if views.value(i) != view {
                continue;
            }
            let (h, w) = (hs.value(i) as usize, ws.value(i) as usize);
            let blob = blobs.value(i);
            // One byte per pixel, or two (little-endian) when K > 256: the length says which.
            let clusters: Vec<u32> = if blob.len() == h * w {
                blob.iter().map(|&v| v as u32).collect()
            } else if blob.len() == 2 * h * w {
                blob.chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]) as u32)
                    .collect()
            } else {
                return Err(bad(format!(
                    "labels of image {} view {view} hold {} bytes, not {h}x{w}",
                    images.value(i),
                    blob.len()
                )));
            };
            out.insert(
                images.value(i),
                LabelMap {
                    width: w.max(1),
                    clusters,
                },
            );
        }
    }
    Ok(out)
}

/// K of a labels artifact: its `k` meta, else one more than the largest label.
fn label_k(a: &Artifact, maps: &HashMap<u32, LabelMap>) -> usize {
    let seen = maps
        .values()
        .flat_map(|m| m.clusters.iter())
        .max()
        .map_or(0, |&c| c as usize + 1);
    // Cluster ids are at most two bytes, so a larger `k` meta is not to be trusted.
    let meta = a
        .meta("k")
        .and_then(|v| v.as_u64())
        .filter(|&k| k <= 1 << 16)
        .map_or(0, |k| k as usize);
    meta.max(seen)
}

/// Mean loss per epoch from the train metrics: epoch, steps, mean_loss.
pub fn loss_per_epoch(train: &DataFrame) -> Result<DataFrame, AnalysisError> {
    let epoch = train.column("epoch")?.u32()?;
    let loss = train.column("loss")?.f64()?;
    let mut acc: std::collections::BTreeMap<u32, (u32, f64)> = Default::default();
    for (e, l) in epoch.iter().zip(loss.iter()) {
        if let (Some(e), Some(l)) = (e, l) {
            let s = acc.entry(e).or_default();
            s.0 += 1;
            s.1 += l;
        }
    }
    Ok(df!(
        "epoch" => acc.keys().copied().collect::<Vec<u32>>(),
        "steps" => acc.values().map(|s| s.0).collect::<Vec<u32>>(),
        "mean_loss" => acc.values().map(|s| s.1 / s.0 as f64).collect::<Vec<f64>>(),
    )?)
}

/// STEGO's per-epoch means from the stego metrics: epoch, steps, then the mean of the
/// total loss, each term and each mean code correlation.
pub fn stego_per_epoch(stego: &DataFrame) -> Result<DataFrame, AnalysisError> {
    const COLS: [&str; 7] = [
        "loss",
        "loss_intra",
        "loss_inter",
        "loss_neg",
        "cd_intra",
        "cd_inter",
        "cd_neg",
    ];
    let epoch = stego.column("epoch")?.u32()?;
    let values = COLS
        .iter()
        .map(|c| Ok(stego.column(c)?.f64()?.iter().collect::<Vec<_>>()))
        .collect::<Result<Vec<_>, AnalysisError>>()?;
    let mut acc: std::collections::BTreeMap<u32, (u32, [f64; 7])> = Default::default();
    for (row, e) in epoch.iter().enumerate() {
        let Some(e) = e else { continue };
        let s = acc.entry(e).or_default();
        s.0 += 1;
        for (sum, col) in s.1.iter_mut().zip(&values) {
            *sum += col[row].unwrap_or(f64::NAN);
        }
    }
    let mut cols = vec![
        Column::new("epoch".into(), acc.keys().copied().collect::<Vec<u32>>()),
        Column::new(
            "steps".into(),
            acc.values().map(|s| s.0).collect::<Vec<u32>>(),
        ),
    ];
    for (i, c) in COLS.iter().enumerate() {
        cols.push(Column::new(
            (*c).into(),
            acc.values()
                .map(|s| s.1[i] / s.0 as f64)
                .collect::<Vec<f64>>(),
        ));
    }
    Ok(DataFrame::new(acc.len(), cols)?)
}

/// (epoch, pixel accuracy, mIoU) rows of a metrics table.
pub fn metric_rows(metrics: &DataFrame) -> Result<Vec<(u32, f64, f64)>, AnalysisError> {
    let epoch = metrics.column("epoch")?.u32()?;
    let acc = metrics.column("pixel_accuracy")?.f64()?;
    let miou = metrics.column("miou")?.f64()?;
    Ok(epoch
        .iter()
        .zip(acc.iter())
        .zip(miou.iter())
        .filter_map(|((e, a), m)| Some((e?, a?, m?)))
        .collect())
}

/// Widest line of the run summary: it must fit a terminal without Polars eliding columns.
pub const SUMMARY_WIDTH: usize = 100;

/// The run summary that `picie run` and `picie inspect` print: one row per evaluated epoch
/// (epoch, mIoU, pixel accuracy, k, predictor, BatchNorm of the fresh k-means pass, and
/// where an evaluation ran a dense CRF, mIoU and accuracy after it), no line wider than
/// [`SUMMARY_WIDTH`]. Where an evaluation scored a linear probe, its supervised mIoU and
/// accuracy follow the row on a line of their own, named as supervised. With `per_class`,
/// each epoch's per-class IoU follows its row, wrapped.
pub fn summary_table(metrics: &DataFrame, per_class: bool) -> Result<String, AnalysisError> {
    use std::fmt::Write;
    let epoch = metrics.column("epoch")?.u32()?;
    let miou = metrics.column("miou")?.f64()?;
    let acc = metrics.column("pixel_accuracy")?.f64()?;
    let k = metrics.column("k")?.u32()?;
    let predictor = metrics.column("predictor")?.str()?;
    let bn = metrics.column("kmeans_bn").ok().and_then(|c| c.str().ok());
    let ious = metrics
        .column("per_class_iou")
        .ok()
        .and_then(|c| c.list().ok());
    // Metrics tables written before the CRF existed lack its columns.
    let f64_col = |name: &str| metrics.column(name).ok().and_then(|c| c.f64().ok());
    let (miou_crf, acc_crf) = (f64_col("miou_crf"), f64_col("pixel_accuracy_crf"));
    let crf = miou_crf.is_some_and(|c| c.null_count() < c.len());
    // The linear probe's scores (evaluate's `probe` input): supervised, so on a line of
    // their own under the row, never in its unsupervised columns.
    let (lin_miou, lin_acc) = (
        f64_col("linear_miou_supervised"),
        f64_col("linear_accuracy_supervised"),
    );
    let (lin_miou_crf, lin_acc_crf) = (
        f64_col("linear_miou_supervised_crf"),
        f64_col("linear_accuracy_supervised_crf"),
    );
    let num = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.2}"));
    let mut s = String::new();
    let header = format!(
        "{:>5}  {:>6}  {:>8}  {:>4}  {:<20}  {:<10}{}",
        "epoch",
        "mIoU",
        "accuracy",
        "k",
        "predictor",
        "k-means BN",
        if crf { "  mIoU+CRF  acc.+CRF" } else { "" }
    );
    let _ = writeln!(s, "{}", header.trim_end());
    for i in 0..metrics.height() {
        let mut row = format!(
            "{:>5}  {:>6}  {:>8}  {:>4}  {:<20}  {:<10}",
            epoch.get(i).map_or_else(|| "-".into(), |e| e.to_string()),
            num(miou.get(i)),
            num(acc.get(i)),
            k.get(i).map_or_else(|| "-".into(), |k| k.to_string()),
            predictor.get(i).unwrap_or("-"),
            bn.and_then(|b| b.get(i)).unwrap_or("-"),
        );
        if crf {
            let _ = write!(
                row,
                "  {:>8}  {:>8}",
                num(miou_crf.and_then(|c| c.get(i))),
                num(acc_crf.and_then(|c| c.get(i)))
            );
        }
        let _ = writeln!(s, "{}", row.trim_end());
        if let Some(m) = lin_miou.and_then(|c| c.get(i)) {
            let mut line = format!(
                "       linear probe, SUPERVISED: mIoU {m:.2}, accuracy {}",
                num(lin_acc.and_then(|c| c.get(i)))
            );
            if let Some(mc) = lin_miou_crf.and_then(|c| c.get(i)) {
                let _ = write!(
                    line,
                    "; +CRF mIoU {mc:.2}, accuracy {}",
                    num(lin_acc_crf.and_then(|c| c.get(i)))
                );
            }
            let _ = writeln!(s, "{line}");
        }
        if !per_class {
            continue;
        }
        per_class_line(
            &mut s,
            "       IoU per class:",
            ious.and_then(|l| l.get_as_series(i)),
        );
    }
    Ok(s)
}

/// One row's per-class values after `label`, two decimals each, wrapped within
/// [`SUMMARY_WIDTH`] (the summaries' `-v` lines).
pub(crate) fn per_class_line(s: &mut String, label: &str, values: Option<Series>) {
    use std::fmt::Write;
    let values: Vec<String> = values
        .and_then(|v| {
            v.f64().ok().map(|v| {
                v.iter()
                    .map(|x| x.map_or_else(|| "-".to_string(), |x| format!("{x:.2}")))
                    .collect()
            })
        })
        .unwrap_or_default();
    let mut line = label.to_string();
    for v in values {
        if line.len() + 1 + v.len() > SUMMARY_WIDTH {
            let _ = writeln!(s, "{line}");
            line = " ".repeat(label.len());
        }
        line.push(' ');
        line.push_str(&v);
    }
    let _ = writeln!(s, "{line}");
}

/// The text `picie inspect RUN` prints. Sections whose artifacts are absent (a failed or
/// partial run) say why instead of failing the whole summary. `per_class` adds each epoch's
/// per-class IoU to the metrics (`-v`).
pub fn inspect(store_dir: &Path, run: &str, per_class: bool) -> Result<String, AnalysisError> {
    use std::fmt::Write;
    let r = Run::open(store_dir, run)?;
    let rec = &r.record;
    let mut s = String::new();
    let count = |st: &str| rec.nodes.iter().filter(|n| n.status == st).count();
    let _ = writeln!(
        s,
        "run {}: {} on {}",
        rec.name,
        if rec.ok { "ok" } else { "FAILED" },
        rec.device
    );
    if let Some(e) = &rec.error {
        let _ = writeln!(s, "error: {e}");
    }
    let _ = writeln!(s, "pipeline: {}", rec.pipeline.display());
    let _ = writeln!(s, "started {}, finished {}", rec.started, rec.finished);
    let ran = count("ran");
    let cached = count("cached");
    let _ = writeln!(
        s,
        "nodes: {} ({ran} ran, {cached} cached, {} other)",
        rec.nodes.len(),
        rec.nodes.len() - ran - cached
    );
    let secs: f64 = rec.nodes.iter().map(|n| n.seconds).sum();
    let _ = writeln!(s, "stage time: {secs:.1} s");

    let _ = writeln!(s, "\nevaluation metrics:");
    match r.metrics() {
        Ok(df) => {
            let _ = write!(s, "{}", summary_table(&df, per_class)?);
        }
        Err(e) => {
            let _ = writeln!(s, "  (none: {e})");
        }
    }

    // A STEGO run trains with `stego`, not `train`: its loss table stands in place.
    match r.stego_metrics().and_then(|t| stego_per_epoch(&t)) {
        Ok(df) => {
            let _ = writeln!(
                s,
                "\nstego loss per epoch (mean over steps; terms unweighted, cd: mean code \
                 correlation):"
            );
            let _ = writeln!(s, "{df}");
        }
        Err(_) => {
            let _ = writeln!(s, "\ntrain loss per epoch (mean over steps):");
            match r.train_metrics().and_then(|t| loss_per_epoch(&t)) {
                Ok(df) => {
                    let _ = writeln!(s, "{df}");
                }
                Err(e) => {
                    let _ = writeln!(s, "  (none: {e})");
                }
            }
        }
    }

    match r.cluster_sizes() {
        Ok(df) => {
            let last = df
                .column("epoch")?
                .u32()?
                .iter()
                .flatten()
                .max()
                .unwrap_or(0);
            let mask = df.column("epoch")?.u32()?.equal(last);
            let df = df.filter(&mask)?;
            let _ = writeln!(s, "\ncluster sizes, epoch {last}:");
            let _ = writeln!(s, "{df}");
        }
        Err(e) => {
            let _ = writeln!(s, "\ncluster sizes: (none: {e})");
        }
    }

    let _ = writeln!(s, "\nlabel stability between epochs (Hungarian-matched):");
    match r.stability() {
        Ok(df) if df.height() == 0 => {
            let _ = writeln!(s, "  (fewer than two labelled epochs)");
        }
        Ok(df) => {
            let _ = writeln!(s, "{df}");
        }
        Err(e) => {
            let _ = writeln!(s, "  (none: {e})");
        }
    }
    Ok(s)
}
