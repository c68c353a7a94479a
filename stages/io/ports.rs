//! Every port of picie's stage kinds, declared once: its name, its type name, and for
//! streams the Rust type of its items. Stages declare, read and write through these
//! constants, never through string literals.

use picie_engine::{Port, StreamPort};

use super::batch::{FeatureBatch, ViewBatch};

/// Both augmented views of a batch of training images (`augment` -> extract/label/train).
pub const BATCHES: StreamPort<ViewBatch> = StreamPort::new("batches", "view_batch");
/// Pixel features of both views, as they are extracted (`extract` -> `kmeans`).
pub const FEATURE_STREAM: StreamPort<FeatureBatch> = StreamPort::new("stream", "feature_batch");

/// The network's weights (and optimizer state): `init`, `extract`, `train`, `evaluate`.
pub const CHECKPOINT: Port = Port::artifact("checkpoint", "checkpoint");
/// The random parameters of every augmentation draw (`augment`).
pub const AUG_PARAMS: Port = Port::artifact("params", "aug_params");
/// A frozen backbone's tokens of both training views, with each image's G (`backbone`
/// -> extract/label/train, in place of `batches`).
pub const TOKENS: Port = Port::artifact("tokens", "tokens");
/// A frozen backbone's tokens of one split's evaluation crops (`backbone` with `split`).
pub const EVAL_TOKENS: Port = Port::artifact("tokens", "eval_tokens");
/// The same, as `evaluate` reads them: of the training split (its fresh k-means) and of
/// the validation split (its predictions).
pub const TRAIN_TOKENS: Port = Port::artifact("train_tokens", "eval_tokens");
pub const VAL_TOKENS: Port = Port::artifact("val_tokens", "eval_tokens");
/// Stored pixel features of both views (`extract`).
pub const FEATURES: Port = Port::artifact("features", "features");
/// Centroids and counts per view (`kmeans`, `evaluate`).
pub const CENTROIDS: Port = Port::artifact("centroids", "centroids");
/// k-means progress: objective per iteration or update (`kmeans`).
pub const KMEANS_STATS: Port = Port::artifact("stats", "kmeans_stats");
/// Pseudo-labels of both views (`label`).
pub const LABELS: Port = Port::artifact("labels", "labels");
/// Loss weights per cluster (`label`).
pub const WEIGHTS: Port = Port::artifact("weights", "cluster_weights");
/// Loss per step (`train`).
pub const TRAIN_METRICS: Port = Port::artifact("metrics", "train_metrics");
/// mIoU and accuracy per epoch, with the history before, and with a `probe` the linear
/// probe's supervised scores beside them (`evaluate`).
pub const METRICS: Port = Port::artifact("metrics", "metrics");
/// The previous epoch's `metrics`, read by `evaluate`.
pub const HISTORY: Port = Port::artifact("history", "metrics");
/// The confusion matrix (`evaluate`).
pub const CONFUSION: Port = Port::artifact("confusion", "confusion");
/// Each image's nearest images of a split by mean token, rank 0 itself (`knn`).
pub const KNN: Port = Port::artifact("knn", "knn");
/// STEGO's loss per step, its three terms apart (`stego`).
pub const STEGO_METRICS: Port = Port::artifact("metrics", "stego_metrics");
/// Histograms of the feature correlations STEGO's three terms saw in an epoch, with the
/// shifts that cut them (`stego`).
pub const STEGO_CORRELATIONS: Port = Port::artifact("correlations", "stego_correlations");
/// A trained cluster probe's centroids and linear probe's weights (`probe` -> `evaluate`).
pub const PROBE: Port = Port::artifact("probe", "probe");
/// The probes' losses per step (`probe`).
pub const PROBE_METRICS: Port = Port::artifact("metrics", "probe_metrics");
