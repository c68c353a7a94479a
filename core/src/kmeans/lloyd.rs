//! Full-batch Lloyd over a streamed data set, with faiss's empty-cluster repair.

use super::*;

/// Full-batch Lloyd over a streamed data set. `source` is called once per pass and yields the
/// data's chunks (any row counts, floating point, any device), the same rows in the same order
/// each time. Initial centroids come from `cfg.init` over the first `cfg.init_pool_rows` rows.
pub fn lloyd<S, I, E>(mut source: S, cfg: &KmeansConfig, device: Device) -> Result<Fit, KmeansError>
where
    S: FnMut() -> I,
    I: IntoIterator<Item = Result<Tensor, E>>,
    E: Into<Box<dyn StdError + Send + Sync>>,
{
    let state = LloydState::init(&mut source, cfg, device)?;
    run(state, source, cfg.chunk_rows, device, AccumPath::Auto)
}

/// `cfg.n_iter` Lloyd iterations from the given K x D initial centroids (`cfg.k` and
/// `cfg.init` are not used), then one pass to count N_k.
pub fn lloyd_from<S, I, E>(
    init: &Tensor,
    source: S,
    cfg: &KmeansConfig,
    device: Device,
) -> Result<Fit, KmeansError>
where
    S: FnMut() -> I,
    I: IntoIterator<Item = Result<Tensor, E>>,
    E: Into<Box<dyn StdError + Send + Sync>>,
{
    lloyd_impl(init, source, cfg, device, AccumPath::Auto)
}

pub(super) fn lloyd_impl<S, I, E>(
    init: &Tensor,
    source: S,
    cfg: &KmeansConfig,
    device: Device,
    path: AccumPath,
) -> Result<Fit, KmeansError>
where
    S: FnMut() -> I,
    I: IntoIterator<Item = Result<Tensor, E>>,
    E: Into<Box<dyn StdError + Send + Sync>>,
{
    run(
        LloydState::new(init, cfg, device)?,
        source,
        cfg.chunk_rows,
        device,
        path,
    )
}

/// Lloyd's passes from `state` in one process, until the counting pass gives the fit.
fn run<S, I, E>(
    mut state: LloydState,
    mut source: S,
    chunk_rows: usize,
    device: Device,
    path: AccumPath,
) -> Result<Fit, KmeansError>
where
    S: FnMut() -> I,
    I: IntoIterator<Item = Result<Tensor, E>>,
    E: Into<Box<dyn StdError + Send + Sync>>,
{
    let _guard = tch::no_grad_guard();
    loop {
        let prep = Prepared::new(state.centroids(), path)?;
        let mut acc = Accum::new(state.k, state.d);
        for chunk in source() {
            let chunk = chunk.map_err(|e| KmeansError::Source(e.into()))?;
            for block in blocks(&chunk, state.d as i64, chunk_rows, device)? {
                acc.add_block(&prep, &block?)?;
            }
        }
        if let Some(fit) = state.step_acc(acc)? {
            return Ok(fit);
        }
    }
}

/// One block's share of a Lloyd pass under given centroids. A sharded run stores these per
/// block; adding them from zero in block order is, bit for bit, the pass of one process
/// (which adds each block's f64 sums to the running total in the same order).
#[derive(Clone, Debug, PartialEq)]
pub struct BlockStats {
    pub rows: u64,
    pub objective: f64,
    /// K.
    pub counts: Vec<u64>,
    /// K x D, row-major.
    pub sums: Vec<f64>,
}

/// The per-block statistics of one pass over `chunks` (blocks of `chunk_rows` rows within
/// each chunk, as [`lloyd`] cuts them) under `centroids`.
pub fn pass_blocks<I, E>(
    centroids: &Tensor,
    chunks: I,
    chunk_rows: usize,
    device: Device,
) -> Result<Vec<BlockStats>, KmeansError>
where
    I: IntoIterator<Item = Result<Tensor, E>>,
    E: Into<Box<dyn StdError + Send + Sync>>,
{
    let _guard = tch::no_grad_guard();
    let prep = Prepared::new(centroids, AccumPath::Auto)?;
    let mut out = Vec::new();
    let mut offset = 0u64;
    for chunk in chunks {
        let chunk = chunk.map_err(|e| KmeansError::Source(e.into()))?;
        for block in blocks(&chunk, prep.d as i64, chunk_rows, device)? {
            let block = block?;
            let b = prep.block(&block, offset, false, true)?;
            let rows = block.size()[0] as u64;
            offset += rows;
            out.push(BlockStats {
                rows,
                objective: b.objective,
                counts: b.counts,
                sums: b.sums,
            });
        }
    }
    Ok(out)
}

/// Lloyd between passes: the centroids the next pass assigns to, the empty-cluster repair's
/// RNG, the iterations so far. [`lloyd`] runs it in one process; a sharded run keeps it
/// between rounds ([`LloydState::saved`], [`LloydState::restore`]) while the passes' block
/// statistics come from several processes ([`pass_blocks`], [`LloydState::step`]).
#[derive(Debug)]
pub struct LloydState {
    km: Kmeans,
    k: usize,
    d: usize,
    n_iter: usize,
    rng: ChaCha8Rng,
    iters: Vec<IterStat>,
    first_rows: Option<u64>,
}

/// A [`LloydState`] as stored between rounds (f32 centroids kept bit for bit).
#[derive(Clone, Debug, PartialEq)]
pub struct SavedLloyd {
    /// K x D, row-major.
    pub centroids: Vec<f32>,
    pub k: usize,
    pub rng_word_pos: u128,
    pub iters: Vec<IterStat>,
    pub first_rows: Option<u64>,
}

impl LloydState {
    /// From initial K x D centroids (cosine ones normalised), before the first pass.
    pub fn new(init: &Tensor, cfg: &KmeansConfig, device: Device) -> Result<Self, KmeansError> {
        if cfg.chunk_rows == 0 {
            return Err(KmeansError::Config("chunk_rows must be at least 1".into()));
        }
        let mut km = Kmeans::from_centroids(init, cfg.metric, device)?;
        km.chunk_rows = cfg.chunk_rows;
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        rng.set_stream(STREAM_REPAIR);
        Ok(Self {
            k: km.k(),
            d: km.dim(),
            km,
            n_iter: cfg.n_iter,
            rng,
            iters: Vec::new(),
            first_rows: None,
        })
    }

    /// `cfg.init` over the first `cfg.init_pool_rows` rows of `source`, as [`lloyd`] starts.
    pub fn init<S, I, E>(
        source: &mut S,
        cfg: &KmeansConfig,
        device: Device,
    ) -> Result<Self, KmeansError>
    where
        S: FnMut() -> I,
        I: IntoIterator<Item = Result<Tensor, E>>,
        E: Into<Box<dyn StdError + Send + Sync>>,
    {
        cfg.validate()?;
        let _guard = tch::no_grad_guard();
        let init = initial_centroids(source, cfg, device)?;
        Self::new(&init, cfg, device)
    }

    /// The centroids the next pass assigns to.
    pub fn centroids(&self) -> &Tensor {
        &self.km.centroids
    }

    /// The pass that comes next: 0 to `n_iter` (the last one only counts N_k).
    pub fn pass(&self) -> usize {
        self.iters.len()
    }

    /// Takes one whole pass's block statistics, in block order: the centroids move (or, after
    /// the last pass, the fit is returned).
    pub fn step(
        &mut self,
        blocks: impl IntoIterator<Item = BlockStats>,
    ) -> Result<Option<Fit>, KmeansError> {
        let mut acc = Accum::new(self.k, self.d);
        for b in blocks {
            acc.add_stats(b)?;
        }
        self.step_acc(acc)
    }

    pub(super) fn step_acc(&mut self, acc: Accum) -> Result<Option<Fit>, KmeansError> {
        let (k, d) = (self.k, self.d);
        let rows = acc.rows;
        match self.first_rows {
            None if rows == 0 => return Err(KmeansError::Empty),
            None if rows < k as u64 => return Err(KmeansError::TooFewPoints { k, rows }),
            None => self.first_rows = Some(rows),
            Some(first) if first != rows => {
                return Err(KmeansError::SourceChanged { first, now: rows })
            }
            Some(_) => {}
        }
        let iteration = self.iters.len();
        if iteration >= self.n_iter {
            // The extra pass: sizes under the final centroids seed N_k.
            let kmeans = Kmeans {
                centroids: self.km.centroids.shallow_clone(),
                counts: acc.counts,
                metric: self.km.metric,
                chunk_rows: self.km.chunk_rows,
            };
            return Ok(Some(Fit {
                kmeans,
                iters: self.iters.clone(),
                objective: acc.objective,
                rows,
            }));
        }
        let old: Vec<f64> = to_host_f32(&self.km.centroids)?
            .into_iter()
            .map(f64::from)
            .collect();
        let metric = self.km.metric;
        let (new, repaired) = lloyd_update(&old, &acc.sums, &acc.counts, d, metric, &mut self.rng);
        self.km.centroids = centroids_tensor(&new, k as i64, d as i64, self.km.centroids.device())?;
        self.iters.push(IterStat {
            iteration,
            objective: acc.objective,
            empty_repaired: repaired,
        });
        Ok(None)
    }

    pub fn saved(&self) -> Result<SavedLloyd, KmeansError> {
        Ok(SavedLloyd {
            centroids: to_host_f32(&self.km.centroids)?,
            k: self.k,
            rng_word_pos: self.rng.get_word_pos(),
            iters: self.iters.clone(),
            first_rows: self.first_rows,
        })
    }

    /// The state [`LloydState::saved`] stored; the centroids are taken as they are (not
    /// normalised again), so the next pass is the one a single process would run.
    pub fn restore(
        s: &SavedLloyd,
        cfg: &KmeansConfig,
        device: Device,
    ) -> Result<Self, KmeansError> {
        if s.k == 0 || s.centroids.is_empty() || !s.centroids.len().is_multiple_of(s.k) {
            return Err(KmeansError::Config(format!(
                "saved Lloyd state holds {} values for k = {}",
                s.centroids.len(),
                s.k
            )));
        }
        let d = s.centroids.len() / s.k;
        let centroids = Tensor::f_from_slice(&s.centroids)?
            .f_reshape([s.k as i64, d as i64])?
            .f_to_device(device)?;
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        rng.set_stream(STREAM_REPAIR);
        rng.set_word_pos(s.rng_word_pos);
        Ok(Self {
            km: Kmeans {
                centroids,
                counts: vec![0; s.k],
                metric: cfg.metric,
                chunk_rows: cfg.chunk_rows,
            },
            k: s.k,
            d,
            n_iter: cfg.n_iter,
            rng,
            iters: s.iters.clone(),
            first_rows: s.first_rows,
        })
    }
}

/// Means of the clusters; empty clusters re-seeded next to the largest cluster.
pub(super) fn lloyd_update(
    old: &[f64],
    sums: &[f64],
    counts: &[u64],
    d: usize,
    metric: Metric,
    rng: &mut ChaCha8Rng,
) -> (Vec<f64>, usize) {
    let mut new = old.to_vec();
    for (j, &n) in counts.iter().enumerate() {
        if n == 0 {
            continue;
        }
        let row = &mut new[j * d..(j + 1) * d];
        for (c, s) in row.iter_mut().zip(&sums[j * d..(j + 1) * d]) {
            *c = s / n as f64;
        }
        if metric == Metric::Cosine && !normalize(row) {
            // A zero mean has no direction; any unit centroid scores the same, keep the old one.
            row.copy_from_slice(&old[j * d..(j + 1) * d]);
        }
    }
    // Only the empty centroid moves (to a perturbed copy of the largest cluster's), so the
    // objective cannot increase: under the old assignment it had no points to lose.
    let mut sizes = counts.to_vec();
    let mut repaired = 0;
    for i in 0..counts.len() {
        if counts[i] != 0 {
            continue;
        }
        let Some(j) = (0..sizes.len()).max_by_key(|&j| (sizes[j], std::cmp::Reverse(j))) else {
            break;
        };
        let src = new[j * d..(j + 1) * d].to_vec();
        let rms = (src.iter().map(|v| v * v).sum::<f64>() / d as f64).sqrt();
        let scale = if rms > 0.0 && rms.is_finite() {
            rms
        } else {
            1.0
        } * SPLIT_EPS;
        let row = &mut new[i * d..(i + 1) * d];
        for (c, s) in row.iter_mut().zip(&src) {
            *c = if rng.random::<bool>() {
                s + scale
            } else {
                s - scale
            };
        }
        if metric == Metric::Cosine {
            normalize(row);
        }
        // Halve the donor so that several empty clusters spread over several large ones.
        sizes[i] = sizes[j] / 2;
        sizes[j] -= sizes[i];
        repaired += 1;
    }
    (new, repaired)
}

/// Scale to unit length; false (and unchanged) for a zero or non-finite vector.
pub(super) fn normalize(v: &mut [f64]) -> bool {
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    if norm > 0.0 && norm.is_finite() {
        v.iter_mut().for_each(|x| *x /= norm);
        true
    } else {
        false
    }
}
