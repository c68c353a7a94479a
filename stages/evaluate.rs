//! `evaluate`: the release's final protocol. Fresh k-means on the training images' features
//! (centre crops, no augmentation, BatchNorm as set by `bn`, below), then every validation pixel gets
//! its cluster (nearest centroid, scores upsampled bilinearly to the label size), clusters
//! are matched to classes (Hungarian, or majority when over-clustering), and pixel accuracy
//! and mIoU are computed.
//!
//! BatchNorm during the fresh k-means pass (`bn`): the release's final evaluation calls its
//! k-means with the model in train mode (`run_mini_batch_kmeans(..., view=-1)` sets
//! `model.train()`), over a shuffled loader. So the training images' features use batch
//! statistics and that pass updates the running statistics, and only then are the val
//! images predicted in eval mode with them. `bn: train` (the default) does exactly that and
//! also stores the network it predicted with (`checkpoint`); `bn: eval` uses the checkpoint's
//! running statistics for both passes. The difference is small after training but large for
//! an untrained network, whose running statistics are still mean 0, variance 1. A network
//! without BatchNorm gives identical results both ways. The `kmeans_bn` column of the metrics
//! says which ran. The metrics of earlier epochs come in through `history`, so one
//! table holds them all. The centroids the predictions used are stored too (`centroids`),
//! so `picie report` draws exactly the evaluated predictions.
//!
//! Dense CRF (`crf`, off by default): the val predictions are also refined by a fully
//! connected CRF (`picie_core::crf`, STEGO's settings unless given) on the evaluation crop's
//! RGB, with the soft form of the predictor (softmax of its scores as cosine similarities
//! over `crf.temperature`) as the unary, and the metrics before and after are both stored
//! (`miou_crf`, `pixel_accuracy_crf`, `per_class_iou_crf`; the CRF's labels get their own
//! cluster-to-class matching). The CRF runs on `threads` threads, a few images at a time.
//!
//! Probes (`probe` input, from a `probe` stage on the same checkpoint): `predictor:
//! cluster_probe` predicts val with the trained cluster probe's centroids (cosine
//! similarity; no fresh k-means; k is the probe's, matched as any clusters are; the CRF's
//! soft form is STEGO's softmax(2 cos) at the default `crf.temperature` 0.5). With a probe
//! the linear probe is scored on val too, whatever the predictor: its argmax is a class, no
//! matching, scored into `linear_miou_supervised` / `linear_accuracy_supervised` (and their
//! `_crf` pair with `crf`, its unary -log softmax of the logits). It was trained on the
//! ground truth: a supervised measure of the code, kept apart from the unsupervised columns.
//!
//! STEGO's evaluation options, off by default (the release's PiCIE protocol): `upsample:
//! code` upsamples the code (bilinear, align_corners false, then L2-normalised again) to
//! `res` before the scores instead of the scores after them (`scores`); `flip: true` averages
//! the val code with the flipped-back code of the horizontally flipped crop (then
//! L2-normalised again): the flipped image through the network, or with `val_tokens` the
//! flipped crops' tokens that `backbone` stores with `flip: true`. Both apply to the val
//! predictions (unsupervised and linear) only; the fresh k-means pass is unchanged.
//!
//! Sharded: `dot_product` splits the val images. The fresh k-means with `bn: eval` runs in
//! two rounds: the parts store their share of the training features and the first join fits
//! k-means on them in order; the parts then predict their share of val with those centroids
//! and the second join adds their confusion counts. `bn: train` runs whole.

use arrow::array::RecordBatch;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::Tensor;
use tracing::info;

use crate::io::checkpoint::{self, Loaded};
use crate::io::lloyd_rounds;
use crate::io::ports::{
    CENTROIDS, CHECKPOINT, CONFUSION, HISTORY, METRICS, PROBE, TRAIN_TOKENS, VAL_TOKENS,
};
use crate::io::tables::{self, EpochMetrics, ProbeWeights};
use crate::io::tokens::Tokens;
use crate::sections::PicieContext;
use picie_core::crf::{self, BilateralKernel, CrfConfig, CrfImage, GaussianKernel};
use picie_core::data::{preprocess, Split};
use picie_core::kmeans::{self, zero_minibatch_rows, KmeansConfig, Mode as KmeansMode, Online};
use picie_core::metrics::{self, Confusion, Matching};
use picie_core::model::{l2_normalize, BnMode};
use picie_core::predict::{self, Predictor};
use picie_core::stego::probe::{linear_logits, supervised_scores};
use picie_core::transforms::geometric::to_tensor_normalised;
use picie_engine::error::StageFailure;
use picie_engine::shard::{ROUND_STATE, ROUND_STATS};
use picie_engine::{Context, ParamError, Port, Stage, StageError};

mod fresh;
mod score;

use fresh::{fit_parts, fresh_config, train_images, train_pass, Fresh};
use score::{
    confusion_json, crf_labels, score, score_parts, score_summed, Confusions, CRF_CONFUSION,
    LINEAR_CONFUSION, LINEAR_CRF_CONFUSION,
};

/// What the fresh k-means clusters: the network's output, or a frozen backbone's stored
/// tokens themselves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeaturesParam {
    /// The network's L2-normalised output (the head on stored tokens, or the whole network).
    #[default]
    Head,
    /// The stored tokens, L2-normalised, no head: the frozen backbone's own clusters, the
    /// baseline a head trained on them has to beat (needs `train_tokens` and `val_tokens`).
    Tokens,
}

/// Where the val predictions are upsampled to `res`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpsampleParam {
    /// The scores (or a linear probe's logits) at the feature map's resolution, upsampled
    /// (the PiCIE release).
    #[default]
    Scores,
    /// The code, upsampled and L2-normalised again, then scored at `res` (STEGO's
    /// evaluation). Holds D x res x res values of one image at a time.
    Code,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchingParam {
    Hungarian,
    Majority,
}

/// The dense CRF of the val predictions: STEGO's settings by default (`crf: {}`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CrfParams {
    /// Mean-field iterations (STEGO: 10).
    pub iterations: usize,
    /// The position kernel: `sxy` in pixels, `compat` its Potts weight (STEGO: 1, 3).
    pub gaussian: GaussianKernel,
    /// The position + RGB kernel: `sxy` in pixels, `srgb` in 0..255 units, `compat` its
    /// Potts weight (STEGO: 67, 3, 4).
    pub bilateral: BilateralKernel,
    /// The soft form of the hard predictors: p = softmax(cos(z, mu) / temperature) over
    /// clusters (exactly so for unit-norm centroids; `nearest_centroid` uses -|z - mu|^2 / 2,
    /// which ranks as it predicts), clipped below at 1e-5 as pydensecrf does. Lower is more
    /// confident, so the CRF moves fewer pixels. STEGO's cluster probe: log_softmax(2 cos),
    /// i.e. 0.5.
    pub temperature: f64,
}

impl Default for CrfParams {
    fn default() -> Self {
        let c = CrfConfig::default();
        Self {
            iterations: c.iterations,
            gaussian: c.gaussian,
            bilateral: c.bilateral,
            temperature: 0.5,
        }
    }
}

impl CrfParams {
    pub fn config(&self) -> CrfConfig {
        CrfConfig {
            iterations: self.iterations,
            gaussian: self.gaussian,
            bilateral: self.bilateral,
        }
    }

    /// Every bad setting, each naming its field under `crf.`.
    fn problems(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .config()
            .problems()
            .into_iter()
            .map(|e| format!("`crf.{}` {}", e.field, e.reason))
            .collect();
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            out.push(format!(
                "`crf.temperature` must be positive and finite, got {}",
                self.temperature
            ));
        }
        out
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvaluateParams {
    /// Evaluation side: shorter side resized to it, centre crop (release: 320).
    pub res: u32,
    /// Clusters (null: the number of classes).
    pub k: Option<usize>,
    pub n_iter: usize,
    /// The fresh k-means: `lloyd` holds every training feature in memory (exact; fine for
    /// CamVid's 2.3M), `minibatch` is the release's scheme (full k-means on the first
    /// `init_rows` rows, then an online update every `batch_rows` rows), for data sets whose
    /// features do not fit (COCO-Stuff: 318M).
    pub mode: KmeansMode,
    pub init_rows: usize,
    pub batch_rows: usize,
    pub predictor: Predictor,
    pub matching: MatchingParam,
    pub batch: usize,
    pub threads: usize,
    /// Which view's training centroids `dot_product` uses (1 or 2).
    pub view: u8,
    /// BatchNorm in the fresh k-means pass over the training images (`nearest_centroid`
    /// only): `train` as released (batch statistics over shuffled batches, running statistics
    /// updated, then val predicted in eval mode with them), or `eval` (the checkpoint's
    /// running statistics throughout). Null: `train`.
    pub bn: Option<BnMode>,
    /// Use only the first N training / validation images (null: all).
    pub train_limit: Option<usize>,
    pub val_limit: Option<usize>,
    /// Dense CRF refinement of the val predictions, scored beside them (null: none; `{}`:
    /// STEGO's settings). Left out of the cache key when null, so keys stay what they were.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crf: Option<CrfParams>,
    /// What is clustered: `head` (the network's output) or `tokens` (a frozen backbone's
    /// stored tokens, no head). Left out of the cache key at its default.
    #[serde(skip_serializing_if = "is_head")]
    pub features: FeaturesParam,
    /// Where the val predictions are upsampled: `scores` (default, as released) or `code`
    /// (STEGO). Left out of the cache key at its default.
    #[serde(skip_serializing_if = "is_scores")]
    pub upsample: UpsampleParam,
    /// Average the val code with the flipped-back code of the horizontally flipped crop
    /// (STEGO's evaluation). With `val_tokens`, those must store the flipped crops
    /// (`backbone` with `flip: true`). Left out of the cache key when false.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub flip: bool,
}

fn is_head(f: &FeaturesParam) -> bool {
    *f == FeaturesParam::Head
}

fn is_scores(u: &UpsampleParam) -> bool {
    *u == UpsampleParam::Scores
}

impl Default for EvaluateParams {
    fn default() -> Self {
        Self {
            res: 320,
            k: None,
            n_iter: 20,
            mode: KmeansMode::Lloyd,
            init_rows: 1 << 20,
            batch_rows: 1 << 17,
            predictor: Predictor::NearestCentroid,
            matching: MatchingParam::Hungarian,
            batch: 16,
            threads: 2,
            view: 1,
            bn: None,
            train_limit: None,
            val_limit: None,
            crf: None,
            features: FeaturesParam::Head,
            upsample: UpsampleParam::Scores,
            flip: false,
        }
    }
}

impl EvaluateParams {
    /// The BatchNorm mode of the fresh k-means pass; `None` when there is no such pass.
    pub fn kmeans_bn(&self) -> Option<BnMode> {
        match self.predictor {
            // Stored tokens pass through no BatchNorm: the running statistics are moot.
            Predictor::NearestCentroid if self.features == FeaturesParam::Tokens => {
                Some(BnMode::Eval)
            }
            Predictor::NearestCentroid => Some(self.bn.unwrap_or(BnMode::Train)),
            Predictor::DotProduct | Predictor::ClusterProbe => None,
        }
    }
}

pub struct Evaluate(EvaluateParams);

impl Stage for Evaluate {
    type Params = EvaluateParams;
    const KIND: &'static str = "evaluate";
    // 2: the centroids used are an output. 3: `view`; dot_product's predictor names its view
    // and its k is the centroids'. 4: `bn` (train-mode fresh k-means by default, as released),
    // the `kmeans_bn` column, a shuffled train-mode pass. 5: the CRF's softmax sums a row in
    // four partial sums (marginals differ in the last bits).
    const VERSION: u32 = 5;
    const DESCRIPTION: &'static str =
        "fresh k-means + Hungarian-matched mIoU and pixel accuracy on the validation split";

    fn inputs(_: &EvaluateParams) -> Vec<Port> {
        vec![
            CHECKPOINT,
            CENTROIDS.optional(),
            HISTORY.optional(),
            TRAIN_TOKENS.optional(),
            VAL_TOKENS.optional(),
            PROBE.optional(),
        ]
    }
    fn outputs(p: &EvaluateParams) -> Vec<Port> {
        let mut out = vec![METRICS, CONFUSION, CENTROIDS];
        if p.kmeans_bn() == Some(BnMode::Train) {
            // The network with the statistics the train-mode pass left: what predicted val.
            out.push(CHECKPOINT);
        }
        out
    }
    fn validate(p: &EvaluateParams) -> Vec<ParamError> {
        let mut e = Vec::new();
        if p.res < 8 {
            e.push(ParamError::new("res", "must be at least 8"));
        }
        if p.k.is_some_and(|k| k < 2) {
            e.push(ParamError::new("k", "must be at least 2"));
        }
        for field in zero_minibatch_rows(p.init_rows, p.batch_rows) {
            e.push(ParamError::new(field, "must be positive"));
        }
        if p.bn.is_some() && p.predictor != Predictor::NearestCentroid {
            e.push(ParamError::new(
                "bn",
                "only `predictor: nearest_centroid` runs a fresh k-means pass; dot_product \
                 and cluster_probe predict with the checkpoint as it is",
            ));
        }
        if !(1..=2).contains(&p.view) {
            e.push(ParamError::new("view", "must be 1 or 2"));
        } else if p.view != 1 && p.predictor != Predictor::DotProduct {
            e.push(ParamError::new(
                "view",
                "only `predictor: dot_product` uses a view's centroids",
            ));
        }
        if p.features == FeaturesParam::Tokens && p.predictor != Predictor::NearestCentroid {
            e.push(ParamError::new(
                "features",
                "`tokens` clusters the stored tokens afresh; `dot_product` and \
                 `cluster_probe` predict with trained centroids of the head's output",
            ));
        }
        if p.batch == 0 || p.threads == 0 {
            e.push(ParamError::new(
                if p.batch == 0 { "batch" } else { "threads" },
                "must be at least 1",
            ));
        }
        // The plan places errors at a top-level param, so the block's line and column,
        // with the field inside it named in the message. Every predictor has a soft form
        // today (`Predictor::soft_scale`).
        for m in p.crf.iter().flat_map(CrfParams::problems) {
            e.push(ParamError::new("crf", m));
        }
        e
    }
    const SECTIONS: &'static [&'static str] = &[crate::sections::DATASET];
    /// With trained centroids (`dot_product`) evaluation is one pass over the val images:
    /// parts count their images' confusion, the join adds the counts (integers, so the
    /// same as one process) and scores them.
    fn shardable(p: &EvaluateParams) -> Result<(), String> {
        match p.kmeans_bn() {
            None | Some(BnMode::Eval) => Ok(()),
            Some(BnMode::Train) => Err(
                "its fresh k-means pass runs BatchNorm in train mode over shuffled batches, \
                 as released, which does not split (`bn: eval` does)"
                    .into(),
            ),
        }
    }
    /// The fresh k-means: its features, then val with its centroids.
    fn rounds(p: &EvaluateParams) -> u32 {
        if p.kmeans_bn().is_some() {
            2
        } else {
            1
        }
    }
    fn combine(p: &EvaluateParams, ctx: &mut Context) -> Result<(), StageError> {
        match ctx.round() {
            Some((0, _)) => return fit_parts(p, ctx),
            Some(_) => return score_parts(p, ctx),
            None => {}
        }
        // Every part predicted with the same centroids: the first part's are the run's.
        let centroids = ctx.parts(CENTROIDS.name)?[0].read_all()?;
        let k = centroids.iter().map(|b| b.num_rows()).sum::<usize>();
        let c_out = ctx.output(CENTROIDS.name)?;
        for b in &centroids {
            c_out.write(b)?;
        }
        c_out.set_meta("k", k);
        score_summed(ctx, p, CONFUSION.name)
    }
    fn new(p: EvaluateParams) -> Self {
        Self(p)
    }

    fn run(&mut self, ctx: &mut Context) -> Result<(), StageError> {
        let p = self.0.clone();
        let device = ctx.device().tch();
        let mut m = checkpoint::load(ctx.input(CHECKPOINT.name)?, device)?;
        m.channels_last();
        // Hashing the backbone's weights once serves both stored-token inputs.
        let digest = [TRAIN_TOKENS.name, VAL_TOKENS.name]
            .iter()
            .any(|p| ctx.has_input(p))
            .then(|| checkpoint::backbone_digest(&m))
            .transpose()?;
        let bn = p.kmeans_bn();
        let train_bn = bn == Some(BnMode::Train);
        let data = ctx.dataset()?.clone();
        let val = data.open(Split::Val)?;
        let classes = val.classes().len();
        let probe = read_probe(ctx, &p, &m, classes)?;
        // dot_product predicts with the training centroids, so their count is k; so does
        // cluster_probe with the probe's.
        let trained = match p.predictor {
            Predictor::ClusterProbe => {
                let Some(probe) = &probe else {
                    return Err(StageError::msg(
                        "predictor `cluster_probe` needs the `probe` input (a `probe` stage's \
                         `probe` on the same checkpoint)",
                    ));
                };
                let k = probe.centroids.size()[0] as usize;
                if let Some(want) = p.k.filter(|&want| want != k) {
                    return Err(StageError::msg(format!(
                        "k = {want} but the `probe` input's cluster probe has {k} centroids: \
                         leave `k` unset with `predictor: cluster_probe`, or give the probe \
                         stage `k: {want}`"
                    )));
                }
                // Unit centroids: the stored centroids then predict the same with any of the
                // predictors (`picie report` uses nearest_centroid's rule).
                let c = l2_normalize(&probe.centroids)?;
                Some((c.to_device(device), vec![0; k]))
            }
            Predictor::DotProduct => {
                if !ctx.has_input(CENTROIDS.name) {
                    return Err(StageError::msg(
                        "predictor `dot_product` needs the `centroids` input",
                    ));
                }
                let (c, counts) = tables::read_centroids(ctx.input(CENTROIDS.name)?, p.view)?;
                if let Some(k) = p.k.filter(|&k| k != counts.len()) {
                    return Err(StageError::msg(format!(
                        "k = {k} but the view-{} centroids number {}: leave `k` unset with \
                         `predictor: dot_product`",
                        p.view,
                        counts.len()
                    )));
                }
                Some((c.to_device(device), counts))
            }
            Predictor::NearestCentroid => None,
        };
        let k = trained
            .as_ref()
            .map_or(p.k.unwrap_or(classes), |(_, counts)| counts.len());
        let ignore = val.ignore_index();
        if p.matching == MatchingParam::Hungarian && k != classes {
            // Checked before any work: the matching would fail only at the end.
            return Err(StageError::msg(format!(
                "k = {k} clusters for {classes} classes: Hungarian matching needs k = classes \
                 (set `k` to the classes, or use `matching: majority` to over-cluster)"
            )));
        }

        let (centroids, counts) = match (trained, ctx.round()) {
            (Some(c), _) => c,
            // A part of the second round: the centroids the first round's join fitted.
            (None, Some((1, _))) => {
                let (c, counts) = tables::read_centroids(ctx.input(ROUND_STATE.name)?, 1)?;
                (c.to_device(device), counts)
            }
            (None, round) => {
                let cfg = fresh_config(&p, k, ctx.seed());
                if round.is_some() {
                    // A part of the first round: its share of the training features.
                    ctx.output(ROUND_STATS.name)?.use_ipc();
                    let images = train_pass(ctx, &m, &p, digest.as_deref(), &mut |ctx, rows| {
                        ctx.output(ROUND_STATS.name)?
                            .write(&lloyd_rounds::rows_batch(&rows)?)
                    })?;
                    ctx.output(ROUND_STATS.name)?.set_meta("images", images);
                    return Ok(());
                }
                let mut fresh = Fresh::new(&p, &cfg, device);
                let images = train_pass(ctx, &m, &p, digest.as_deref(), &mut |_, rows| {
                    fresh.push(rows)
                })?;
                covered(images, train_images(ctx, &p)?, TRAIN_TOKENS.name)?;
                fresh.finish(&cfg, device)?
            }
        };
        if p.features == FeaturesParam::Head {
            m.net.check_centroids(&centroids)?;
        }
        if ctx.round().is_none() {
            let c_out = ctx.output(CENTROIDS.name)?;
            c_out.write(&tables::centroids_batch(1, &centroids, &counts)?)?;
            c_out.set_meta("k", counts.len());
        }
        if train_bn {
            // Only the network: the optimizer state is not what predicted.
            m.adam = None;
            let out = ctx.output(CHECKPOINT.name)?;
            out.set_meta("bn_stats_from", "evaluate (train-mode fresh k-means pass)");
            checkpoint::save(out, &m)?;
        }

        let n = p.val_limit.map_or(val.len(), |l| l.min(val.len()));
        let mut conf = Confusion::new(classes, k)?;
        let mut conf_crf = p
            .crf
            .as_ref()
            .map(|_| Confusion::new(classes, k))
            .transpose()?;
        let mut cluster_px = vec![0u64; k];
        // The linear probe's predictions are classes: a classes x classes confusion.
        let linear = probe.as_ref().and_then(|p| p.linear.as_ref());
        let linear = linear.map(|(w, b)| (w.to_device(device), b.to_device(device)));
        let mut conf_linear = linear
            .as_ref()
            .map(|_| Confusion::new(classes, classes))
            .transpose()?;
        let mut conf_linear_crf = linear
            .as_ref()
            .and(p.crf.as_ref())
            .map(|_| Confusion::new(classes, classes))
            .transpose()?;
        // A part predicts its share of the val images (whole batches).
        let want = ctx.shard_items(n, p.batch);
        let ids: Vec<usize> = want.clone().collect();
        ctx.progress().set_length(ids.len() as u64);
        let val_tokens = open_tokens(ctx, VAL_TOKENS.name, digest.as_deref())?;
        if p.flip && val_tokens.as_ref().is_some_and(|t| !t.has_flips()) {
            return Err(no_flips());
        }
        let mut seen = 0;
        for item in passes(val_tokens.as_ref(), &ids, p.batch, want, 0..usize::MAX) {
            ctx.check_cancelled()?;
            let (chunk, tokens, flipped) = item?;
            seen += chunk.len();
            let chunk = chunk.as_slice();
            let loaded = preprocess::par_map(chunk, p.threads, |&i| {
                preprocess::load_eval(val.as_ref(), i, p.res).map_err(StageError::from)
            });
            let mut imgs = Vec::new();
            let mut masks = Vec::new();
            let mut rgbs = Vec::new();
            for r in loaded {
                let (img, mask) = r?;
                // With stored tokens only the masks are needed (and the crops for a CRF).
                if tokens.is_none() {
                    imgs.push(to_tensor_normalised(&img));
                }
                if p.crf.is_some() {
                    rgbs.push(img.into_raw());
                }
                masks.push(mask);
            }
            let res = p.res as i64;
            let (pred, scores, logits) = tch::no_grad(|| -> Result<_, StageError> {
                let z = match &tokens {
                    Some(t) => {
                        let z = code(&m, t, p.features)?;
                        match (p.flip, &flipped) {
                            (false, _) => z,
                            (true, Some(f)) => {
                                predict::flip_averaged(&z, &code(&m, f, p.features)?)
                            }
                            (true, None) => return Err(no_flips()),
                        }
                    }
                    None => {
                        let x = Tensor::stack(&imgs, 0).to_device(device);
                        let z = m.net.forward_t(&x, false)?;
                        if p.flip {
                            predict::flip_averaged(&z, &m.net.forward_t(&x.flip([3]), false)?)
                        } else {
                            z
                        }
                    }
                };
                // Scores (and the linear probe's logits) at `res` of code `z`.
                let score = |z: &Tensor| -> Result<(Tensor, Option<Tensor>), StageError> {
                    let up = predict::upsampled_scores(z, &centroids, p.predictor, res);
                    let logits = linear
                        .as_ref()
                        .map(|(w, b)| {
                            linear_logits(z, w, b)
                                .map(|l| predict::upsampled(&l, res))
                                .map_err(|e| StageError::msg(format!("the linear probe: {e}")))
                        })
                        .transpose()?;
                    Ok((up, logits))
                };
                let (up, logits) = match p.upsample {
                    UpsampleParam::Scores => score(&z)?,
                    // One image at a time: the upsampled code is D x res x res per image.
                    UpsampleParam::Code => {
                        let mut ups = Vec::new();
                        let mut logits = Vec::new();
                        for i in 0..z.size()[0] {
                            let zi = predict::upsampled_code(&z.narrow(0, i, 1), res);
                            let (u, l) = score(&zi)?;
                            ups.push(u);
                            logits.extend(l);
                        }
                        let logits = (!logits.is_empty()).then(|| Tensor::cat(&logits, 0));
                        (Tensor::cat(&ups, 0), logits)
                    }
                };
                Ok((up.argmax(1, false).to_device(tch::Device::Cpu), up, logits))
            })?;
            let pred = Vec::<i64>::try_from(pred.flatten(0, -1))?;
            let per = (p.res * p.res) as usize;
            let add_labels = |conf: &mut Confusion, labels: &[Vec<u32>]| {
                for (j, mask) in masks.iter().enumerate() {
                    if let Some(mask) = mask {
                        conf.add(&mask.data, &labels[j], Some(ignore))
                            .map_err(|e| StageError::context(val.id(chunk[j]), e))?;
                    }
                }
                Ok::<_, StageError>(())
            };
            if let (Some(c), Some(conf_crf)) = (&p.crf, conf_crf.as_mut()) {
                let soft = |s: &Tensor| predict::unary(s, p.predictor, c.temperature);
                let labels = crf_labels(c, &scores, &rgbs, &soft, p.threads, |j| val.id(chunk[j]))?;
                add_labels(conf_crf, &labels)?;
            }
            drop(scores);
            if let (Some(logits), Some(conf_linear)) = (&logits, conf_linear.as_mut()) {
                let classes_px = Vec::<i64>::try_from(
                    logits
                        .argmax(1, false)
                        .to_device(tch::Device::Cpu)
                        .flatten(0, -1),
                )?;
                let labels: Vec<Vec<u32>> = classes_px
                    .chunks(per)
                    .map(|c| c.iter().map(|&v| v as u32).collect())
                    .collect();
                add_labels(conf_linear, &labels)?;
                if let (Some(c), Some(conf)) = (&p.crf, conf_linear_crf.as_mut()) {
                    let labels =
                        crf_labels(c, logits, &rgbs, &predict::logits_unary, p.threads, |j| {
                            val.id(chunk[j])
                        })?;
                    add_labels(conf, &labels)?;
                }
            }
            drop(logits);
            for (j, mask) in masks.iter().enumerate() {
                let px: Vec<u32> = pred[j * per..(j + 1) * per]
                    .iter()
                    .map(|&v| v as u32)
                    .collect();
                for &c in &px {
                    cluster_px[c as usize] += 1;
                }
                if let Some(mask) = mask {
                    conf.add(&mask.data, &px, Some(ignore))
                        .map_err(|e| StageError::context(val.id(chunk[j]), e))?;
                }
            }
            ctx.progress().inc(chunk.len() as u64);
        }

        covered(seen, ids.len(), VAL_TOKENS.name)?;
        if ctx.shard().is_some() {
            // A part: its images' counts; the join adds them up and scores them.
            let out = match ctx.round() {
                Some(_) => ROUND_STATS.name,
                None => CONFUSION.name,
            };
            let out = ctx.output(out)?;
            out.write(&tables::confusion_batch(&conf)?)?;
            // The join adds these too; beside the table, so that table stays what a run
            // without a CRF or a probe writes.
            for (key, c) in [
                (CRF_CONFUSION, &conf_crf),
                (LINEAR_CONFUSION, &conf_linear),
                (LINEAR_CRF_CONFUSION, &conf_linear_crf),
            ] {
                if let Some(c) = c {
                    out.set_meta(key, confusion_json(c));
                }
            }
            return Ok(());
        }
        let is_thing: Option<Vec<bool>> = val.classes().iter().map(|c| c.is_thing).collect();
        score(
            ctx,
            &p,
            &Confusions {
                clusters: &conf,
                crf: conf_crf.as_ref(),
                linear: conf_linear.as_ref(),
                linear_crf: conf_linear_crf.as_ref(),
            },
            &is_thing,
            bn,
            Some(&cluster_px),
        )
    }
}

/// The `probe` input, when wired: checked against the network (the code's channels, the
/// val classes) and against the checkpoint it was trained on, which must be this one.
fn read_probe(
    ctx: &Context,
    p: &EvaluateParams,
    m: &Loaded,
    classes: usize,
) -> Result<Option<ProbeWeights>, StageError> {
    if !ctx.has_input(PROBE.name) {
        return Ok(None);
    }
    if p.features == FeaturesParam::Tokens {
        return Err(StageError::msg(
            "the `probe` input's probes read the head's code; `features: tokens` predicts \
             from the tokens themselves",
        ));
    }
    let a = ctx.input(PROBE.name)?;
    let ours = ctx.input(CHECKPOINT.name)?.key().to_string();
    if let Some(theirs) = a.meta("checkpoint").and_then(|v| v.as_str()) {
        if theirs != ours {
            return Err(StageError::msg(format!(
                "the `probe` input was trained on checkpoint {theirs}, this evaluation reads \
                 {ours}: give the probe stage the same `checkpoint`"
            )));
        }
    }
    let w = tables::read_probe(a)?;
    m.net
        .check_centroids(&w.centroids)
        .map_err(|e| StageError::msg(format!("the `probe` input's cluster probe: {e}")))?;
    if let Some((lw, _)) = &w.linear {
        if lw.size()[0] as usize != classes {
            return Err(StageError::msg(format!(
                "the `probe` input's linear probe has {} classes, the val split {classes}",
                lw.size()[0]
            )));
        }
    }
    Ok(Some(w))
}

/// `flip: true` with val tokens that hold no flipped crops.
fn no_flips() -> StageError {
    StageError::msg(format!(
        "`flip: true` averages each val crop with its flipped copy, but the `{}` input holds \
         no flipped crops: give the backbone stage that makes them `flip: true`",
        VAL_TOKENS.name
    ))
}

/// What the predictions come from on stored tokens: the head's output, or the tokens.
fn code(m: &Loaded, tokens: &Tensor, features: FeaturesParam) -> Result<Tensor, StageError> {
    Ok(match features {
        FeaturesParam::Head => m.net.forward_head(tokens)?,
        FeaturesParam::Tokens => l2_normalize(&tokens.f_to_kind(tch::Kind::Float)?)?,
    })
}

/// A frozen backbone's stored evaluation tokens, when `port` is wired: checked against the
/// checkpoint's backbone `digest` (computed when either tokens input is wired).
fn open_tokens(
    ctx: &Context,
    port: &str,
    digest: Option<&str>,
) -> Result<Option<Tokens>, StageError> {
    let Some(digest) = digest.filter(|_| ctx.has_input(port)) else {
        return Ok(None);
    };
    let t = Tokens::open(ctx.input(port)?)?;
    t.check_backbone(digest)?;
    Ok(Some(t))
}

/// One batch of a pass: image ids, their stored tokens when there are any, and their
/// flipped crops' tokens when those are stored too.
type PassBatch = Result<(Vec<usize>, Option<Tensor>, Option<Tensor>), StageError>;

/// The batches of one pass: (image ids, their tokens) from the stored tokens' written
/// batches `batches`, keeping the images in `want`; or `ids` in chunks of `batch`, for the
/// network to run on.
fn passes<'a>(
    tokens: Option<&'a Tokens>,
    ids: &'a [usize],
    batch: usize,
    want: std::ops::Range<usize>,
    batches: std::ops::Range<usize>,
) -> Box<dyn Iterator<Item = PassBatch> + 'a> {
    match tokens {
        Some(t) => Box::new(
            t.eval_batches_with_flips_in(batches)
                .filter_map(move |r| match r {
                    Err(e) => Some(Err(e)),
                    Ok((got, t, f)) => {
                        let keep: Vec<i64> = (0..got.len() as i64)
                            .filter(|&j| want.contains(&got[j as usize]))
                            .collect();
                        (!keep.is_empty()).then(|| {
                            let chunk = keep.iter().map(|&j| got[j as usize]).collect();
                            let keep = Tensor::from_slice(&keep);
                            let f = f.map(|f| f.index_select(0, &keep));
                            Ok((chunk, Some(t.index_select(0, &keep)), f))
                        })
                    }
                }),
        ),
        None => Box::new(ids.chunks(batch).map(|c| Ok((c.to_vec(), None, None)))),
    }
}

/// Stored tokens must cover every image the pass wants.
fn covered(seen: usize, n: usize, port: &str) -> Result<(), StageError> {
    if seen < n {
        return Err(StageError::msg(format!(
            "`{port}` holds tokens of {seen} images, the pass wants {n}: give the backbone \
             stage the same `limit` as evaluate's"
        )));
    }
    Ok(())
}

/// The order of the train-mode pass: a pure function of (seed, epoch).
fn shuffle_rng(seed: u64, epoch: u32) -> ChaCha8Rng {
    let mut h = blake3::Hasher::new();
    h.update(b"evaluate/shuffle");
    h.update(&seed.to_le_bytes());
    h.update(&epoch.to_le_bytes());
    ChaCha8Rng::from_seed(*h.finalize().as_bytes())
}

/// Evaluation preprocessing of a batch of images, as one normalised N x 3 x res x res tensor.
pub(crate) fn load_images(
    ds: &dyn picie_core::data::Dataset,
    ids: &[usize],
    res: u32,
    threads: usize,
) -> Result<Tensor, StageError> {
    let imgs = preprocess::par_map(ids, threads, |&i| {
        preprocess::load_eval(ds, i, res)
            .map(|(img, _)| to_tensor_normalised(&img))
            .map_err(StageError::from)
    });
    let imgs: Vec<Tensor> = imgs.into_iter().collect::<Result<_, _>>()?;
    Ok(Tensor::stack(&imgs, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bn_applies_to_the_fresh_kmeans_pass_only() {
        let p = EvaluateParams::default();
        assert_eq!(p.kmeans_bn(), Some(BnMode::Train));
        let ports: Vec<_> = Evaluate::outputs(&p).into_iter().map(|p| p.name).collect();
        assert!(ports.contains(&"checkpoint"), "{ports:?}");
        let eval = EvaluateParams {
            bn: Some(BnMode::Eval),
            ..p.clone()
        };
        assert!(!Evaluate::outputs(&eval)
            .iter()
            .any(|p| p.name == "checkpoint"));
        let dot = EvaluateParams {
            predictor: Predictor::DotProduct,
            ..p
        };
        assert_eq!(dot.kmeans_bn(), None);
        assert!(Evaluate::validate(&dot).is_empty());
        let bad = EvaluateParams {
            bn: Some(BnMode::Eval),
            ..dot
        };
        assert!(Evaluate::validate(&bad).iter().any(|e| e.field == "bn"));
    }

    /// `upsample` and `flip` stay out of the cache key at their defaults; the cluster probe
    /// runs no fresh k-means pass, so takes no `bn`, and reads the head's code.
    #[test]
    fn probe_flip_and_upsample_params() {
        let p = EvaluateParams::default();
        let key = serde_json::to_value(&p).unwrap();
        assert!(
            key.get("upsample").is_none() && key.get("flip").is_none(),
            "{key}"
        );
        let on = EvaluateParams {
            upsample: UpsampleParam::Code,
            flip: true,
            ..p.clone()
        };
        let key = serde_json::to_value(&on).unwrap();
        assert_eq!(
            (&key["upsample"], &key["flip"]),
            (&"code".into(), &true.into())
        );
        let probe = EvaluateParams {
            predictor: Predictor::ClusterProbe,
            ..p
        };
        assert!(Evaluate::validate(&probe).is_empty());
        assert_eq!(probe.kmeans_bn(), None);
        assert_eq!(Evaluate::rounds(&probe), 1);
        assert!(Evaluate::shardable(&probe).is_ok());
        for (bad, field) in [
            (
                EvaluateParams {
                    bn: Some(BnMode::Eval),
                    ..probe.clone()
                },
                "bn",
            ),
            (
                EvaluateParams {
                    features: FeaturesParam::Tokens,
                    ..probe.clone()
                },
                "features",
            ),
        ] {
            let e = Evaluate::validate(&bad);
            assert!(e.iter().any(|e| e.field == field), "{e:?}");
        }
    }

    /// Without `crf` the params serialise as before (the cache key is unchanged); with it,
    /// bad settings are refused, each named.
    #[test]
    fn crf_is_keyed_only_when_set_and_validated() {
        let p = EvaluateParams::default();
        let key = serde_json::to_value(&p).unwrap();
        assert!(key.get("crf").is_none(), "{key}");
        let on = EvaluateParams {
            crf: Some(CrfParams::default()),
            ..p.clone()
        };
        assert!(Evaluate::validate(&on).is_empty());
        let key = serde_json::to_value(&on).unwrap();
        assert_eq!(key["crf"]["bilateral"]["sxy"], 67.0);
        assert_eq!(key["crf"]["temperature"], 0.5);
        let bad = EvaluateParams {
            crf: Some(CrfParams {
                iterations: 0,
                bilateral: BilateralKernel {
                    srgb: -3.0,
                    ..BilateralKernel::default()
                },
                temperature: 0.0,
                ..CrfParams::default()
            }),
            ..p
        };
        let e = Evaluate::validate(&bad);
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(e.iter().all(|e| e.field == "crf"));
        for (e, field) in e
            .iter()
            .zip(["iterations", "bilateral.srgb", "temperature"])
        {
            assert!(
                e.message.contains(&format!("`crf.{field}`")),
                "{}",
                e.message
            );
        }
    }
}
