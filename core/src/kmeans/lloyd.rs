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

pub(super) fn lloyd_impl<S, I, E>(
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
