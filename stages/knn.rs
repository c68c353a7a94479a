//! `knn`: each image's nearest images of a split, as STEGO's `precompute_knns.py` finds
//! training partners, from a `backbone` stage's stored evaluation-crop tokens (no forward
//! pass): per image the L2-normalised spatial mean of its patch tokens, cosine top-k over
//! the split, rank 0 the image itself (`picie_core::knn`). Memory is the N x C mean tokens
//! plus the N x k table; the tokens stream through batch by batch.
//!
//! The table (`io::knn_table`) is a plain Parquet artifact: `picie show STAGE.knn`, Polars.

use half::slice::HalfFloatSliceExt;
use serde::{Deserialize, Serialize};

use crate::io::knn_table;
use crate::io::ports::{EVAL_TOKENS, KNN};
use crate::io::tables::column;
use crate::io::tokens::{Tokens, EVAL_VIEW};
use arrow::array::{
    Array, FixedSizeListArray, Float16Array, Float32Array, UInt32Array, UInt8Array,
};
use picie_core::knn::{self, KnnError};
use picie_engine::{Context, ParamError, Port, Stage, StageError};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KnnParams {
    /// Neighbours kept per image, itself included at rank 0 (30 as released). Must be less
    /// than the split's image count.
    pub k: usize,
}

impl Default for KnnParams {
    fn default() -> Self {
        Self { k: 30 }
    }
}

pub struct Knn(KnnParams);

/// Every image's unit mean token, straight from the stored Arrow columns (one pass, no
/// per-image tensor): (image ids, N x C values), sorted by image id.
fn mean_tokens(ctx: &Context, tokens: &Tokens) -> Result<(Vec<u32>, Vec<f32>), StageError> {
    let c = tokens.shape[0] as usize;
    let a = ctx.input(EVAL_TOKENS.name)?;
    let mut ids = Vec::new();
    let mut emb = Vec::new();
    let mut buf = Vec::new();
    for b in a.batches() {
        ctx.check_cancelled()?;
        let b = b?;
        let image = column::<UInt32Array>(&b, "image")?;
        let view = column::<UInt8Array>(&b, "view")?;
        let list = column::<FixedSizeListArray>(&b, "tokens")?;
        let len = list.value_length() as usize;
        let values = list.values();
        let (f16, f32) = (
            values.as_any().downcast_ref::<Float16Array>(),
            values.as_any().downcast_ref::<Float32Array>(),
        );
        for i in 0..b.num_rows() {
            if view.value(i) != EVAL_VIEW {
                return Err(StageError::msg(format!(
                    "artifact {} holds training views, not evaluation crops: give knn the \
                     tokens of a `backbone` stage with `split`",
                    a.key()
                )));
            }
            let at = list.value_offset_at(i);
            let row: &[f32] = match (f16, f32) {
                (Some(h), _) => {
                    buf.resize(len, 0.0);
                    h.values()[at..at + len].convert_to_f32_slice(&mut buf);
                    &buf
                }
                (None, Some(f)) => &f.values()[at..at + len],
                _ => {
                    return Err(StageError::msg(format!(
                        "token values are {}, not f32 or f16",
                        values.data_type()
                    )))
                }
            };
            knn::push_unit_mean(row, c, &mut emb).map_err(|e| match e {
                KnnError::NotFinite { .. } => StageError::msg(format!(
                    "image {} has non-finite tokens (NaN or infinity) in artifact {}",
                    image.value(i),
                    a.key()
                )),
                other => StageError::msg(other.to_string()),
            })?;
            ids.push(image.value(i));
            ctx.progress().inc(1);
        }
    }
    // Written in image order by one pass, or by parts joined in order; sort to be sure.
    if ids.windows(2).any(|w| w[0] >= w[1]) {
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| ids[i]);
        if let Some(w) = order.windows(2).find(|w| ids[w[0]] == ids[w[1]]) {
            return Err(StageError::msg(format!(
                "image {} appears twice in the tokens of artifact {}",
                ids[w[0]],
                a.key()
            )));
        }
        let sorted: Vec<f32> = order
            .iter()
            .flat_map(|&i| emb[i * c..(i + 1) * c].iter().copied())
            .collect();
        ids = order.iter().map(|&i| ids[i]).collect();
        emb = sorted;
    }
    Ok((ids, emb))
}

impl Stage for Knn {
    type Params = KnnParams;
    const KIND: &'static str = "knn";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str =
        "each image's k nearest images of a split by mean backbone token (STEGO's KNN partners)";

    fn inputs(_: &KnnParams) -> Vec<Port> {
        vec![EVAL_TOKENS]
    }
    fn outputs(_: &KnnParams) -> Vec<Port> {
        vec![KNN]
    }
    fn validate(p: &KnnParams) -> Vec<ParamError> {
        let mut e = Vec::new();
        if p.k == 0 {
            e.push(ParamError::new(
                "k",
                "must be at least 1 (rank 0 is the image itself; 30 as released)",
            ));
        }
        e
    }
    /// The same tokens give the same table: no seed, no epoch.
    fn seeded(_: &KnnParams) -> bool {
        false
    }
    fn key_epoch(_: &KnnParams, _: u32) -> Option<u32> {
        None
    }
    fn new(p: KnnParams) -> Self {
        Self(p)
    }

    fn run(&mut self, ctx: &mut Context) -> Result<(), StageError> {
        let k = self.0.k;
        let tokens = Tokens::open(ctx.input(EVAL_TOKENS.name)?)?;
        let (ids, emb) = mean_tokens(ctx, &tokens)?;
        let n = ids.len();
        if k >= n {
            return Err(StageError::msg(format!(
                "`k: {k}` needs more images than the tokens hold: {n} image(s) in artifact {}; \
                 k must be less than the number of images (rank 0 is the image itself)",
                ctx.input(EVAL_TOKENS.name)?.key()
            )));
        }
        ctx.progress().set_position(0);
        ctx.progress().set_length(n as u64);
        // The table does not depend on the thread count: not a param, not in the key.
        let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
        let nn = knn::top_k(
            &emb,
            tokens.shape[0] as usize,
            k,
            knn::DEFAULT_BLOCK,
            threads,
            |rows| {
                ctx.progress().inc(rows as u64);
                !ctx.is_cancelled()
            },
        )
        .map_err(|e| match e {
            KnnError::Cancelled => StageError::Cancelled,
            other => StageError::msg(other.to_string()),
        })?;
        drop(emb);
        knn_table::write(ctx.output(KNN.name)?, &ids, &nn, &tokens.backbone)
    }
}
