//! Every Arrow schema of picie's artifact tables, each built from named rows or tensors
//! and read back into them.
//! Every table is plain Arrow (integers, floats, fixed-size lists), so Python Polars reads
//! the Parquet files as they are.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryArray, BooleanArray, FixedSizeListArray, Float16Array, Float32Array,
    Float64Array, RecordBatch, UInt16Array, UInt32Array, UInt64Array, UInt8Array,
};
use arrow::array::{ListArray, StringArray};
use arrow::datatypes::{DataType, Field, Float64Type, Schema, SchemaRef};
use tch::{Kind, Tensor};

use picie_core::augment_params::AugRow;
use picie_core::kmeans::StatRow;
use picie_core::metrics::{Confusion, Metrics as Scores};
use picie_engine::artifact::Artifact;
use picie_engine::error::StageError;

fn list_field(dim: i32) -> DataType {
    DataType::FixedSizeList(Arc::new(Field::new("item", DataType::Float32, false)), dim)
}

/// How stored feature vectors are kept: f32, or f16 for half the disk and I/O (k-means
/// reads them back as f32).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    F16,
}

impl Precision {
    pub(crate) fn arrow(self) -> DataType {
        match self {
            Self::F32 => DataType::Float32,
            Self::F16 => DataType::Float16,
        }
    }
}

fn f32_list(values: Vec<f32>, dim: i32) -> Result<FixedSizeListArray, StageError> {
    Ok(FixedSizeListArray::try_new(
        Arc::new(Field::new("item", DataType::Float32, false)),
        dim,
        Arc::new(Float32Array::from(values)),
        None,
    )?)
}

fn tensor_f32(t: &Tensor) -> Result<Vec<f32>, StageError> {
    let t = t
        .to_kind(Kind::Float)
        .to_device(tch::Device::Cpu)
        .contiguous();
    Ok(Vec::<f32>::try_from(t.flatten(0, -1))?)
}

/// `t`'s values (on the CPU, any layout) as a list column of `len` values per row, stored as
/// `precision`.
pub(crate) fn float_list(
    t: &Tensor,
    len: i32,
    precision: Precision,
) -> Result<FixedSizeListArray, StageError> {
    let values: ArrayRef = match precision {
        Precision::F32 => Arc::new(Float32Array::from(tensor_f32(t)?)),
        Precision::F16 => {
            let t = t.to_kind(Kind::Half).contiguous().flatten(0, -1);
            Arc::new(Float16Array::from(Vec::<half::f16>::try_from(t)?))
        }
    };
    Ok(FixedSizeListArray::try_new(
        Arc::new(Field::new("item", precision.arrow(), false)),
        len,
        values,
        None,
    )?)
}

/// Column `name` of `b` as the array type `T`; an error names the column, and the type it has
/// when it has another.
pub(crate) fn column<'a, T: 'static>(b: &'a RecordBatch, name: &str) -> Result<&'a T, StageError> {
    let Some(c) = b.column_by_name(name) else {
        return Err(StageError::msg(format!("table has no column `{name}`")));
    };
    c.as_any().downcast_ref::<T>().ok_or_else(|| {
        let want = std::any::type_name::<T>()
            .rsplit("::")
            .next()
            .unwrap_or("?");
        StageError::msg(format!(
            "column `{name}` is {}, not the expected {want}",
            c.data_type()
        ))
    })
}

/// Per-pixel features: image, view, y, x, feature[D] (f32 or f16).
pub fn features_schema(dim: i32, precision: Precision) -> SchemaRef {
    let item = Arc::new(Field::new("item", precision.arrow(), false));
    Arc::new(Schema::new(vec![
        Field::new("image", DataType::UInt32, false),
        Field::new("view", DataType::UInt8, false),
        Field::new("y", DataType::UInt16, false),
        Field::new("x", DataType::UInt16, false),
        Field::new("feature", DataType::FixedSizeList(item, dim), false),
    ]))
}

/// A B x D x H x W feature map of one view as f32 table rows, every pixel (pixel-major per
/// image).
pub fn features_batch(images: &[u32], view: u8, map: &Tensor) -> Result<RecordBatch, StageError> {
    features_rows(images, view, map, Precision::F32, None)
}

/// [`features_batch`] with a storage precision and, optionally, only some pixels of each
/// image: `pick[i]` lists image i's pixel indices (y * W + x), ascending.
pub fn features_rows(
    images: &[u32],
    view: u8,
    map: &Tensor,
    precision: Precision,
    pick: Option<&[Vec<i64>]>,
) -> Result<RecordBatch, StageError> {
    let (b, d, h, w) = map.size4()?;
    if b as usize != images.len() || pick.is_some_and(|p| p.len() != images.len()) {
        return Err(StageError::msg("feature map and image ids differ in count"));
    }
    if h > u16::MAX as i64 + 1 || w > u16::MAX as i64 + 1 {
        return Err(StageError::msg(format!(
            "feature map {h}x{w} is too large to index"
        )));
    }
    // B x HW x D, pixel-major.
    let pixels = map
        .to_device(tch::Device::Cpu)
        .permute([0, 2, 3, 1])
        .reshape([b, h * w, d]);
    let all: Vec<i64> = (0..h * w).collect();
    let mut image = Vec::new();
    let mut ys = Vec::new();
    let mut xs = Vec::new();
    let mut parts = Vec::with_capacity(b as usize);
    for (i, &img) in images.iter().enumerate() {
        let idx = pick.map_or(all.as_slice(), |p| p[i].as_slice());
        if idx.iter().any(|&p| p < 0 || p >= h * w) {
            return Err(StageError::msg("pixel sample index out of the feature map"));
        }
        for &p in idx {
            image.push(img);
            ys.push((p / w) as u16);
            xs.push((p % w) as u16);
        }
        let rows = pixels.get(i as i64);
        parts.push(if pick.is_some() {
            rows.index_select(0, &Tensor::from_slice(idx))
        } else {
            rows
        });
    }
    let rows = image.len();
    let flat = if parts.is_empty() {
        Tensor::zeros([0, d], (Kind::Float, tch::Device::Cpu))
    } else {
        Tensor::f_cat(&parts, 0)?.contiguous()
    };
    let list = float_list(&flat, d as i32, precision)?;
    let cols: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from(image)),
        Arc::new(UInt8Array::from(vec![view; rows])),
        Arc::new(UInt16Array::from(ys)),
        Arc::new(UInt16Array::from(xs)),
        Arc::new(list),
    ];
    Ok(RecordBatch::try_new(
        features_schema(d as i32, precision),
        cols,
    )?)
}

/// The features of one view of a batch, as an N x D tensor.
pub fn features_of_view(b: &RecordBatch, view: u8) -> Result<Tensor, StageError> {
    let views = column::<UInt8Array>(b, "view")?;
    let list = column::<FixedSizeListArray>(b, "feature")?;
    let dim = list.value_length() as i64;
    let values = list.values();
    let mut out = Vec::new();
    let mut take = |copy: &mut dyn FnMut(usize, &mut Vec<f32>)| {
        for i in 0..b.num_rows() {
            if views.value(i) == view {
                copy(i * dim as usize + list.offset() * dim as usize, &mut out);
            }
        }
    };
    let d = dim as usize;
    if let Some(v) = values.as_any().downcast_ref::<Float32Array>() {
        let all = v.values();
        take(&mut |s, out| out.extend_from_slice(&all[s..s + d]));
    } else if let Some(v) = values.as_any().downcast_ref::<Float16Array>() {
        let all = v.values();
        take(&mut |s, out| out.extend(all[s..s + d].iter().map(|h| h.to_f32())));
    } else {
        return Err(StageError::msg(format!(
            "feature values are {}, not f32 or f16",
            values.data_type()
        )));
    }
    let n = out.len() as i64 / dim.max(1);
    Ok(Tensor::from_slice(&out).reshape([n, dim]))
}

/// Centroids: view, cluster, centroid[D], count.
pub fn centroids_schema(dim: i32) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("view", DataType::UInt8, false),
        Field::new("cluster", DataType::UInt32, false),
        Field::new("centroid", list_field(dim), false),
        Field::new("count", DataType::UInt64, false),
    ]))
}

pub fn centroids_batch(
    view: u8,
    centroids: &Tensor,
    counts: &[u64],
) -> Result<RecordBatch, StageError> {
    let (k, d) = centroids.size2()?;
    let cols: Vec<ArrayRef> = vec![
        Arc::new(UInt8Array::from(vec![view; k as usize])),
        Arc::new(UInt32Array::from((0..k as u32).collect::<Vec<_>>())),
        Arc::new(f32_list(tensor_f32(centroids)?, d as i32)?),
        Arc::new(UInt64Array::from(counts.to_vec())),
    ];
    Ok(RecordBatch::try_new(centroids_schema(d as i32), cols)?)
}

/// The K x D centroids of a view, in cluster order, and their counts. Column types are
/// checked: a table of another layout is an error naming the artifact and the column.
pub fn read_centroids(a: &Artifact, view: u8) -> Result<(Tensor, Vec<u64>), StageError> {
    let mut rows: Vec<(u32, Vec<f32>, u64)> = Vec::new();
    for b in a.batches() {
        centroid_rows(&b?, view, &mut rows)
            .map_err(|e| StageError::msg(format!("centroids artifact {}: {e}", a.key())))?;
    }
    if rows.is_empty() {
        return Err(StageError::msg(format!(
            "centroids artifact {} has no rows for view {view}",
            a.key()
        )));
    }
    rows.sort_by_key(|r| r.0);
    let dim = rows[0].1.len() as i64;
    let k = rows.len() as i64;
    let flat: Vec<f32> = rows.iter().flat_map(|r| r.1.iter().copied()).collect();
    Ok((
        Tensor::from_slice(&flat).reshape([k, dim]),
        rows.iter().map(|r| r.2).collect(),
    ))
}

/// Appends one centroids batch's rows of `view` to `rows`.
fn centroid_rows(
    b: &RecordBatch,
    view: u8,
    rows: &mut Vec<(u32, Vec<f32>, u64)>,
) -> Result<(), StageError> {
    let views = column::<UInt8Array>(b, "view")?;
    let clusters = column::<UInt32Array>(b, "cluster")?;
    let counts = column::<UInt64Array>(b, "count")?;
    let list = column::<FixedSizeListArray>(b, "centroid")?;
    let values = list
        .values()
        .as_any()
        .downcast_ref::<Float32Array>()
        .ok_or_else(|| {
            StageError::msg(format!(
                "column `centroid` holds lists of {}, not of Float32",
                list.value_type()
            ))
        })?;
    let d = list.value_length() as usize;
    for i in 0..b.num_rows() {
        if views.value(i) == view {
            let at = list.value_offset_at(i);
            let v = values.values()[at..at + d].to_vec();
            rows.push((clusters.value(i), v, counts.value(i)));
        }
    }
    Ok(())
}

/// Labels: one row per image and view; `labels` holds H*W cluster ids, one byte each
/// (two, little-endian, when K > 256).
pub fn labels_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("image", DataType::UInt32, false),
        Field::new("view", DataType::UInt8, false),
        Field::new("height", DataType::UInt16, false),
        Field::new("width", DataType::UInt16, false),
        Field::new("labels", DataType::Binary, false),
    ]))
}

pub fn labels_batch(
    images: &[u32],
    view: u8,
    labels: &Tensor,
    k: usize,
) -> Result<RecordBatch, StageError> {
    let (b, h, w) = labels.size3()?;
    let flat = Vec::<i64>::try_from(labels.to_device(tch::Device::Cpu).flatten(0, -1))?;
    let per = (h * w) as usize;
    let blobs: Vec<Vec<u8>> = (0..b as usize)
        .map(|i| {
            let px = &flat[i * per..(i + 1) * per];
            if k <= 256 {
                px.iter().map(|&v| v as u8).collect()
            } else {
                px.iter().flat_map(|&v| (v as u16).to_le_bytes()).collect()
            }
        })
        .collect();
    let cols: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from(images.to_vec())),
        Arc::new(UInt8Array::from(vec![view; b as usize])),
        Arc::new(UInt16Array::from(vec![h as u16; b as usize])),
        Arc::new(UInt16Array::from(vec![w as u16; b as usize])),
        Arc::new(BinaryArray::from_iter_values(blobs.iter())),
    ];
    Ok(RecordBatch::try_new(labels_schema(), cols)?)
}

/// All labels of a view: image id -> H x W i64 tensor.
pub fn read_labels(
    a: &Artifact,
    view: u8,
    k: usize,
) -> Result<std::collections::HashMap<u32, Tensor>, StageError> {
    let mut out = std::collections::HashMap::new();
    for b in a.batches() {
        let b = b?;
        let images = column::<UInt32Array>(&b, "image")?;
        let views = column::<UInt8Array>(&b, "view")?;
        let hs = column::<UInt16Array>(&b, "height")?;
        let ws = column::<UInt16Array>(&b, "width")?;
        let blobs = column::<BinaryArray>(&b, "labels")?;
        for i in 0..b.num_rows() {
            if views.value(i) != view {
                continue;
            }
            let (h, w) = (hs.value(i) as i64, ws.value(i) as i64);
            let v: Vec<i64> = if k <= 256 {
                blobs.value(i).iter().map(|&x| x as i64).collect()
            } else {
                blobs
                    .value(i)
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]) as i64)
                    .collect()
            };
            if v.len() as i64 != h * w {
                return Err(StageError::msg(format!(
                    "labels of image {} view {view} hold {} values, not {h}x{w}",
                    images.value(i),
                    v.len()
                )));
            }
            out.insert(images.value(i), Tensor::from_slice(&v).reshape([h, w]));
        }
    }
    Ok(out)
}

/// Cluster weights: view, cluster, count, weight.
pub fn weights_batch(view: u8, counts: &[u64], weights: &[f64]) -> Result<RecordBatch, StageError> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("view", DataType::UInt8, false),
        Field::new("cluster", DataType::UInt32, false),
        Field::new("count", DataType::UInt64, false),
        Field::new("weight", DataType::Float64, false),
    ]));
    let k = counts.len();
    let cols: Vec<ArrayRef> = vec![
        Arc::new(UInt8Array::from(vec![view; k])),
        Arc::new(UInt32Array::from((0..k as u32).collect::<Vec<_>>())),
        Arc::new(UInt64Array::from(counts.to_vec())),
        Arc::new(Float64Array::from(weights.to_vec())),
    ];
    Ok(RecordBatch::try_new(schema, cols)?)
}

pub fn read_weights(a: &Artifact, view: u8) -> Result<Vec<f64>, StageError> {
    Ok(read_weight_rows(a, view)?
        .into_iter()
        .map(|r| r.1)
        .collect())
}

/// The pixel count of each cluster of `view`, in cluster order.
pub fn read_counts(a: &Artifact, view: u8) -> Result<Vec<u64>, StageError> {
    Ok(read_weight_rows(a, view)?
        .into_iter()
        .map(|r| r.0)
        .collect())
}

/// (count, weight) per cluster of `view`, in cluster order.
fn read_weight_rows(a: &Artifact, view: u8) -> Result<Vec<(u64, f64)>, StageError> {
    let mut rows = Vec::new();
    for b in a.batches() {
        let b = b?;
        let views = column::<UInt8Array>(&b, "view")?;
        let clusters = column::<UInt32Array>(&b, "cluster")?;
        let counts = column::<UInt64Array>(&b, "count")?;
        let w = column::<Float64Array>(&b, "weight")?;
        for i in 0..b.num_rows() {
            if views.value(i) == view {
                rows.push((clusters.value(i), (counts.value(i), w.value(i))));
            }
        }
    }
    rows.sort_by_key(|r| r.0);
    Ok(rows.into_iter().map(|r| r.1).collect())
}

/// The `aug_params` table: one row per image, epoch and view.
pub fn aug_params_batch(rows: &[AugRow]) -> Result<RecordBatch, StageError> {
    let f = |name: &str, ty: DataType, nullable: bool| Field::new(name, ty, nullable);
    let schema = Arc::new(Schema::new(vec![
        f("image", DataType::UInt64, false),
        f("epoch", DataType::UInt32, false),
        f("view", DataType::UInt8, false),
        f("crop_frac", DataType::Float32, false),
        f("u_x", DataType::Float32, false),
        f("u_y", DataType::Float32, false),
        f("flip", DataType::Boolean, false),
        f("brightness", DataType::Float32, true),
        f("contrast", DataType::Float32, true),
        f("saturation", DataType::Float32, true),
        f("hue", DataType::Float32, true),
        f("grayscale", DataType::Boolean, false),
        f("blur_radius", DataType::Float32, true),
    ]));
    let opt = |g: fn(&AugRow) -> Option<f32>| -> ArrayRef {
        Arc::new(rows.iter().map(g).collect::<Float32Array>())
    };
    let cols: Vec<ArrayRef> = vec![
        Arc::new(rows.iter().map(|r| r.image).collect::<UInt64Array>()),
        Arc::new(rows.iter().map(|r| r.epoch).collect::<UInt32Array>()),
        Arc::new(rows.iter().map(|r| r.view).collect::<UInt8Array>()),
        Arc::new(rows.iter().map(|r| r.crop_frac).collect::<Float32Array>()),
        Arc::new(rows.iter().map(|r| r.u_x).collect::<Float32Array>()),
        Arc::new(rows.iter().map(|r| r.u_y).collect::<Float32Array>()),
        Arc::new(rows.iter().map(|r| Some(r.flip)).collect::<BooleanArray>()),
        opt(|r| r.brightness),
        opt(|r| r.contrast),
        opt(|r| r.saturation),
        opt(|r| r.hue),
        Arc::new(
            rows.iter()
                .map(|r| Some(r.grayscale))
                .collect::<BooleanArray>(),
        ),
        opt(|r| r.blur_radius),
    ];
    Ok(RecordBatch::try_new(schema, cols)?)
}

/// The `kmeans_stats` table: objective per Lloyd iteration or online update, per view.
pub fn kmeans_stats_batch(rows: &[StatRow]) -> Result<RecordBatch, StageError> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("view", DataType::UInt8, false),
        Field::new("iteration", DataType::UInt32, false),
        Field::new("objective", DataType::Float64, false),
        Field::new("empty_repaired", DataType::UInt64, false),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(rows.iter().map(|r| r.view).collect::<UInt8Array>()),
        Arc::new(rows.iter().map(|r| r.iteration).collect::<UInt32Array>()),
        Arc::new(rows.iter().map(|r| r.objective).collect::<Float64Array>()),
        Arc::new(
            rows.iter()
                .map(|r| r.empty_repaired)
                .collect::<UInt64Array>(),
        ),
    ];
    Ok(RecordBatch::try_new(schema, cols)?)
}

/// One optimizer step's figures: a row of the `train_metrics` table.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrainStep {
    pub epoch: u32,
    pub step: u32,
    pub loss: f64,
    pub loss_within: f64,
    pub loss_cross: f64,
    pub lr: f64,
    pub images_per_s: f64,
}

/// The `train_metrics` table.
pub fn train_metrics_batch(rows: &[TrainStep]) -> Result<RecordBatch, StageError> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("epoch", DataType::UInt32, false),
        Field::new("step", DataType::UInt32, false),
        Field::new("loss", DataType::Float64, false),
        Field::new("loss_within", DataType::Float64, false),
        Field::new("loss_cross", DataType::Float64, false),
        Field::new("lr", DataType::Float64, false),
        Field::new("images_per_s", DataType::Float64, false),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(rows.iter().map(|r| r.epoch).collect::<UInt32Array>()),
        Arc::new(rows.iter().map(|r| r.step).collect::<UInt32Array>()),
        Arc::new(rows.iter().map(|r| r.loss).collect::<Float64Array>()),
        Arc::new(rows.iter().map(|r| r.loss_within).collect::<Float64Array>()),
        Arc::new(rows.iter().map(|r| r.loss_cross).collect::<Float64Array>()),
        Arc::new(rows.iter().map(|r| r.lr).collect::<Float64Array>()),
        Arc::new(
            rows.iter()
                .map(|r| r.images_per_s)
                .collect::<Float64Array>(),
        ),
    ];
    Ok(RecordBatch::try_new(schema, cols)?)
}

/// The `metrics` table: one row per evaluated epoch.
pub fn metrics_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("epoch", DataType::UInt32, false),
        Field::new("predictor", DataType::Utf8, false),
        Field::new("k", DataType::UInt32, false),
        Field::new("pixel_accuracy", DataType::Float64, false),
        Field::new("miou", DataType::Float64, false),
        Field::new("thing_miou", DataType::Float64, true),
        Field::new("stuff_miou", DataType::Float64, true),
        Field::new("valid_pixels", DataType::UInt64, false),
        // BatchNorm of the fresh k-means pass (train | eval); null for dot_product.
        Field::new("kmeans_bn", DataType::Utf8, true),
        Field::new(
            "per_class_iou",
            DataType::List(Arc::new(Field::new("item", DataType::Float64, true))),
            false,
        ),
        // After the dense CRF (evaluate's `crf`), with its own matching; null without one.
        Field::new("pixel_accuracy_crf", DataType::Float64, true),
        Field::new("miou_crf", DataType::Float64, true),
        Field::new(
            "per_class_iou_crf",
            DataType::List(Arc::new(Field::new("item", DataType::Float64, true))),
            true,
        ),
        // The linear probe's scores (evaluate's `probe` input): SUPERVISED, trained on the
        // ground truth, no matching; never part of the unsupervised figures above. Null
        // without a probe; the `_crf` pair also without `crf`.
        Field::new("linear_miou_supervised", DataType::Float64, true),
        Field::new("linear_accuracy_supervised", DataType::Float64, true),
        Field::new("linear_miou_supervised_crf", DataType::Float64, true),
        Field::new("linear_accuracy_supervised_crf", DataType::Float64, true),
    ]))
}

/// One evaluated epoch: a row of the `metrics` table.
pub struct EpochMetrics<'a> {
    pub epoch: u32,
    /// `nearest_centroid` or `dot_product_viewN`.
    pub predictor: &'a str,
    pub k: u32,
    pub scores: &'a Scores,
    /// BatchNorm of the fresh k-means pass (`train` | `eval`); `None` for dot_product.
    pub kmeans_bn: Option<&'a str>,
    /// The scores after the dense CRF, when one ran.
    pub crf: Option<&'a Scores>,
    /// The linear probe's supervised scores (with a `probe` input), and after the CRF.
    pub linear: Option<&'a Scores>,
    pub linear_crf: Option<&'a Scores>,
}

/// The `metrics` table's row for one epoch.
/// The largest `epoch` of metrics tables, if they have rows.
pub fn last_epoch(metrics: &[RecordBatch]) -> Result<Option<u32>, StageError> {
    let mut last = None;
    for b in metrics {
        let epochs = column::<UInt32Array>(b, "epoch")?;
        last = last.max(epochs.iter().flatten().max());
    }
    Ok(last)
}

pub fn metrics_batch(m: &EpochMetrics) -> Result<RecordBatch, StageError> {
    let s = m.scores;
    let cols: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from(vec![m.epoch])),
        Arc::new(StringArray::from(vec![m.predictor])),
        Arc::new(UInt32Array::from(vec![m.k])),
        Arc::new(Float64Array::from(vec![s.pixel_accuracy])),
        Arc::new(Float64Array::from(vec![s.miou])),
        Arc::new(Float64Array::from(vec![s.thing_miou])),
        Arc::new(Float64Array::from(vec![s.stuff_miou])),
        Arc::new(UInt64Array::from(vec![s.valid_pixels])),
        Arc::new(StringArray::from(vec![m.kmeans_bn])),
        Arc::new(ListArray::from_iter_primitive::<Float64Type, _, _>(vec![
            Some(s.per_class_iou.iter().map(|v| Some(*v)).collect::<Vec<_>>()),
        ])),
        Arc::new(Float64Array::from(vec![m.crf.map(|c| c.pixel_accuracy)])),
        Arc::new(Float64Array::from(vec![m.crf.map(|c| c.miou)])),
        Arc::new(ListArray::from_iter_primitive::<Float64Type, _, _>(vec![m
            .crf
            .map(|c| {
                c.per_class_iou.iter().map(|v| Some(*v)).collect::<Vec<_>>()
            })])),
        Arc::new(Float64Array::from(vec![m.linear.map(|c| c.miou)])),
        Arc::new(Float64Array::from(vec![m.linear.map(|c| c.pixel_accuracy)])),
        Arc::new(Float64Array::from(vec![m.linear_crf.map(|c| c.miou)])),
        Arc::new(Float64Array::from(vec![m
            .linear_crf
            .map(|c| c.pixel_accuracy)])),
    ];
    Ok(RecordBatch::try_new(metrics_schema(), cols)?)
}

/// A history batch in this version's metrics schema: columns it lacks (tables written before
/// they existed) are null, so one table holds every epoch.
pub fn with_metrics_schema(b: &RecordBatch) -> Result<RecordBatch, StageError> {
    let schema = metrics_schema();
    let cols = schema
        .fields()
        .iter()
        .map(|f| match b.column_by_name(f.name()) {
            Some(c) => Ok(c.clone()),
            None if f.is_nullable() => {
                Ok(arrow::array::new_null_array(f.data_type(), b.num_rows()))
            }
            None => Err(StageError::msg(format!(
                "the `history` metrics lack the column `{}`",
                f.name()
            ))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(schema, cols)?)
}

/// A `probe` artifact's rows: `probe` (`cluster` | `linear`), `index` (cluster or class),
/// `weight` (D values: a centroid as trained, not normalised, or a class's linear weights)
/// and `bias` (the class's bias; null for centroids).
pub fn probe_schema(dim: i32) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("probe", DataType::Utf8, false),
        Field::new("index", DataType::UInt32, false),
        Field::new("weight", list_field(dim), false),
        Field::new("bias", DataType::Float32, true),
    ]))
}

/// A trained cluster probe (K x D centroids) and linear probe (C x D weight, C bias).
pub struct ProbeWeights {
    pub centroids: Tensor,
    pub linear: Option<(Tensor, Tensor)>,
}

/// The `probe` table of `p`.
pub fn probe_batch(p: &ProbeWeights) -> Result<RecordBatch, StageError> {
    let (k, d) = p.centroids.size2()?;
    let mut kind = vec!["cluster"; k as usize];
    let mut index: Vec<u32> = (0..k as u32).collect();
    let mut values = tensor_f32(&p.centroids)?;
    let mut bias: Vec<Option<f32>> = vec![None; k as usize];
    if let Some((w, b)) = &p.linear {
        let (c, dw) = w.size2()?;
        if dw != d || b.size() != [c] {
            return Err(StageError::msg(format!(
                "linear probe {:?} + bias {:?} for {d}-channel centroids",
                w.size(),
                b.size()
            )));
        }
        kind.extend(std::iter::repeat_n("linear", c as usize));
        index.extend(0..c as u32);
        values.extend(tensor_f32(w)?);
        bias.extend(tensor_f32(b)?.into_iter().map(Some));
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(kind)),
        Arc::new(UInt32Array::from(index)),
        Arc::new(f32_list(values, d as i32)?),
        Arc::new(Float32Array::from(bias)),
    ];
    Ok(RecordBatch::try_new(probe_schema(d as i32), cols)?)
}

/// A `probe` artifact read back. Rows come in any order; each probe's indices must be
/// 0..n without gaps, and there must be centroids.
pub fn read_probe(a: &Artifact) -> Result<ProbeWeights, StageError> {
    let bad = |m: String| StageError::msg(format!("probe artifact {}: {m}", a.key()));
    let mut cluster: Vec<(u32, Vec<f32>)> = Vec::new();
    let mut linear: Vec<(u32, Vec<f32>, f32)> = Vec::new();
    let mut dim = None;
    for b in a.batches() {
        let b = b?;
        let kind = column::<StringArray>(&b, "probe")?;
        let index = column::<UInt32Array>(&b, "index")?;
        let list = column::<FixedSizeListArray>(&b, "weight")?;
        let bias = column::<Float32Array>(&b, "bias")?;
        let values = list
            .values()
            .as_any()
            .downcast_ref::<Float32Array>()
            .ok_or_else(|| bad(format!("`weight` holds {}", list.value_type())))?;
        let d = list.value_length() as usize;
        dim = Some(d);
        for i in 0..b.num_rows() {
            let at = list.value_offset_at(i);
            let v = values.values()[at..at + d].to_vec();
            match kind.value(i) {
                "cluster" => cluster.push((index.value(i), v)),
                "linear" if bias.is_valid(i) => linear.push((index.value(i), v, bias.value(i))),
                "linear" => return Err(bad(format!("linear row {} has no bias", index.value(i)))),
                other => return Err(bad(format!("unknown probe `{other}`"))),
            }
        }
    }
    let d = dim.unwrap_or(0) as i64;
    cluster.sort_by_key(|r| r.0);
    linear.sort_by_key(|r| r.0);
    if cluster.is_empty() {
        return Err(bad("no cluster probe rows".into()));
    }
    let gaps = |idx: &mut dyn Iterator<Item = u32>| idx.enumerate().any(|(i, j)| i as u32 != j);
    if gaps(&mut cluster.iter().map(|r| r.0)) || gaps(&mut linear.iter().map(|r| r.0)) {
        return Err(bad("probe indices are not 0..n".into()));
    }
    let k = cluster.len() as i64;
    let flat: Vec<f32> = cluster.into_iter().flat_map(|r| r.1).collect();
    let centroids = Tensor::from_slice(&flat).reshape([k, d]);
    let linear = (!linear.is_empty()).then(|| {
        let c = linear.len() as i64;
        let b: Vec<f32> = linear.iter().map(|r| r.2).collect();
        let w: Vec<f32> = linear.into_iter().flat_map(|r| r.1).collect();
        (
            Tensor::from_slice(&w).reshape([c, d]),
            Tensor::from_slice(&b),
        )
    });
    Ok(ProbeWeights { centroids, linear })
}

/// One probe training step: a row of the `probe_metrics` table.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProbeStep {
    pub epoch: u32,
    /// The pass over the training split (from 1) and the step within the stage (from 1).
    pub pass: u32,
    pub step: u32,
    pub cluster_loss: f64,
    /// Null without a linear probe, or when the batch had no labelled pixel.
    pub linear_loss: Option<f64>,
}

/// The `probe_metrics` table.
pub fn probe_metrics_batch(rows: &[ProbeStep]) -> Result<RecordBatch, StageError> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("epoch", DataType::UInt32, false),
        Field::new("pass", DataType::UInt32, false),
        Field::new("step", DataType::UInt32, false),
        Field::new("cluster_loss", DataType::Float64, false),
        Field::new("linear_loss", DataType::Float64, true),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(rows.iter().map(|r| r.epoch).collect::<UInt32Array>()),
        Arc::new(rows.iter().map(|r| r.pass).collect::<UInt32Array>()),
        Arc::new(rows.iter().map(|r| r.step).collect::<UInt32Array>()),
        Arc::new(
            rows.iter()
                .map(|r| r.cluster_loss)
                .collect::<Float64Array>(),
        ),
        Arc::new(rows.iter().map(|r| r.linear_loss).collect::<Float64Array>()),
    ];
    Ok(RecordBatch::try_new(schema, cols)?)
}

/// The `confusion` table: pixels per (class, cluster), every pair, zeros included.
pub fn confusion_batch(conf: &Confusion) -> Result<RecordBatch, StageError> {
    let (classes, k) = (conf.classes(), conf.clusters());
    let mut gt = Vec::with_capacity(classes * k);
    let mut cl = Vec::with_capacity(classes * k);
    let mut count = Vec::with_capacity(classes * k);
    for g in 0..classes {
        for c in 0..k {
            gt.push(g as u32);
            cl.push(c as u32);
            count.push(conf.get(g, c).unwrap_or(0));
        }
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("class", DataType::UInt32, false),
        Field::new("cluster", DataType::UInt32, false),
        Field::new("pixels", DataType::UInt64, false),
    ]));
    Ok(RecordBatch::try_new(
        schema,
        vec![
            Arc::new(UInt32Array::from(gt)) as ArrayRef,
            Arc::new(UInt32Array::from(cl)),
            Arc::new(UInt64Array::from(count)),
        ],
    )?)
}

/// A `confusion` table read back (class, cluster, pixels).
pub fn read_confusion(a: &Artifact) -> Result<Confusion, StageError> {
    let mut rows = Vec::new();
    for b in a.batches() {
        let b = b?;
        let class = column::<UInt32Array>(&b, "class")?;
        let cluster = column::<UInt32Array>(&b, "cluster")?;
        let pixels = column::<UInt64Array>(&b, "pixels")?;
        for i in 0..b.num_rows() {
            rows.push((
                class.value(i) as usize,
                cluster.value(i) as usize,
                pixels.value(i),
            ));
        }
    }
    Confusion::from_rows(&rows).map_err(|e| StageError::msg(format!("confusion table: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A probe table holds a row per centroid and per class, biases on the classes only.
    #[test]
    fn probe_tables_hold_both_probes() {
        let c = Tensor::from_slice(&[1f32, 2., 3., 4., 5., 6.]).reshape([3, 2]);
        let w = Tensor::from_slice(&[0.5f32, -1., 2., 0.25]).reshape([2, 2]);
        let b = Tensor::from_slice(&[0.1f32, -0.2]);
        let batch = probe_batch(&ProbeWeights {
            centroids: c.shallow_clone(),
            linear: Some((w.shallow_clone(), b.shallow_clone())),
        })
        .unwrap();
        assert_eq!(batch.num_rows(), 5);
        assert_eq!(batch.schema(), probe_schema(2));
        let bias = column::<Float32Array>(&batch, "bias").unwrap();
        assert_eq!(bias.null_count(), 3);
        let only = probe_batch(&ProbeWeights {
            centroids: c,
            linear: None,
        })
        .unwrap();
        assert_eq!(only.num_rows(), 3);
    }

    /// A history table written before `kmeans_bn` existed joins this version's table with
    /// nulls there; one lacking a required column is a named error.
    #[test]
    fn history_without_new_columns_gets_nulls() {
        // An empty metrics batch without the named columns.
        let without = |drop: &[&str]| {
            let fields: Vec<_> = metrics_schema()
                .fields()
                .iter()
                .filter(|f| !drop.contains(&f.name().as_str()))
                .cloned()
                .collect();
            let cols: Vec<ArrayRef> = fields
                .iter()
                .map(|f| arrow::array::new_empty_array(f.data_type()))
                .collect();
            RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap()
        };
        let out = with_metrics_schema(&without(&["kmeans_bn"])).unwrap();
        assert_eq!(out.schema(), metrics_schema());
        // Tables from before the dense CRF's columns.
        let crf = ["pixel_accuracy_crf", "miou_crf", "per_class_iou_crf"];
        let out = with_metrics_schema(&without(&crf)).unwrap();
        assert_eq!(out.schema(), metrics_schema());
        // Tables from before the linear probe's columns.
        let linear = [
            "linear_miou_supervised",
            "linear_accuracy_supervised",
            "linear_miou_supervised_crf",
            "linear_accuracy_supervised_crf",
        ];
        let out = with_metrics_schema(&without(&linear)).unwrap();
        assert_eq!(out.schema(), metrics_schema());
        let e = with_metrics_schema(&without(&["kmeans_bn", "miou"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`miou`"), "{e}");
    }

    /// A stored centroid list of another item type is a named error, not a panic
    /// (regression: `.expect("f32 list")`).
    #[test]
    fn centroids_of_another_item_type_are_a_named_error() {
        let good = centroids_batch(
            1,
            &Tensor::from_slice(&[1f32, 2., 3., 4.]).reshape([2, 2]),
            &[5, 6],
        )
        .unwrap();
        let mut rows = Vec::new();
        centroid_rows(&good, 1, &mut rows).unwrap();
        assert_eq!(rows, vec![(0, vec![1., 2.], 5), (1, vec![3., 4.], 6)]);

        let f64_list = FixedSizeListArray::try_new(
            Arc::new(Field::new("item", DataType::Float64, false)),
            2,
            Arc::new(arrow::array::Float64Array::from(vec![1., 2., 3., 4.])),
            None,
        )
        .unwrap();
        let schema = Schema::new(vec![
            Field::new("view", DataType::UInt8, false),
            Field::new("cluster", DataType::UInt32, false),
            Field::new("centroid", f64_list.data_type().clone(), false),
            Field::new("count", DataType::UInt64, false),
        ]);
        let bad = RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(UInt8Array::from(vec![1u8, 1])),
                Arc::new(UInt32Array::from(vec![0u32, 1])),
                Arc::new(f64_list),
                Arc::new(UInt64Array::from(vec![5u64, 6])),
            ],
        )
        .unwrap();
        let e = centroid_rows(&bad, 1, &mut rows).unwrap_err().to_string();
        assert!(e.contains("`centroid`") && e.contains("Float64"), "{e}");
        // A column of another type entirely names it too.
        let renamed = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new(
                "view",
                DataType::UInt32,
                false,
            )])),
            vec![Arc::new(UInt32Array::from(vec![1u32]))],
        )
        .unwrap();
        let e = centroid_rows(&renamed, 1, &mut rows)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`view` is UInt32"), "{e}");
    }
}
