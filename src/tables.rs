//! Arrow schemas of picie's artifact tables and their conversions to and from tensors.
//! Every table is plain Arrow (integers, floats, fixed-size lists), so Python Polars reads
//! the Parquet files as they are.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryArray, FixedSizeListArray, Float32Array, Float64Array, RecordBatch,
    UInt16Array, UInt32Array, UInt64Array, UInt8Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use tch::{Kind, Tensor};

use crate::artifact::Artifact;
use crate::error::StageError;

fn list_field(dim: i32) -> DataType {
    DataType::FixedSizeList(Arc::new(Field::new("item", DataType::Float32, false)), dim)
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

/// Per-pixel features: image, view, y, x, feature[D].
pub fn features_schema(dim: i32) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("image", DataType::UInt32, false),
        Field::new("view", DataType::UInt8, false),
        Field::new("y", DataType::UInt16, false),
        Field::new("x", DataType::UInt16, false),
        Field::new("feature", list_field(dim), false),
    ]))
}

/// A B x D x H x W feature map of one view as table rows (pixel-major per image).
pub fn features_batch(images: &[u32], view: u8, map: &Tensor) -> Result<RecordBatch, StageError> {
    let (b, d, h, w) = map.size4()?;
    if b as usize != images.len() {
        return Err(StageError::msg("feature map and image ids differ in count"));
    }
    let rows = (b * h * w) as usize;
    let values = tensor_f32(&map.permute([0, 2, 3, 1]))?;
    let mut image = Vec::with_capacity(rows);
    let mut ys = Vec::with_capacity(rows);
    let mut xs = Vec::with_capacity(rows);
    for &img in images {
        for y in 0..h {
            for x in 0..w {
                image.push(img);
                ys.push(y as u16);
                xs.push(x as u16);
            }
        }
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from(image)),
        Arc::new(UInt8Array::from(vec![view; rows])),
        Arc::new(UInt16Array::from(ys)),
        Arc::new(UInt16Array::from(xs)),
        Arc::new(f32_list(values, d as i32)?),
    ];
    Ok(RecordBatch::try_new(features_schema(d as i32), cols)?)
}

/// The features of one view of a batch, as an N x D tensor.
pub fn features_of_view(b: &RecordBatch, view: u8) -> Result<Tensor, StageError> {
    let views = column::<UInt8Array>(b, "view")?;
    let list = column::<FixedSizeListArray>(b, "feature")?;
    let dim = list.value_length() as i64;
    let vals = list
        .values()
        .as_any()
        .downcast_ref::<Float32Array>()
        .ok_or_else(|| StageError::msg("feature values are not f32"))?;
    let all = vals.values();
    let mut out = Vec::with_capacity(all.len());
    for i in 0..b.num_rows() {
        if views.value(i) == view {
            let s = i * dim as usize + list.offset() * dim as usize;
            out.extend_from_slice(&all[s..s + dim as usize]);
        }
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
