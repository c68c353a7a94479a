//! Nearest images by their mean token, as STEGO's `precompute_knns.py` finds each image's
//! training partners: per image the spatial mean of its patch tokens, L2-normalised; cosine
//! similarity to every other image of the split; the top k kept, rank 0 the image itself.
//!
//! Unlike the release (one `n/16 x N` block of the similarity matrix at a time, so memory
//! grows with N^2 / 16), similarities are computed tile by tile (`block x block`) and fed
//! into a running top-k per image: memory is the N x C embeddings plus N x k results,
//! whatever N. Each similarity is one dot product in a fixed summation order, so the result
//! does not depend on the tile size or on the order tiles are visited, and equal
//! similarities (duplicate images) are ordered by the lower image index first.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

/// Tile side of the blocked similarity pass: 2 x 256 x C f32 (768 KiB at C = 384) stays in
/// a core's L2 cache.
pub const DEFAULT_BLOCK: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum KnnError {
    #[error("k must be at least 1 (rank 0 is the image itself)")]
    ZeroK,
    #[error(
        "k = {k} neighbours need more images than the {images} given: k must be less than the \
         number of images (rank 0 is the image itself, ranks 1..k-1 its k-1 nearest others)"
    )]
    TooFewImages { k: usize, images: usize },
    #[error("embeddings of {len} values are not rows of {dim}")]
    Shape { len: usize, dim: usize },
    #[error("cancelled")]
    Cancelled,
    #[error("image at position {row} has non-finite tokens (NaN or infinity)")]
    NotFinite { row: usize },
}

/// One image's C x h x w tokens, channel-major (as stored) -> its spatial mean, divided by
/// max(norm, 1e-12) as `F.normalize` does, appended to `out` (C values). The sums run in f64.
/// An all-zero image gets the zero vector (similarity 0 to every image).
pub fn push_unit_mean(tokens: &[f32], channels: usize, out: &mut Vec<f32>) -> Result<(), KnnError> {
    if channels == 0 || tokens.is_empty() || !tokens.len().is_multiple_of(channels) {
        return Err(KnnError::Shape {
            len: tokens.len(),
            dim: channels,
        });
    }
    let hw = tokens.len() / channels;
    let mean: Vec<f64> = tokens
        .chunks_exact(hw)
        .map(|c| c.iter().map(|&v| v as f64).sum::<f64>() / hw as f64)
        .collect();
    let norm = mean.iter().map(|m| m * m).sum::<f64>().sqrt();
    // Checked before the floor: f64::max would turn a NaN norm into the floor.
    if !norm.is_finite() {
        return Err(KnnError::NotFinite {
            row: out.len() / channels,
        });
    }
    let norm = norm.max(1e-12);
    out.extend(mean.iter().map(|m| (m / norm) as f32));
    Ok(())
}

/// Each image's k nearest images: `neighbour[i * k + r]` is image i's rank-r neighbour (an
/// index into the embeddings' rows) and `similarity[i * k + r]` its cosine similarity.
#[derive(Debug, Clone, PartialEq)]
pub struct Neighbours {
    pub k: usize,
    pub neighbour: Vec<u32>,
    pub similarity: Vec<f32>,
}

impl Neighbours {
    pub fn images(&self) -> usize {
        self.neighbour.len() / self.k.max(1)
    }
    /// Image i's neighbours, rank 0 (itself) first.
    pub fn of(&self, i: usize) -> &[u32] {
        &self.neighbour[i * self.k..(i + 1) * self.k]
    }
}

/// Dot product in one fixed order (eight interleaved partial sums, then the tail): the same
/// operands always give the same bits, so sim(a, b) == sim(b, a) and duplicates tie exactly.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ta, tb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ta.iter().zip(tb) {
        s += x * y;
    }
    s
}

/// A candidate beats another on higher similarity, then on the lower index: a strict total
/// order on finite similarities, so the kept set does not depend on arrival order.
fn better(s: f32, j: u32, than_s: f32, than_j: u32) -> bool {
    s > than_s || (s == than_s && j < than_j)
}

/// One image's best `cap` others so far, best first.
struct Running {
    sims: Vec<f32>,
    idx: Vec<u32>,
}

impl Running {
    fn offer(&mut self, cap: usize, s: f32, j: u32) {
        let n = self.sims.len();
        if cap == 0 {
            return;
        }
        if n == cap && !better(s, j, self.sims[n - 1], self.idx[n - 1]) {
            return;
        }
        // Insertion point: after every entry that is better than (s, j).
        let at = self
            .sims
            .iter()
            .zip(&self.idx)
            .position(|(&ts, &tj)| better(s, j, ts, tj))
            .unwrap_or(n);
        if n == cap {
            self.sims.pop();
            self.idx.pop();
        }
        self.sims.insert(at, s);
        self.idx.insert(at, j);
    }
}

fn check(emb: &[f32], dim: usize, k: usize) -> Result<usize, KnnError> {
    if k == 0 {
        return Err(KnnError::ZeroK);
    }
    if dim == 0 || !emb.len().is_multiple_of(dim) {
        return Err(KnnError::Shape {
            len: emb.len(),
            dim,
        });
    }
    let n = emb.len() / dim;
    if k >= n {
        return Err(KnnError::TooFewImages { k, images: n });
    }
    if n > u32::MAX as usize {
        return Err(KnnError::Shape {
            len: emb.len(),
            dim,
        });
    }
    if let Some(i) = emb.iter().position(|v| !v.is_finite()) {
        return Err(KnnError::NotFinite { row: i / dim });
    }
    Ok(n)
}

fn fresh(n: usize, cap: usize) -> Vec<Running> {
    (0..n)
        .map(|_| Running {
            sims: Vec::with_capacity(cap + 1),
            idx: Vec::with_capacity(cap + 1),
        })
        .collect()
}

/// The top-k table of N embeddings of `dim` values (rows, ideally unit: cosine similarity
/// is their dot product). Rank 0 is always the image itself, with its own dot product, even
/// when a duplicate scores as high; ranks 1..k-1 are the k-1 best others. Needs k < N.
/// `block` is the tile side (0 is taken as 1); `threads` workers take rows of tiles in turn
/// (0 is taken as 1). `progress` is called on this thread with the number of query rows
/// finished after each row of tiles, and stops the pass when it returns false. The result
/// depends on neither `block` nor `threads`.
pub fn top_k(
    emb: &[f32],
    dim: usize,
    k: usize,
    block: usize,
    threads: usize,
    mut progress: impl FnMut(usize) -> bool,
) -> Result<Neighbours, KnnError> {
    let n = check(emb, dim, k)?;
    let block = block.max(1);
    let cap = k - 1;
    let row = |i: usize| &emb[i * dim..(i + 1) * dim];
    let tiles: Vec<usize> = (0..n).step_by(block).collect();
    let threads = threads.clamp(1, tiles.len());
    let stop = AtomicBool::new(false);
    let (tx, rx) = mpsc::channel::<usize>();
    let parts: Vec<Vec<Running>> = std::thread::scope(|s| {
        let (tiles, stop) = (&tiles, &stop);
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let tx = tx.clone();
                s.spawn(move || {
                    let mut runs = fresh(n, cap);
                    // Rows of the upper triangle shrink: taking every `threads`-th row of
                    // tiles balances the work. Each pair is computed once (the dot product
                    // is symmetric) and offered to both images.
                    for &bi in tiles.iter().skip(t).step_by(threads) {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let ei = (bi + block).min(n);
                        for bj in (bi..n).step_by(block) {
                            let ej = (bj + block).min(n);
                            for i in bi..ei {
                                let a = row(i);
                                for j in bj.max(i + 1)..ej {
                                    let s = dot(a, row(j));
                                    runs[i].offer(cap, s, j as u32);
                                    runs[j].offer(cap, s, i as u32);
                                }
                            }
                        }
                        // The receiver lives until every worker is joined.
                        let _ = tx.send(ei - bi);
                    }
                    runs
                })
            })
            .collect();
        drop(tx);
        for rows in rx {
            if !stop.load(Ordering::Relaxed) && !progress(rows) {
                stop.store(true, Ordering::Relaxed);
            }
        }
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    if stop.load(Ordering::Relaxed) {
        return Err(KnnError::Cancelled);
    }
    let mut neighbour = Vec::with_capacity(n * k);
    let mut similarity = Vec::with_capacity(n * k);
    let mut merged = Running {
        sims: Vec::with_capacity(cap + 1),
        idx: Vec::with_capacity(cap + 1),
    };
    for i in 0..n {
        // The best of the workers' lists under the same strict order: the same set
        // whatever the split.
        merged.sims.clear();
        merged.idx.clear();
        for p in &parts {
            for (&s, &j) in p[i].sims.iter().zip(&p[i].idx) {
                merged.offer(cap, s, j);
            }
        }
        neighbour.push(i as u32);
        similarity.push(dot(row(i), row(i)));
        neighbour.extend(&merged.idx);
        similarity.extend(&merged.sims);
    }
    Ok(Neighbours {
        k,
        neighbour,
        similarity,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use tch::{Kind, Tensor};

    fn unit_rows(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut v: Vec<f32> = (0..n * dim).map(|_| rng.random_range(-1.0..1.0)).collect();
        for r in v.chunks_mut(dim) {
            let s = r.iter().map(|x| x * x).sum::<f32>().sqrt();
            r.iter_mut().for_each(|x| *x /= s);
        }
        v
    }

    /// Every pair, every row fully sorted: the definition the blocked pass must meet.
    fn brute_force(emb: &[f32], dim: usize, k: usize) -> Neighbours {
        let n = emb.len() / dim;
        let row = |i: usize| &emb[i * dim..(i + 1) * dim];
        let (mut neighbour, mut similarity) = (Vec::new(), Vec::new());
        for i in 0..n {
            let mut all: Vec<(f32, u32)> = (0..n)
                .filter(|&j| j != i)
                .map(|j| (dot(row(i), row(j)), j as u32))
                .collect();
            all.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            neighbour.push(i as u32);
            similarity.push(dot(row(i), row(i)));
            for &(s, j) in &all[..k - 1] {
                neighbour.push(j);
                similarity.push(s);
            }
        }
        Neighbours {
            k,
            neighbour,
            similarity,
        }
    }

    #[test]
    fn blocked_equals_brute_force_for_every_tile_size() {
        let (n, dim, k) = (53, 19, 7);
        let emb = unit_rows(n, dim, 3);
        let want = brute_force(&emb, dim, k);
        for (block, threads) in [
            (0, 1),
            (1, 3),
            (2, 2),
            (5, 1),
            (5, 4),
            (16, 2),
            (52, 1),
            (53, 2),
            (1000, 3),
        ] {
            let got = top_k(&emb, dim, k, block, threads, |_| true).unwrap();
            assert_eq!(got, want, "block {block}, threads {threads}");
        }
    }

    /// The dot product itself against a double-precision matrix product: the same
    /// neighbours (random data has no near-ties) and similarities within f32 rounding.
    #[test]
    fn similarities_are_cosines() {
        let (n, dim, k) = (40, 384, 10);
        let emb = unit_rows(n, dim, 5);
        let got = top_k(&emb, dim, k, 8, 2, |_| true).unwrap();
        let e = Tensor::from_slice(&emb)
            .view([n as i64, dim as i64])
            .to_kind(Kind::Double);
        let sims = e.matmul(&e.tr());
        for i in 0..n {
            let s = Vec::<f64>::try_from(sims.get(i as i64)).unwrap();
            let mut order: Vec<usize> = (0..n).filter(|&j| j != i).collect();
            order.sort_by(|&a, &b| s[b].total_cmp(&s[a]));
            assert_eq!(got.of(i)[0] as usize, i);
            for r in 1..k {
                let j = got.of(i)[r] as usize;
                assert_eq!(j, order[r - 1], "image {i} rank {r}");
                assert!((got.similarity[i * k + r] as f64 - s[j]).abs() < 1e-5);
            }
            assert!((got.similarity[i * k] - 1.0).abs() < 1e-5);
        }
    }

    /// Duplicates tie exactly: they come in index order, and each duplicate keeps itself at
    /// rank 0 although its twins score as high.
    #[test]
    fn ties_go_to_the_lower_index_and_rank_0_is_self() {
        let dim = 12;
        let mut emb = unit_rows(10, dim, 9);
        let twin = emb[2 * dim..3 * dim].to_vec();
        for d in [5, 9, 7] {
            emb[d * dim..(d + 1) * dim].copy_from_slice(&twin);
        }
        let k = 9;
        let got = top_k(&emb, dim, k, 3, 2, |_| true).unwrap();
        for (me, others) in [
            (2u32, [5, 7, 9]),
            (5, [2, 7, 9]),
            (7, [2, 5, 9]),
            (9, [2, 5, 7]),
        ] {
            assert_eq!(got.of(me as usize)[0], me);
            assert_eq!(&got.of(me as usize)[1..4], &others, "image {me}");
            // The twins' similarity is exactly the image's own.
            let s = &got.similarity[me as usize * k..me as usize * k + 4];
            assert!(s.iter().all(|&x| x == s[0]), "{s:?}");
        }
        // Any other image sees the four twins with one similarity, lowest index first.
        let r = got.of(0);
        let at: Vec<usize> = [2u32, 5, 7, 9]
            .iter()
            .filter_map(|t| r.iter().position(|x| x == t))
            .collect();
        assert!(at.windows(2).all(|w| w[1] == w[0] + 1), "{r:?}");
    }

    #[test]
    fn bad_k_and_bad_values_are_refused() {
        let emb = unit_rows(4, 3, 1);
        assert!(matches!(
            top_k(&emb, 3, 0, 2, 2, |_| true),
            Err(KnnError::ZeroK)
        ));
        let e = top_k(&emb, 3, 4, 2, 2, |_| true).unwrap_err();
        assert!(matches!(e, KnnError::TooFewImages { k: 4, images: 4 }));
        assert!(e.to_string().contains("k = 4") && e.to_string().contains("4 given"));
        assert!(top_k(&emb, 3, 3, 2, 2, |_| true).is_ok());
        assert!(matches!(
            top_k(&emb, 3, 2, 1, 2, |_| false),
            Err(KnnError::Cancelled)
        ));
        let own = top_k(&emb, 3, 1, 2, 2, |_| true).unwrap();
        assert_eq!(own.neighbour, [0, 1, 2, 3]);
        assert!(matches!(
            top_k(&emb[..10], 3, 2, 2, 2, |_| true),
            Err(KnnError::Shape { len: 10, dim: 3 })
        ));
        let mut nan = emb.clone();
        nan[7] = f32::NAN;
        assert!(matches!(
            top_k(&nan, 3, 2, 2, 2, |_| true),
            Err(KnnError::NotFinite { row: 2 })
        ));
    }

    /// The mean token of each image, normalised, as tch computes it; an all-zero image
    /// embeds as zeros; NaN tokens are refused with the image's position.
    #[test]
    fn embeddings_are_unit_spatial_means() {
        let t = Tensor::randn([3, 6, 4, 5], (Kind::Float, tch::Device::Cpu)) + 0.3;
        let _ = t.get(2).fill_(0.0);
        let mut e = Vec::new();
        for i in 0..3 {
            let v = Vec::<f32>::try_from(t.get(i).flatten(0, -1)).unwrap();
            push_unit_mean(&v, 6, &mut e).unwrap();
        }
        assert_eq!(e.len(), 18);
        let want = t.mean_dim([2i64, 3].as_slice(), false, Kind::Float);
        let want = &want
            / want
                .norm_scalaropt_dim(2, [1i64].as_slice(), true)
                .clamp_min(1e-12);
        let want = Vec::<f32>::try_from(want.flatten(0, -1)).unwrap();
        for (a, b) in e.iter().zip(&want) {
            assert!((a - b).abs() < 1e-6, "{a} {b}");
        }
        assert!(e[12..].iter().all(|&x| x == 0.0));
        assert!((dot(&e[..6], &e[..6]) - 1.0).abs() < 1e-6);
        assert!(matches!(
            push_unit_mean(&[1.0; 7], 3, &mut e),
            Err(KnnError::Shape { len: 7, dim: 3 })
        ));
        let mut nan = vec![1.0f32; 12];
        nan[4] = f32::NAN;
        assert!(matches!(
            push_unit_mean(&nan, 3, &mut e),
            Err(KnnError::NotFinite { row: 6 })
        ));
    }
}
