//! `kmeans`: clusters every pixel feature, separately for each view, as released
//! (`minibatch`: full k-means on the first `init_rows` rows, then the online update every
//! `batch_rows` rows) or by exact full-batch Lloyd streamed from disk (`lloyd`). Features
//! come from the stored `features` artifact or straight from `extract`'s `stream` (minibatch
//! only: one pass); both give the same centroids.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, RecordBatch, UInt32Array, UInt64Array, UInt8Array};
use arrow::datatypes::{DataType, Field, Schema};
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::io::batch::FeatureBatch;
use crate::io::tables;
use crate::sections::PicieContext;
use picie_core::kmeans::{self, Init, Kmeans, KmeansConfig, Metric};
use picie_engine::error::StageFailure;
use picie_engine::{Context, ParamError, Port, Stage, StageError};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Minibatch,
    Lloyd,
}

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

fn stats_batch(rows: &[(u8, u32, f64, u64)]) -> Result<RecordBatch, StageError> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("view", DataType::UInt8, false),
        Field::new("iteration", DataType::UInt32, false),
        Field::new("objective", DataType::Float64, false),
        Field::new("empty_repaired", DataType::UInt64, false),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(rows.iter().map(|r| r.0).collect::<UInt8Array>()),
        Arc::new(rows.iter().map(|r| r.1).collect::<UInt32Array>()),
        Arc::new(rows.iter().map(|r| r.2).collect::<Float64Array>()),
        Arc::new(rows.iter().map(|r| r.3).collect::<UInt64Array>()),
    ];
    Ok(RecordBatch::try_new(schema, cols)?)
}

impl Stage for KmeansStage {
    type Params = KmeansParams;
    const KIND: &'static str = "kmeans";
    // 2: online updates of exactly `batch_rows` rows; the `stream` input.
    const VERSION: u32 = 2;
    const DESCRIPTION: &'static str = "k-means centroids of each view's pixel features";

    fn inputs(_: &KmeansParams) -> Vec<Port> {
        vec![
            Port::artifact("features", "features").optional(),
            Port::stream("stream", "feature_batch").optional(),
        ]
    }
    fn outputs(_: &KmeansParams) -> Vec<Port> {
        vec![
            Port::artifact("centroids", "centroids"),
            Port::artifact("stats", "kmeans_stats"),
        ]
    }
    fn validate(p: &KmeansParams) -> Vec<ParamError> {
        let mut e = Vec::new();
        if p.k < 2 {
            e.push(ParamError::new("k", "must be at least 2"));
        }
        if p.n_iter == 0 {
            e.push(ParamError::new("n_iter", "must be at least 1"));
        }
        check_minibatch_rows(p.init_rows, p.batch_rows, &mut e);
        e
    }
    fn new(p: KmeansParams) -> Self {
        Self(p)
    }

    fn run(&mut self, ctx: &mut Context) -> Result<(), StageError> {
        let p = self.0.clone();
        let device = ctx.device().tch();
        let (stored, streamed) = (ctx.has_input("features"), ctx.has_input("stream"));
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
            let features = ctx.input("features")?.clone();
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
                push_iters(&mut stats, view, &fit.iters);
                fitted.push((
                    fit.kmeans.centroids().shallow_clone(),
                    fit.kmeans.counts().to_vec(),
                ));
            }
        } else {
            let mut views =
                [1u8, 2].map(|v| Online::new(v, &cfg, p.init_rows, p.batch_rows, device));
            if streamed {
                while let Some(b) = ctx.recv_as::<FeatureBatch>("stream")? {
                    for o in &mut views {
                        o.push(b.rows(o.view), &mut stats)?;
                    }
                }
            } else {
                let features = ctx.input("features")?.clone();
                for o in &mut views {
                    for b in features.batches() {
                        ctx.check_cancelled()?;
                        o.push(tables::features_of_view(&b?, o.view)?, &mut stats)?;
                    }
                }
            }
            for o in views {
                fitted.push(o.finish(&mut stats)?);
            }
        }
        // One order whatever the input: by view, then iteration.
        stats.sort_by_key(|r| (r.0, r.1));
        for (i, (centroids, counts)) in fitted.iter().enumerate() {
            ctx.output("centroids")?.write(&tables::centroids_batch(
                i as u8 + 1,
                centroids,
                counts,
            )?)?;
        }
        ctx.output("centroids")?.set_meta("k", p.k);
        ctx.output("stats")?.write(&stats_batch(&stats)?)?;
        Ok(())
    }
}

/// The mini-batch scheme's row counts must be positive (here and in `evaluate`).
pub(crate) fn check_minibatch_rows(init_rows: usize, batch_rows: usize, e: &mut Vec<ParamError>) {
    for (name, rows) in [("init_rows", init_rows), ("batch_rows", batch_rows)] {
        if rows == 0 {
            e.push(ParamError::new(name, "must be positive"));
        }
    }
}

pub(crate) type StatRow = (u8, u32, f64, u64);

/// The Lloyd iterations of one view's fit as stats rows.
fn push_iters(stats: &mut Vec<StatRow>, view: u8, iters: &[kmeans::IterStat]) {
    for s in iters {
        stats.push((
            view,
            s.iteration as u32,
            s.objective,
            s.empty_repaired as u64,
        ));
    }
}

/// k-means errors name the view they happened in.
fn view_err(view: u8) -> impl Fn(kmeans::KmeansError) -> StageError {
    move |e| StageError::msg(format!("view {view}: {e}"))
}

/// The release's mini-batch k-means of one view, fed rows in order: full k-means on the
/// first `init_rows` rows, then one online update per `batch_rows` rows. Also the fresh
/// k-means of `evaluate` in its `minibatch` mode.
pub(crate) struct Online<'a> {
    pub(crate) view: u8,
    cfg: &'a KmeansConfig,
    init_rows: usize,
    batch_rows: usize,
    device: tch::Device,
    km: Option<Kmeans>,
    /// Rows waiting: the initial sample, then the next online batch. Kept in pieces of
    /// exactly `cfg.chunk_rows` rows (the last one filling), so the initial k-means runs over
    /// them without a concatenated copy and sees the same blocks however the rows arrived.
    buf: Vec<Tensor>,
    filling: Vec<Tensor>,
    filling_rows: usize,
    buf_rows: usize,
    updates: u32,
}

impl<'a> Online<'a> {
    pub(crate) fn new(
        view: u8,
        cfg: &'a KmeansConfig,
        init_rows: usize,
        batch_rows: usize,
        device: tch::Device,
    ) -> Self {
        Self {
            view,
            cfg,
            init_rows,
            batch_rows,
            device,
            km: None,
            buf: Vec::new(),
            filling: Vec::new(),
            filling_rows: 0,
            buf_rows: 0,
            updates: 0,
        }
    }

    /// Appends rows to the waiting buffer, sealing each full `chunk_rows` piece.
    fn keep(&mut self, rows: Tensor) {
        let mut rows = rows;
        let chunk = self.cfg.chunk_rows.max(1);
        self.buf_rows += rows.size()[0] as usize;
        while rows.size()[0] > 0 {
            let n = rows.size()[0] as usize;
            let take = (chunk - self.filling_rows).min(n);
            self.filling.push(rows.narrow(0, 0, take as i64));
            self.filling_rows += take;
            rows = rows.narrow(0, take as i64, (n - take) as i64);
            if self.filling_rows == chunk {
                self.seal();
            }
        }
    }

    fn seal(&mut self) {
        if self.filling.is_empty() {
            return;
        }
        let piece = if self.filling.len() == 1 {
            self.filling.pop().expect("one piece")
        } else {
            Tensor::cat(&self.filling, 0)
        };
        self.filling.clear();
        self.filling_rows = 0;
        self.buf.push(piece);
    }

    pub(crate) fn push(
        &mut self,
        mut rows: Tensor,
        stats: &mut Vec<StatRow>,
    ) -> Result<(), StageError> {
        loop {
            let n = rows.size()[0] as usize;
            let want = if self.km.is_none() {
                self.init_rows
            } else {
                self.batch_rows
            };
            let room = want - self.buf_rows;
            if n < room {
                if n > 0 {
                    self.keep(rows);
                }
                return Ok(());
            }
            self.keep(rows.narrow(0, 0, room as i64));
            rows = rows.narrow(0, room as i64, (n - room) as i64);
            self.flush(stats)?;
        }
    }

    /// Uses the waiting rows: the initial k-means, or one online update.
    fn flush(&mut self, stats: &mut Vec<StatRow>) -> Result<(), StageError> {
        self.seal();
        if self.buf.is_empty() {
            return Ok(());
        }
        let pieces = std::mem::take(&mut self.buf);
        self.buf_rows = 0;
        let view = self.view;
        let err = view_err(view);
        match self.km.as_mut() {
            None => {
                // = Kmeans::init_from on the concatenation, without making it.
                let fit = kmeans::lloyd(
                    || {
                        pieces
                            .iter()
                            .map(|t| Ok::<_, StageFailure>(t.shallow_clone()))
                    },
                    self.cfg,
                    self.device,
                )
                .map_err(err)?;
                push_iters(stats, view, &fit.iters);
                self.km = Some(fit.kmeans);
            }
            Some(km) => {
                let s = km.minibatch_update(&Tensor::cat(&pieces, 0)).map_err(err)?;
                self.updates += 1;
                stats.push((view, self.cfg.n_iter as u32 + self.updates, s.objective, 0));
            }
        }
        Ok(())
    }

    pub(crate) fn finish(
        mut self,
        stats: &mut Vec<StatRow>,
    ) -> Result<(Tensor, Vec<u64>), StageError> {
        self.flush(stats)?;
        let km = self
            .km
            .ok_or_else(|| StageError::msg(format!("view {}: the input has no rows", self.view)))?;
        Ok((km.centroids().shallow_clone(), km.counts().to_vec()))
    }
}
