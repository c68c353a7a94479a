//! `label`: each pixel of both views gets its nearest centroid (the release's rule,
//! argmax 2<z, mu> - |mu|^2, network in eval mode); labels are stored compactly, one row per
//! image and view, with cluster counts and the loss weights derived from them.

use serde::{Deserialize, Serialize};

use crate::io::batch::Views;
use crate::io::checkpoint;
use crate::io::ports::{BATCHES, CENTROIDS, CHECKPOINT, LABELS, TOKENS, WEIGHTS};
use crate::io::tables;
use crate::sections::PicieContext;
use picie_core::kmeans::label_release;
use picie_core::loss::{cluster_weights, Weighting};
use picie_engine::{Context, Port, Stage, StageError};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LabelParams {
    pub weights: Weighting,
}

impl Default for LabelParams {
    fn default() -> Self {
        Self {
            weights: Weighting::AsReleased,
        }
    }
}

pub struct Label(LabelParams);

impl Stage for Label {
    type Params = LabelParams;
    const KIND: &'static str = "label";
    // 2: channels-last inference (other summation order, so other low bits).
    const VERSION: u32 = 2;
    const DESCRIPTION: &'static str =
        "nearest-centroid pseudo-labels of both views, with cluster weights";

    fn inputs(_: &LabelParams) -> Vec<Port> {
        vec![
            BATCHES.port().instead_of(TOKENS.name),
            TOKENS.instead_of(BATCHES.name),
            CHECKPOINT,
            CENTROIDS,
        ]
    }
    fn outputs(_: &LabelParams) -> Vec<Port> {
        vec![LABELS, WEIGHTS]
    }
    /// Labels are per image; the weights come from counts, which add up across parts.
    fn shardable(_: &LabelParams) -> Result<(), String> {
        Ok(())
    }
    fn combine(p: &LabelParams, ctx: &mut Context) -> Result<(), StageError> {
        ctx.concat_part(LABELS.name)?;
        let parts: Vec<_> = ctx.parts(WEIGHTS.name)?.into_iter().cloned().collect();
        for view in [1u8, 2] {
            let mut total: Vec<u64> = Vec::new();
            for part in &parts {
                let counts = tables::read_counts(part, view)?;
                if total.is_empty() {
                    total = counts;
                } else if counts.len() != total.len() {
                    return Err(StageError::msg(format!(
                        "parts of `weights` have {} and {} clusters",
                        total.len(),
                        counts.len()
                    )));
                } else {
                    total.iter_mut().zip(counts).for_each(|(t, c)| *t += c);
                }
            }
            let w = cluster_weights(&total, p.weights);
            ctx.output(WEIGHTS.name)?
                .write(&tables::weights_batch(view, &total, &w)?)?;
        }
        Ok(())
    }
    fn new(p: LabelParams) -> Self {
        Self(p)
    }

    fn run(&mut self, ctx: &mut Context) -> Result<(), StageError> {
        let device = ctx.device().tch();
        let m = checkpoint::load(ctx.input(CHECKPOINT.name)?, device)?;
        m.channels_last();
        let (c1, _) = tables::read_centroids(ctx.input(CENTROIDS.name)?, 1)?;
        let (c2, _) = tables::read_centroids(ctx.input(CENTROIDS.name)?, 2)?;
        let (c1, c2) = (c1.to_device(device), c2.to_device(device));
        let k = m.net.check_centroids(&c1)?;
        if m.net.check_centroids(&c2)? != k {
            return Err(StageError::msg(format!(
                "view 2 has {} centroids, view 1 {k}",
                c2.size()[0]
            )));
        }
        let mut counts = [vec![0u64; k], vec![0u64; k]];
        let mut views = Views::open(ctx, &m)?;
        while let Some(b) = views.next(ctx)? {
            let (z1, z2) = tch::no_grad(|| b.features(&m.net, device, false))?;
            for (view, z, c) in [(1u8, &z1, &c1), (2, &z2, &c2)] {
                let labels = label_release(z, c)?;
                let hist = labels
                    .flatten(0, -1)
                    .bincount::<tch::Tensor>(None, k as i64);
                let hist = Vec::<i64>::try_from(hist.to_device(tch::Device::Cpu))?;
                for (slot, h) in counts[view as usize - 1].iter_mut().zip(hist) {
                    *slot += h as u64;
                }
                ctx.output(LABELS.name)?
                    .write(&tables::labels_batch(&b.images, view, &labels, k)?)?;
            }
            ctx.progress().inc(b.images.len() as u64);
        }
        ctx.output(LABELS.name)?.set_meta("k", k);
        for (i, c) in counts.iter().enumerate() {
            let w = cluster_weights(c, self.0.weights);
            ctx.output(WEIGHTS.name)?
                .write(&tables::weights_batch(i as u8 + 1, c, &w)?)?;
        }
        Ok(())
    }
}
