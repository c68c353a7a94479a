//! `label`: each pixel of both views gets its nearest centroid (the release's rule,
//! argmax 2<z, mu> - |mu|^2, network in eval mode); labels are stored compactly, one row per
//! image and view, with cluster counts and the loss weights derived from them.
//!
//! `source: features` skips the release's second forward pass and labels the clustering
//! pass's stored features instead (the `fast` profile): identical labels when that pass ran
//! in eval mode, batch-statistics features instead of the release's eval-mode ones when it
//! ran with `bn: train`.

use arrow::array::{UInt16Array, UInt32Array, UInt8Array};
use serde::{Deserialize, Serialize};

use crate::io::batch::Views;
use crate::io::checkpoint;
use crate::io::ports::{BATCHES, CENTROIDS, CHECKPOINT, FEATURES, LABELS, TOKENS, WEIGHTS};
use crate::io::tables;
use crate::sections::PicieContext;
use picie_core::kmeans::label_release;
use picie_core::loss::{cluster_weights, Weighting};
use picie_engine::{Context, Port, Stage, StageError};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LabelParams {
    pub weights: Weighting,
    /// Where the features to label come from. Left out of the cache key when `pass`, so
    /// keys stay what they were before the param existed.
    #[serde(skip_serializing_if = "Source::is_pass")]
    pub source: Source,
}

impl Default for LabelParams {
    fn default() -> Self {
        Self {
            weights: Weighting::AsReleased,
            source: Source::Pass,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A forward pass of its own, in eval mode, over `batches` or `tokens` (as released).
    Pass,
    /// The `features` table of an `extract` that kept every pixel (`store: all`).
    Features,
}

impl Source {
    fn is_pass(&self) -> bool {
        *self == Source::Pass
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

    fn inputs(p: &LabelParams) -> Vec<Port> {
        if p.source == Source::Features {
            return vec![FEATURES, CENTROIDS];
        }
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
    fn shardable(p: &LabelParams) -> Result<(), String> {
        match p.source {
            Source::Pass => Ok(()),
            Source::Features => Err("`source: features` reads the whole features table".into()),
        }
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
        if self.0.source == Source::Features {
            return self.run_on_features(ctx);
        }
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
        self.write_weights(ctx, &counts, k)
    }
}

/// One image's labels of one view, assembled from its feature rows (pixel-major).
struct Assembly {
    image: u32,
    view: u8,
    labels: Vec<i64>,
    last: (u16, u16),
}

impl Label {
    fn run_on_features(&self, ctx: &mut Context) -> Result<(), StageError> {
        let features = ctx.input(FEATURES.name)?.clone();
        if features.meta("sample_per_image").is_some() {
            return Err(StageError::msg(
                "`source: features` needs every pixel's feature, but the `features` input \
                 keeps a sample per image (give its extract `store: all`)",
            ));
        }
        let device = ctx.device().tch();
        let (c1, _) = tables::read_centroids(ctx.input(CENTROIDS.name)?, 1)?;
        let (c2, _) = tables::read_centroids(ctx.input(CENTROIDS.name)?, 2)?;
        let k = c1.size()[0] as usize;
        if c2.size()[0] as usize != k {
            return Err(StageError::msg(format!(
                "view 2 has {} centroids, view 1 {k}",
                c2.size()[0]
            )));
        }
        let dim = features.meta("dim").and_then(|d| d.as_i64());
        for c in [&c1, &c2] {
            if dim.is_some_and(|d| d != c.size()[1]) {
                return Err(StageError::msg(format!(
                    "centroids have dimension {}, the features {}",
                    c.size()[1],
                    dim.unwrap_or(0)
                )));
            }
        }
        let centroids = [c1.to_device(device), c2.to_device(device)];
        let mut counts = [vec![0u64; k], vec![0u64; k]];
        let mut open: Option<Assembly> = None;
        for b in features.batches() {
            ctx.check_cancelled()?;
            let b = b?;
            let images = tables::column::<UInt32Array>(&b, "image")?;
            let views = tables::column::<UInt8Array>(&b, "view")?;
            let ys = tables::column::<UInt16Array>(&b, "y")?;
            let xs = tables::column::<UInt16Array>(&b, "x")?;
            // A read batch may span both views: label each run of one view with its centroids.
            let mut start = 0;
            while start < b.num_rows() {
                let view = views.value(start);
                if view != 1 && view != 2 {
                    return Err(StageError::msg(format!(
                        "features of view {view}: not 1 or 2"
                    )));
                }
                let end = (start..b.num_rows())
                    .find(|&i| views.value(i) != view)
                    .unwrap_or(b.num_rows());
                let z = tables::features_of_view(&b.slice(start, end - start), view)?;
                let labels = label_release(&z.to_device(device), &centroids[view as usize - 1])?;
                let labels = Vec::<i64>::try_from(labels.to_device(tch::Device::Cpu))?;
                for (i, label) in (start..end).zip(labels) {
                    let image = images.value(i);
                    if open
                        .as_ref()
                        .is_some_and(|a| (a.image, a.view) != (image, view))
                    {
                        self.finish(ctx, open.take(), &mut counts, k)?;
                    }
                    let a = open.get_or_insert_with(|| Assembly {
                        image,
                        view,
                        labels: Vec::new(),
                        last: (0, 0),
                    });
                    a.labels.push(label);
                    a.last = (ys.value(i), xs.value(i));
                }
                start = end;
            }
        }
        self.finish(ctx, open.take(), &mut counts, k)?;
        self.write_weights(ctx, &counts, k)
    }

    /// Records K on the labels and writes each view's cluster counts and loss weights.
    fn write_weights(
        &self,
        ctx: &mut Context,
        counts: &[Vec<u64>; 2],
        k: usize,
    ) -> Result<(), StageError> {
        ctx.output(LABELS.name)?.set_meta("k", k);
        for (i, c) in counts.iter().enumerate() {
            let w = cluster_weights(c, self.0.weights);
            ctx.output(WEIGHTS.name)?
                .write(&tables::weights_batch(i as u8 + 1, c, &w)?)?;
        }
        Ok(())
    }

    /// Writes one image's labels, once its map is whole: the last pixel is (H-1, W-1).
    fn finish(
        &self,
        ctx: &mut Context,
        a: Option<Assembly>,
        counts: &mut [Vec<u64>; 2],
        k: usize,
    ) -> Result<(), StageError> {
        let Some(a) = a else { return Ok(()) };
        let (h, w) = (a.last.0 as i64 + 1, a.last.1 as i64 + 1);
        if a.labels.len() as i64 != h * w {
            return Err(StageError::msg(format!(
                "the features of image {} view {} hold {} pixels, not a whole {h}x{w} map",
                a.image,
                a.view,
                a.labels.len()
            )));
        }
        for &l in &a.labels {
            counts[a.view as usize - 1][l as usize] += 1;
        }
        let t = tch::Tensor::from_slice(&a.labels).reshape([1, h, w]);
        ctx.output(LABELS.name)?
            .write(&tables::labels_batch(&[a.image], a.view, &t, k)?)?;
        if a.view == 2 {
            ctx.progress().inc(1);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The release's labelling pass keeps the cache keys it had before `source` existed, and
    /// reading stored features swaps the pass's inputs for `features`.
    #[test]
    fn source_pass_is_left_out_of_the_key() {
        let keyed = |source| {
            serde_json::to_value(LabelParams {
                source,
                ..Default::default()
            })
        };
        assert!(keyed(Source::Pass).unwrap().get("source").is_none());
        assert_eq!(keyed(Source::Features).unwrap()["source"], "features");
        let names = |source| -> Vec<&str> {
            Label::inputs(&LabelParams {
                source,
                ..Default::default()
            })
            .iter()
            .map(|p| p.name)
            .collect()
        };
        assert_eq!(names(Source::Features), ["features", "centroids"]);
        assert!(names(Source::Pass).contains(&"checkpoint"));
        assert!(Label::shardable(&LabelParams {
            source: Source::Features,
            ..Default::default()
        })
        .is_err());
    }
}
