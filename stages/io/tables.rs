//! Arrow schemas of picie's artifact tables and their conversions to and from tensors.
//! Every table is plain Arrow (integers, floats, fixed-size lists), so Python Polars reads
//! the Parquet files as they are.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryArray, FixedSizeListArray, Float16Array, Float32Array, Float64Array,
    RecordBatch, UInt16Array, UInt32Array, UInt64Array, UInt8Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use tch::{Kind, Tensor};

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
    fn arrow(self) -> DataType {
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

fn column<'a, T: 'static>(b: &'a RecordBatch, name: &str) -> Result<&'a T, StageError> {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| {
            StageError::msg(format!("table has no column `{name}` of the expected type"))
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
    let values: ArrayRef = match precision {
        Precision::F32 => Arc::new(Float32Array::from(tensor_f32(&flat)?)),
        Precision::F16 => {
            let halves = Vec::<half::f16>::try_from(flat.to_kind(Kind::Half).flatten(0, -1))?;
            Arc::new(Float16Array::from(halves))
        }
    };
    let list = FixedSizeListArray::try_new(
        Arc::new(Field::new("item", precision.arrow(), false)),
        d as i32,
        values,
        None,
    )?;
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

/// The K x D centroids of a view, in cluster order, and their counts.
pub fn read_centroids(a: &Artifact, view: u8) -> Result<(Tensor, Vec<u64>), StageError> {
    let mut rows: Vec<(u32, Vec<f32>, u64)> = Vec::new();
    for b in a.batches() {
        let b = b?;
        let views = column::<UInt8Array>(&b, "view")?;
        let clusters = column::<UInt32Array>(&b, "cluster")?;
        let counts = column::<UInt64Array>(&b, "count")?;
        let list = column::<FixedSizeListArray>(&b, "centroid")?;
        for i in 0..b.num_rows() {
            if views.value(i) == view {
                let v = list.value(i);
                let v = v.as_any().downcast_ref::<Float32Array>().expect("f32 list");
                rows.push((clusters.value(i), v.values().to_vec(), counts.value(i)));
            }
        }
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
    let mut rows = Vec::new();
    for b in a.batches() {
        let b = b?;
        let views = column::<UInt8Array>(&b, "view")?;
        let clusters = column::<UInt32Array>(&b, "cluster")?;
        let w = column::<Float64Array>(&b, "weight")?;
        for i in 0..b.num_rows() {
            if views.value(i) == view {
                rows.push((clusters.value(i), w.value(i)));
            }
        }
    }
    rows.sort_by_key(|r| r.0);
    Ok(rows.into_iter().map(|r| r.1).collect())
}
