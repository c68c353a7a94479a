//! `backbone`: a frozen ViT's tokens, computed once and stored, so that every later pass
//! runs only the head. Two uses:
//! - in the epoch loop, on an `augment` stage's `batches`: the tokens of both training views
//!   with each image's G (`tokens`, read by extract, label and train in place of `batches`).
//!   With augment's `pool: N` the draws repeat every N epochs, and so do this stage's inputs:
//!   from epoch N + 1 on, and in any later run that changes only the head, k-means or
//!   training, every token is read from the store.
//! - with `split: train|val`: the tokens of a split's evaluation crops (shorter side to `res`,
//!   centre crop, as `evaluate` makes them), read by `evaluate` in place of running the
//!   backbone on the same images every epoch. With `flip: true` the tokens of each crop's
//!   horizontally flipped copy are stored beside it (rows with `flip` true), for
//!   `evaluate`'s `flip: true` (STEGO's flip-averaged code); twice the forward passes and
//!   the storage. `flip: false` (the default) leaves the cache key as it was.
//!
//! The stage builds the backbone itself from its params (`arch`, `weights`, ... as `init`
//! has them), not from a checkpoint: its tokens then depend on the backbone alone, so a run
//! that changes the head (its `dim`, its seed) or training reads them back. The epoch is not
//! in its cache key, and neither is the seed when the weights come from a file. Tokens
//! record a digest of the backbone that made them and readers refuse tokens of another one;
//! the plan also checks that the params describe the readers' backbone, and refuses to cache
//! one that trains (`train_blocks` > 0).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::evaluate::load_images;
use crate::io::checkpoint;
use crate::io::ports::{BATCHES, EVAL_TOKENS, TOKENS};
use crate::io::tables::Precision;
use crate::io::tokens::{self, EVAL_VIEW};
use crate::sections::PicieContext;
use picie_core::augment_params::Geometric;
use picie_core::data::Split;
use picie_core::model::weights::Scope;
use picie_core::model::{InputNorm, NetArch, NetConfig, PosInterp};
use picie_engine::{Context, ParamError, Port, Stage, StageError};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EvalSplit {
    Train,
    Val,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackboneParams {
    /// The backbone, as `init` names it: a DINO / DINOv2 ViT arch, its `pos_interp` and
    /// `feature_block`, `input_norm`, and its weights file (relative to the pipeline file;
    /// null: the seeded random weights `init` draws with the same seed).
    pub arch: NetArch,
    pub pos_interp: Option<PosInterp>,
    pub feature_block: Option<usize>,
    pub input_norm: InputNorm,
    pub weights: Option<PathBuf>,
    /// Token storage: f16 (half the disk and I/O; the head reads them back as f32) or f32.
    pub precision: Precision,
    /// Evaluation crops of this split instead of the `batches` stream.
    pub split: Option<EvalSplit>,
    /// With `split`: the evaluation side (as `evaluate`'s `res`).
    pub res: u32,
    /// With `split`: images per forward pass, decoding threads, and only the first N images
    /// (null: all).
    pub batch: usize,
    pub threads: usize,
    pub limit: Option<usize>,
    /// With `split`: also store the tokens of each crop's horizontally flipped copy (what
    /// `evaluate`'s `flip: true` reads). Left out of the cache key when false.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub flip: bool,
}

impl Default for BackboneParams {
    fn default() -> Self {
        Self {
            arch: NetArch::Dinov2ViTS14,
            pos_interp: None,
            feature_block: None,
            input_norm: InputNorm::Imagenet,
            weights: None,
            precision: Precision::F16,
            split: None,
            res: 320,
            batch: 16,
            threads: 2,
            limit: None,
            flip: false,
        }
    }
}

pub struct Backbone(BackboneParams);

impl BackboneParams {
    /// The network whose backbone this is (the head is whatever `NetConfig` defaults to:
    /// only the backbone runs).
    pub fn net(&self) -> NetConfig {
        NetConfig {
            arch: self.arch,
            pos_interp: self.pos_interp,
            feature_block: self.feature_block,
            input_norm: self.input_norm,
            ..NetConfig::default()
        }
    }
}

/// The identity draw: evaluation crops have no G.
const NO_G: Geometric = Geometric {
    crop_frac: 1.0,
    u_x: 0.0,
    u_y: 0.0,
    flip: false,
};

/// The draw of a flipped evaluation crop.
const FLIP_G: Geometric = Geometric { flip: true, ..NO_G };

impl Stage for Backbone {
    type Params = BackboneParams;
    const KIND: &'static str = "backbone";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str =
        "a frozen ViT's tokens of the training views (or of a split's evaluation crops), stored for reuse";

    fn inputs(p: &BackboneParams) -> Vec<Port> {
        match p.split {
            None => vec![BATCHES.port()],
            Some(_) => vec![],
        }
    }
    fn outputs(p: &BackboneParams) -> Vec<Port> {
        vec![if p.split.is_some() {
            EVAL_TOKENS
        } else {
            TOKENS
        }]
    }
    fn validate(p: &BackboneParams) -> Vec<ParamError> {
        let mut e: Vec<ParamError> = p
            .net()
            .problems()
            .into_iter()
            .map(|(field, msg)| ParamError::new(field, msg))
            .collect();
        if !p.net().is_vit() {
            e.push(ParamError::new(
                "arch",
                format!(
                    "backbone tokens exist for ViT archs (dino_vits8, dinov2_vits14, ...), not {}",
                    p.arch
                ),
            ));
        }
        if p.batch == 0 || p.threads == 0 {
            e.push(ParamError::new(
                if p.batch == 0 { "batch" } else { "threads" },
                "must be at least 1",
            ));
        }
        if p.res < 8 {
            e.push(ParamError::new("res", "must be at least 8"));
        }
        if p.flip && p.split.is_none() {
            e.push(ParamError::new(
                "flip",
                "flipped copies are stored for evaluation crops only: set `split` too",
            ));
        }
        e
    }
    fn input_files(p: &BackboneParams) -> Vec<(&'static str, PathBuf)> {
        p.weights.iter().map(|w| ("weights", w.clone())).collect()
    }
    /// Random weights come from the seed; a file's do not.
    fn seeded(p: &BackboneParams) -> bool {
        p.weights.is_none()
    }
    fn key_epoch(_: &BackboneParams, _: u32) -> Option<u32> {
        None
    }
    /// A frozen network, image by image: parts join into the whole.
    fn shardable(_: &BackboneParams) -> Result<(), String> {
        Ok(())
    }
    const SECTIONS: &'static [&'static str] = &[crate::sections::DATASET];
    fn new(p: BackboneParams) -> Self {
        Self(p)
    }

    fn run(&mut self, ctx: &mut Context) -> Result<(), StageError> {
        let p = self.0.clone();
        let device = ctx.device().tch();
        let m = checkpoint::build_seeded(&p.net(), device, ctx.seed())?;
        if let Some(file) = &p.weights {
            checkpoint::load_weights(ctx, &m, file, Scope::BackboneOnly)?;
        }
        m.channels_last();
        let digest = checkpoint::backbone_digest(&m)?;
        let port = if p.split.is_some() {
            EVAL_TOKENS
        } else {
            TOKENS
        };
        let mut begun = false;
        // One record batch per batch of images, both views together: readers get whole
        // batches back.
        let mut write = |ctx: &mut Context,
                         images: &[u32],
                         views: &[(u8, &tch::Tensor, &[Geometric])]|
         -> Result<(), StageError> {
            let w = ctx.output(port.name)?;
            if !begun {
                let s = views[0].1.size();
                tokens::begin_with_flips(w, [s[1], s[2], s[3]], p.precision, &digest, p.flip);
                begun = true;
            }
            let parts = views
                .iter()
                .map(|(view, t, g)| tokens::rows(images, *view, g, t, p.precision))
                .collect::<Result<Vec<_>, _>>()?;
            w.write(&arrow::compute::concat_batches(&parts[0].schema(), &parts)?)
        };
        match p.split {
            Some(split) => {
                let ds = ctx.dataset()?.open(match split {
                    EvalSplit::Train => Split::Train,
                    EvalSplit::Val => Split::Val,
                })?;
                let n = p.limit.map_or(ds.len(), |l| l.min(ds.len()));
                let ids: Vec<usize> = ctx.shard_items(n, p.batch).collect();
                ctx.progress().set_length(ids.len() as u64);
                for chunk in ids.chunks(p.batch) {
                    ctx.check_cancelled()?;
                    let x = load_images(ds.as_ref(), chunk, p.res, p.threads)?;
                    let x = x.to_device(device);
                    let t = tch::no_grad(|| m.net.forward_tokens(&x))?;
                    let images: Vec<u32> = chunk.iter().map(|&i| i as u32).collect();
                    let plain = vec![NO_G; chunk.len()];
                    if p.flip {
                        // The flipped crop's tokens as computed, not flipped back.
                        let tf = tch::no_grad(|| m.net.forward_tokens(&x.flip([3])))?;
                        let flipped = vec![FLIP_G; chunk.len()];
                        write(
                            ctx,
                            &images,
                            &[(EVAL_VIEW, &t, &plain), (EVAL_VIEW, &tf, &flipped)],
                        )?;
                    } else {
                        write(ctx, &images, &[(EVAL_VIEW, &t, &plain)])?;
                    }
                    ctx.progress().inc(chunk.len() as u64);
                }
            }
            None => {
                while let Some(b) = ctx.recv_from(&BATCHES)? {
                    let (x1, x2) = (b.view1.to_device(device), b.view2.to_device(device));
                    let t1 = tch::no_grad(|| m.net.forward_tokens(&x1))?;
                    let t2 = tch::no_grad(|| m.net.forward_tokens(&x2))?;
                    let g = b.geometric.as_slice();
                    write(ctx, &b.images, &[(1, &t1, g), (2, &t2, g)])?;
                    ctx.progress().inc(b.images.len() as u64);
                }
            }
        }
        // A part may have no batches (more parts than batches); a whole pass must have some.
        if !begun && ctx.shard().is_none() {
            return Err(StageError::msg("no images arrived: nothing to store"));
        }
        Ok(())
    }
}
