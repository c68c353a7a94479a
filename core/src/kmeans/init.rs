//! Initial centroids: a uniform random sample of rows (faiss, the release) or k-means++.

use super::*;

pub(super) fn initial_centroids<S, I, E>(
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
pub(super) fn kmeans_plus_plus(
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
