//! The `knn` table: each image's nearest images of its split, one row per (image, rank):
//! image, rank (0 is the image itself), neighbour, similarity (cosine of the mean tokens).
//! Image ids are the split's, as the tokens store them. Parquet, so `picie show` and Polars
//! read it as it is; the manifest records k, the image count and the backbone's digest.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float32Array, RecordBatch, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use super::tables::column;
use picie_core::knn::Neighbours;
use picie_engine::artifact::{Artifact, ArtifactWriter};
use picie_engine::error::StageError;

/// Images per written batch (k rows each): bounds the writer's memory.
const IMAGES_PER_BATCH: usize = 4096;

pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("image", DataType::UInt32, false),
        Field::new("rank", DataType::UInt32, false),
        Field::new("neighbour", DataType::UInt32, false),
        Field::new("similarity", DataType::Float32, false),
    ]))
}

/// Writes `nn` (rows indexing `ids`) as table rows, image by image in `ids`' order.
pub fn write(
    w: &mut ArtifactWriter,
    ids: &[u32],
    nn: &Neighbours,
    backbone: &str,
) -> Result<(), StageError> {
    if nn.images() != ids.len() {
        return Err(StageError::msg("knn rows and image ids differ in count"));
    }
    let k = nn.k;
    w.set_meta("k", k as u64);
    w.set_meta("images", ids.len() as u64);
    w.set_meta("backbone", backbone);
    for start in (0..ids.len()).step_by(IMAGES_PER_BATCH) {
        let end = (start + IMAGES_PER_BATCH).min(ids.len());
        let rows = (end - start) * k;
        let mut image = Vec::with_capacity(rows);
        let mut rank = Vec::with_capacity(rows);
        for &id in &ids[start..end] {
            image.extend(std::iter::repeat_n(id, k));
            rank.extend(0..k as u32);
        }
        let neighbour = nn.neighbour[start * k..end * k]
            .iter()
            .map(|&j| ids[j as usize])
            .collect::<Vec<u32>>();
        let cols: Vec<ArrayRef> = vec![
            Arc::new(UInt32Array::from(image)),
            Arc::new(UInt32Array::from(rank)),
            Arc::new(UInt32Array::from(neighbour)),
            Arc::new(Float32Array::from(
                nn.similarity[start * k..end * k].to_vec(),
            )),
        ];
        w.write(&RecordBatch::try_new(schema(), cols)?)?;
    }
    Ok(())
}

/// A knn table read back: per image id, its neighbours' ids by rank (rank 0 itself).
#[derive(Debug, Clone, PartialEq)]
pub struct KnnTable {
    pub k: usize,
    pub backbone: String,
    /// (image, neighbours by rank), sorted by image.
    pub rows: Vec<(u32, Vec<u32>)>,
}

impl KnnTable {
    pub fn read(a: &Artifact) -> Result<Self, StageError> {
        let k = a.meta("k").and_then(|v| v.as_u64()).ok_or_else(|| {
            StageError::msg(format!(
                "artifact {} is not a knn table (no `k` in its manifest)",
                a.key()
            ))
        })? as usize;
        let mut by_image: std::collections::BTreeMap<u32, Vec<(u32, u32)>> = Default::default();
        for b in a.batches() {
            let b = b?;
            let (img, rank, nb) = (
                column::<UInt32Array>(&b, "image")?,
                column::<UInt32Array>(&b, "rank")?,
                column::<UInt32Array>(&b, "neighbour")?,
            );
            for i in 0..b.num_rows() {
                by_image
                    .entry(img.value(i))
                    .or_default()
                    .push((rank.value(i), nb.value(i)));
            }
        }
        let mut rows = Vec::with_capacity(by_image.len());
        for (img, mut r) in by_image {
            r.sort_unstable();
            if r.len() != k
                || r.iter()
                    .enumerate()
                    .any(|(i, &(rank, _))| rank as usize != i)
            {
                return Err(StageError::msg(format!(
                    "knn table {}: image {img} has ranks {:?}, not 0..{k}",
                    a.key(),
                    r.iter().map(|x| x.0).collect::<Vec<_>>()
                )));
            }
            rows.push((img, r.into_iter().map(|x| x.1).collect()));
        }
        Ok(Self {
            k,
            backbone: a
                .meta("backbone")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string(),
            rows,
        })
    }

    /// Image `image`'s neighbours by rank, if the table has it.
    pub fn of(&self, image: u32) -> Option<&[u32]> {
        self.rows
            .binary_search_by_key(&image, |r| r.0)
            .ok()
            .map(|i| self.rows[i].1.as_slice())
    }
}
