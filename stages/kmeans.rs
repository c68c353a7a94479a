//! `kmeans`: clusters every pixel feature, separately for each view, as released
//! (`minibatch`: full k-means on the first `init_rows` rows, then the online update every
//! `batch_rows` rows) or by exact full-batch Lloyd streamed from disk (`lloyd`). Features
//! come from the stored `features` artifact or straight from `extract`'s `stream` (minibatch
//! only: one pass); both give the same centroids.
//!
//! Sharded, `lloyd` runs in rounds, one per pass (`n_iter` + 1): each round's parts assign
//! their share of the features' chunks and store per-block sums and counts, and the round's
//! join adds the blocks in order and moves the centroids, exactly as one process does.

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::io::lloyd_rounds;
use crate::io::ports::{CENTROIDS, FEATURES, FEATURE_STREAM, KMEANS_STATS};
use crate::io::tables;
use crate::sections::PicieContext;
use picie_core::kmeans::{
    self, zero_minibatch_rows, Init, KmeansConfig, LloydState, Metric, Mode, Online, StatRow,
};
use picie_engine::artifact::Artifact;
use picie_engine::error::StageFailure;
use picie_engine::shard::{ROUND_STATE, ROUND_STATS};
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
    // 2: online updates of exactly `batch_rows` rows; the `stream` input. 3: `lloyd` reads
    // the features chunk by chunk (row groups), as its sharded rounds do.
    const VERSION: u32 = 3;
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
    fn shardable(p: &KmeansParams) -> Result<(), String> {
        match p.mode {
            Mode::Lloyd => Ok(()),
            Mode::Minibatch => Err(
                "mode `minibatch` moves its centroids after every batch, in order (mode `lloyd` \
                 runs in parts)"
                    .into(),
            ),
        }
    }
    /// Lloyd: a round per pass over the data, `n_iter` updates and the counting pass.
    fn rounds(p: &KmeansParams) -> u32 {
        match p.mode {
            Mode::Lloyd => p.n_iter as u32 + 1,
            Mode::Minibatch => 1,
        }
    }
    /// A round's join: the parts' blocks, in part order, make the pass; the next round gets
    /// the state, the last writes the centroids.
    fn combine(p: &KmeansParams, ctx: &mut Context) -> Result<(), StageError> {
        let Some((round, rounds)) = ctx.round() else {
            return Err(StageError::msg("k-means joins parts only in rounds"));
        };
        let cfg = config(p, ctx);
        let device = ctx.device().tch();
        let features = ctx.input(FEATURES.name)?.clone();
        let n = features.chunk_count()?;
        let mut saved = Vec::new();
        let mut stats = Vec::new();
        let mut fitted = Vec::new();
        for view in [1u8, 2] {
            ctx.check_cancelled()?;
            let mut state = round_state(ctx, &features, n, view, &cfg, device)?;
            let mut blocks = Vec::new();
            for part in ctx.parts(ROUND_STATS.name)? {
                blocks.extend(lloyd_rounds::read_blocks(part, view)?);
            }
            match state.step(blocks).map_err(view_err(view))? {
                Some(fit) => {
                    stats.extend(StatRow::of_iters(view, &fit.iters));
                    fitted.push((
                        fit.kmeans.centroids().shallow_clone(),
                        fit.kmeans.counts().to_vec(),
                    ));
                }
                None => saved.push((view, state.saved().map_err(view_err(view))?)),
            }
        }
        let last = round + 1 == rounds;
        if last != saved.is_empty() || fitted.len() + saved.len() != 2 {
            return Err(StageError::msg(format!(
                "k-means round {} of {rounds} does not match its pass count: the rounds come \
                 from another n_iter",
                round + 1
            )));
        }
        if !last {
            return ctx
                .output(ROUND_STATE.name)?
                .write(&lloyd_rounds::state_batch(&saved)?);
        }
        write_fit(ctx, p.k, &fitted, stats)
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
        let cfg = config(&p, ctx);
        let mut stats = Vec::new();
        let mut fitted: Vec<(Tensor, Vec<u64>)> = Vec::new();
        if p.mode == Mode::Lloyd {
            let features = ctx.input(FEATURES.name)?.clone();
            let n = features.chunk_count()?;
            if ctx.round().is_some() {
                // A part of a round: its chunks' blocks under the round's centroids.
                let range = ctx.shard().map_or(0..n, |s| s.range(n));
                for view in [1u8, 2] {
                    ctx.check_cancelled()?;
                    let state = round_state(ctx, &features, n, view, &cfg, device)?;
                    let blocks = kmeans::pass_blocks(
                        state.centroids(),
                        view_chunks(&features, range.clone(), view),
                        cfg.chunk_rows,
                        device,
                    )
                    .map_err(view_err(view))?;
                    ctx.output(ROUND_STATS.name)?
                        .write(&lloyd_rounds::blocks_batch(view, &blocks)?)?;
                }
                return Ok(());
            }
            for view in [1u8, 2] {
                ctx.check_cancelled()?;
                let features = &features;
                let chunks = move || view_chunks(features, 0..n, view);
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
        write_fit(ctx, p.k, &fitted, stats)
    }
}

fn config(p: &KmeansParams, ctx: &Context) -> KmeansConfig {
    KmeansConfig {
        k: p.k,
        metric: p.metric,
        init: p.init,
        n_iter: p.n_iter,
        seed: if p.fixed_seed { 0 } else { ctx.seed() },
        ..KmeansConfig::default()
    }
}

/// View `view`'s rows of the features' chunks `range`, chunk by chunk.
fn view_chunks(
    features: &Artifact,
    range: std::ops::Range<usize>,
    view: u8,
) -> impl Iterator<Item = Result<Tensor, StageFailure>> + '_ {
    features.chunks(range).map(move |b| {
        b.and_then(|b| tables::features_of_view(&b, view))
            .map_err(StageFailure)
    })
}

/// The Lloyd state a round starts from: what the previous round's join stored, or, in the
/// first round, the initial centroids (every part and the join draw the same ones).
fn round_state(
    ctx: &Context,
    features: &Artifact,
    n: usize,
    view: u8,
    cfg: &KmeansConfig,
    device: tch::Device,
) -> Result<LloydState, StageError> {
    if ctx.has_input(ROUND_STATE.name) {
        let saved = lloyd_rounds::read_state(ctx.input(ROUND_STATE.name)?, view)?;
        return LloydState::restore(&saved, cfg, device).map_err(view_err(view));
    }
    LloydState::init(&mut || view_chunks(features, 0..n, view), cfg, device).map_err(view_err(view))
}

/// The centroids of both views, and the statistics in one order whatever the input: by
/// view, then iteration.
fn write_fit(
    ctx: &mut Context,
    k: usize,
    fitted: &[(Tensor, Vec<u64>)],
    mut stats: Vec<StatRow>,
) -> Result<(), StageError> {
    stats.sort_by_key(|r| (r.view, r.iteration));
    for (i, (centroids, counts)) in fitted.iter().enumerate() {
        ctx.output(CENTROIDS.name)?.write(&tables::centroids_batch(
            i as u8 + 1,
            centroids,
            counts,
        )?)?;
    }
    ctx.output(CENTROIDS.name)?.set_meta("k", k);
    ctx.output(KMEANS_STATS.name)?
        .write(&tables::kmeans_stats_batch(&stats)?)?;
    Ok(())
}

/// k-means errors name the view they happened in (the error kept as the cause).
fn view_err(view: u8) -> impl Fn(kmeans::KmeansError) -> StageError {
    move |e| StageError::context(format!("view {view}"), e)
}
