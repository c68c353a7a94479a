//! `kmeans`: clusters every pixel feature, separately for each view, as released
//! (`minibatch`: full k-means on the first `init_rows` rows, then the online update every
//! `batch_rows` rows) or by exact full-batch Lloyd streamed from disk (`lloyd`). Features
//! come from the stored `features` artifact or straight from `extract`'s `stream` (minibatch
//! only: one pass); both give the same centroids.

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::io::ports::{CENTROIDS, FEATURES, FEATURE_STREAM, KMEANS_STATS};
use crate::io::tables;
use crate::sections::PicieContext;
use picie_core::kmeans::{
    self, zero_minibatch_rows, Init, KmeansConfig, Metric, Mode, Online, StatRow,
};
use picie_engine::error::StageFailure;
use picie_engine::{Context, ParamError, Port, Stage, StageError};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KmeansParams {
    pub k: usize,
    pub mode: Mode,
    pub n_iter: usize,
    pub init: Init,
    pub metric: Metric,
    /// `minibatch`: rows of the first batches that the initial full k-means sees.
    pub init_rows: usize,
    /// `minibatch`: rows per online update (the last update takes what is left).
    pub batch_rows: usize,
    /// The release seeds faiss with 0 whatever the run's seed; `true` does the same.
    pub fixed_seed: bool,
}

impl Default for KmeansParams {
    fn default() -> Self {
        Self {
            k: 27,
            mode: Mode::Minibatch,
            n_iter: 20,
            init: Init::RandomSample,
            metric: Metric::L2,
            init_rows: 1 << 20,
            batch_rows: 1 << 17,
            fixed_seed: false,
        }
    }
}

pub struct KmeansStage(KmeansParams);

impl Stage for KmeansStage {
    type Params = KmeansParams;
    const KIND: &'static str = "kmeans";
    // 2: online updates of exactly `batch_rows` rows; the `stream` input.
    const VERSION: u32 = 2;
    const DESCRIPTION: &'static str = "k-means centroids of each view's pixel features";

    fn inputs(_: &KmeansParams) -> Vec<Port> {
        vec![FEATURES.optional(), FEATURE_STREAM.port().optional()]
    }
    fn outputs(_: &KmeansParams) -> Vec<Port> {
        vec![CENTROIDS, KMEANS_STATS]
    }
    fn validate(p: &KmeansParams) -> Vec<ParamError> {
        let mut e = Vec::new();
        if p.k < 2 {
            e.push(ParamError::new("k", "must be at least 2"));
        }
        if p.n_iter == 0 {
            e.push(ParamError::new("n_iter", "must be at least 1"));
        }
        for field in zero_minibatch_rows(p.init_rows, p.batch_rows) {
            e.push(ParamError::new(field, "must be positive"));
        }
        e
    }
    fn new(p: KmeansParams) -> Self {
        Self(p)
    }

    fn run(&mut self, ctx: &mut Context) -> Result<(), StageError> {
        let p = self.0.clone();
        let device = ctx.device().tch();
        let (stored, streamed) = (
            ctx.has_input(FEATURES.name),
            ctx.has_input(FEATURE_STREAM.name),
        );
        if stored == streamed {
            return Err(StageError::msg(
                "connect exactly one of `features` (the stored artifact) and `stream` (extract's stream)",
            ));
        }
        if streamed && p.mode == Mode::Lloyd {
            return Err(StageError::msg(
                "mode `lloyd` passes over the data many times: read the stored `features`, or use mode `minibatch` with the stream",
            ));
        }
        let cfg = KmeansConfig {
            k: p.k,
            metric: p.metric,
            init: p.init,
            n_iter: p.n_iter,
            seed: if p.fixed_seed { 0 } else { ctx.seed() },
            ..KmeansConfig::default()
        };
        let mut stats = Vec::new();
        let mut fitted: Vec<(Tensor, Vec<u64>)> = Vec::new();
        if p.mode == Mode::Lloyd {
            let features = ctx.input(FEATURES.name)?.clone();
            for view in [1u8, 2] {
                ctx.check_cancelled()?;
                let features = &features;
                let chunks = move || {
                    features.batches().map(move |b| {
                        b.and_then(|b| tables::features_of_view(&b, view))
                            .map_err(StageFailure)
                    })
                };
                let fit = kmeans::lloyd(chunks, &cfg, device).map_err(view_err(view))?;
                stats.extend(StatRow::of_iters(view, &fit.iters));
                fitted.push((
                    fit.kmeans.centroids().shallow_clone(),
                    fit.kmeans.counts().to_vec(),
                ));
            }
        } else {
            let mut views =
                [1u8, 2].map(|v| Online::new(v, &cfg, p.init_rows, p.batch_rows, device));
            if streamed {
                while let Some(b) = ctx.recv_from(&FEATURE_STREAM)? {
                    for o in &mut views {
                        let view = o.view;
                        o.push(b.rows(view), &mut stats).map_err(view_err(view))?;
                    }
                }
            } else {
                let features = ctx.input(FEATURES.name)?.clone();
                for o in &mut views {
                    for b in features.batches() {
                        ctx.check_cancelled()?;
                        let view = o.view;
                        o.push(tables::features_of_view(&b?, view)?, &mut stats)
                            .map_err(view_err(view))?;
                    }
                }
            }
            for o in views {
                let view = o.view;
                fitted.push(o.finish(&mut stats).map_err(view_err(view))?);
            }
        }
        // One order whatever the input: by view, then iteration.
        stats.sort_by_key(|r| (r.view, r.iteration));
        for (i, (centroids, counts)) in fitted.iter().enumerate() {
            ctx.output(CENTROIDS.name)?.write(&tables::centroids_batch(
                i as u8 + 1,
                centroids,
                counts,
            )?)?;
        }
        ctx.output(CENTROIDS.name)?.set_meta("k", p.k);
        ctx.output(KMEANS_STATS.name)?
            .write(&tables::kmeans_stats_batch(&stats)?)?;
        Ok(())
    }
}

/// k-means errors name the view they happened in (the error kept as the cause).
fn view_err(view: u8) -> impl Fn(kmeans::KmeansError) -> StageError {
    move |e| StageError::context(format!("view {view}"), e)
}
