//! The host kernel: distances, argmin, objective and f64 sums in one pass over the rows,
//! a block of rows at a time while they are in cache. The only unsafe code of k-means
//! (AVX2/FMA intrinsics, behind runtime detection) lives here.

use super::*;

// Why not libtorch: one matmul per chunk plus separate argmin, norm and scatter ops costs
// several memory passes and a thread barrier per op; on a busy 2-core machine the barriers
// dominate.

/// Centroids per register block: two 8-lane AVX2 vectors.
pub(super) const LANES: usize = 16;
/// Rows per register block: ROWS x LANES accumulators fill 8 of the 16 AVX2 registers.
pub(super) const ROWS: usize = 4;
/// Rows per scheduling unit. Partial results are kept per tile and merged in tile order, so
/// the result depends neither on the thread count nor on which thread ran which tile.
pub(super) const TILE_ROWS: usize = 2048;
/// Rows whose nearest centroids are found before their sums are added (128 KiB at D = 128,
/// so they are still in L2 for the second step).
pub(super) const SUB_ROWS: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Isa {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
}

impl Isa {
    pub(super) fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Isa::Avx2Fma;
        }
        Isa::Portable
    }
}

pub(super) struct HostCentroids {
    pub(super) k: usize,
    pub(super) d: usize,
    /// ceil(K / LANES) panels of D rows of LANES centroid coordinates (zero padded).
    pub(super) panels: Vec<[f32; LANES]>,
    /// |c|^2 per padded centroid.
    pub(super) c_sq: Vec<f32>,
    pub(super) isa: Isa,
}

impl HostCentroids {
    pub(super) fn new(c: &[f32], k: usize, d: usize) -> Self {
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

    pub(super) fn tile(&self, x: &[f32], labels: Option<&mut [i64]>, want_sums: bool) -> TileOut {
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: Isa::Avx2Fma is chosen only when the CPU reports AVX2 and FMA.
            Isa::Avx2Fma => unsafe { tile_avx2_fma(self, x, labels, want_sums) },
            Isa::Portable => tile_kernel::<false>(self, x, labels, want_sums),
        }
    }
}

#[derive(Default)]
pub(super) struct TileOut {
    pub(super) sums: Vec<f64>,
    pub(super) counts: Vec<u64>,
    pub(super) objective: f64,
}

/// Run the kernel over a block's rows, tiles handed out to `threads` threads on demand (a
/// busy core then takes fewer tiles instead of holding the others up).
pub(super) fn host_block(
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
pub(super) fn tile_avx2_fma(
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
pub(super) fn tile_kernel<const FMA: bool>(
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
pub(super) fn dots<const R: usize>(hc: &HostCentroids, x: &[f32], dist: &mut [f32]) {
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
pub(super) fn dots_avx2_fma<const R: usize>(hc: &HostCentroids, x: &[f32], dist: &mut [f32]) {
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
pub(super) fn sq_norm(x: &[f32]) -> f32 {
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
pub(super) fn cpu_slice<T: tch::kind::Element>(t: &Tensor) -> Result<&[T], KmeansError> {
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
