//! `stego`: one epoch of STEGO's correspondence distillation (`picie_core::stego`) on a
//! frozen ViT's stored tokens: the network's 1x1 head is trained as STEGO's head, each
//! image paired with a KNN partner drawn from a `knn` table (ranks 1..=`num_neighbors`)
//! and with `neg_samples` permuted images of its batch. No backbone forward pass: the
//! tokens are a `backbone` stage's (with `split`, the images `knn` ranked), and the
//! checkpoint's backbone must be the one that made them.
//!
//! In the epoch loop: `checkpoint: {from: stego.checkpoint, epoch: prev, first:
//! init.checkpoint}`; `evaluate` then reads `stego.checkpoint` as any trained network (the
//! head's variables are the network's). Every draw (the epoch's order, partners, sample
//! points, negatives, dropout masks) comes from a ChaCha stream of (seed, epoch, step).
//! The tokens of the split are held in memory as f16 (CamVid train: 150 MB).

use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray, UInt32Array, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::io::checkpoint::{self, AdamState};
use crate::io::knn_table::KnnTable;
use crate::io::ports::{CHECKPOINT, EVAL_TOKENS, KNN, STEGO_CORRELATIONS, STEGO_METRICS};
use crate::io::tokens::Tokens;
use crate::sections::PicieContext;
use picie_core::stego::{self, CorrHistogram, CorrLossConfig, Samples, StegoHead, StegoHeadConfig};
use picie_engine::{Context, ParamError, Port, Stage, StageError};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StegoParams {
    /// Adam for the head (5e-4 as released).
    pub lr: f64,
    pub betas: [f64; 2],
    pub eps: f64,
    /// Images per step (16 in the released ViT-S config).
    pub batch: usize,
    /// Steps per epoch; null: one pass over the split's images in a seeded order.
    pub steps: Option<usize>,
    /// A partner is drawn among ranks 1..=num_neighbors of the knn table (7 as released).
    pub num_neighbors: usize,
    /// Dropout2d on the head's input, and whether the loss sees dropped features (the
    /// release's `dropout: True`).
    pub dropout: f64,
    pub drop_features: bool,
    /// The loss, as the release names its settings (defaults: its active ViT-S config).
    pub pointwise: bool,
    pub zero_clamp: bool,
    pub stabalize: bool,
    pub feature_samples: i64,
    pub neg_samples: i64,
    pub pos_intra_weight: f64,
    pub pos_inter_weight: f64,
    pub neg_inter_weight: f64,
    pub pos_intra_shift: f64,
    pub pos_inter_shift: f64,
    pub neg_inter_shift: f64,
}

impl Default for StegoParams {
    fn default() -> Self {
        let l = CorrLossConfig::default();
        let h = StegoHeadConfig::default();
        Self {
            lr: 5e-4,
            betas: [0.9, 0.999],
            eps: 1e-8,
            batch: 16,
            steps: None,
            num_neighbors: 7,
            dropout: h.dropout,
            drop_features: h.drop_features,
            pointwise: l.pointwise,
            zero_clamp: l.zero_clamp,
            stabalize: l.stabalize,
            feature_samples: l.feature_samples,
            neg_samples: l.neg_samples,
            pos_intra_weight: l.pos_intra_weight,
            pos_inter_weight: l.pos_inter_weight,
            neg_inter_weight: l.neg_inter_weight,
            pos_intra_shift: l.pos_intra_shift,
            pos_inter_shift: l.pos_inter_shift,
            neg_inter_shift: l.neg_inter_shift,
        }
    }
}

impl StegoParams {
    pub fn loss(&self) -> CorrLossConfig {
        CorrLossConfig {
            pointwise: self.pointwise,
            zero_clamp: self.zero_clamp,
            stabalize: self.stabalize,
            feature_samples: self.feature_samples,
            neg_samples: self.neg_samples,
            pos_intra_weight: self.pos_intra_weight,
            pos_inter_weight: self.pos_inter_weight,
            neg_inter_weight: self.neg_inter_weight,
            pos_intra_shift: self.pos_intra_shift,
            pos_inter_shift: self.pos_inter_shift,
            neg_inter_shift: self.neg_inter_shift,
        }
    }
    fn head(&self) -> StegoHeadConfig {
        StegoHeadConfig {
            dropout: self.dropout,
            drop_features: self.drop_features,
            ..StegoHeadConfig::default()
        }
    }
}

/// One training step's losses, as the metrics table stores them.
struct StepRow {
    epoch: u32,
    step: u32,
    loss: f64,
    intra: f64,
    inter: f64,
    neg: f64,
    intra_cd: f64,
    inter_cd: f64,
    neg_cd: f64,
    intra_fd: f64,
    inter_fd: f64,
    neg_fd: f64,
    lr: f64,
    images_per_s: f64,
}

fn metrics_batch(rows: &[StepRow]) -> Result<RecordBatch, StageError> {
    let f = |name: &str| Field::new(name, DataType::Float64, false);
    let schema = Arc::new(Schema::new(vec![
        Field::new("epoch", DataType::UInt32, false),
        Field::new("step", DataType::UInt32, false),
        f("loss"),
        f("loss_intra"),
        f("loss_inter"),
        f("loss_neg"),
        f("cd_intra"),
        f("cd_inter"),
        f("cd_neg"),
        f("fd_intra"),
        f("fd_inter"),
        f("fd_neg"),
        f("lr"),
        f("images_per_s"),
    ]));
    let col = |g: fn(&StepRow) -> f64| -> ArrayRef {
        Arc::new(Float64Array::from_iter_values(rows.iter().map(g)))
    };
    let cols: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.epoch))),
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.step))),
        col(|r| r.loss),
        col(|r| r.intra),
        col(|r| r.inter),
        col(|r| r.neg),
        col(|r| r.intra_cd),
        col(|r| r.inter_cd),
        col(|r| r.neg_cd),
        col(|r| r.intra_fd),
        col(|r| r.inter_fd),
        col(|r| r.neg_fd),
        col(|r| r.lr),
        col(|r| r.images_per_s),
    ];
    Ok(RecordBatch::try_new(schema, cols)?)
}

/// One row per term and bin: epoch, term, lo, hi, count, fraction, and the term's shift.
fn correlations_batch(
    epoch: u32,
    h: &CorrHistogram,
    shifts: [f64; 3],
) -> Result<RecordBatch, StageError> {
    let bins = CorrHistogram::BINS;
    let terms = CorrHistogram::TERMS;
    let (mut lo, mut hi, mut count, mut frac, mut shift, mut term) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for t in 0..terms.len() {
        for b in 0..bins {
            let (l, u) = CorrHistogram::edges(b);
            lo.push(l);
            hi.push(u);
            count.push(h.counts[t][b]);
            frac.push(h.counts[t][b] as f64 / h.n[t].max(1) as f64);
            shift.push(shifts[t]);
            term.push(terms[t]);
        }
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("epoch", DataType::UInt32, false),
        Field::new("term", DataType::Utf8, false),
        Field::new("lo", DataType::Float64, false),
        Field::new("hi", DataType::Float64, false),
        Field::new("count", DataType::UInt64, false),
        Field::new("fraction", DataType::Float64, false),
        Field::new("shift", DataType::Float64, false),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from(vec![epoch; lo.len()])),
        Arc::new(StringArray::from(term)),
        Arc::new(Float64Array::from(lo)),
        Arc::new(Float64Array::from(hi)),
        Arc::new(UInt64Array::from(count)),
        Arc::new(Float64Array::from(frac)),
        Arc::new(Float64Array::from(shift)),
    ];
    Ok(RecordBatch::try_new(schema, cols)?)
}

/// The RNG of one step of one epoch (`step` u32::MAX: the epoch's order).
fn rng(seed: u64, epoch: u32, step: u32) -> ChaCha8Rng {
    // A tag keeps these streams apart from other stages' draws of the same seed.
    let mut r = ChaCha8Rng::seed_from_u64(seed ^ 0x5354_4547_4f5f_4b4e);
    r.set_stream(((epoch as u64) << 32) | step as u64);
    r
}

pub struct Stego(StegoParams);

impl Stage for Stego {
    type Params = StegoParams;
    const KIND: &'static str = "stego";
    // 2: mean feature correlations per term, and their histogram (`correlations`).
    const VERSION: u32 = 2;
    const DESCRIPTION: &'static str =
        "one epoch of STEGO's correspondence loss on stored tokens with KNN partners: checkpoint in, checkpoint out";

    fn inputs(_: &StegoParams) -> Vec<Port> {
        vec![EVAL_TOKENS, KNN, CHECKPOINT]
    }
    fn outputs(_: &StegoParams) -> Vec<Port> {
        vec![CHECKPOINT, STEGO_METRICS, STEGO_CORRELATIONS]
    }
    fn validate(p: &StegoParams) -> Vec<ParamError> {
        let mut e: Vec<ParamError> = p
            .loss()
            .problems()
            .into_iter()
            .chain(p.head().problems())
            .map(|(field, msg)| ParamError::new(field, msg))
            .collect();
        if !(p.lr.is_finite() && p.lr > 0.0) {
            e.push(ParamError::new("lr", "must be a positive number"));
        }
        if p.betas.iter().any(|b| !(0.0..1.0).contains(b)) {
            e.push(ParamError::new("betas", "each must be in [0, 1)"));
        }
        if p.batch < 2 {
            e.push(ParamError::new(
                "batch",
                "must be at least 2 (negatives are other images of the batch)",
            ));
        }
        if p.steps == Some(0) {
            e.push(ParamError::new("steps", "must be at least 1 (or null)"));
        }
        if p.num_neighbors == 0 {
            e.push(ParamError::new(
                "num_neighbors",
                "must be at least 1 (rank 0 is the image itself)",
            ));
        }
        e
    }
    fn new(p: StegoParams) -> Self {
        Self(p)
    }

    fn run(&mut self, ctx: &mut Context) -> Result<(), StageError> {
        let p = self.0.clone();
        let loss_cfg = p.loss();
        let device = ctx.device().tch();
        let mut m = checkpoint::load(ctx.input(CHECKPOINT.name)?, device)?;
        if !m.spec.is_vit() {
            return Err(StageError::msg(format!(
                "stego trains a ViT's 1x1 head on stored tokens; the checkpoint's network is {}",
                m.spec.arch
            )));
        }
        let tokens = Tokens::open(ctx.input(EVAL_TOKENS.name)?)?;
        tokens.check_backbone(&checkpoint::backbone_digest(&m)?)?;
        let vars = m.vs.variables();
        let head = StegoHead::from_vars(&vars, "head.", &p.head())
            .map_err(|e| StageError::msg(e.to_string()))?;

        // Every image's tokens, f16 in memory, in image-id order.
        let mut ids = Vec::new();
        let mut parts = Vec::new();
        for b in tokens.eval_batches() {
            ctx.check_cancelled()?;
            let (i, t) = b?;
            ids.extend(i.iter().map(|&x| x as u32));
            parts.push(t.to_kind(Kind::Half));
        }
        if ids.len() < 2 {
            return Err(StageError::msg(format!(
                "stego needs at least 2 images, the tokens hold {}",
                ids.len()
            )));
        }
        let all = Tensor::f_cat(&parts, 0)?;
        drop(parts);
        let row_of: std::collections::HashMap<u32, u32> = ids
            .iter()
            .enumerate()
            .map(|(r, &id)| (id, r as u32))
            .collect();
        let n = ids.len();
        let knn = KnnTable::read(ctx.input(KNN.name)?)?;
        if p.num_neighbors >= knn.k {
            return Err(StageError::msg(format!(
                "`num_neighbors: {}` needs a knn table of k > {0}; this one has k = {}",
                p.num_neighbors, knn.k
            )));
        }
        // Each image's partner candidates, as token rows.
        let mut partners: Vec<Vec<u32>> = Vec::with_capacity(n);
        for &id in &ids {
            let nb = knn.of(id).ok_or_else(|| {
                StageError::msg(format!(
                    "image {id} of the tokens has no row in the knn table: the knn stage \
                     ranked another split or another limit"
                ))
            })?;
            let rows = nb[..=p.num_neighbors]
                .iter()
                .map(|&j| {
                    row_of.get(&j).copied().ok_or_else(|| {
                        StageError::msg(format!(
                            "the knn table names image {j}, which the tokens do not hold"
                        ))
                    })
                })
                .collect::<Result<Vec<u32>, _>>()?;
            partners.push(rows);
        }

        let seed = ctx.seed();
        let epoch = ctx.epoch().unwrap_or(0);
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut rng(seed, epoch, u32::MAX));
        let batches: Vec<Vec<usize>> = {
            let per_pass: Vec<Vec<usize>> = order
                .chunks(p.batch)
                .filter(|c| c.len() >= 2)
                .map(<[usize]>::to_vec)
                .collect();
            let steps = p.steps.unwrap_or(per_pass.len());
            per_pass.iter().cycle().take(steps).cloned().collect()
        };
        ctx.progress().set_length(batches.len() as u64);
        let mut adam = m.adam.take().unwrap_or_else(|| AdamState::new(&m.vs));
        let mut rows = Vec::with_capacity(batches.len());
        let mut hist = CorrHistogram::default();
        let t0 = Instant::now();
        let mut seen = 0usize;
        for (s, batch) in batches.iter().enumerate() {
            ctx.check_cancelled()?;
            let step = s as u32 + 1;
            let mut r = rng(seed, epoch, step);
            let mine: Vec<i64> = batch.iter().map(|&i| i as i64).collect();
            let theirs: Vec<i64> = batch
                .iter()
                .map(|&i| {
                    // Lists hold num_neighbors + 1 rows (checked above): always a partner.
                    let j = stego::draw_partner(&partners[i], p.num_neighbors, &mut r);
                    i64::from(j.unwrap_or(partners[i][0]))
                })
                .collect();
            let take = |rows: &[i64]| -> Result<Tensor, StageError> {
                Ok(all
                    .f_index_select(0, &Tensor::from_slice(rows))?
                    .f_to_device(device)?
                    .f_to_kind(Kind::Float)?)
            };
            let (x, x_pos) = (take(&mine)?, take(&theirs)?);
            let samples = Samples::draw(batch.len(), &loss_cfg, &mut r);
            let err = |e: picie_core::stego::StegoError| StageError::msg(e.to_string());
            let (f, code) = head.forward_t(&x, Some(&mut r)).map_err(err)?;
            let (f_pos, code_pos) = head.forward_t(&x_pos, Some(&mut r)).map_err(err)?;
            let terms =
                stego::correspondence_loss(&loss_cfg, &f, &f_pos, &code, &code_pos, &samples)
                    .map_err(err)?;
            terms.total.backward();
            adam.step(&m.vs, p.lr, (p.betas[0], p.betas[1]), p.eps, 0.0);
            checkpoint::zero_grads(&m.vs);
            seen += batch.len();
            hist.add(&terms).map_err(err)?;
            let v = |t: &Tensor| t.double_value(&[]);
            let fd = |t: &Tensor| t.mean(Kind::Double).double_value(&[]);
            let row = StepRow {
                epoch,
                step,
                loss: v(&terms.total),
                intra: v(&terms.intra),
                inter: v(&terms.inter),
                neg: v(&terms.neg),
                intra_cd: terms.intra_cd,
                inter_cd: terms.inter_cd,
                neg_cd: terms.neg_cd,
                intra_fd: fd(&terms.intra_fd),
                inter_fd: fd(&terms.inter_fd),
                neg_fd: fd(&terms.neg_fd),
                lr: p.lr,
                images_per_s: seen as f64 / t0.elapsed().as_secs_f64().max(1e-9),
            };
            if !row.loss.is_finite() {
                return Err(StageError::msg(format!(
                    "the loss is {} at epoch {epoch}, step {step}: non-finite tokens?",
                    row.loss
                )));
            }
            ctx.progress().inc(1);
            ctx.progress().set_message(format!("loss {:.4}", row.loss));
            rows.push(row);
        }
        drop(head);
        m.adam = Some(adam);
        let out = ctx.output(CHECKPOINT.name)?;
        out.set_meta("epoch", epoch);
        out.set_meta("seed", seed);
        checkpoint::save(out, &m)?;
        ctx.output(STEGO_METRICS.name)?
            .write(&metrics_batch(&rows)?)?;
        let shifts = [p.pos_intra_shift, p.pos_inter_shift, p.neg_inter_shift];
        let out = ctx.output(STEGO_CORRELATIONS.name)?;
        out.write(&correlations_batch(epoch, &hist, shifts)?)?;
        for (t, name) in CorrHistogram::TERMS.iter().enumerate() {
            // What a shift sweep starts from: the mean and the share each shift attracts.
            out.set_meta(&format!("fd_mean_{name}"), hist.mean(t));
            out.set_meta(&format!("attracted_{name}"), hist.above(t, shifts[t]));
        }
        Ok(())
    }
}
