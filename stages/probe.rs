//! `probe`: STEGO's two probes (`picie_core::stego::probe`), trained from scratch on a
//! trained ViT network's detached, L2-normalised head output (`forward_head`) over a
//! `backbone` stage's stored evaluation tokens of the training split (`train_tokens`):
//! - the cluster probe: `k` centroids (null: the data set's classes) with STEGO's
//!   `ClusterLookup` loss; `evaluate` with `predictor: cluster_probe` predicts with them;
//! - the linear probe (`linear: true`): a 1x1 convolution D -> classes with bias, trained
//!   with cross-entropy on the training masks (loaded at the tokens' centre crop, `res`),
//!   logits upsampled bilinearly to the mask. SUPERVISED: `evaluate` reports it in its own
//!   `linear_*_supervised` columns, never in the unsupervised ones.
//!
//! Adam, lr 5e-3 for both, as released. The code of the split is computed once (the
//! network does not change) and held in memory as f32 (N x D x h x w; CamVid train at 322
//! px, D = 70: 54 MB), the masks as i16 (N x res x res; 76 MB). Each of `passes` passes
//! shows every image once, in batches of `batch`, in an order drawn from a ChaCha stream
//! of (seed, epoch, pass); the init is drawn from (seed, epoch): a probe is a function of
//! its checkpoint, tokens, params and seed, so it caches. In the epoch loop
//! (`checkpoint: stego.checkpoint`) each epoch trains a fresh probe on that epoch's head.
//!
//! `passes` defaults to 40: STEGO trains its probes alongside the head for 5,000 steps;
//! Adam at 5e-3 moves a centroid's direction by about lr per step, so turning a random
//! centroid (norm ~ sqrt(D)) onto a cluster takes a few hundred steps. 40 passes over
//! CamVid's 367 training crops at batch 16 are 920 steps, enough for both probes to level
//! off (see the `metrics` output); smaller data sets want more passes, larger ones fewer.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::checks::source;
use crate::io::checkpoint;
use crate::io::ports::{CHECKPOINT, EVAL_TOKENS, PROBE, PROBE_METRICS, TRAIN_TOKENS, VAL_TOKENS};
use crate::io::tables::{self, ProbeStep, ProbeWeights};
use crate::io::tokens::Tokens;
use crate::sections::PicieContext;
use picie_core::data::{preprocess, Split};
use picie_core::stego::probe::{ProbeConfig, Probes, IGNORE};
use picie_engine::plan::{Plan, PlanProblem};
use picie_engine::{Context, ParamError, Port, Stage, StageError};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbeParams {
    /// The evaluation side the tokens were made at (their `backbone` stage's `res`): the
    /// training masks are loaded at that centre crop.
    pub res: u32,
    /// Cluster probe centroids (null: the data set's class count).
    pub k: Option<usize>,
    /// Adam's learning rate for both probes (STEGO: 5e-3).
    pub lr: f64,
    /// Passes over the training split (see the module doc for the default).
    pub passes: usize,
    /// Images per step.
    pub batch: usize,
    /// Train the supervised linear probe too (needs the training masks).
    pub linear: bool,
    /// Mask decoding threads.
    pub threads: usize,
    /// Only the first N training images of the tokens (null: all).
    pub limit: Option<usize>,
}

impl Default for ProbeParams {
    fn default() -> Self {
        Self {
            res: 320,
            k: None,
            lr: 5e-3,
            passes: 40,
            batch: 16,
            linear: true,
            threads: 2,
            limit: None,
        }
    }
}

/// The RNG of one pass's order (`pass` 0: the probes' init).
fn rng(seed: u64, epoch: u32, pass: u32) -> ChaCha8Rng {
    // A tag keeps these streams apart from other stages' draws of the same seed.
    let mut r = ChaCha8Rng::seed_from_u64(seed ^ 0x5052_4f42_455f_4b4e);
    r.set_stream(((epoch as u64) << 32) | pass as u64);
    r
}

pub struct Probe(ProbeParams);

impl Stage for Probe {
    type Params = ProbeParams;
    const KIND: &'static str = "probe";
    // 2: the linear probe's upsampling as matrix products (equal to 1e-6, not bit for bit).
    const VERSION: u32 = 2;
    const DESCRIPTION: &'static str =
        "STEGO's cluster probe and (supervised) linear probe on a trained head's code: checkpoint + train tokens in, probe out";

    fn inputs(_: &ProbeParams) -> Vec<Port> {
        vec![CHECKPOINT, TRAIN_TOKENS]
    }
    fn outputs(_: &ProbeParams) -> Vec<Port> {
        vec![PROBE, PROBE_METRICS]
    }
    fn validate(p: &ProbeParams) -> Vec<ParamError> {
        let mut e = Vec::new();
        if p.res < 8 {
            e.push(ParamError::new("res", "must be at least 8"));
        }
        if p.k.is_some_and(|k| k < 2) {
            e.push(ParamError::new(
                "k",
                "must be at least 2 (or null: the classes)",
            ));
        }
        if !(p.lr.is_finite() && p.lr > 0.0) {
            e.push(ParamError::new(
                "lr",
                format!("must be positive and finite, got {}", p.lr),
            ));
        }
        for (field, v) in [
            ("passes", p.passes),
            ("batch", p.batch),
            ("threads", p.threads),
        ] {
            if v == 0 {
                e.push(ParamError::new(field, "must be at least 1"));
            }
        }
        if p.limit == Some(0) {
            e.push(ParamError::new("limit", "must be at least 1 (or null)"));
        }
        e
    }
    const SECTIONS: &'static [&'static str] = &[crate::sections::DATASET];
    fn new(p: ProbeParams) -> Self {
        Self(p)
    }

    fn run(&mut self, ctx: &mut Context) -> Result<(), StageError> {
        let p = self.0.clone();
        let device = ctx.device().tch();
        let ckpt_key = ctx.input(CHECKPOINT.name)?.key().to_string();
        let m = checkpoint::load(ctx.input(CHECKPOINT.name)?, device)?;
        let Some(vit) = m.spec.vit() else {
            return Err(StageError::msg(format!(
                "probe trains on a ViT head's code over stored tokens; the checkpoint's \
                 network is {}",
                m.spec.arch
            )));
        };
        let tokens = Tokens::open(ctx.input(TRAIN_TOKENS.name)?)?;
        tokens.check_backbone(&checkpoint::backbone_digest(&m)?)?;
        let [_, th, tw] = tokens.shape;
        if th * vit.patch != p.res as i64 || tw * vit.patch != p.res as i64 {
            return Err(StageError::msg(format!(
                "`res: {}` but the `{}` are {th} x {tw} patches of {} px, a {} px crop: give \
                 the probe its backbone stage's `res`",
                p.res,
                TRAIN_TOKENS.name,
                vit.patch,
                th * vit.patch
            )));
        }
        let train = ctx.dataset()?.clone().open(Split::Train)?;
        let classes = train.classes().len();

        // The code of every image, once: the network does not change.
        let mut ids: Vec<usize> = Vec::new();
        let mut parts = Vec::new();
        for b in tokens.eval_batches() {
            ctx.check_cancelled()?;
            let (i, t) = b?;
            let keep: Vec<i64> = (0..i.len())
                .filter(|&j| p.limit.is_none_or(|l| i[j] < l))
                .map(|j| j as i64)
                .collect();
            if keep.is_empty() {
                continue;
            }
            let t = t.index_select(0, &Tensor::from_slice(&keep));
            ids.extend(keep.iter().map(|&j| i[j as usize]));
            let code = tch::no_grad(|| m.net.forward_head(&t.to_device(device)))?;
            parts.push(code.to_device(tch::Device::Cpu).to_kind(Kind::Float));
        }
        if ids.is_empty() {
            return Err(StageError::msg(format!(
                "the `{}` hold no images to train the probes on",
                TRAIN_TOKENS.name
            )));
        }
        let all = Tensor::f_cat(&parts, 0)?;
        drop(parts);
        let n = ids.len();
        let dim = all.size()[1];

        // The masks at the tokens' crop, as i16 (-1: ignored or out of range).
        let per = (p.res * p.res) as usize;
        let masks: Option<Vec<i16>> = if p.linear {
            let mut out = Vec::with_capacity(n * per);
            for chunk in ids.chunks(64) {
                ctx.check_cancelled()?;
                let loaded = preprocess::par_map(chunk, p.threads, |&i| {
                    preprocess::load_eval(train.as_ref(), i, p.res).map_err(StageError::from)
                });
                for (r, &i) in loaded.into_iter().zip(chunk) {
                    let Some(mask) = r?.1 else {
                        return Err(StageError::msg(format!(
                            "the linear probe trains on the training masks, and image {} has \
                             none: set `linear: false` to train the cluster probe alone",
                            train.id(i)
                        )));
                    };
                    if mask.data.len() != per {
                        return Err(StageError::msg(format!(
                            "the mask of {} is {}x{}, not {}x{0}",
                            train.id(i),
                            mask.width,
                            mask.height,
                            p.res
                        )));
                    }
                    out.extend(mask.data.iter().map(|&v| {
                        if (v as usize) < classes {
                            v as i16
                        } else {
                            -1
                        }
                    }));
                }
            }
            Some(out)
        } else {
            None
        };

        let cfg = ProbeConfig {
            dim,
            k: p.k.unwrap_or(classes) as i64,
            classes: if p.linear { classes as i64 } else { 0 },
            lr: p.lr,
        };
        let seed = ctx.seed();
        let epoch = ctx.epoch().unwrap_or(0);
        let err = |e: picie_core::stego::StegoError| StageError::msg(e.to_string());
        let mut probes = Probes::new(&cfg, &mut rng(seed, epoch, 0), device).map_err(err)?;
        let steps_per_pass = n.div_ceil(p.batch);
        ctx.progress()
            .set_length((p.passes * steps_per_pass) as u64);
        let mut rows = Vec::with_capacity(p.passes * steps_per_pass);
        let mut step = 0u32;
        for pass in 1..=p.passes as u32 {
            let mut order: Vec<usize> = (0..n).collect();
            order.shuffle(&mut rng(seed, epoch, pass));
            for batch in order.chunks(p.batch) {
                ctx.check_cancelled()?;
                step += 1;
                let idx: Vec<i64> = batch.iter().map(|&i| i as i64).collect();
                let code = all.index_select(0, &Tensor::from_slice(&idx));
                let targets = masks.as_ref().map(|mk| {
                    let v: Vec<i64> = batch
                        .iter()
                        .flat_map(|&i| mk[i * per..(i + 1) * per].iter())
                        .map(|&v| if v < 0 { IGNORE } else { v as i64 })
                        .collect();
                    Tensor::from_slice(&v)
                        .view([batch.len() as i64, p.res as i64, p.res as i64])
                        .to_device(device)
                });
                let l = probes
                    .step(&code.to_device(device), targets.as_ref())
                    .map_err(err)?;
                if !l.cluster.is_finite() || l.linear.is_some_and(|v| !v.is_finite()) {
                    return Err(StageError::msg(format!(
                        "a probe's loss is not finite at pass {pass}, step {step} (cluster {}, \
                         linear {:?}): non-finite code?",
                        l.cluster, l.linear
                    )));
                }
                ctx.progress().inc(1);
                rows.push(ProbeStep {
                    epoch,
                    pass,
                    step,
                    cluster_loss: l.cluster,
                    linear_loss: l.linear,
                });
            }
            if let Some(r) = rows.last() {
                ctx.progress().set_message(format!(
                    "pass {pass}: cluster {:.4}, linear {}",
                    r.cluster_loss,
                    r.linear_loss.map_or("-".into(), |v| format!("{v:.4}"))
                ));
            }
        }

        let weights = ProbeWeights {
            centroids: probes.centroids(),
            linear: probes.linear(),
        };
        let out = ctx.output(PROBE.name)?;
        out.set_meta("checkpoint", ckpt_key);
        out.set_meta("k", cfg.k);
        out.set_meta("classes", cfg.classes);
        out.set_meta("dim", dim);
        out.set_meta("images", n);
        out.set_meta("epoch", epoch);
        out.set_meta("seed", seed);
        out.write(&tables::probe_batch(&weights)?)?;
        ctx.output(PROBE_METRICS.name)?
            .write(&tables::probe_metrics_batch(&rows)?)?;
        Ok(())
    }
}

fn param<'a>(plan: &'a Plan, i: usize, name: &str) -> &'a serde_json::Value {
    &plan.nodes[i].provenance["params"][name]
}

/// Whether node `i` is a `backbone` stage storing flipped crops.
fn stores_flips(plan: &Plan, i: usize) -> bool {
    plan.nodes[i].kind == "backbone" && param(plan, i, "flip").as_bool() == Some(true)
}

/// Plan checks of the probes and of flip averaging, across stages:
/// - `evaluate` with `predictor: cluster_probe` needs a `probe` input; its `k`, when set,
///   must be the probe stage's; probes read the head's code, not `features: tokens`;
/// - `evaluate` with `flip: true` and `val_tokens` needs a backbone stage with `flip: true`;
/// - a `probe` stage's `res` is its `train_tokens` backbone stage's;
/// - tokens with flipped crops are for evaluation only: `knn` would rank every image twice.
pub fn check(plan: &Plan) -> Vec<PlanProblem> {
    let mut out = Vec::new();
    let problem = |node: usize, field: &str, message: String, hint: &str| PlanProblem {
        node,
        field: Some(field.into()),
        message,
        hint: Some(hint.into()),
    };
    for (i, node) in plan.nodes.iter().enumerate() {
        match node.kind.as_str() {
            "evaluate" => {
                let probe = source(plan, i, PROBE.name);
                if param(plan, i, "predictor") == "cluster_probe" && probe.is_none() {
                    out.push(problem(
                        i,
                        "predictor",
                        format!(
                            "`predictor: cluster_probe` predicts with a trained cluster probe, \
                             but stage `{}` has no `probe` input",
                            node.stage
                        ),
                        "wire `probe: <probe stage>.probe`, a `probe` stage on the same checkpoint",
                    ));
                }
                if let Some(b) = probe {
                    let (ours, theirs) = (param(plan, i, "k"), param(plan, b, "k"));
                    if param(plan, i, "predictor") == "cluster_probe"
                        && ours.is_u64()
                        && theirs.is_u64()
                        && ours != theirs
                    {
                        out.push(problem(
                            i,
                            "k",
                            format!(
                                "`k: {ours}` but the cluster probe of stage `{}` has `k: {theirs}`",
                                plan.nodes[b].stage
                            ),
                            "leave `k` unset with `predictor: cluster_probe`: it is the probe's",
                        ));
                    }
                    if param(plan, i, "features") == "tokens" {
                        out.push(problem(
                            i,
                            "features",
                            "`features: tokens` predicts from the tokens themselves, but the \
                             `probe` input's probes read the head's code"
                                .into(),
                            "drop `features: tokens`, or the `probe` input",
                        ));
                    }
                }
                if param(plan, i, "flip").as_bool() == Some(true) {
                    if let Some(b) = source(plan, i, VAL_TOKENS.name) {
                        if plan.nodes[b].kind == "backbone" && !stores_flips(plan, b) {
                            out.push(problem(
                                i,
                                "flip",
                                format!(
                                    "`flip: true` averages each val crop with its flipped copy, \
                                     but the `val_tokens` of stage `{}` hold no flipped crops",
                                    plan.nodes[b].stage
                                ),
                                "give that backbone stage `flip: true`",
                            ));
                        }
                    }
                }
            }
            "probe" => {
                if let Some(b) = source(plan, i, TRAIN_TOKENS.name) {
                    let (ours, theirs) = (param(plan, i, "res"), param(plan, b, "res"));
                    if plan.nodes[b].kind == "backbone" && theirs.is_u64() && ours != theirs {
                        out.push(problem(
                            i,
                            "res",
                            format!(
                                "`res: {ours}` but stage `{}` made the tokens at `res: {theirs}`: \
                                 the masks would not line up with the code",
                                plan.nodes[b].stage
                            ),
                            "give the probe its backbone stage's `res`",
                        ));
                    }
                }
            }
            _ => {}
        }
        // knn would rank every image twice (as a duplicate); stego reads the crops alone.
        if node.kind == "knn" {
            if let Some(b) = source(plan, i, EVAL_TOKENS.name).filter(|&b| stores_flips(plan, b)) {
                out.push(problem(
                    b,
                    "flip",
                    format!(
                        "stage `{}` ranks the tokens of stage `{}`, which store flipped crops \
                         too: only evaluate's `val_tokens` use them",
                        node.stage, plan.nodes[b].stage
                    ),
                    "give knn the tokens of a backbone stage without `flip`",
                ));
            }
        }
    }
    out
}
