//! Mean-field inference of the fully connected CRF (Kraehenbuehl & Koltun, NIPS 2011) with
//! Potts compatibilities, as densecrf computes it: Q = softmax(-U); then, each iteration,
//! Q = softmax(-U + sum_m w_m N_m K_m N_m Q), with K_m a kernel filtered on its lattice and
//! N_m = diag(1 / sqrt(K_m 1)) its symmetric normalisation (densecrf's NORMALIZE_SYMMETRIC,
//! pydensecrf's default). Like densecrf, the filtering includes each pixel's own value.

use std::sync::{Arc, Mutex};

use super::config::{CrfConfig, GaussianKernel};
use super::lattice::{Lattice, Scratch};
use super::{CrfError, CrfImage, Refined};

/// One pairwise term: its lattice, the normalisation N, and w N (applied after slicing).
pub(crate) struct Kernel {
    pub(crate) lattice: Lattice,
    norm: Vec<f32>,
    post: Vec<f32>,
}

impl Kernel {
    /// The normalisation of `lattice` and its weight `compat`.
    fn new(lattice: Lattice, compat: f32, scratch: &mut Scratch) -> Self {
        let n = lattice.pixels();
        let ones = vec![1f32; n];
        let mut sums = vec![0f32; n];
        lattice.filter(&ones, 1, 1, &ones, &ones, None, &mut sums, scratch);
        // densecrf's epsilon: a pixel always sees itself, so the sum is positive anyway.
        let norm: Vec<f32> = sums.iter().map(|s| 1.0 / (s + 1e-20).sqrt()).collect();
        let post = norm.iter().map(|v| v * compat).collect();
        Self {
            lattice,
            norm,
            post,
        }
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        self.lattice.heap_bytes() + (self.norm.capacity() + self.post.capacity()) * 4
    }
}

/// The Gaussian kernel depends only on the image's size and the kernel's settings: the
/// last one built is kept for the next image (most batches are of one size). Building it
/// again gives the same bytes, so the cache changes no output.
type GaussianKey = (usize, usize, u32, u32);
static GAUSSIAN: Mutex<Option<(GaussianKey, Arc<Kernel>)>> = Mutex::new(None);

fn gaussian_key(g: GaussianKernel, w: usize, h: usize) -> GaussianKey {
    (w, h, g.sxy.to_bits(), g.compat.to_bits())
}

/// The kernels of `img` under `cfg`; a kernel with compat 0 adds nothing and is left out.
/// The Gaussian one comes from (and goes to) the cache when `cached`.
pub(crate) fn kernels(
    cfg: &CrfConfig,
    img: &CrfImage,
    scratch: &mut Scratch,
    cached: bool,
) -> Result<Vec<Arc<Kernel>>, CrfError> {
    let (w, h) = (img.width, img.height);
    let key = gaussian_key(cfg.gaussian, w, h);
    let hit = cached
        .then(|| {
            let cache = GAUSSIAN.lock().unwrap_or_else(|e| e.into_inner());
            cache
                .as_ref()
                .filter(|(k, _)| *k == key)
                .map(|(_, kernel)| kernel.clone())
        })
        .flatten();
    // Both lattices first, then their normalisations: the value buffers are allocated only
    // after the key tables are gone (peak memory).
    let mut lattices = Vec::new();
    if cfg.gaussian.compat > 0.0 && hit.is_none() {
        let s = cfg.gaussian.sxy;
        let mut f = Vec::with_capacity(w * h * 2);
        for y in 0..h {
            for x in 0..w {
                f.extend([x as f32 / s, y as f32 / s]);
            }
        }
        lattices.push((Lattice::new(&f, 2)?, cfg.gaussian.compat));
    }
    if cfg.bilateral.compat > 0.0 {
        let (s, c) = (cfg.bilateral.sxy, cfg.bilateral.srgb);
        let mut f = Vec::with_capacity(w * h * 5);
        for y in 0..h {
            for x in 0..w {
                let p = &img.rgb[(y * w + x) * 3..(y * w + x) * 3 + 3];
                f.extend([
                    x as f32 / s,
                    y as f32 / s,
                    p[0] as f32 / c,
                    p[1] as f32 / c,
                    p[2] as f32 / c,
                ]);
            }
        }
        lattices.push((Lattice::new(&f, 5)?, cfg.bilateral.compat));
    }
    let mut out: Vec<Arc<Kernel>> = hit.into_iter().collect();
    for (i, (l, compat)) in lattices.into_iter().enumerate() {
        let kernel = Arc::new(Kernel::new(l, compat, scratch));
        if cached && i == 0 && out.is_empty() && cfg.gaussian.compat > 0.0 {
            *GAUSSIAN.lock().unwrap_or_else(|e| e.into_inner()) = Some((key, kernel.clone()));
        }
        out.push(kernel);
    }
    Ok(out)
}

/// Mean-field inference on one checked image.
pub(crate) fn infer(cfg: &CrfConfig, img: &CrfImage) -> Result<Refined, CrfError> {
    infer_with(cfg, img, Scratch::default(), true)
}

/// [`infer`] with the given buffers (the AVX2 path or not) and Gaussian cache use.
pub(crate) fn infer_with(
    cfg: &CrfConfig,
    img: &CrfImage,
    mut scratch: Scratch,
    cached: bool,
) -> Result<Refined, CrfError> {
    let k = img.classes;
    let kernels = kernels(cfg, img, &mut scratch, cached)?;
    let mut q: Vec<f32> = img.unary.iter().map(|u| -u).collect();
    softmax(&mut q, k, scratch.simd());
    let mut logits = vec![0f32; q.len()];
    for _ in 0..cfg.iterations {
        // -U + the messages; the first kernel writes -U with its own (one pass less).
        for (i, m) in kernels.iter().enumerate() {
            let base = (i == 0).then_some(img.unary);
            m.lattice
                .filter(&q, k, k, &m.norm, &m.post, base, &mut logits, &mut scratch);
        }
        if kernels.is_empty() {
            for (l, u) in logits.iter_mut().zip(img.unary) {
                *l = -u;
            }
        }
        softmax(&mut logits, k, scratch.simd());
        std::mem::swap(&mut q, &mut logits);
    }
    let labels = q.chunks_exact(k).map(argmax).collect();
    Ok(Refined {
        labels,
        marginals: q,
    })
}

/// The first largest entry's index.
fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}

/// Softmax of each row of `k` values, in place, on the AVX2 path where `simd` (the same
/// bytes: the same Rust code compiled twice, without FMA).
pub(crate) fn softmax(x: &mut [f32], k: usize, simd: bool) {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: `simd` comes from `Scratch::simd`, set only when the CPU has AVX2.
        unsafe { softmax_avx2(x, k) };
        return;
    }
    let _ = simd;
    softmax_body(x, k);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn softmax_avx2(x: &mut [f32], k: usize) {
    softmax_body(x, k);
}

/// The exponential runs over the whole buffer in one loop (after each row's maximum is
/// subtracted), so it vectorises; a row's maximum and sum are taken over four interleaved
/// partial results (a row of 11 is three short dependency chains instead of one long one).
#[inline(always)]
fn softmax_body(x: &mut [f32], k: usize) {
    // Class counts up to 32 get a copy of the loop with k fixed, so that a row's loops
    // unroll into whole-vector operations (about a fifth faster at K = 11).
    macro_rules! fixed {
        ($($n:literal)*) => {
            match k {
                $($n => softmax_any(x, $n),)*
                _ => softmax_any(x, k),
            }
        };
    }
    fixed!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32)
}

#[inline(always)]
fn softmax_any(x: &mut [f32], k: usize) {
    // Blocks of 64 rows, so the three passes after the first find the block in L1.
    for block in x.chunks_mut(64 * k) {
        for row in block.chunks_exact_mut(k) {
            let m = reduce4(row, f32::NEG_INFINITY, |a, b| if a > b { a } else { b });
            for v in row.iter_mut() {
                *v -= m;
            }
        }
        for v in block.iter_mut() {
            *v = exp_neg(*v);
        }
        for row in block.chunks_exact_mut(k) {
            let inv = 1.0 / reduce4(row, 0.0, |a, b| a + b);
            for v in row.iter_mut() {
                *v *= inv;
            }
        }
    }
}

/// `op` over `row`: element j goes into partial result j % 4 (in order), then
/// (p0 op p2) op (p1 op p3).
#[inline(always)]
fn reduce4(row: &[f32], init: f32, op: impl Fn(f32, f32) -> f32) -> f32 {
    let mut p = [init; 4];
    let (chunks, rest) = row.as_chunks::<4>();
    for c in chunks {
        for j in 0..4 {
            p[j] = op(p[j], c[j]);
        }
    }
    for (j, &v) in rest.iter().enumerate() {
        p[j] = op(p[j], v);
    }
    op(op(p[0], p[2]), op(p[1], p[3]))
}

/// e^x for x <= 0 (within 2 ulp; below -87 it is about 1e-38 instead of a subnormal): a
/// branch-free Cephes-style polynomial, so the loop above vectorises where `f32::exp`, a
/// library call, would not.
#[inline(always)]
pub(crate) fn exp_neg(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n * LN2_HI is exact.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: adding it rounds to an integer held in the low mantissa bits.
    const MAGIC: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 0.0);
    let t = x * LOG2E + MAGIC;
    let n = t - MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    // 2^n from n's bits in t (n >= -126 after the clamp).
    let pow2 = f32::from_bits((t.to_bits().wrapping_sub(0x4B40_0000).wrapping_add(127)) << 23);
    e * pow2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_neg_matches_std() {
        let mut worst = 0f32;
        for i in 0..=870_000 {
            let x = -(i as f32) * 1e-4;
            let (a, b) = (exp_neg(x), x.exp());
            worst = worst.max(((a - b) / b).abs());
        }
        assert!(worst < 3e-7, "relative error {worst}");
    }

    #[test]
    fn softmax_rows_sum_to_one() {
        let mut x = vec![0.0, 1.0, 2.0, -50.0, 0.0, 50.0];
        softmax(&mut x, 3, false);
        for row in x.chunks(3) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
        assert!(x[2] > x[1] && x[1] > x[0]);
        assert_eq!(argmax(&x[3..]), 2);
    }
}
