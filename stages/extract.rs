//! `extract`: runs the network (no gradients) over streamed view batches and hands every
//! pixel's feature of both views (view 2 through G) downstream: as a `stream` of feature
//! batches, and/or stored as the `features` artifact (all pixels or a deterministic
//! per-image sample, f32 or f16) that k-means and analysis read.
//!
//! Its views come from an `augment` stage's `batches`, or as a frozen ViT's stored tokens
//! from a `backbone` stage (`tokens`), when only the head runs.
//!
//! With `bn: train` the pass updates BatchNorm's running statistics, as the release's
//! clustering pass does (its model is in train mode); the `checkpoint` output is the network
//! after that pass (same weights and optimizer state, updated statistics), which the release's
//! labelling pass (eval mode) and training pass then start from.

use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::io::batch::{FeatureBatch, HostTensor, Views};
use crate::io::checkpoint;
use crate::io::ports::{BATCHES, CHECKPOINT, FEATURES, FEATURE_STREAM, TOKENS};
use crate::io::tables::{self, Precision};
use crate::sections::PicieContext;
use picie_core::model::BnMode;
use picie_engine::{Context, ParamError, Port, Stage, StageError};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Keep {
    /// Every pixel of both views (what k-means on stored features needs).
    All,
    /// `sample_per_image` pixels per image and view, drawn from (seed, epoch, image, view).
    Sample,
    /// Nothing stored: features only flow down the `stream` output.
    None,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExtractParams {
    pub bn: BnMode,
    /// What the `features` artifact keeps.
    pub store: Keep,
    pub precision: Precision,
    pub sample_per_image: usize,
}

impl Default for ExtractParams {
    fn default() -> Self {
        Self {
            bn: BnMode::Train,
            store: Keep::All,
            precision: Precision::F32,
            sample_per_image: 1024,
        }
    }
}

pub struct Extract(ExtractParams);

/// `n` distinct pixel indices of an `hw`-pixel map, ascending, a pure function of
/// (seed, epoch, image, view).
pub fn pixel_sample(seed: u64, epoch: u32, image: u32, view: u8, hw: usize, n: usize) -> Vec<i64> {
    if n >= hw {
        return (0..hw as i64).collect();
    }
    let mut key = Vec::with_capacity(32);
    key.extend_from_slice(b"picie-extract-sample");
    key.extend_from_slice(&seed.to_le_bytes());
    key.extend_from_slice(&epoch.to_le_bytes());
    key.extend_from_slice(&image.to_le_bytes());
    key.push(view);
    let mut rng = rand_chacha::ChaCha8Rng::from_seed(*blake3::hash(&key).as_bytes());
    let mut idx: Vec<i64> = rand::seq::index::sample(&mut rng, hw, n)
        .into_iter()
        .map(|i| i as i64)
        .collect();
    idx.sort_unstable();
    idx
}

impl Stage for Extract {
    type Params = ExtractParams;
    const KIND: &'static str = "extract";
    // 2: store/precision/sample and the stream output.
    // 3: row groups of 8192 rows.
    const VERSION: u32 = 3;
    const DESCRIPTION: &'static str =
        "per-pixel features of both views (view 2 through G), streamed and/or stored";

    fn inputs(_: &ExtractParams) -> Vec<Port> {
        vec![
            BATCHES.port().instead_of(TOKENS.name),
            TOKENS.instead_of(BATCHES.name),
            CHECKPOINT,
        ]
    }
    fn outputs(p: &ExtractParams) -> Vec<Port> {
        let mut out = vec![FEATURE_STREAM.port()];
        if p.store != Keep::None {
            out.push(FEATURES);
        }
        if p.bn == BnMode::Train {
            out.push(CHECKPOINT);
        }
        out
    }
    fn validate(p: &ExtractParams) -> Vec<ParamError> {
        let mut e = Vec::new();
        if p.store == Keep::Sample && p.sample_per_image == 0 {
            e.push(ParamError::new("sample_per_image", "must be at least 1"));
        }
        e
    }
    /// In eval mode every batch's features depend on that batch alone; in train mode the
    /// pass also carries BatchNorm's running statistics from batch to batch.
    fn shardable(p: &ExtractParams) -> Result<(), String> {
        match p.bn {
            BnMode::Train => Err(
                "with `bn: train` each batch updates BatchNorm's running statistics for the \
                 next, a sequence that parts cannot split"
                    .into(),
            ),
            _ => Ok(()),
        }
    }
    fn new(p: ExtractParams) -> Self {
        Self(p)
    }

    fn run(&mut self, ctx: &mut Context) -> Result<(), StageError> {
        let p = self.0.clone();
        let device = ctx.device().tch();
        let m = checkpoint::load(ctx.input(CHECKPOINT.name)?, device)?;
        m.channels_last();
        let train = p.bn == BnMode::Train;
        let (seed, epoch) = (ctx.seed(), ctx.epoch().unwrap_or(0));
        if p.store != Keep::None {
            let w = ctx.output(FEATURES.name)?;
            w.uncompressed();
            // Row groups (the chunks that sharded k-means rounds split) of 8192 rows, 4 MB of
            // 128-d features.
            w.set_row_group_rows(8192);
            w.set_meta("dim", m.net.dim());
            if p.store == Keep::Sample {
                w.set_meta("sample_per_image", p.sample_per_image);
            }
        }
        let mut views = Views::open(ctx, &m)?;
        while let Some(b) = views.next(ctx)? {
            let (z1, z2) = tch::no_grad(|| b.features(&m.net, device, train))?;
            if p.store != Keep::None {
                let (h, w) = (z1.size()[2], z1.size()[3]);
                let w_out = ctx.output(FEATURES.name)?;
                for (view, z) in [(1u8, &z1), (2, &z2)] {
                    let pick: Option<Vec<Vec<i64>>> = (p.store == Keep::Sample).then(|| {
                        b.images
                            .iter()
                            .map(|&i| {
                                pixel_sample(
                                    seed,
                                    epoch,
                                    i,
                                    view,
                                    (h * w) as usize,
                                    p.sample_per_image,
                                )
                            })
                            .collect()
                    });
                    w_out.write(&tables::features_rows(
                        &b.images,
                        view,
                        z,
                        p.precision,
                        pick.as_deref(),
                    )?)?;
                }
            }
            if ctx.has_consumers(FEATURE_STREAM.name) {
                ctx.send_to(
                    &FEATURE_STREAM,
                    FeatureBatch {
                        epoch: b.epoch,
                        images: b.images.clone(),
                        z1: HostTensor::from_tensor(&z1)?,
                        z2: HostTensor::from_tensor(&z2)?,
                    },
                )?;
            }
            ctx.progress().inc(b.images.len() as u64);
        }
        if train {
            let out = ctx.output(CHECKPOINT.name)?;
            out.set_meta("bn_stats_from", "extract (train-mode pass)");
            checkpoint::save(out, &m)?;
        }
        Ok(())
    }
}
