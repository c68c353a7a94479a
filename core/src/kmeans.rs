//! K-means as PiCIE's release uses it: full-batch Lloyd (the release's faiss initialisation)
//! and the release's online mini-batch centroid update, plus its nearest-centroid label rule.
//!
//! Assignment minimises `|c|^2 - 2 x.c` (the `|x|^2` term does not change the argmin), a matmul
//! per chunk of rows. On a GPU that is a libtorch matmul; on the CPU it is a fused host kernel
//! (register-blocked matmul, argmin, objective and per-cluster sums in one pass over rows that
//! are still in cache, AVX2/FMA when the CPU has them), which does not pay libtorch's several
//! memory passes and thread barriers per op. Per-cluster sums are accumulated in f64 so that tens
//! of millions of points lose no precision. Data can be streamed: `lloyd` asks its source for a
//! fresh pass of chunks each iteration, so memory does not grow with the data set. All
//! randomness (sampling, k-means++, empty-cluster repair) comes from a seeded ChaCha RNG on the
//! host, so results do not depend on libtorch's global RNG; the CPU kernel's results do not
//! depend on the thread count either.
//!
//! ```ignore
//! let fit = Kmeans::init_from(&feats, &KmeansConfig { k: 27, ..Default::default() }, device)?;
//! let mut km = fit.kmeans; // centroids and N_k
//! for batch in later_batches {
//!     km.minibatch_update(&batch)?;
//! }
//! let labels = label_release(&feature_map, km.centroids())?;
//! ```

use std::error::Error as StdError;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// Relative size of the perturbation that turns a copy of the largest centroid into a new one
/// (faiss uses the same 1/1024).
const SPLIT_EPS: f64 = 1.0 / 1024.0;
/// RNG streams, so that init and repairs draw independent numbers from one seed.
const STREAM_INIT: u64 = 0;
const STREAM_REPAIR: u64 = 1;

/// Distance used for assignment and centroid updates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Plain (squared) Euclidean k-means, as the release's faiss call.
    #[default]
    L2,
    /// Spherical k-means: centroids are kept at unit length and points go to the centroid of
    /// largest dot product. Inputs are expected to be unit vectors already (PiCIE's are); they
    /// are not renormalised here.
    Cosine,
}

/// How the initial centroids are chosen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Init {
    /// K distinct rows drawn uniformly (the release: faiss's random-sample init).
    #[default]
    RandomSample,
    /// k-means++ (D^2 sampling) over the init pool, which is held in memory.
    KMeansPlusPlus,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KmeansConfig {
    /// Number of clusters.
    pub k: usize,
    pub metric: Metric,
    pub init: Init,
    /// Lloyd iterations (the release: 20 to 30).
    pub n_iter: usize,
    pub seed: u64,
    /// Rows per distance matmul (per host-kernel call on CPU); bounds the N x K distance block
    /// and the per-chunk temporaries (a conversion to f32 or a copy to the device).
    pub chunk_rows: usize,
    /// Initial centroids are drawn from the first this-many rows; `None` = all rows. Random
    /// sampling streams over the pool (K rows in memory); k-means++ holds the pool in memory.
    pub init_pool_rows: Option<usize>,
}

impl Default for KmeansConfig {
    fn default() -> Self {
        Self {
            k: 27,
            metric: Metric::L2,
            init: Init::RandomSample,
            n_iter: 20,
            seed: 0,
            chunk_rows: 65536,
            init_pool_rows: None,
        }
    }
}

impl KmeansConfig {
    pub fn validate(&self) -> Result<(), KmeansError> {
        if self.k == 0 {
            return Err(KmeansError::ZeroK);
        }
        if self.chunk_rows == 0 {
            return Err(KmeansError::Config("chunk_rows must be at least 1".into()));
        }
        if let Some(pool) = self.init_pool_rows {
            if pool < self.k {
                return Err(KmeansError::Config(format!(
                    "init_pool_rows = {pool} is smaller than k = {}",
                    self.k
                )));
            }
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KmeansError {
    #[error("k must be at least 1")]
    ZeroK,
    #[error("k = {k} is larger than the {rows} points available")]
    TooFewPoints { k: usize, rows: u64 },
    #[error("the input has no rows")]
    Empty,
    #[error("feature dimension {got} does not match the expected {expected}")]
    DimMismatch { expected: i64, got: i64 },
    #[error("expected a rows x features tensor with at least one feature, got shape {0:?}")]
    Shape(Vec<i64>),
    #[error("features must be floating point, got {0:?}")]
    Kind(Kind),
    #[error("non-finite feature value (NaN or infinity) in rows {start}..{end}")]
    NonFinite { start: u64, end: u64 },
    #[error(
        "feature values in rows {start}..{end} are so large that squared distances overflow f32"
    )]
    Overflow { start: u64, end: u64 },
    #[error("the given centroids contain NaN or infinite values")]
    NonFiniteCentroids,
    #[error("the data source yielded {now} rows on this pass but {first} on the first")]
    SourceChanged { first: u64, now: u64 },
    #[error("invalid k-means config: {0}")]
    Config(String),
    #[error("reading the data failed: {0}")]
    Source(#[source] Box<dyn StdError + Send + Sync>),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("internal k-means error: {0} (a bug in picie; please report it)")]
    Internal(&'static str),
}

/// One Lloyd iteration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IterStat {
    pub iteration: usize,
    /// Sum of squared distances of all points to their nearest centroid, with the centroids
    /// this iteration started from (so it is non-increasing over iterations).
    pub objective: f64,
    /// Clusters that ended up empty and were re-seeded by splitting the largest one.
    pub empty_repaired: usize,
}

/// One mini-batch update.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchStat {
    pub rows: u64,
    /// Sum of squared distances of the batch to the centroids before the update.
    pub objective: f64,
    /// Clusters that received at least one point (and so moved).
    pub clusters_updated: usize,
}

/// The outcome of a full Lloyd run.
#[derive(Debug)]
pub struct Fit {
    /// Final centroids; `counts` are the cluster sizes under them (the release searches all
    /// init points once more after training and seeds N_k with these counts).
    pub kmeans: Kmeans,
    pub iters: Vec<IterStat>,
    /// Objective of the final centroids (from that last assignment pass).
    pub objective: f64,
    /// Rows seen per pass.
    pub rows: u64,
}

/// Centroids and cumulative counts N_k.
#[derive(Debug)]
pub struct Kmeans {
    /// K x D, f32, contiguous, on the working device.
    centroids: Tensor,
    counts: Vec<u64>,
    metric: Metric,
    chunk_rows: usize,
}

impl Kmeans {
    /// State from given centroids (K x D), counts zero. Cosine centroids are normalised.
    pub fn from_centroids(
        centroids: &Tensor,
        metric: Metric,
        device: Device,
    ) -> Result<Self, KmeansError> {
        let _guard = tch::no_grad_guard();
        let (k, d) = check_matrix(centroids)?;
        if k == 0 {
            return Err(KmeansError::ZeroK);
        }
        let host = to_host_f32(centroids)?;
        if host.iter().any(|v| !v.is_finite()) {
            return Err(KmeansError::NonFiniteCentroids);
        }
        let mut host: Vec<f64> = host.into_iter().map(f64::from).collect();
        if metric == Metric::Cosine {
            for row in host.chunks_exact_mut(d as usize) {
                normalize(row);
            }
        }
        Ok(Self {
            centroids: centroids_tensor(&host, k, d, device)?,
            counts: vec![0; k as usize],
            metric,
            chunk_rows: KmeansConfig::default().chunk_rows,
        })
    }

    /// Full k-means on an in-memory N x D tensor (the release's initialisation): `cfg.init`,
    /// then `cfg.n_iter` Lloyd iterations, then one pass to count N_k. Rows are moved to
    /// `device` chunk by chunk; pass a tensor already on the device to avoid the copies.
    pub fn init_from(
        data: &Tensor,
        cfg: &KmeansConfig,
        device: Device,
    ) -> Result<Fit, KmeansError> {
        check_matrix(data)?;
        let chunk = cfg.chunk_rows;
        lloyd(|| tensor_chunks(data, chunk), cfg, device)
    }

    pub fn centroids(&self) -> &Tensor {
        &self.centroids
    }

    /// Cumulative counts N_k (init counts plus every mini-batch since).
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// Replace N_k, e.g. when restoring a checkpoint.
    pub fn set_counts(&mut self, counts: Vec<u64>) -> Result<(), KmeansError> {
        if counts.len() != self.k() {
            return Err(KmeansError::Config(format!(
                "{} counts given for {} clusters",
                counts.len(),
                self.k()
            )));
        }
        self.counts = counts;
        Ok(())
    }

    pub fn metric(&self) -> Metric {
        self.metric
    }

    pub fn k(&self) -> usize {
        self.counts.len()
    }

    pub fn dim(&self) -> usize {
        self.centroids.size().get(1).copied().unwrap_or(0) as usize
    }

    pub fn device(&self) -> Device {
        self.centroids.device()
    }

    /// Rows per distance matmul in `assign` and `minibatch_update`.
    pub fn set_chunk_rows(&mut self, rows: usize) -> Result<(), KmeansError> {
        if rows == 0 {
            return Err(KmeansError::Config("chunk_rows must be at least 1".into()));
        }
        self.chunk_rows = rows;
        Ok(())
    }

    /// Nearest-centroid labels (i64, on the centroids' device) for the rows of an N x D tensor.
    pub fn assign(&self, x: &Tensor) -> Result<Tensor, KmeansError> {
        let _guard = tch::no_grad_guard();
        let prep = Prepared::new(&self.centroids, AccumPath::Auto)?;
        let mut labels = Vec::new();
        let mut offset = 0u64;
        for block in blocks(x, self.dim() as i64, self.chunk_rows, self.device())? {
            let block = block?;
            let out = prep.block(&block, offset, true, false)?;
            offset += block.size()[0] as u64;
            labels.push(out.labels.ok_or(KmeansError::Internal("no labels"))?);
        }
        if labels.is_empty() {
            return Ok(Tensor::f_zeros([0], (Kind::Int64, self.device()))?);
        }
        Ok(Tensor::f_cat(&labels, 0)?)
    }

    /// The release's online update: assign the batch to the nearest centroids, then for each
    /// cluster k with n_k > 0 in this batch: N_k += n_k, eta = n_k / N_k,
    /// c_k <- (1 - eta) c_k + eta * mean(batch rows of k). Empty clusters are left alone.
    pub fn minibatch_update(&mut self, batch: &Tensor) -> Result<BatchStat, KmeansError> {
        let _guard = tch::no_grad_guard();
        let (k, d) = (self.k(), self.dim());
        let prep = Prepared::new(&self.centroids, AccumPath::Auto)?;
        let mut acc = Accum::new(k, d);
        for block in blocks(batch, d as i64, self.chunk_rows, self.device())? {
            acc.add_block(&prep, &block?)?;
        }
        if acc.rows == 0 {
            return Err(KmeansError::Empty);
        }
        let (rows, objective) = (acc.rows, acc.objective);
        let (sums, batch_counts) = (acc.sums, acc.counts);
        let mut cent: Vec<f64> = to_host_f32(&self.centroids)?
            .into_iter()
            .map(f64::from)
            .collect();
        let mut updated = 0;
        for (j, &n) in batch_counts.iter().enumerate() {
            if n == 0 {
                continue;
            }
            updated += 1;
            self.counts[j] += n;
            let eta = n as f64 / self.counts[j] as f64;
            let row = &mut cent[j * d..(j + 1) * d];
            for (c, s) in row.iter_mut().zip(&sums[j * d..(j + 1) * d]) {
                *c = (1.0 - eta) * *c + eta * (s / n as f64);
            }
            if self.metric == Metric::Cosine {
                normalize(row);
            }
        }
        self.centroids = centroids_tensor(&cent, k as i64, d as i64, self.device())?;
        Ok(BatchStat {
            rows,
            objective,
            clusters_updated: updated,
        })
    }
}

/// The release's label rule: argmax_k (2 <z, mu_k> - |mu_k|^2), i.e. the nearest centroid in
/// L2. `z` is N x D (gives N labels) or a B x D x H x W feature map (gives B x H x W labels).
/// Computed on `z`'s device; labels are i64.
pub fn label_release(z: &Tensor, centroids: &Tensor) -> Result<Tensor, KmeansError> {
    let _guard = tch::no_grad_guard();
    let (k, d) = check_matrix(centroids)?;
    if k == 0 {
        return Err(KmeansError::ZeroK);
    }
    let size = z.size();
    let (flat, out_shape) = match size.as_slice() {
        [_, _] => (z.shallow_clone(), None),
        &[b, c, h, w] => {
            if c != d {
                return Err(KmeansError::DimMismatch {
                    expected: d,
                    got: c,
                });
            }
            (
                z.f_permute([0, 2, 3, 1])?.f_reshape([-1, c])?,
                Some([b, h, w]),
            )
        }
        _ => return Err(KmeansError::Shape(size)),
    };
    let dev = z.device();
    let mu = centroids.f_to_device_(dev, Kind::Float, false, false)?;
    let mu_t2 = mu.f_tr()?.f_mul_scalar(2.0)?;
    let mu_sq = mu
        .f_square()?
        .f_sum_dim_intlist(&[1i64][..], false, Kind::Float)?;
    let mut labels = Vec::new();
    for block in blocks(&flat, d, KmeansConfig::default().chunk_rows, dev)? {
        let logits = block?.f_mm(&mu_t2)?.f_sub(&mu_sq)?;
        labels.push(logits.f_argmax(1, false)?);
    }
    let labels = if labels.is_empty() {
        Tensor::f_zeros([0], (Kind::Int64, dev))?
    } else {
        Tensor::f_cat(&labels, 0)?
    };
    Ok(match out_shape {
        Some(shape) => labels.f_reshape(shape)?,
        None => labels,
    })
}

/// Full-batch Lloyd over a streamed data set. `source` is called once per pass and yields the
/// data's chunks (any row counts, floating point, any device), the same rows in the same order
/// each time. Initial centroids come from `cfg.init` over the first `cfg.init_pool_rows` rows.
pub fn lloyd<S, I, E>(mut source: S, cfg: &KmeansConfig, device: Device) -> Result<Fit, KmeansError>
where
    S: FnMut() -> I,
    I: IntoIterator<Item = Result<Tensor, E>>,
    E: Into<Box<dyn StdError + Send + Sync>>,
{
    cfg.validate()?;
    let _guard = tch::no_grad_guard();
    let init = initial_centroids(&mut source, cfg, device)?;
    lloyd_from(&init, source, cfg, device)
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

fn lloyd_impl<S, I, E>(
    init: &Tensor,
    mut source: S,
    cfg: &KmeansConfig,
    device: Device,
    path: AccumPath,
) -> Result<Fit, KmeansError>
where
    S: FnMut() -> I,
    I: IntoIterator<Item = Result<Tensor, E>>,
    E: Into<Box<dyn StdError + Send + Sync>>,
{
    if cfg.chunk_rows == 0 {
        return Err(KmeansError::Config("chunk_rows must be at least 1".into()));
    }
    let _guard = tch::no_grad_guard();
    let mut km = Kmeans::from_centroids(init, cfg.metric, device)?;
    km.chunk_rows = cfg.chunk_rows;
    let (k, d) = (km.k(), km.dim());
    let mut repair_rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    repair_rng.set_stream(STREAM_REPAIR);
    let mut first_rows = None;
    let mut iters = Vec::with_capacity(cfg.n_iter);
    for iteration in 0..=cfg.n_iter {
        let prep = Prepared::new(&km.centroids, path)?;
        let mut acc = Accum::new(k, d);
        for chunk in source() {
            let chunk = chunk.map_err(|e| KmeansError::Source(e.into()))?;
            for block in blocks(&chunk, d as i64, cfg.chunk_rows, device)? {
                acc.add_block(&prep, &block?)?;
            }
        }
        let rows = acc.rows;
        match first_rows {
            None if rows == 0 => return Err(KmeansError::Empty),
            None if rows < k as u64 => return Err(KmeansError::TooFewPoints { k, rows }),
            None => first_rows = Some(rows),
            Some(first) if first != rows => {
                return Err(KmeansError::SourceChanged { first, now: rows })
            }
            Some(_) => {}
        }
        let objective = acc.objective;
        let (sums, counts) = (acc.sums, acc.counts);
        if iteration == cfg.n_iter {
            // The extra pass: sizes under the final centroids seed N_k.
            km.counts = counts;
            return Ok(Fit {
                kmeans: km,
                iters,
                objective,
                rows,
            });
        }
        let old: Vec<f64> = to_host_f32(&km.centroids)?
            .into_iter()
            .map(f64::from)
            .collect();
        let (new, repaired) = lloyd_update(&old, &sums, &counts, d, cfg.metric, &mut repair_rng);
        km.centroids = centroids_tensor(&new, k as i64, d as i64, device)?;
        iters.push(IterStat {
            iteration,
            objective,
            empty_repaired: repaired,
        });
    }
    Err(KmeansError::Internal(
        "Lloyd loop ended without a final pass",
    ))
}

/// Means of the clusters; empty clusters re-seeded next to the largest cluster.
fn lloyd_update(
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
fn normalize(v: &mut [f64]) -> bool {
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    if norm > 0.0 && norm.is_finite() {
        v.iter_mut().for_each(|x| *x /= norm);
        true
    } else {
        false
    }
}

fn initial_centroids<S, I, E>(
    source: &mut S,
    cfg: &KmeansConfig,
    device: Device,
) -> Result<Tensor, KmeansError>
where
    S: FnMut() -> I,
    I: IntoIterator<Item = Result<Tensor, E>>,
    E: Into<Box<dyn StdError + Send + Sync>>,
{
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    rng.set_stream(STREAM_INIT);
    let pool_max = cfg.init_pool_rows.map_or(u64::MAX, |p| p as u64);
    let k = cfg.k;
    let mut dim: Option<i64> = None;
    let mut seen = 0u64;
    // Random sample: reservoir sampling (algorithm R) keeps K rows whatever the pool size.
    let mut reservoir: Option<Tensor> = None;
    // k-means++: the pool itself.
    let mut pool: Vec<Tensor> = Vec::new();
    'chunks: for chunk in source() {
        let chunk = chunk.map_err(|e| KmeansError::Source(e.into()))?;
        let (_, d) = check_matrix(&chunk)?;
        if *dim.get_or_insert(d) != d {
            return Err(KmeansError::DimMismatch {
                expected: dim.unwrap_or(d),
                got: d,
            });
        }
        for block in blocks(&chunk, d, cfg.chunk_rows, device)? {
            let mut block = block?;
            let mut n = block.size()[0] as u64;
            if seen + n > pool_max {
                n = pool_max - seen;
                block = block.f_narrow(0, 0, n as i64)?;
            }
            check_finite(&block, seen)?;
            match cfg.init {
                Init::RandomSample => {
                    // slot -> row of this block that ends up there (later rows overwrite).
                    let mut take: Vec<Option<i64>> = vec![None; k];
                    for r in 0..n {
                        let i = seen + r;
                        let slot = if i < k as u64 {
                            Some(i as usize)
                        } else {
                            let j = rng.random_range(0..=i);
                            (j < k as u64).then_some(j as usize)
                        };
                        if let Some(s) = slot {
                            take[s] = Some(r as i64);
                        }
                    }
                    let (slots, rows): (Vec<i64>, Vec<i64>) = take
                        .iter()
                        .enumerate()
                        .filter_map(|(s, r)| r.map(|r| (s as i64, r)))
                        .unzip();
                    if !slots.is_empty() {
                        let res = match reservoir.as_mut() {
                            Some(r) => r,
                            None => reservoir
                                .insert(Tensor::f_zeros([k as i64, d], (Kind::Float, device))?),
                        };
                        let slots = Tensor::f_from_slice(&slots)?.f_to_device(device)?;
                        let rows = Tensor::f_from_slice(&rows)?.f_to_device(device)?;
                        let _ = res.f_index_copy_(0, &slots, &block.f_index_select(0, &rows)?)?;
                    }
                }
                Init::KMeansPlusPlus => pool.push(block),
            }
            seen += n;
            if seen >= pool_max {
                break 'chunks;
            }
        }
    }
    if seen == 0 {
        return Err(KmeansError::Empty);
    }
    if seen < k as u64 {
        return Err(KmeansError::TooFewPoints { k, rows: seen });
    }
    match cfg.init {
        Init::RandomSample => reservoir.ok_or(KmeansError::Internal("empty reservoir")),
        Init::KMeansPlusPlus => kmeans_plus_plus(&Tensor::f_cat(&pool, 0)?, k, cfg, &mut rng),
    }
}

/// Greedy k-means++ seeding (as scikit-learn's): each next centroid is the best, by the
/// resulting potential, of 2 + ln(k) pool rows drawn with probability proportional to their
/// squared distance to the nearest centroid so far. Plain k-means++ often puts two seeds in
/// one cluster when clusters are many and tight; the local trials make that rare.
fn kmeans_plus_plus(
    pool: &Tensor,
    k: usize,
    cfg: &KmeansConfig,
    rng: &mut ChaCha8Rng,
) -> Result<Tensor, KmeansError> {
    let m = pool.size()[0];
    let trials = 2 + (k as f64).ln() as usize;
    let sq_dist = |c: &Tensor| -> Result<Tensor, KmeansError> {
        let mut parts = Vec::new();
        let mut start = 0;
        while start < m {
            let len = (m - start).min(cfg.chunk_rows as i64);
            let diff = pool.f_narrow(0, start, len)?.f_sub(c)?;
            parts.push(
                diff.f_square()?
                    .f_sum_dim_intlist(&[1i64][..], false, Kind::Float)?,
            );
            start += len;
        }
        Ok(Tensor::f_cat(&parts, 0)?)
    };
    let first = rng.random_range(0..m);
    let mut chosen = vec![pool.f_get(first)?];
    let mut d2 = sq_dist(&chosen[0])?;
    while chosen.len() < k {
        let w = to_host_f32(&d2)?;
        let total: f64 = w.iter().map(|&v| f64::from(v)).sum();
        let mut best: Option<(f64, Tensor, Tensor)> = None;
        for _ in 0..trials {
            let idx = if total > 0.0 && total.is_finite() {
                let target = rng.random::<f64>() * total;
                let mut acc = 0.0;
                let mut pick = w.len() - 1;
                for (i, &v) in w.iter().enumerate() {
                    acc += f64::from(v);
                    if acc > target {
                        pick = i;
                        break;
                    }
                }
                pick as i64
            } else {
                // Every pool row coincides with a centroid: duplicates, later repaired as empty.
                rng.random_range(0..m)
            };
            let c = pool.f_get(idx)?;
            let nd2 = d2.f_minimum(&sq_dist(&c)?)?;
            let potential = nd2.f_sum(Kind::Double)?.f_double_value(&[])?;
            if best.as_ref().is_none_or(|(p, _, _)| potential < *p) {
                best = Some((potential, c, nd2));
            }
        }
        let (_, c, nd2) = best.ok_or(KmeansError::Internal("no k-means++ candidate"))?;
        d2 = nd2;
        chosen.push(c);
    }
    Ok(Tensor::f_stack(&chosen, 0)?)
}

/// Which code computes assignments and sums.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AccumPath {
    /// The fused host kernel on CPU, tensor ops (matmuls) on other devices.
    Auto,
    /// Tensor ops everywhere (tests compare the two on CPU).
    #[cfg_attr(not(test), allow(dead_code))]
    Tensor,
}

/// Centroids in the forms the assignment wants.
struct Prepared {
    k: usize,
    d: usize,
    device: Device,
    /// D x K, holding -2 c^T (exact: a power of two), so one addmm gives |c|^2 - 2 x.c.
    neg2_ct: Tensor,
    /// K, |c|^2.
    c_sq: Tensor,
    /// The host kernel's layout, when it is used (CPU).
    host: Option<HostCentroids>,
    threads: usize,
}

/// One block's assignment: labels (when asked for), objective, per-cluster counts and (when
/// asked for) f64 sums, K x D row-major.
struct BlockOut {
    labels: Option<Tensor>,
    objective: f64,
    counts: Vec<u64>,
    sums: Vec<f64>,
}

impl Prepared {
    fn new(c: &Tensor, path: AccumPath) -> Result<Self, KmeansError> {
        let (k, d) = c.size2()?;
        let device = c.device();
        let host = if device == Device::Cpu && path == AccumPath::Auto {
            Some(HostCentroids::new(&to_host_f32(c)?, k as usize, d as usize))
        } else {
            None
        };
        Ok(Self {
            k: k as usize,
            d: d as usize,
            device,
            neg2_ct: c.f_tr()?.f_mul_scalar(-2.0)?,
            c_sq: c
                .f_square()?
                .f_sum_dim_intlist(&[1i64][..], false, Kind::Float)?,
            host,
            threads: usize::try_from(tch::get_num_threads()).unwrap_or(1).max(1),
        })
    }

    /// Assign the rows of one f32 block (contiguous, on the centroids' device). `offset` is
    /// the block's first row, for error messages.
    fn block(
        &self,
        x: &Tensor,
        offset: u64,
        want_labels: bool,
        want_sums: bool,
    ) -> Result<BlockOut, KmeansError> {
        let out = match &self.host {
            Some(hc) => {
                let xs = cpu_slice::<f32>(x)?;
                let mut labels = want_labels.then(|| vec![0i64; xs.len() / self.d]);
                let t = host_block(hc, xs, labels.as_deref_mut(), want_sums, self.threads)?;
                BlockOut {
                    labels: labels.map(|l| Tensor::f_from_slice(&l)).transpose()?,
                    objective: t.objective,
                    counts: t.counts,
                    sums: t.sums,
                }
            }
            None => self.tensor_block(x, want_sums)?,
        };
        // Any NaN or infinity in x makes every distance of its row non-finite, so checking the
        // block's total is enough; the full element check runs only to name the cause.
        if !out.objective.is_finite() {
            check_finite(x, offset)?;
            return Err(KmeansError::Overflow {
                start: offset,
                end: offset + x.size()[0] as u64,
            });
        }
        Ok(out)
    }

    fn tensor_block(&self, x: &Tensor, want_sums: bool) -> Result<BlockOut, KmeansError> {
        let dist = self.c_sq.f_addmm(x, &self.neg2_ct)?;
        let (mins, labels) = dist.f_min_dim(1, false)?;
        let mut per_row = x
            .f_square()?
            .f_sum_dim_intlist(&[1i64][..], false, Kind::Float)?;
        // Rounding can make a tiny distance negative; clamp per row before summing.
        let _ = per_row.f_add_(&mins)?;
        let _ = per_row.f_clamp_min_(0.0)?;
        let objective = per_row.f_sum(Kind::Double)?.f_double_value(&[])?;
        let counts = Vec::<i64>::try_from(
            labels
                .f_bincount(None::<Tensor>, self.k as i64)?
                .f_to_device(Device::Cpu)?,
        )?
        .into_iter()
        .map(|c| c as u64)
        .collect();
        let sums = if want_sums {
            // One-hot^T x in f64: a deterministic matmul (index_add uses atomics on GPU).
            let n = x.size()[0];
            let mut onehot = Tensor::f_zeros([n, self.k as i64], (Kind::Double, self.device))?;
            let _ = onehot.f_scatter_value_(1, &labels.f_unsqueeze(1)?, 1.0)?;
            let part = onehot.f_tr()?.f_mm(&x.f_to_kind(Kind::Double)?)?;
            Vec::<f64>::try_from(part.f_to_device(Device::Cpu)?.f_reshape([-1])?)?
        } else {
            Vec::new()
        };
        Ok(BlockOut {
            labels: Some(labels),
            objective,
            counts,
            sums,
        })
    }
}

fn check_finite(x: &Tensor, offset: u64) -> Result<(), KmeansError> {
    if !bool::try_from(x.f_isfinite()?.f_all()?)? {
        return Err(KmeansError::NonFinite {
            start: offset,
            end: offset + x.size()[0] as u64,
        });
    }
    Ok(())
}

/// Per-cluster sums (f64) and counts over one pass.
struct Accum {
    k: usize,
    d: usize,
    sums: Vec<f64>,
    counts: Vec<u64>,
    objective: f64,
    rows: u64,
}

impl Accum {
    fn new(k: usize, d: usize) -> Self {
        Self {
            k,
            d,
            sums: vec![0.0; k * d],
            counts: vec![0; k],
            objective: 0.0,
            rows: 0,
        }
    }

    fn add_block(&mut self, prep: &Prepared, x: &Tensor) -> Result<(), KmeansError> {
        if (prep.k, prep.d) != (self.k, self.d) {
            return Err(KmeansError::Internal("accumulator and centroids disagree"));
        }
        let out = prep.block(x, self.rows, false, true)?;
        self.objective += out.objective;
        self.rows += x.size()[0] as u64;
        self.sums
            .iter_mut()
            .zip(out.sums)
            .for_each(|(a, b)| *a += b);
        self.counts
            .iter_mut()
            .zip(out.counts)
            .for_each(|(a, b)| *a += b);
        Ok(())
    }
}

// ---- The host kernel: distances, argmin, objective and f64 sums in one pass over the rows,
// ---- a block of rows at a time while they are in cache. One libtorch matmul per chunk plus
// ---- separate argmin, norm and scatter ops costs several memory passes and a thread barrier
// ---- per op; on a busy 2-core machine the barriers dominate.

/// Centroids per register block: two 8-lane AVX2 vectors.
const LANES: usize = 16;
/// Rows per register block: ROWS x LANES accumulators fill 8 of the 16 AVX2 registers.
const ROWS: usize = 4;
/// Rows per scheduling unit. Partial results are kept per tile and merged in tile order, so
/// the result depends neither on the thread count nor on which thread ran which tile.
const TILE_ROWS: usize = 2048;
/// Rows whose nearest centroids are found before their sums are added (128 KiB at D = 128,
/// so they are still in L2 for the second step).
const SUB_ROWS: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isa {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
}

impl Isa {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Isa::Avx2Fma;
        }
        Isa::Portable
    }
}

struct HostCentroids {
    k: usize,
    d: usize,
    /// ceil(K / LANES) panels of D rows of LANES centroid coordinates (zero padded).
    panels: Vec<[f32; LANES]>,
    /// |c|^2 per padded centroid.
    c_sq: Vec<f32>,
    isa: Isa,
}

impl HostCentroids {
    fn new(c: &[f32], k: usize, d: usize) -> Self {
        let n_panels = k.div_ceil(LANES);
        let mut panels = vec![[0f32; LANES]; n_panels * d];
        let mut c_sq = vec![0f32; n_panels * LANES];
        for (j, row) in c.chunks_exact(d).enumerate() {
            let (p, l) = (j / LANES, j % LANES);
            for (i, &v) in row.iter().enumerate() {
                panels[p * d + i][l] = v;
            }
            c_sq[j] = sq_norm(row);
        }
        Self {
            k,
            d,
            panels,
            c_sq,
            isa: Isa::detect(),
        }
    }

    fn tile(&self, x: &[f32], labels: Option<&mut [i64]>, want_sums: bool) -> TileOut {
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: Isa::Avx2Fma is chosen only when the CPU reports AVX2 and FMA.
            Isa::Avx2Fma => unsafe { tile_avx2_fma(self, x, labels, want_sums) },
            Isa::Portable => tile_kernel::<false>(self, x, labels, want_sums),
        }
    }
}

#[derive(Default)]
struct TileOut {
    sums: Vec<f64>,
    counts: Vec<u64>,
    objective: f64,
}

/// Run the kernel over a block's rows, tiles handed out to `threads` threads on demand (a
/// busy core then takes fewer tiles instead of holding the others up).
fn host_block(
    hc: &HostCentroids,
    x: &[f32],
    labels: Option<&mut [i64]>,
    want_sums: bool,
    threads: usize,
) -> Result<TileOut, KmeansError> {
    let d = hc.d;
    let n = x.len() / d;
    let n_tiles = n.div_ceil(TILE_ROWS);
    let label_tiles: Vec<Option<&mut [i64]>> = match labels {
        Some(l) => l.chunks_mut(TILE_ROWS).map(Some).collect(),
        None => (0..n_tiles).map(|_| None).collect(),
    };
    let queue = std::sync::Mutex::new(x.chunks(TILE_ROWS * d).zip(label_tiles).enumerate());
    let work = || {
        let mut done = Vec::new();
        loop {
            let task = match queue.lock() {
                Ok(mut q) => q.next(),
                Err(_) => None,
            };
            let Some((i, (xt, lt))) = task else { break };
            done.push((i, hc.tile(xt, lt, want_sums)));
        }
        done
    };
    let workers = threads.min(n_tiles).max(1);
    let mut parts = Vec::with_capacity(n_tiles);
    if workers == 1 {
        parts = work();
    } else {
        std::thread::scope(|s| -> Result<(), KmeansError> {
            let handles: Vec<_> = (1..workers).map(|_| s.spawn(work)).collect();
            parts = work();
            for h in handles {
                let more = h
                    .join()
                    .map_err(|_| KmeansError::Internal("k-means worker thread panicked"))?;
                parts.extend(more);
            }
            Ok(())
        })?;
    }
    if parts.len() != n_tiles {
        return Err(KmeansError::Internal("k-means tiles went missing"));
    }
    parts.sort_by_key(|(i, _)| *i);
    let mut total = TileOut {
        sums: if want_sums {
            vec![0.0; hc.k * d]
        } else {
            Vec::new()
        },
        counts: vec![0; hc.k],
        objective: 0.0,
    };
    for (_, t) in parts {
        total.objective += t.objective;
        total
            .counts
            .iter_mut()
            .zip(t.counts)
            .for_each(|(a, b)| *a += b);
        total.sums.iter_mut().zip(t.sums).for_each(|(a, b)| *a += b);
    }
    Ok(total)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn tile_avx2_fma(
    hc: &HostCentroids,
    x: &[f32],
    labels: Option<&mut [i64]>,
    want_sums: bool,
) -> TileOut {
    tile_kernel::<true>(hc, x, labels, want_sums)
}

/// Nearest centroid of each row of one tile, with objective, counts and sums. Generic so that
/// it compiles once per instruction set (FMA: AVX2 and FMA available, x86-64 only).
#[inline(always)]
fn tile_kernel<const FMA: bool>(
    hc: &HostCentroids,
    x: &[f32],
    mut labels: Option<&mut [i64]>,
    want_sums: bool,
) -> TileOut {
    let (k, d) = (hc.k, hc.d);
    let kp = hc.c_sq.len();
    let mut out = TileOut {
        sums: if want_sums {
            vec![0.0; k * d]
        } else {
            Vec::new()
        },
        counts: vec![0; k],
        objective: 0.0,
    };
    let mut dist = vec![0f32; ROWS * kp];
    let mut nearest = vec![0usize; SUB_ROWS];
    for (s, xs) in x.chunks(SUB_ROWS * d).enumerate() {
        let m = xs.len() / d;
        // Phase 1, nearest centroids: the centroid panels stay in L1.
        let mut r0 = 0;
        while r0 < m {
            let r = if m - r0 >= ROWS { ROWS } else { 1 };
            let xr = &xs[r0 * d..(r0 + r) * d];
            match (FMA, r == ROWS) {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: FMA = true is instantiated only by tile_avx2_fma, which runs only
                // when the CPU reports AVX2 and FMA.
                (true, true) => unsafe { dots_avx2_fma::<ROWS>(hc, xr, &mut dist) },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: as above.
                (true, false) => unsafe { dots_avx2_fma::<1>(hc, xr, &mut dist) },
                (_, true) => dots::<ROWS>(hc, xr, &mut dist),
                (_, false) => dots::<1>(hc, xr, &mut dist),
            }
            for (i, row) in xr.chunks_exact(d).enumerate() {
                let dr = &dist[i * kp..i * kp + k];
                let (mut best, mut bd) = (0, dr[0]);
                for (j, &v) in dr.iter().enumerate().skip(1) {
                    if v < bd {
                        best = j;
                        bd = v;
                    }
                }
                let e = sq_norm(row) + bd;
                // Clamp rounding below zero, but let NaN through (f32::max would hide it).
                out.objective += f64::from(if e < 0.0 { 0.0 } else { e });
                nearest[r0 + i] = best;
            }
            r0 += r;
        }
        // Phase 2, sums: the sub-tile's rows are still in L2 and the f64 sums get L1.
        for (row, &b) in xs.chunks_exact(d).zip(&nearest) {
            out.counts[b] += 1;
            if want_sums {
                for (a, &v) in out.sums[b * d..(b + 1) * d].iter_mut().zip(row) {
                    *a += f64::from(v);
                }
            }
        }
        if let Some(l) = labels.as_deref_mut() {
            let dst = &mut l[s * SUB_ROWS..s * SUB_ROWS + m];
            for (o, &b) in dst.iter_mut().zip(&nearest) {
                *o = b as i64;
            }
        }
    }
    out
}

/// dist[r][k] = |c_k|^2 - 2 x_r.c_k for R rows: the register-blocked matmul, portable.
#[inline(always)]
fn dots<const R: usize>(hc: &HostCentroids, x: &[f32], dist: &mut [f32]) {
    let d = hc.d;
    let kp = hc.c_sq.len();
    let xs: [&[f32]; R] = std::array::from_fn(|r| &x[r * d..(r + 1) * d]);
    for (p, panel) in hc.panels.chunks_exact(d).enumerate() {
        let mut acc = [[0f32; LANES]; R];
        for (j, c) in panel.iter().enumerate() {
            for r in 0..R {
                let xv = xs[r][j];
                for l in 0..LANES {
                    acc[r][l] += xv * c[l];
                }
            }
        }
        let c_sq = &hc.c_sq[p * LANES..(p + 1) * LANES];
        for (r, a) in acc.iter().enumerate() {
            let o = &mut dist[r * kp + p * LANES..r * kp + (p + 1) * LANES];
            for l in 0..LANES {
                o[l] = c_sq[l] - 2.0 * a[l];
            }
        }
    }
}

/// `dots` with AVX2 + FMA intrinsics: R x 2 accumulator registers, one broadcast per row and
/// two centroid loads per feature (the compiler spills the portable version's arrays).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dots_avx2_fma<const R: usize>(hc: &HostCentroids, x: &[f32], dist: &mut [f32]) {
    use std::arch::x86_64::*;
    const { assert!(LANES == 16) };
    let d = hc.d;
    let kp = hc.c_sq.len();
    let xs: [&[f32]; R] = std::array::from_fn(|r| &x[r * d..(r + 1) * d]);
    let two = _mm256_set1_ps(2.0);
    let xp: [*const f32; R] = xs.map(<[f32]>::as_ptr);
    for (p, panel) in hc.panels.chunks_exact(d).enumerate() {
        let mut lo = [_mm256_setzero_ps(); R];
        let mut hi = [_mm256_setzero_ps(); R];
        for (j, c) in panel.iter().enumerate() {
            // SAFETY: `c` is a [f32; 16] (two unaligned 8-float loads), and j < d, the length
            // of every xs[r] (raw reads: indexed ones kept a bounds check per FMA pair).
            unsafe {
                let c0 = _mm256_loadu_ps(c.as_ptr());
                let c1 = _mm256_loadu_ps(c.as_ptr().add(8));
                for r in 0..R {
                    let xv = _mm256_broadcast_ss(&*xp[r].add(j));
                    lo[r] = _mm256_fmadd_ps(xv, c0, lo[r]);
                    hi[r] = _mm256_fmadd_ps(xv, c1, hi[r]);
                }
            }
        }
        let c_sq = &hc.c_sq[p * LANES..(p + 1) * LANES];
        for r in 0..R {
            let o = &mut dist[r * kp + p * LANES..r * kp + (p + 1) * LANES];
            // SAFETY: `c_sq` and `o` hold 16 floats each (sliced above); unaligned access.
            unsafe {
                let s0 = _mm256_loadu_ps(c_sq.as_ptr());
                let s1 = _mm256_loadu_ps(c_sq.as_ptr().add(8));
                _mm256_storeu_ps(o.as_mut_ptr(), _mm256_fnmadd_ps(two, lo[r], s0));
                _mm256_storeu_ps(o.as_mut_ptr().add(8), _mm256_fnmadd_ps(two, hi[r], s1));
            }
        }
    }
}

/// Sum of squares with 8 partial sums (vectorisable, and a little more accurate).
#[inline(always)]
fn sq_norm(x: &[f32]) -> f32 {
    let (chunks, rest) = x.as_chunks::<8>();
    let mut acc = [0f32; 8];
    for c in chunks {
        for l in 0..8 {
            acc[l] += c[l] * c[l];
        }
    }
    acc.iter().sum::<f32>() + rest.iter().map(|v| v * v).sum::<f32>()
}

/// Borrow the elements of a contiguous CPU tensor without copying (the host kernel reads every
/// row once per pass; a copy would add a memory pass).
fn cpu_slice<T: tch::kind::Element>(t: &Tensor) -> Result<&[T], KmeansError> {
    if t.device() != Device::Cpu || !t.is_contiguous() || t.f_kind()? != T::KIND {
        return Err(KmeansError::Internal(
            "cpu_slice needs a contiguous CPU tensor",
        ));
    }
    let n = t.numel();
    if n == 0 {
        return Ok(&[]);
    }
    let ptr = t.data_ptr() as *const T;
    if ptr.is_null() || ptr.align_offset(std::mem::align_of::<T>()) != 0 {
        return Err(KmeansError::Internal("misaligned tensor data"));
    }
    // SAFETY: `t` is a contiguous CPU tensor of `n` elements of type T starting at `ptr`
    // (checked above); its storage stays alive and unmodified while `t` is borrowed, which
    // the returned lifetime enforces (nothing in this module writes to input tensors).
    Ok(unsafe { std::slice::from_raw_parts(ptr, n) })
}

/// Rows x features, floating point, at least one feature.
fn check_matrix(x: &Tensor) -> Result<(i64, i64), KmeansError> {
    let size = x.size();
    let &[n, d] = size.as_slice() else {
        return Err(KmeansError::Shape(size));
    };
    if d == 0 {
        return Err(KmeansError::Shape(size));
    }
    let kind = x.f_kind()?;
    if !matches!(
        kind,
        Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
    ) {
        return Err(KmeansError::Kind(kind));
    }
    Ok((n, d))
}

/// Split a chunk into blocks of at most `rows` rows, each f32, contiguous and on `device`
/// (converted block by block, so a large f64 or host tensor is never copied whole).
fn blocks(
    x: &Tensor,
    d: i64,
    rows: usize,
    device: Device,
) -> Result<impl Iterator<Item = Result<Tensor, KmeansError>> + '_, KmeansError> {
    let (n, got) = check_matrix(x)?;
    if got != d {
        return Err(KmeansError::DimMismatch { expected: d, got });
    }
    let step = rows.max(1) as i64;
    Ok((0..n).step_by(step as usize).map(move |start| {
        let len = step.min(n - start);
        Ok(x.f_narrow(0, start, len)?
            .f_detach()?
            .f_to_device_(device, Kind::Float, false, false)?
            .f_contiguous()?)
    }))
}

/// An in-memory tensor as a source of row chunks (views, no copies).
pub fn tensor_chunks(
    data: &Tensor,
    rows: usize,
) -> impl Iterator<Item = Result<Tensor, tch::TchError>> + '_ {
    let n = data.size().first().copied().unwrap_or(0);
    let step = rows.max(1) as i64;
    (0..n)
        .step_by(step as usize)
        .map(move |start| data.f_narrow(0, start, step.min(n - start)))
}

fn to_host_f32(t: &Tensor) -> Result<Vec<f32>, KmeansError> {
    Ok(Vec::<f32>::try_from(
        t.f_to_device_(Device::Cpu, Kind::Float, false, false)?
            .f_contiguous()?
            .f_reshape([-1])?,
    )?)
}

fn centroids_tensor(host: &[f64], k: i64, d: i64, device: Device) -> Result<Tensor, KmeansError> {
    let v: Vec<f32> = host.iter().map(|&x| x as f32).collect();
    Ok(Tensor::f_from_slice(&v)?
        .f_reshape([k, d])?
        .f_to_device(device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Standard normal draws from the seeded RNG (Box-Muller), so tests need no global RNG.
    fn normals(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
                let u2: f64 = rng.random();
                ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
            })
            .collect()
    }

    fn mat(v: &[f32], d: i64) -> Tensor {
        Tensor::from_slice(v).reshape([-1, d])
    }

    fn host(t: &Tensor) -> Vec<f32> {
        to_host_f32(t).unwrap()
    }

    fn labels(t: &Tensor) -> Vec<i64> {
        Vec::<i64>::try_from(t.to_device(Device::Cpu).reshape([-1])).unwrap()
    }

    /// `per` points around each of `centers` random centres in `d` dimensions, spread
    /// `scale` apart with unit noise; returns data and true labels (interleaved order).
    fn planted(centers: usize, per: usize, d: usize, scale: f32, seed: u64) -> (Tensor, Vec<i64>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mu: Vec<f32> = normals(&mut rng, centers * d)
            .into_iter()
            .map(|v| v * scale)
            .collect();
        let mut data = Vec::with_capacity(centers * per * d);
        let mut truth = Vec::with_capacity(centers * per);
        for i in 0..centers * per {
            let c = i % centers;
            let noise = normals(&mut rng, d);
            data.extend(
                noise
                    .iter()
                    .zip(&mu[c * d..(c + 1) * d])
                    .map(|(e, m)| m + e),
            );
            truth.push(c as i64);
        }
        (mat(&data, d as i64), truth)
    }

    fn choose2(n: u64) -> f64 {
        (n * n.saturating_sub(1)) as f64 / 2.0
    }

    /// Adjusted Rand index (Hubert and Arabie).
    fn ari(a: &[i64], b: &[i64]) -> f64 {
        use std::collections::HashMap;
        let mut table: HashMap<(i64, i64), u64> = HashMap::new();
        let mut ra: HashMap<i64, u64> = HashMap::new();
        let mut rb: HashMap<i64, u64> = HashMap::new();
        for (&x, &y) in a.iter().zip(b) {
            *table.entry((x, y)).or_default() += 1;
            *ra.entry(x).or_default() += 1;
            *rb.entry(y).or_default() += 1;
        }
        let index: f64 = table.values().map(|&v| choose2(v)).sum();
        let sa: f64 = ra.values().map(|&v| choose2(v)).sum();
        let sb: f64 = rb.values().map(|&v| choose2(v)).sum();
        let expected = sa * sb / choose2(a.len() as u64);
        let max = (sa + sb) / 2.0;
        if max == expected {
            return 1.0;
        }
        (index - expected) / (max - expected)
    }

    #[test]
    fn ari_sanity() {
        assert_eq!(ari(&[0, 0, 1, 1], &[5, 5, 2, 2]), 1.0);
        assert!(ari(&[0, 0, 1, 1], &[0, 1, 0, 1]) < 0.0);
    }

    #[test]
    fn planted_clusters_recovered() {
        // k-means++ seeding: a random sample puts two seeds into one of 5 clusters with
        // probability 1 - 5!/5^5 (96%), and Lloyd cannot undo that.
        let (x, truth) = planted(5, 400, 16, 10.0, 1);
        for seed in [0, 1, 7] {
            let cfg = KmeansConfig {
                k: 5,
                init: Init::KMeansPlusPlus,
                seed,
                chunk_rows: 300,
                ..Default::default()
            };
            let fit = Kmeans::init_from(&x, &cfg, Device::Cpu).unwrap();
            let got = labels(&fit.kmeans.assign(&x).unwrap());
            assert_eq!(ari(&got, &truth), 1.0, "seed {seed}");
            assert_eq!(fit.kmeans.counts(), &[400; 5]);
            assert_eq!(fit.rows, 2000);
            // Unit noise in 16-d: about 16 per point.
            let per_point = fit.objective / 2000.0;
            assert!((12.0..20.0).contains(&per_point), "{per_point}");
        }
    }

    #[test]
    fn planted_directions_recovered_cosine() {
        let (x, truth) = planted(5, 400, 16, 3.0, 2);
        let x = &x / x.norm_scalaropt_dim(2.0, [1], true);
        let cfg = KmeansConfig {
            k: 5,
            metric: Metric::Cosine,
            init: Init::KMeansPlusPlus,
            seed: 4,
            ..Default::default()
        };
        let fit = Kmeans::init_from(&x, &cfg, Device::Cpu).unwrap();
        let got = labels(&fit.kmeans.assign(&x).unwrap());
        assert_eq!(ari(&got, &truth), 1.0);
    }

    fn assert_non_increasing(fit: &Fit) {
        let mut objs: Vec<f64> = fit.iters.iter().map(|s| s.objective).collect();
        objs.push(fit.objective);
        for w in objs.windows(2) {
            assert!(w[1] <= w[0], "objective increased: {objs:?}");
        }
    }

    #[test]
    fn random_sample_init_is_uniform_over_rows() {
        // 10 distinct rows, k = 3, pool = all rows: over 300 seeds each row should be drawn
        // about 300 * 3 / 10 = 90 times, and the 3 seeds of one run are distinct rows.
        let x = mat(&(0..10).map(|i| i as f32).collect::<Vec<_>>(), 1);
        let mut hits = [0u32; 10];
        for seed in 0..300 {
            let cfg = KmeansConfig {
                k: 3,
                n_iter: 0,
                seed,
                chunk_rows: 4,
                ..Default::default()
            };
            let fit = Kmeans::init_from(&x, &cfg, Device::Cpu).unwrap();
            let mut rows: Vec<usize> = host(fit.kmeans.centroids())
                .iter()
                .map(|&v| v as usize)
                .collect();
            rows.sort();
            rows.dedup();
            assert_eq!(rows.len(), 3);
            rows.iter().for_each(|&r| hits[r] += 1);
        }
        assert!(hits.iter().all(|&h| (60..120).contains(&h)), "{hits:?}");
        // A pool of the first 4 rows draws from those only.
        let cfg = KmeansConfig {
            k: 3,
            n_iter: 0,
            init_pool_rows: Some(4),
            ..Default::default()
        };
        let fit = Kmeans::init_from(&x, &cfg, Device::Cpu).unwrap();
        assert!(host(fit.kmeans.centroids()).iter().all(|&v| v < 4.0));
    }

    #[test]
    fn objective_never_increases() {
        // Unstructured data: many small reassignments, the hard case for monotonicity.
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let x = mat(&normals(&mut rng, 3000 * 8), 8);
        for (metric, seed) in [(Metric::L2, 0), (Metric::L2, 1), (Metric::Cosine, 2)] {
            for init in [Init::RandomSample, Init::KMeansPlusPlus] {
                let cfg = KmeansConfig {
                    k: 12,
                    metric,
                    init,
                    seed,
                    n_iter: 40,
                    chunk_rows: 1000,
                    ..Default::default()
                };
                let fit = Kmeans::init_from(&x, &cfg, Device::Cpu).unwrap();
                assert_eq!(fit.iters.len(), 40);
                assert!(fit.iters[39].objective < fit.iters[0].objective);
                assert_non_increasing(&fit);
            }
        }
    }

    #[test]
    fn minibatch_update_hand_worked() {
        // Centroids c0 = (0, 0), c1 = (10, 10), counts N = [2, 3].
        // Batch 1: (1, 0), (0, 1) -> c0 (squared distances 1, 1); (10, 12) -> c1 (4).
        //   k = 0: n = 2, N = 4, eta = 1/2, mean = (0.5, 0.5): c0 = (0.25, 0.25).
        //   k = 1: n = 1, N = 4, eta = 1/4, mean = (10, 12): c1 = (10, 10.5).
        //   objective = 1 + 1 + 4 = 6.
        // Batch 2: (9, 9) -> c1 (squared distance 1 + 2.25 = 3.25); c0 has n = 0, unchanged.
        //   k = 1: n = 1, N = 5, eta = 1/5: c1 = 0.8 (10, 10.5) + 0.2 (9, 9) = (9.8, 10.2).
        let mut km =
            Kmeans::from_centroids(&mat(&[0., 0., 10., 10.], 2), Metric::L2, Device::Cpu).unwrap();
        km.set_counts(vec![2, 3]).unwrap();
        let s = km
            .minibatch_update(&mat(&[1., 0., 0., 1., 10., 12.], 2))
            .unwrap();
        assert_eq!(
            s,
            BatchStat {
                rows: 3,
                objective: 6.0,
                clusters_updated: 2
            }
        );
        assert_eq!(km.counts(), &[4, 4]);
        assert_eq!(host(km.centroids()), vec![0.25, 0.25, 10.0, 10.5]);
        let s = km.minibatch_update(&mat(&[9., 9.], 2)).unwrap();
        assert_eq!(s.clusters_updated, 1);
        assert!((s.objective - 3.25).abs() < 1e-5);
        assert_eq!(km.counts(), &[4, 5]);
        let c = host(km.centroids());
        let want = [0.25, 0.25, 9.8, 10.2];
        assert!(
            c.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6),
            "{c:?}"
        );
    }

    #[test]
    fn minibatch_cosine_stays_unit() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let x = mat(&normals(&mut rng, 500 * 6), 6);
        let cfg = KmeansConfig {
            k: 4,
            metric: Metric::Cosine,
            ..Default::default()
        };
        let fit = Kmeans::init_from(&x.narrow(0, 0, 200), &cfg, Device::Cpu).unwrap();
        let mut km = fit.kmeans;
        let before: u64 = km.counts().iter().sum();
        assert_eq!(before, 200);
        km.minibatch_update(&x.narrow(0, 200, 300)).unwrap();
        assert_eq!(km.counts().iter().sum::<u64>(), 500);
        assert_unit_rows(km.centroids());
    }

    fn assert_unit_rows(c: &Tensor) {
        let norms = host(&c.norm_scalaropt_dim(2.0, [1], false));
        assert!(norms.iter().all(|n| (n - 1.0).abs() < 1e-5), "{norms:?}");
    }

    #[test]
    fn cosine_centroids_are_unit() {
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        // Not normalised, and offset, so that means are far from unit length.
        let v: Vec<f32> = normals(&mut rng, 1000 * 10)
            .iter()
            .map(|v| 3.0 * v + 1.0)
            .collect();
        let x = mat(&v, 10);
        for init in [Init::RandomSample, Init::KMeansPlusPlus] {
            let cfg = KmeansConfig {
                k: 7,
                metric: Metric::Cosine,
                init,
                ..Default::default()
            };
            let fit = Kmeans::init_from(&x, &cfg, Device::Cpu).unwrap();
            assert_unit_rows(fit.kmeans.centroids());
            assert_non_increasing(&fit);
        }
        // n_iter = 0 returns the (normalised) initial centroids.
        let cfg = KmeansConfig {
            k: 7,
            metric: Metric::Cosine,
            n_iter: 0,
            ..Default::default()
        };
        assert_unit_rows(
            Kmeans::init_from(&x, &cfg, Device::Cpu)
                .unwrap()
                .kmeans
                .centroids(),
        );
    }

    #[test]
    fn empty_cluster_is_repaired() {
        // Blob A: 20 points in two tight sub-blobs at (-1, 0) and (1, 0); blob B: 5 points
        // at (10, 0). The third initial centroid is far from everything, so iteration 0
        // leaves it empty; it must be moved next to A (the largest), which then splits.
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let mut v = Vec::new();
        for i in 0..25 {
            let (cx, cy) = match i {
                0..10 => (-1.0, 0.0),
                10..20 => (1.0, 0.0),
                _ => (10.0, 0.0),
            };
            let e = normals(&mut rng, 2);
            v.extend([cx + 0.01 * e[0], cy + 0.01 * e[1]]);
        }
        let x = mat(&v, 2);
        let init = mat(&[0., 0., 10., 0., 1000., 1000.], 2);
        let cfg = KmeansConfig {
            n_iter: 10,
            seed: 3,
            ..Default::default()
        };
        let run = || lloyd_from(&init, || tensor_chunks(&x, 7), &cfg, Device::Cpu).unwrap();
        let fit = run();
        assert_eq!(fit.iters[0].empty_repaired, 1);
        assert!(fit.iters[1..].iter().all(|s| s.empty_repaired == 0));
        let mut counts = fit.kmeans.counts().to_vec();
        counts.sort();
        assert_eq!(counts, vec![5, 10, 10]);
        assert_non_increasing(&fit);
        // Deterministic given the seed.
        assert_eq!(host(run().kmeans.centroids()), host(fit.kmeans.centroids()));
    }

    #[test]
    fn duplicate_points_do_not_break_repair() {
        // Only 3 distinct points for k = 5: two clusters stay empty whatever happens.
        let x = mat(&[0., 0., 0., 0., 1., 1., 1., 1., 5., 5., 5., 5.], 2);
        let cfg = KmeansConfig {
            k: 5,
            n_iter: 5,
            ..Default::default()
        };
        let fit = Kmeans::init_from(&x, &cfg, Device::Cpu).unwrap();
        assert!(fit.iters.iter().all(|s| s.empty_repaired >= 2));
        assert!(fit.objective.abs() < 1e-6);
        assert_eq!(fit.kmeans.counts().iter().sum::<u64>(), 6);
    }

    #[test]
    fn errors_on_bad_input() {
        let cpu = Device::Cpu;
        let x = mat(&[0., 1., 2., 3., 4., 5.], 2);
        let cfg = |k| KmeansConfig {
            k,
            ..Default::default()
        };
        assert!(matches!(
            Kmeans::init_from(&x, &cfg(0), cpu),
            Err(KmeansError::ZeroK)
        ));
        assert!(matches!(
            Kmeans::init_from(&x, &cfg(4), cpu),
            Err(KmeansError::TooFewPoints { k: 4, rows: 3 })
        ));
        let kpp = KmeansConfig {
            init: Init::KMeansPlusPlus,
            ..cfg(4)
        };
        assert!(matches!(
            Kmeans::init_from(&x, &kpp, cpu),
            Err(KmeansError::TooFewPoints { .. })
        ));
        assert!(matches!(
            Kmeans::init_from(&Tensor::zeros([0, 3], (Kind::Float, cpu)), &cfg(2), cpu),
            Err(KmeansError::Empty)
        ));
        assert!(matches!(
            Kmeans::init_from(&Tensor::zeros([5], (Kind::Float, cpu)), &cfg(2), cpu),
            Err(KmeansError::Shape(_))
        ));
        assert!(matches!(
            Kmeans::init_from(&Tensor::zeros([5, 0], (Kind::Float, cpu)), &cfg(2), cpu),
            Err(KmeansError::Shape(_))
        ));
        assert!(matches!(
            Kmeans::init_from(&Tensor::zeros([5, 2], (Kind::Int64, cpu)), &cfg(2), cpu),
            Err(KmeansError::Kind(Kind::Int64))
        ));
        let bad_cfg = KmeansConfig {
            chunk_rows: 0,
            ..cfg(2)
        };
        assert!(matches!(
            Kmeans::init_from(&x, &bad_cfg, cpu),
            Err(KmeansError::Config(_))
        ));
        let bad_cfg = KmeansConfig {
            init_pool_rows: Some(1),
            ..cfg(2)
        };
        assert!(matches!(
            Kmeans::init_from(&x, &bad_cfg, cpu),
            Err(KmeansError::Config(_))
        ));

        // Non-finite values, found by the init pass and by a Lloyd pass, in a later chunk.
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut v = vec![0.5f32; 40];
            v[33] = bad;
            let xb = mat(&v, 2);
            let small = KmeansConfig {
                chunk_rows: 4,
                ..cfg(2)
            };
            for init in [Init::RandomSample, Init::KMeansPlusPlus] {
                let c = KmeansConfig {
                    init,
                    ..small.clone()
                };
                assert!(matches!(
                    Kmeans::init_from(&xb, &c, cpu),
                    Err(KmeansError::NonFinite { start: 16, end: 20 })
                ));
            }
            let init = mat(&[0., 0., 1., 1.], 2);
            assert!(matches!(
                lloyd_from(&init, || tensor_chunks(&xb, 4), &small, cpu),
                Err(KmeansError::NonFinite { start: 16, end: 20 })
            ));
            let km = Kmeans::from_centroids(&init, Metric::L2, cpu).unwrap();
            assert!(matches!(km.assign(&xb), Err(KmeansError::NonFinite { .. })));
        }
        // Finite but too large to square in f32.
        let huge = mat(&[1e30, 0., 0., 1e30, 1., 1.], 2);
        assert!(matches!(
            Kmeans::init_from(&huge, &cfg(2), cpu),
            Err(KmeansError::Overflow { .. })
        ));

        // Dimension mismatches.
        let mut km = Kmeans::from_centroids(&mat(&[0., 0., 1., 1.], 2), Metric::L2, cpu).unwrap();
        let x3 = mat(&[0., 1., 2.], 3);
        assert!(matches!(
            km.assign(&x3),
            Err(KmeansError::DimMismatch {
                expected: 2,
                got: 3
            })
        ));
        assert!(matches!(
            km.minibatch_update(&x3),
            Err(KmeansError::DimMismatch { .. })
        ));
        assert!(matches!(
            km.minibatch_update(&Tensor::zeros([0, 2], (Kind::Float, cpu))),
            Err(KmeansError::Empty)
        ));
        assert!(matches!(
            label_release(&x3, &mat(&[0., 0., 1., 1.], 2)),
            Err(KmeansError::DimMismatch { .. })
        ));
        let init = mat(&[0., 0., 1., 1.], 2);
        assert!(matches!(
            lloyd_from(&init, || tensor_chunks(&x3, 4), &cfg(2), cpu),
            Err(KmeansError::DimMismatch { .. })
        ));
        assert!(matches!(
            km.set_counts(vec![1]),
            Err(KmeansError::Config(_))
        ));
        assert!(matches!(
            Kmeans::from_centroids(&mat(&[0., f32::NAN], 2), Metric::L2, cpu),
            Err(KmeansError::NonFiniteCentroids)
        ));
        assert!(matches!(
            Kmeans::from_centroids(&Tensor::zeros([0, 2], (Kind::Float, cpu)), Metric::L2, cpu),
            Err(KmeansError::ZeroK)
        ));

        // Source failures and a source that changes between passes.
        let failing = || {
            vec![
                Ok(x.shallow_clone()),
                Err(std::io::Error::other("disk on fire")),
            ]
        };
        match lloyd(failing, &cfg(2), cpu) {
            Err(KmeansError::Source(e)) => assert_eq!(e.to_string(), "disk on fire"),
            other => panic!("{other:?}"),
        }
        let mut pass = 0;
        let shrinking = || {
            pass += 1;
            tensor_chunks(&x, 1).take(if pass > 2 { 2 } else { 3 })
        };
        assert!(matches!(
            lloyd(shrinking, &cfg(2), cpu),
            Err(KmeansError::SourceChanged { first: 3, now: 2 })
        ));
    }

    #[test]
    fn deterministic_given_seed() {
        let (x, _) = planted(6, 150, 12, 2.0, 9);
        for init in [Init::RandomSample, Init::KMeansPlusPlus] {
            let cfg = |seed| KmeansConfig {
                k: 6,
                init,
                seed,
                chunk_rows: 128,
                ..Default::default()
            };
            let a = Kmeans::init_from(&x, &cfg(5), Device::Cpu).unwrap();
            let b = Kmeans::init_from(&x, &cfg(5), Device::Cpu).unwrap();
            assert_eq!(host(a.kmeans.centroids()), host(b.kmeans.centroids()));
            assert_eq!(a.iters, b.iters);
            assert_eq!(a.kmeans.counts(), b.kmeans.counts());
            let c = Kmeans::init_from(&x, &cfg(6), Device::Cpu).unwrap();
            assert_ne!(host(a.kmeans.centroids()), host(c.kmeans.centroids()));
        }
    }

    #[test]
    fn streaming_equals_in_memory() {
        let (x, _) = planted(8, 500, 10, 1.5, 12);
        let x64 = x.to_kind(Kind::Double);
        for init in [Init::RandomSample, Init::KMeansPlusPlus] {
            let cfg = KmeansConfig {
                k: 8,
                init,
                seed: 1,
                chunk_rows: 256,
                init_pool_rows: Some(3000),
                ..Default::default()
            };
            let mem = Kmeans::init_from(&x, &cfg, Device::Cpu).unwrap();
            // Chunks aligned with chunk_rows: the same arithmetic, bit for bit.
            let same = lloyd(|| tensor_chunks(&x, 512), &cfg, Device::Cpu).unwrap();
            assert_eq!(host(mem.kmeans.centroids()), host(same.kmeans.centroids()));
            assert_eq!(mem.iters, same.iters);
            // Ragged f64 chunks, as a reader of stored batches would give them.
            let sizes = [700i64, 1, 1299, 1000, 1000];
            let ragged = || {
                let mut start = 0;
                sizes
                    .iter()
                    .map(|&len| {
                        let c = x64.narrow(0, start, len);
                        start += len;
                        Ok::<_, std::convert::Infallible>(c)
                    })
                    .collect::<Vec<_>>()
            };
            let streamed = lloyd(ragged, &cfg, Device::Cpu).unwrap();
            assert_eq!(streamed.rows, 4000);
            assert_eq!(mem.kmeans.counts(), streamed.kmeans.counts());
            let (a, b) = (
                host(mem.kmeans.centroids()),
                host(streamed.kmeans.centroids()),
            );
            assert!(a.iter().zip(&b).all(|(p, q)| (p - q).abs() < 1e-5));
            for (s, t) in mem.iters.iter().zip(&streamed.iters) {
                assert!(
                    (s.objective - t.objective).abs() <= 1e-7 * s.objective,
                    "{s:?} {t:?}"
                );
            }
        }
    }

    #[test]
    fn host_and_tensor_accumulation_agree() {
        let (x, _) = planted(4, 300, 9, 1.0, 13);
        let km = Kmeans::from_centroids(&x.narrow(0, 0, 4), Metric::L2, Device::Cpu).unwrap();
        let run = |path| {
            let prep = Prepared::new(km.centroids(), path).unwrap();
            let mut acc = Accum::new(4, 9);
            let mut labels = Vec::new();
            for b in blocks(&x, 9, 250, Device::Cpu).unwrap() {
                let b = b.unwrap();
                let out = prep.block(&b, 0, true, false).unwrap();
                labels.extend(super::tests::labels(&out.labels.unwrap()));
                acc.add_block(&prep, &b).unwrap();
            }
            (acc, labels)
        };
        let (a, la) = run(AccumPath::Auto);
        let (b, lb) = run(AccumPath::Tensor);
        assert_eq!(la, lb);
        assert_eq!(a.counts, b.counts);
        assert!((a.objective - b.objective).abs() < 1e-6 * a.objective);
        let close = |p: &f64, q: &f64| (p - q).abs() < 1e-9 * (1.0 + p.abs());
        assert!(a.sums.iter().zip(&b.sums).all(|(p, q)| close(p, q)));
    }

    #[test]
    fn tensor_path_lloyd_matches_host_kernel() {
        // The tensor path is what runs on a GPU; on CPU it must agree with the host kernel.
        let (x, _) = planted(6, 300, 12, 1.0, 15);
        let init = x.narrow(0, 0, 6);
        for metric in [Metric::L2, Metric::Cosine] {
            let cfg = KmeansConfig {
                k: 6,
                metric,
                n_iter: 8,
                chunk_rows: 500,
                ..Default::default()
            };
            let src = || tensor_chunks(&x, 700);
            let a = lloyd_impl(&init, src, &cfg, Device::Cpu, AccumPath::Auto).unwrap();
            let b = lloyd_impl(&init, src, &cfg, Device::Cpu, AccumPath::Tensor).unwrap();
            assert_eq!(a.kmeans.counts(), b.kmeans.counts());
            let (ca, cb) = (host(a.kmeans.centroids()), host(b.kmeans.centroids()));
            assert!(ca.iter().zip(&cb).all(|(p, q)| (p - q).abs() < 1e-5));
            for (s, t) in a.iters.iter().zip(&b.iters) {
                assert!((s.objective - t.objective).abs() < 1e-5 * s.objective);
            }
        }
        // Non-finite rows are caught on the tensor path too.
        let prep = Prepared::new(&init, AccumPath::Tensor).unwrap();
        for bad in [f32::NAN, f32::INFINITY] {
            let mut v = vec![0.5f32; 12 * 5];
            v[7] = bad;
            assert!(matches!(
                prep.block(&mat(&v, 12), 10, true, true),
                Err(KmeansError::NonFinite { start: 10, end: 15 })
            ));
        }
    }

    #[test]
    fn portable_kernel_matches_detected_one() {
        // 37 centroids: three panels, the last one mostly padding; 5001 rows: a ragged tail
        // for the 4-row register blocks and several tiles.
        let mut rng = ChaCha8Rng::seed_from_u64(16);
        let (k, d, n) = (37, 19, 5001);
        let c = normals(&mut rng, k * d);
        let x = normals(&mut rng, n * d);
        let fast = HostCentroids::new(&c, k, d);
        let portable = HostCentroids {
            isa: Isa::Portable,
            ..HostCentroids::new(&c, k, d)
        };
        let run = |hc: &HostCentroids, threads| {
            let mut labels = vec![-1i64; n];
            let out = host_block(hc, &x, Some(&mut labels), true, threads).unwrap();
            (labels, out)
        };
        let (la, a) = run(&fast, 2);
        let (lb, b) = run(&portable, 1);
        assert_eq!(la, lb);
        assert_eq!(a.counts, b.counts);
        assert!((a.objective - b.objective).abs() < 1e-6 * a.objective);
        // Brute force: the labels are the nearest centroids.
        for (i, row) in x.chunks_exact(d).enumerate().step_by(97) {
            let dist = |j: usize| -> f32 {
                row.iter()
                    .zip(&c[j * d..(j + 1) * d])
                    .map(|(p, q)| (p - q) * (p - q))
                    .sum()
            };
            let best = (0..k).min_by(|&p, &q| dist(p).total_cmp(&dist(q))).unwrap();
            assert!(dist(la[i] as usize) <= dist(best) * (1.0 + 1e-5), "row {i}");
        }
        // The same result whatever the thread count (tiles are merged in order).
        let (_, a1) = run(&fast, 1);
        assert_eq!(a.sums, a1.sums);
        assert_eq!(a.objective, a1.objective);
    }

    #[test]
    fn release_label_rule_matches_nearest_centroid() {
        let (x, _) = planted(5, 200, 8, 1.0, 14);
        let cfg = KmeansConfig {
            k: 5,
            ..Default::default()
        };
        let km = Kmeans::init_from(&x, &cfg, Device::Cpu).unwrap().kmeans;
        let a = labels(&km.assign(&x).unwrap());
        let b = labels(&label_release(&x, km.centroids()).unwrap());
        assert_eq!(a, b);
        // A B x D x H x W feature map gives B x H x W labels, pixel by pixel.
        let fmap = x
            .narrow(0, 0, 2 * 4 * 5)
            .reshape([2, 4, 5, 8])
            .permute([0, 3, 1, 2]);
        let l = label_release(&fmap, km.centroids()).unwrap();
        assert_eq!(l.size(), vec![2, 4, 5]);
        assert_eq!(labels(&l), a[..40].to_vec());
    }

    #[test]
    fn config_serde() {
        let cfg: KmeansConfig = serde_json::from_str(r#"{"k": 11, "metric": "cosine"}"#).unwrap();
        assert_eq!(cfg.k, 11);
        assert_eq!(cfg.metric, Metric::Cosine);
        assert_eq!(cfg.n_iter, 20);
        assert_eq!(cfg.init, Init::RandomSample);
        let cfg: KmeansConfig = serde_json::from_str(r#"{"init": "k_means_plus_plus"}"#).unwrap();
        assert_eq!(cfg.init, Init::KMeansPlusPlus);
        assert!(serde_json::from_str::<KmeansConfig>(r#"{"kk": 3}"#).is_err());
    }
}
