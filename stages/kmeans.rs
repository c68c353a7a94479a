//! `kmeans`: clusters every stored pixel feature, separately for each view, as released
//! (`minibatch`: full k-means on the first batches, then the online update) or by exact
//! full-batch Lloyd streamed from disk (`lloyd`).

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, RecordBatch, UInt32Array, UInt64Array, UInt8Array};
use arrow::datatypes::{DataType, Field, Schema};
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::kmeans::{self, Init, Kmeans, KmeansConfig, Metric};
use crate::tables;
use crate::{Context, ParamError, Port, Stage, StageError};

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
    /// `minibatch`: rows per online update.
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
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str = "k-means centroids of each view's pixel features";

    fn inputs(_: &KmeansParams) -> Vec<Port> {
        vec![Port::artifact("features", "features")]
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
        if p.batch_rows == 0 || p.init_rows == 0 {
            e.push(ParamError::new(
                if p.batch_rows == 0 {
                    "batch_rows"
                } else {
                    "init_rows"
                },
                "must be positive",
            ));
        }
        e
    }
    fn new(p: KmeansParams) -> Self {
        Self(p)
    }

    fn run(&mut self, ctx: &mut Context) -> Result<(), StageError> {
        let p = self.0.clone();
        let device = ctx.device().tch();
        let features = ctx.input("features")?.clone();
        let cfg = KmeansConfig {
            k: p.k,
            metric: p.metric,
            init: p.init,
            n_iter: p.n_iter,
            seed: if p.fixed_seed { 0 } else { ctx.seed() },
            ..KmeansConfig::default()
        };
        let mut stats = Vec::new();
        for view in [1u8, 2] {
            ctx.check_cancelled()?;
            let features = &features;
            let chunks = move || {
                features
                    .batches()
                    .map(move |b| b.and_then(|b| tables::features_of_view(&b, view)))
            };
            let (centroids, counts) = match p.mode {
                Mode::Lloyd => {
                    let fit = kmeans::lloyd(chunks, &cfg, device).map_err(StageError::msg)?;
                    for s in &fit.iters {
                        stats.push((
                            view,
                            s.iteration as u32,
                            s.objective,
                            s.empty_repaired as u64,
                        ));
                    }
                    (
                        fit.kmeans.centroids().shallow_clone(),
                        fit.kmeans.counts().to_vec(),
                    )
                }
                Mode::Minibatch => {
                    let (mut km, later) =
                        minibatch_init(chunks, &cfg, p.init_rows, device, &mut stats, view)?;
                    // Later rows, in batches of `batch_rows`: the release's online update.
                    let mut buf: Vec<Tensor> = Vec::new();
                    let mut rows = 0i64;
                    let mut step = 0u32;
                    let mut flush =
                        |buf: &mut Vec<Tensor>, km: &mut Kmeans| -> Result<(), StageError> {
                            if buf.is_empty() {
                                return Ok(());
                            }
                            let t = Tensor::cat(buf, 0);
                            buf.clear();
                            let s = km.minibatch_update(&t).map_err(StageError::msg)?;
                            step += 1;
                            stats.push((view, cfg.n_iter as u32 + step, s.objective, 0));
                            Ok(())
                        };
                    for t in later {
                        ctx.check_cancelled()?;
                        let t = t?;
                        rows += t.size()[0];
                        buf.push(t);
                        if rows >= p.batch_rows as i64 {
                            flush(&mut buf, &mut km)?;
                            rows = 0;
                        }
                    }
                    flush(&mut buf, &mut km)?;
                    (km.centroids().shallow_clone(), km.counts().to_vec())
                }
            };
            ctx.output("centroids")?
                .write(&tables::centroids_batch(view, &centroids, &counts)?)?;
        }
        let w = ctx.output("centroids")?;
        w.set_meta("k", p.k);
        ctx.output("stats")?.write(&stats_batch(&stats)?)?;
        Ok(())
    }
}

type Chunks<'a> = Box<dyn Iterator<Item = Result<Tensor, StageError>> + 'a>;

/// Full k-means on the first `init_rows` rows; returns the model and the remaining rows.
fn minibatch_init<'a, F, I>(
    chunks: F,
    cfg: &KmeansConfig,
    init_rows: usize,
    device: tch::Device,
    stats: &mut Vec<(u8, u32, f64, u64)>,
    view: u8,
) -> Result<(Kmeans, Chunks<'a>), StageError>
where
    F: Fn() -> I,
    I: Iterator<Item = Result<Tensor, StageError>> + 'a,
{
    let mut it = chunks();
    let mut head: Vec<Tensor> = Vec::new();
    let mut rows = 0usize;
    let mut rest: Vec<Tensor> = Vec::new();
    for t in it.by_ref() {
        let t = t?;
        let n = t.size()[0] as usize;
        if rows + n <= init_rows {
            rows += n;
            head.push(t);
        } else {
            let take = (init_rows - rows) as i64;
            if take > 0 {
                head.push(t.narrow(0, 0, take));
            }
            rest.push(t.narrow(0, take, n as i64 - take));
            break;
        }
    }
    if head.is_empty() {
        return Err(StageError::msg(
            "the features artifact has no rows for this view",
        ));
    }
    let fit = Kmeans::init_from(&Tensor::cat(&head, 0), cfg, device).map_err(StageError::msg)?;
    for s in &fit.iters {
        stats.push((
            view,
            s.iteration as u32,
            s.objective,
            s.empty_repaired as u64,
        ));
    }
    let later: Chunks<'a> = Box::new(rest.into_iter().map(Ok).chain(it));
    Ok((fit.kmeans, later))
}
