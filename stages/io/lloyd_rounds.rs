//! What k-means stores between the rounds of a sharded run: for Lloyd (`kmeans`), each
//! part's per-block statistics of one pass and the state (centroids, the repair RNG's
//! position, the iterations so far) that the round's join hands to the next round; for
//! `evaluate`'s fresh k-means, each part's feature rows. Every number is stored as it is
//! computed (f32 centroids and rows, f64 sums), so the rounds reproduce one process bit for
//! bit.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Float64Array, ListArray, RecordBatch, UInt32Array, UInt64Array, UInt8Array,
};
use arrow::datatypes::{DataType, Field, Float32Type, Float64Type, Schema, UInt64Type};
use picie_core::kmeans::{BlockStats, IterStat, SavedLloyd};
use picie_engine::artifact::Artifact;
use picie_engine::error::StageError;

use super::tables::column;

fn list(name: &str, item: DataType) -> Field {
    Field::new(name, DataType::new_list(item, true), false)
}

fn values<T>(l: &ListArray, i: usize, name: &str) -> Result<Vec<T::Native>, StageError>
where
    T: arrow::datatypes::ArrowPrimitiveType,
{
    let v = l.value(i);
    let a = v
        .as_any()
        .downcast_ref::<arrow::array::PrimitiveArray<T>>()
        .ok_or_else(|| StageError::msg(format!("column `{name}` holds the wrong type")))?;
    Ok(a.values().to_vec())
}

/// One view's blocks of one pass, one row per block, in block order.
pub fn blocks_batch(view: u8, blocks: &[BlockStats]) -> Result<RecordBatch, StageError> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("view", DataType::UInt8, false),
        Field::new("rows", DataType::UInt64, false),
        Field::new("objective", DataType::Float64, false),
        list("counts", DataType::UInt64),
        list("sums", DataType::Float64),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(UInt8Array::from(vec![view; blocks.len()])),
        Arc::new(blocks.iter().map(|b| b.rows).collect::<UInt64Array>()),
        Arc::new(blocks.iter().map(|b| b.objective).collect::<Float64Array>()),
        Arc::new(ListArray::from_iter_primitive::<UInt64Type, _, _>(
            blocks
                .iter()
                .map(|b| Some(b.counts.iter().map(|&c| Some(c)))),
        )),
        Arc::new(ListArray::from_iter_primitive::<Float64Type, _, _>(
            blocks.iter().map(|b| Some(b.sums.iter().map(|&s| Some(s)))),
        )),
    ];
    Ok(RecordBatch::try_new(schema, cols)?)
}

/// A part's blocks of `view`, in order.
pub fn read_blocks(a: &Artifact, view: u8) -> Result<Vec<BlockStats>, StageError> {
    let mut out = Vec::new();
    for b in a.batches() {
        let b = b?;
        let views = column::<UInt8Array>(&b, "view")?;
        let rows = column::<UInt64Array>(&b, "rows")?;
        let objective = column::<Float64Array>(&b, "objective")?;
        let counts = column::<ListArray>(&b, "counts")?;
        let sums = column::<ListArray>(&b, "sums")?;
        for i in (0..b.num_rows()).filter(|&i| views.value(i) == view) {
            out.push(BlockStats {
                rows: rows.value(i),
                objective: objective.value(i),
                counts: values::<UInt64Type>(counts, i, "counts")?,
                sums: values::<Float64Type>(sums, i, "sums")?,
            });
        }
    }
    Ok(out)
}

/// The state of each view after a round's join, one row per view.
pub fn state_batch(states: &[(u8, SavedLloyd)]) -> Result<RecordBatch, StageError> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("view", DataType::UInt8, false),
        Field::new("k", DataType::UInt32, false),
        list("centroids", DataType::Float32),
        // The repair RNG's word position, a u128, in two halves.
        Field::new("rng_hi", DataType::UInt64, false),
        Field::new("rng_lo", DataType::UInt64, false),
        Field::new("first_rows", DataType::UInt64, true),
        list("iter_objective", DataType::Float64),
        list("iter_repaired", DataType::UInt64),
    ]));
    let s = || states.iter().map(|(_, s)| s);
    let cols: Vec<ArrayRef> = vec![
        Arc::new(states.iter().map(|(v, _)| *v).collect::<UInt8Array>()),
        Arc::new(s().map(|s| s.k as u32).collect::<UInt32Array>()),
        Arc::new(ListArray::from_iter_primitive::<Float32Type, _, _>(
            s().map(|s| Some(s.centroids.iter().map(|&c| Some(c)))),
        )),
        Arc::new(
            s().map(|s| (s.rng_word_pos >> 64) as u64)
                .collect::<UInt64Array>(),
        ),
        Arc::new(s().map(|s| s.rng_word_pos as u64).collect::<UInt64Array>()),
        Arc::new(s().map(|s| s.first_rows).collect::<UInt64Array>()),
        Arc::new(ListArray::from_iter_primitive::<Float64Type, _, _>(
            s().map(|s| Some(s.iters.iter().map(|i| Some(i.objective)))),
        )),
        Arc::new(ListArray::from_iter_primitive::<UInt64Type, _, _>(s().map(
            |s| Some(s.iters.iter().map(|i| Some(i.empty_repaired as u64))),
        ))),
    ];
    Ok(RecordBatch::try_new(schema, cols)?)
}

/// The state of `view` that a round's join stored.
pub fn read_state(a: &Artifact, view: u8) -> Result<SavedLloyd, StageError> {
    for b in a.batches() {
        let b = b?;
        let views = column::<UInt8Array>(&b, "view")?;
        let Some(i) = (0..b.num_rows()).find(|&i| views.value(i) == view) else {
            continue;
        };
        let hi = column::<UInt64Array>(&b, "rng_hi")?.value(i) as u128;
        let lo = column::<UInt64Array>(&b, "rng_lo")?.value(i) as u128;
        let first = column::<UInt64Array>(&b, "first_rows")?;
        let objective = values::<Float64Type>(column(&b, "iter_objective")?, i, "iter_objective")?;
        let repaired = values::<UInt64Type>(column(&b, "iter_repaired")?, i, "iter_repaired")?;
        return Ok(SavedLloyd {
            centroids: values::<Float32Type>(column(&b, "centroids")?, i, "centroids")?,
            k: column::<UInt32Array>(&b, "k")?.value(i) as usize,
            rng_word_pos: (hi << 64) | lo,
            iters: objective
                .into_iter()
                .zip(repaired)
                .enumerate()
                .map(|(iteration, (objective, r))| IterStat {
                    iteration,
                    objective,
                    empty_repaired: r as usize,
                })
                .collect(),
            first_rows: first.is_valid(i).then(|| first.value(i)),
        });
    }
    Err(StageError::msg(format!(
        "the k-means state {} has no view {view}",
        a.key()
    )))
}

/// Feature rows (N x D, f32) as one table batch; stored as Arrow IPC, so they come back in
/// the batches they were written in.
pub fn rows_batch(rows: &tch::Tensor) -> Result<RecordBatch, StageError> {
    let (n, d) = rows.size2()?;
    let values = Vec::<f32>::try_from(
        rows.to_kind(tch::Kind::Float)
            .to_device(tch::Device::Cpu)
            .contiguous()
            .reshape([-1]),
    )?;
    let list = arrow::array::FixedSizeListArray::try_new(
        Arc::new(Field::new("item", DataType::Float32, false)),
        d as i32,
        Arc::new(arrow::array::Float32Array::from(values)),
        None,
    )?;
    debug_assert_eq!(list.len(), n as usize);
    let schema = Arc::new(Schema::new(vec![Field::new(
        "feature",
        list.data_type().clone(),
        false,
    )]));
    Ok(RecordBatch::try_new(schema, vec![Arc::new(list)])?)
}

/// The rows [`rows_batch`] stored, batch by batch.
pub fn read_rows(a: &Artifact) -> Result<Vec<tch::Tensor>, StageError> {
    let mut out = Vec::new();
    for b in a.batches() {
        let b = b?;
        let list = column::<arrow::array::FixedSizeListArray>(&b, "feature")?;
        let d = list.value_length() as i64;
        let v = list
            .values()
            .as_any()
            .downcast_ref::<arrow::array::Float32Array>()
            .ok_or_else(|| StageError::msg("feature rows are not f32"))?;
        let start = list.offset() * d as usize;
        let vals = &v.values()[start..start + b.num_rows() * d as usize];
        out.push(tch::Tensor::from_slice(vals).reshape([-1, d]));
    }
    Ok(out)
}
