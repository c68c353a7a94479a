//! `augment`: reads the training images and streams both augmented views of each, batch by
//! batch; the random parameters (a pure function of seed, epoch and image) are also an
//! artifact, so every pass of an epoch sees the same augmentations and they can be inspected.

use serde::{Deserialize, Serialize};

use crate::io::batch::{HostTensor, ViewBatch};
use crate::io::ports::{AUG_PARAMS, BATCHES};
use crate::io::tables;
use crate::sections::PicieContext;
use picie_core::augment_params::{self, AugmentConfig};
use picie_core::data::{preprocess, Split};
use picie_core::transforms::{geometric, views};
use picie_engine::{Context, ParamError, Port, Stage, StageError};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentParams {
    /// Shorter side of the base image and its centre crop (release: 640).
    pub size: u32,
    /// Network input side (release: 320).
    pub res: u32,
    pub batch: usize,
    /// Decoding threads.
    pub threads: usize,
    /// Use only the first N training images (null: all).
    pub limit: Option<usize>,
    /// The random transforms and their release quirks.
    pub random: AugmentConfig,
    /// Draws repeat every `pool` epochs (epoch e draws as epoch ((e - 1) mod pool) + 1), so
    /// a frozen backbone's tokens of them (`backbone`) are computed `pool` times in all and
    /// read back after; null: a new draw every epoch, as released.
    pub pool: Option<u32>,
}

impl AugmentParams {
    /// The epoch whose draws epoch `epoch` uses.
    pub fn draw_epoch(&self, epoch: u32) -> u32 {
        match self.pool {
            Some(n) if epoch > 0 => (epoch - 1) % n + 1,
            _ => epoch,
        }
    }
}

impl Default for AugmentParams {
    fn default() -> Self {
        Self {
            size: 640,
            res: 320,
            batch: 16,
            threads: 2,
            limit: None,
            random: AugmentConfig::default(),
            pool: None,
        }
    }
}

pub struct Augment(AugmentParams);

impl Stage for Augment {
    type Params = AugmentParams;
    const KIND: &'static str = "augment";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str =
        "both augmented views of every training image, streamed; the random parameters as a table";

    fn inputs(_: &AugmentParams) -> Vec<Port> {
        vec![]
    }
    fn outputs(_: &AugmentParams) -> Vec<Port> {
        vec![BATCHES.port(), AUG_PARAMS]
    }
    fn validate(p: &AugmentParams) -> Vec<ParamError> {
        let mut e: Vec<ParamError> = p
            .random
            .validate()
            .into_iter()
            .map(|m| ParamError::new("random", m))
            .collect();
        if p.res == 0 || p.size == 0 {
            e.push(ParamError::new(
                if p.res == 0 { "res" } else { "size" },
                "must be positive",
            ));
        }
        if p.batch == 0 {
            e.push(ParamError::new("batch", "must be at least 1"));
        }
        if p.threads == 0 {
            e.push(ParamError::new("threads", "must be at least 1"));
        }
        if p.pool == Some(0) {
            e.push(ParamError::new("pool", "must be at least 1 (or null)"));
        }
        e
    }
    fn key_epoch(p: &AugmentParams, epoch: u32) -> Option<u32> {
        Some(p.draw_epoch(epoch))
    }
    /// Each image's draws are a function of (seed, epoch, image) alone.
    fn shardable(_: &AugmentParams) -> Result<(), String> {
        Ok(())
    }
    const SECTIONS: &'static [&'static str] = &[crate::sections::DATASET];
    fn new(p: AugmentParams) -> Self {
        Self(p)
    }

    fn run(&mut self, ctx: &mut Context) -> Result<(), StageError> {
        let p = self.0.clone();
        let ds = ctx.dataset()?.open(Split::Train)?;
        let n = p.limit.map_or(ds.len(), |l| l.min(ds.len()));
        let epoch = p.draw_epoch(ctx.epoch().unwrap_or(0));
        let seed = ctx.seed();
        let ids: Vec<usize> = ctx.shard_items(n, p.batch).collect();
        ctx.progress().set_length(ids.len() as u64);
        for chunk in ids.chunks(p.batch) {
            ctx.check_cancelled()?;
            let ds = ds.as_ref();
            let made = preprocess::par_map(chunk, p.threads, |&i| -> Result<_, StageError> {
                let img = ds.image(i)?;
                let base = preprocess::train_image(&img, p.size)
                    .map_err(|e| StageError::context(ds.id(i), e))?;
                let aug = augment_params::draw(&p.random, seed, epoch, i as u64);
                let v1 = views::view1_tensor_release(&base, &aug, p.res)?;
                let [_, v2] = views::train_views(&base, &aug, p.res)?;
                let v1 = HostTensor::from_tensor(&v1.unsqueeze(0))?;
                let v2 =
                    HostTensor::from_tensor(&geometric::to_tensor_normalised(&v2).unsqueeze(0))?;
                Ok((i, aug, v1, v2))
            });
            let mut rows = Vec::new();
            let mut batch = ViewBatch {
                epoch,
                images: Vec::new(),
                view1: HostTensor {
                    data: Vec::new(),
                    shape: [0, 3, p.res as i64, p.res as i64],
                },
                view2: HostTensor {
                    data: Vec::new(),
                    shape: [0, 3, p.res as i64, p.res as i64],
                },
                geometric: Vec::new(),
                tokens: false,
            };
            for r in made {
                let (i, aug, v1, v2) = r?;
                rows.extend(aug.rows(i as u64, epoch));
                batch.images.push(i as u32);
                batch.view1.data.extend(v1.data);
                batch.view2.data.extend(v2.data);
                batch.view1.shape[0] += 1;
                batch.view2.shape[0] += 1;
                batch.geometric.push(aug.geometric);
            }
            ctx.output(AUG_PARAMS.name)?
                .write(&tables::aug_params_batch(&rows)?)?;
            ctx.send_to(&BATCHES, batch)?;
            ctx.progress().inc(chunk.len() as u64);
        }
        Ok(())
    }
}
