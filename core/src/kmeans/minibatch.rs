//! The centroid state (centroids and cumulative counts N_k), the release's online mini-batch
//! update of it, and the release's scheme around it ([`Online`]).

use super::*;

/// Centroids and cumulative counts N_k.
#[derive(Debug)]
pub struct Kmeans {
    /// K x D, f32, contiguous, on the working device.
    pub(super) centroids: Tensor,
    pub(super) counts: Vec<u64>,
    pub(super) metric: Metric,
    pub(super) chunk_rows: usize,
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

/// Which k-means a stage fits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The release's scheme ([`Online`]): full k-means on a first sample, then online updates.
    Minibatch,
    /// Full-batch Lloyd over every row ([`lloyd`]).
    Lloyd,
}

/// The mini-batch scheme's row counts: the name of each one that is zero (they must be
/// positive).
pub fn zero_minibatch_rows(init_rows: usize, batch_rows: usize) -> Vec<&'static str> {
    [("init_rows", init_rows), ("batch_rows", batch_rows)]
        .into_iter()
        .filter(|(_, rows)| *rows == 0)
        .map(|(name, _)| name)
        .collect()
}

/// One step of a k-means run of one view: a Lloyd iteration, or an online update (numbered
/// on from the initial k-means' iterations).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StatRow {
    pub view: u8,
    pub iteration: u32,
    pub objective: f64,
    pub empty_repaired: u64,
}

impl StatRow {
    /// The Lloyd iterations of one view's fit.
    pub fn of_iters(view: u8, iters: &[IterStat]) -> impl Iterator<Item = StatRow> + '_ {
        iters.iter().map(move |s| StatRow {
            view,
            iteration: s.iteration as u32,
            objective: s.objective,
            empty_repaired: s.empty_repaired as u64,
        })
    }
}

/// The release's mini-batch k-means of one view, fed rows in order: full k-means on the
/// first `init_rows` rows, then one online update per `batch_rows` rows. Also the fresh
/// k-means of the evaluation in its `minibatch` mode.
pub struct Online<'a> {
    pub view: u8,
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
    pub fn new(
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

    /// Takes rows (any count), running the initial k-means or an update whenever enough
    /// have come.
    pub fn push(&mut self, mut rows: Tensor, stats: &mut Vec<StatRow>) -> Result<(), KmeansError> {
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
    fn flush(&mut self, stats: &mut Vec<StatRow>) -> Result<(), KmeansError> {
        self.seal();
        if self.buf.is_empty() {
            return Ok(());
        }
        let pieces = std::mem::take(&mut self.buf);
        self.buf_rows = 0;
        let view = self.view;
        match self.km.as_mut() {
            None => {
                // = Kmeans::init_from on the concatenation, without making it.
                let fit = lloyd(
                    || {
                        pieces
                            .iter()
                            .map(|t| Ok::<_, KmeansError>(t.shallow_clone()))
                    },
                    self.cfg,
                    self.device,
                )?;
                stats.extend(StatRow::of_iters(view, &fit.iters));
                self.km = Some(fit.kmeans);
            }
            Some(km) => {
                let s = km.minibatch_update(&Tensor::cat(&pieces, 0))?;
                self.updates += 1;
                stats.push(StatRow {
                    view,
                    iteration: self.cfg.n_iter as u32 + self.updates,
                    objective: s.objective,
                    empty_repaired: 0,
                });
            }
        }
        Ok(())
    }

    /// Uses the rows still waiting; the centroids and counts N_k.
    pub fn finish(mut self, stats: &mut Vec<StatRow>) -> Result<(Tensor, Vec<u64>), KmeansError> {
        self.flush(stats)?;
        let km = self.km.ok_or(KmeansError::Empty)?;
        Ok((km.centroids().shallow_clone(), km.counts().to_vec()))
    }
}
