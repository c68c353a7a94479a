//! The permutohedral lattice (Adams, Baek & Davis, "Fast High-Dimensional Filtering Using
//! the Permutohedral Lattice", Eurographics 2010): Gaussian filtering of per-pixel values in
//! a d-dimensional feature space in O(N d^2) time. Each pixel's feature is lifted onto the
//! hyperplane of the (d+1)-dimensional lattice, its value is splatted onto the d+1
//! vertices of the simplex enclosing it (barycentric weights), the vertex values are
//! blurred with [1/2 1 1/2] along each of the d+1 lattice axes, and slices read them back
//! with the same weights. The result approximates sum_j exp(-|f_i - f_j|^2 / 2) v_j up to a
//! constant factor, which the CRF's normalisation cancels.
//!
//! Everything is sequential per image and in f32, so a lattice and its filtering give the
//! same bytes on every run.

use super::hash::{same_key, KeyTable};
use super::CrfError;

/// The widest feature a lattice takes (the CRF uses 2 and 5).
pub(crate) const MAX_DIM: usize = 5;

/// Lattice coordinates must stay exact in f32 and fit the keys: features (already divided
/// by their widths) up to this magnitude are accepted.
const MAX_COORD: f32 = (1 << 20) as f32;

/// The two value buffers may hold this many floats: a lattice filters as many channels at a
/// time (4 to 16) as fit, so a 320 x 320 image of pure colour noise (600,000 bilateral
/// vertices; a natural image has about 10,000 to 100,000) goes 4 channels at a time and a
/// natural image's K = 11 in one pass.
const BUFFER_FLOATS: usize = 4 << 20;

/// A lattice with more vertices than this many per pixel is lean: it keeps no upper blur
/// neighbours, so that pure colour noise (6 vertices per pixel) stays within the memory
/// budget; its blur takes three passes per axis instead of one. Both forms give the same
/// bytes.
const LEAN_VERTICES_PER_PIXEL: usize = 2;

/// The filtering structure of one image's features. Vertex ids follow the pixels' raster
/// scan (the order the table hands them out), so splat and slice walk the value buffers
/// nearly in order: on CamVid frames this beat a Morton order of the keys by about 10 %
/// end to end (BENCHMARKS.md).
pub(crate) struct Lattice {
    d: usize,
    pixels: usize,
    vertices: usize,
    /// Pixel i's d+1 simplex vertices, `offset[i * (d+1) + r]`, as vertex id + 1 (row 0 of
    /// the value buffers is a zero row that stands for absent neighbours).
    offset: Vec<u32>,
    /// The barycentric weights beside `offset`.
    weight: Vec<f32>,
    /// Vertex v's lower neighbour along axis j, `lower[j * vertices + v]`, as id + 1 (0 when
    /// that lattice point holds no value).
    lower: Vec<u32>,
    /// The upper neighbours, laid out as `lower` (empty when lean).
    upper: Vec<u32>,
    /// The largest distance between the ids of two neighbouring vertices.
    reach: usize,
    /// Bytes the key table held at the end of construction (dropped since).
    table_bytes: usize,
}

/// Value buffers reused across filterings: two rows of 4 to 16 lanes per vertex plus the
/// zero row. The one allocation of the mean-field loop.
pub(crate) struct Scratch {
    a: Vec<f32>,
    b: Vec<f32>,
    /// Whether the filter may take the AVX2 path (same bytes as the portable one).
    simd: bool,
}

impl Default for Scratch {
    fn default() -> Self {
        Self::with_simd(true)
    }
}

impl Scratch {
    /// Buffers whose filterings use AVX2 when `simd` and the CPU has it, the portable code
    /// otherwise (the tests compare the two).
    pub(crate) fn with_simd(simd: bool) -> Self {
        Self {
            a: Vec::new(),
            b: Vec::new(),
            simd: simd && avx2_available(),
        }
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        (self.a.capacity() + self.b.capacity()) * 4
    }

    /// Whether work on these buffers takes the AVX2 path.
    pub(crate) fn simd(&self) -> bool {
        self.simd
    }
}

#[cfg(target_arch = "x86_64")]
fn avx2_available() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
}

#[cfg(not(target_arch = "x86_64"))]
fn avx2_available() -> bool {
    false
}

/// Rounds half away from zero, as `f32::round` (a library call without SSE4.1), for
/// |x| < 2^23: the fraction `x - trunc(x)` is exact there.
#[inline(always)]
fn round(x: f32) -> f32 {
    let t = x as i32 as f32;
    let f = x - t;
    // Without branches (the sign of the residual is a coin toss); t is never -0, so
    // t + 0 is t.
    t + (i32::from(f >= 0.5) - i32::from(f <= -0.5)) as f32
}

/// One blur axis of a lean lattice (no upper neighbours), the same bytes as the one-pass
/// blur: next = cur[lower], then next[lower[v]] += cur[v] (v is the upper neighbour of its
/// lower one, each vertex has at most one), which makes next = cur[lower] + cur[upper] (an
/// absent upper neighbour adds nothing, where the one-pass blur adds the zero row: the
/// same, values here never being -0), then next = cur + next / 2.
#[inline(always)]
fn blur_axis_lean<const W: usize>(cur: &[[f32; W]], next: &mut [[f32; W]], lower: &[u32]) {
    for (dst, &lo) in next[1..].iter_mut().zip(lower) {
        *dst = cur[lo as usize];
    }
    for (me, &lo) in cur[1..].iter().zip(lower) {
        if lo != 0 {
            let (mut t, me) = (next[lo as usize], *me);
            for l in 0..W {
                t[l] += me[l];
            }
            next[lo as usize] = t;
        }
    }
    for (dst, me) in next[1..].iter_mut().zip(&cur[1..]) {
        let (mut t, me) = (*dst, *me);
        for l in 0..W {
            t[l] = me[l] + 0.5 * t[l];
        }
        *dst = t;
    }
}

/// The `k` values at `at` in `W` lanes, those past `k` zero. Where `W` lanes fit, they are
/// read whole (a vector load; a copy of `k` values would be stored lane by lane and read
/// back in one, which stalls on store forwarding).
#[inline(always)]
fn load_row<const W: usize>(src: &[f32], at: usize, k: usize) -> [f32; W] {
    let mut r = [0f32; W];
    match src.get(at..at + W) {
        Some(whole) => {
            for l in 0..W {
                r[l] = if l < k { whole[l] } else { 0.0 };
            }
        }
        None => r[..k].copy_from_slice(&src[at..at + k]),
    }
    r
}

/// Writes the first `k` of `v`'s lanes at `at`. Where `W` lanes fit, they are written whole,
/// the lanes past `k` with what `dst` held there.
#[inline(always)]
fn store_row<const W: usize>(dst: &mut [f32], at: usize, k: usize, v: &[f32; W]) {
    match dst.get_mut(at..at + W) {
        Some(whole) => {
            let mut r = [0f32; W];
            for l in 0..W {
                r[l] = if l < k { v[l] } else { whole[l] };
            }
            whole.copy_from_slice(&r);
        }
        None => dst[at..at + k].copy_from_slice(&v[..k]),
    }
}

/// One channel group's operands.
struct Group<'a> {
    input: &'a [f32],
    stride: usize,
    c0: usize,
    width: usize,
    pre: &'a [f32],
    post: &'a [f32],
    /// `out = -base + ...` instead of `out += ...`.
    base: Option<&'a [f32]>,
}

impl Lattice {
    /// The lattice of `pixels` features of `d` dimensions each, `features[i * d..(i+1) * d]`,
    /// already divided by the kernel's widths.
    pub(crate) fn new(features: &[f32], d: usize) -> Result<Self, CrfError> {
        Self::with_form(features, d, None)
    }

    /// As [`Lattice::new`], lean or not as `lean` says (by the vertex count when `None`).
    pub(crate) fn with_form(
        features: &[f32],
        d: usize,
        lean: Option<bool>,
    ) -> Result<Self, CrfError> {
        if d == 0 || d > MAX_DIM || !features.len().is_multiple_of(d) {
            return Err(CrfError::Internal(format!(
                "lattice of {d}-dimensional features from {} values",
                features.len()
            )));
        }
        if let Some(v) = features
            .iter()
            .find(|v| !v.is_finite() || v.abs() > MAX_COORD)
        {
            return Err(CrfError::FeatureRange {
                value: *v,
                limit: MAX_COORD,
            });
        }
        // Fixed-size keys (and loops the compiler unrolls) per dimension.
        Ok(match d {
            1 => Self::build::<1, 2>(features, lean),
            2 => Self::build::<2, 3>(features, lean),
            3 => Self::build::<3, 4>(features, lean),
            4 => Self::build::<4, 5>(features, lean),
            _ => Self::build::<5, 6>(features, lean),
        })
    }

    /// `DP1` is `D + 1`.
    fn build<const D: usize, const DP1: usize>(features: &[f32], lean: Option<bool>) -> Self {
        let d = D;
        let pixels = features.len() / d;
        let dp1 = DP1;
        // E's diagonal scaling (Adams et al. p. 5) times the expected standard deviation of
        // the [1/2 1 1/2]^(d+1) blur (p. 6), so that unit-width features get a unit Gaussian.
        let inv_std = (2.0f32 / 3.0).sqrt() * dp1 as f32;
        let mut scale = [0f32; D];
        for (i, s) in scale.iter_mut().enumerate() {
            *s = inv_std / (((i + 1) * (i + 2)) as f32).sqrt();
        }
        // canonical[r][j]: the remainder-r vertex of the canonical simplex, coordinate j.
        let mut canonical = [[0i32; DP1]; DP1];
        for (r, row) in canonical.iter_mut().enumerate() {
            for (j, c) in row.iter_mut().enumerate() {
                *c = if j + r <= d {
                    r as i32
                } else {
                    r as i32 - dp1 as i32
                };
            }
        }

        let mut table = KeyTable::<D>::new(pixels, pixels * dp1);
        let mut offset = vec![0u32; pixels * dp1];
        let mut weight = vec![0f32; pixels * dp1];
        let mut elevated = [0f32; DP1];
        let mut rem0 = [0f32; DP1];
        // The previous pixel's simplex (its first d remainder-0 coordinates and ranks) and
        // vertex ids: neighbouring pixels often share one, and then skip the table.
        let mut last: Option<([i32; D], [i32; D])> = None;
        let mut ids = [0u32; DP1];
        for ((f, offs), ws) in features
            .chunks_exact(d)
            .zip(offset.chunks_exact_mut(dp1))
            .zip(weight.chunks_exact_mut(dp1))
        {
            // Lift onto the plane sum = 0 of R^(d+1).
            let mut sum_cf = 0f32;
            for j in (1..=d).rev() {
                let cf = f[j - 1] * scale[j - 1];
                elevated[j] = sum_cf - j as f32 * cf;
                sum_cf += cf;
            }
            elevated[0] = sum_cf;
            // The nearest remainder-0 point: each coordinate rounded to a multiple of d+1.
            let mut sum = 0i32;
            for j in 0..dp1 {
                let v = round(elevated[j] / dp1 as f32);
                rem0[j] = v * dp1 as f32;
                sum += v as i32;
            }
            // Rank of each coordinate's residual (0 = largest), ties by index.
            let mut rank = [0i32; DP1];
            for a in 0..d {
                let da = elevated[a] - rem0[a];
                for b in a + 1..dp1 {
                    if da < elevated[b] - rem0[b] {
                        rank[a] += 1;
                    } else {
                        rank[b] += 1;
                    }
                }
            }
            // Off the plane (sum != 0): move the point back, wrapping ranks.
            for j in 0..dp1 {
                rank[j] += sum;
                if rank[j] < 0 {
                    rank[j] += dp1 as i32;
                    rem0[j] += dp1 as f32;
                } else if rank[j] > d as i32 {
                    rank[j] -= dp1 as i32;
                    rem0[j] -= dp1 as f32;
                }
            }
            // Barycentric coordinates (p. 10).
            let mut bary = [0f32; 8];
            for j in 0..dp1 {
                let v = (elevated[j] - rem0[j]) / dp1 as f32;
                let r = (d as i32 - rank[j]) as usize;
                bary[r] += v;
                bary[r + 1] -= v;
            }
            bary[0] += 1.0 + bary[dp1];
            ws.copy_from_slice(&bary[..dp1]);
            // The simplex's vertices.
            let mut base = [0i32; D];
            let mut ranks = [0i32; D];
            for j in 0..d {
                base[j] = rem0[j] as i32;
                ranks[j] = rank[j];
            }
            if !last.is_some_and(|(b, r)| same_key(&b, &base) && same_key(&r, &ranks)) {
                // All d+1 keys hashed and their home slots read before any is resolved,
                // so that the cache misses overlap.
                let mut keys = [[0i32; D]; DP1];
                let mut hashes = [0u64; DP1];
                let mut touch = 0u32;
                for r in 0..dp1 {
                    for j in 0..d {
                        keys[r][j] = base[j] + canonical[r][ranks[j] as usize];
                    }
                    hashes[r] = KeyTable::<D>::hash(&keys[r]);
                    touch ^= table.peek(table.home(hashes[r]));
                }
                std::hint::black_box(touch);
                for r in 0..dp1 {
                    ids[r] = table.insert_hashed(&keys[r], hashes[r]) + 1;
                }
                last = Some((base, ranks));
            }
            offs.copy_from_slice(&ids);
        }

        // Before the neighbour lists, the largest allocation, come.
        table.shrink();
        let vertices = table.len();
        let lean = lean.unwrap_or(vertices > LEAN_VERTICES_PER_PIXEL * pixels);
        let mut lower = vec![0u32; dp1 * vertices];
        let mut upper = vec![0u32; if lean { 0 } else { dp1 * vertices }];
        // The home slots of a vertex's d+1 neighbours are read before any is resolved, so
        // that the misses overlap.
        for v in 0..vertices {
            let k = *table.key(v);
            let mut near = [[0i32; D]; DP1];
            let mut hashes = [0u64; DP1];
            let mut touch = 0u32;
            for j in 0..dp1 {
                // One step down axis j: +d in coordinate j and -1 elsewhere (the implied
                // last coordinate takes the axis when j == d).
                for c in 0..d {
                    near[j][c] = k[c] - 1;
                }
                if j < d {
                    near[j][j] = k[j] + d as i32;
                }
                hashes[j] = KeyTable::<D>::hash(&near[j]);
                touch ^= table.peek(table.home(hashes[j]));
            }
            std::hint::black_box(touch);
            for j in 0..dp1 {
                if let Some(n) = table.find_hashed(&near[j], hashes[j]) {
                    lower[j * vertices + v] = n + 1;
                    if !lean {
                        upper[j * vertices + n as usize] = v as u32 + 1;
                    }
                }
            }
        }
        let reach = (0..dp1 * vertices)
            .filter(|&i| lower[i] != 0)
            .map(|i| (i % vertices + 1).abs_diff(lower[i] as usize))
            .max()
            .unwrap_or(0);
        let table_bytes = table.heap_bytes();
        drop(table);

        Self {
            d,
            pixels,
            vertices,
            offset,
            weight,
            lower,
            upper,
            reach,
            table_bytes,
        }
    }

    /// Pixels (features) the lattice was built from.
    pub(crate) fn pixels(&self) -> usize {
        self.pixels
    }

    /// Lattice points that hold values.
    pub(crate) fn vertices(&self) -> usize {
        self.vertices
    }

    fn lean(&self) -> bool {
        self.upper.is_empty()
    }

    /// Bytes of the key table while the lattice was built: with [`Lattice::heap_bytes`],
    /// the peak of construction.
    pub(crate) fn table_bytes(&self) -> usize {
        self.table_bytes
    }

    /// Bytes the lattice keeps (the key table is dropped once built).
    pub(crate) fn heap_bytes(&self) -> usize {
        (self.offset.capacity()
            + self.weight.capacity()
            + self.lower.capacity()
            + self.upper.capacity())
            * 4
    }

    /// `out[i * stride + c] += post[i] * sum_j k(i, j) pre[j] input[j * stride + c]` for the
    /// first `channels` channels, with k the lattice's Gaussian (the point itself included);
    /// with a `base` (laid out as `out`), `out = -base + post * ...` instead: the mean
    /// field's first message of an iteration, added to -U in the same pass.
    /// Channels go through in groups of up to 16 (fewer for large lattices, see
    /// `BUFFER_FLOATS`), which bounds the value buffers whatever the class count.
    // The filter's operands, each a plain slice the mean-field loop owns.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn filter(
        &self,
        input: &[f32],
        stride: usize,
        channels: usize,
        pre: &[f32],
        post: &[f32],
        base: Option<&[f32]>,
        out: &mut [f32],
        scratch: &mut Scratch,
    ) {
        assert!(
            input.len() >= self.pixels * stride
                && out.len() >= self.pixels * stride
                && pre.len() >= self.pixels
                && post.len() >= self.pixels
                && base.is_none_or(|b| b.len() >= self.pixels * stride)
                && channels <= stride
        );
        let widest = BUFFER_FLOATS / (2 * (self.vertices + 1));
        let mut c = 0;
        while c < channels {
            let left = channels - c;
            // The narrowest group that takes what is left, within the buffer budget.
            let lanes = [4, 8, 12, 16]
                .into_iter()
                .filter(|&w| w <= widest.max(4))
                .find(|&w| w >= left)
                .unwrap_or(if widest >= 16 {
                    16
                } else {
                    (widest / 4).clamp(1, 4) * 4
                });
            let width = left.min(lanes);
            let g = Group {
                input,
                stride,
                c0: c,
                width,
                pre,
                post,
                base,
            };
            match lanes {
                4 => self.dispatch::<4>(&g, out, scratch),
                8 => self.dispatch::<8>(&g, out, scratch),
                12 => self.dispatch::<12>(&g, out, scratch),
                _ => self.dispatch::<16>(&g, out, scratch),
            }
            c += width;
        }
    }

    /// One group on the AVX2 path or the portable one: the same Rust code, compiled twice.
    /// Each lane goes through the same IEEE operations in the same order either way (no
    /// FMA, no reassociation), so both give the same bytes.
    fn dispatch<const W: usize>(&self, g: &Group, out: &mut [f32], scratch: &mut Scratch) {
        #[cfg(target_arch = "x86_64")]
        if scratch.simd {
            // SAFETY: `scratch.simd` is only set when the CPU has AVX2.
            unsafe { self.group_avx2::<W>(g, out, scratch) };
            return;
        }
        self.group::<W>(g, out, scratch);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn group_avx2<const W: usize>(&self, g: &Group, out: &mut [f32], scratch: &mut Scratch) {
        self.group::<W>(g, out, scratch);
    }

    /// One group of `g.width <= W` channels starting at `g.c0`: splat, blur, slice.
    #[inline(always)]
    fn group<const W: usize>(&self, g: &Group, out: &mut [f32], scratch: &mut Scratch) {
        let rows = self.vertices + 1;
        let width = g.width;
        // The splat accumulates into `a`, so it starts at zero; `b` is written in full by
        // the first blur pass except row 0, the zero row (a filling of b would be one more
        // pass over the largest buffer).
        scratch.a.clear();
        scratch.a.resize(rows * W, 0.0);
        scratch.b.resize(rows * W, 0.0);
        let (a, _) = scratch.a.as_chunks_mut::<W>();
        let (b, _) = scratch.b.as_chunks_mut::<W>();
        b[0] = [0.0; W];
        for i in 0..self.pixels {
            let v = load_row::<W>(g.input, i * g.stride + g.c0, width);
            self.splat(i, &v, g.pre[i], a);
        }
        let cur: &[[f32; W]] = if self.blur(a, b) { b } else { a };
        for i in 0..self.pixels {
            let acc = self.slice(i, cur);
            let at = i * g.stride + g.c0;
            let post = g.post[i];
            let mut r = [0f32; W];
            match g.base {
                // -b + p x: the same operations as out = -b, then out += p x.
                Some(base) => {
                    let b = load_row::<W>(base, at, width);
                    for l in 0..W {
                        r[l] = -b[l] + post * acc[l];
                    }
                }
                None => {
                    let o = load_row::<W>(out, at, width);
                    for l in 0..W {
                        r[l] = o[l] + post * acc[l];
                    }
                }
            }
            store_row(out, at, width, &r);
        }
    }

    /// Adds pixel i's value `v` times `pre` to its simplex's vertices in `buf`, with its
    /// barycentric weights.
    #[inline(always)]
    pub(crate) fn splat<const W: usize>(
        &self,
        i: usize,
        v: &[f32; W],
        pre: f32,
        buf: &mut [[f32; W]],
    ) {
        let dp1 = self.d + 1;
        let mut x = [0f32; W];
        for l in 0..W {
            x[l] = v[l] * pre;
        }
        let at = i * dp1..(i + 1) * dp1;
        for (&o, &w) in self.offset[at.clone()].iter().zip(&self.weight[at]) {
            let mut t = buf[o as usize];
            for l in 0..W {
                t[l] += w * x[l];
            }
            buf[o as usize] = t;
        }
    }

    /// Pixel i's value read back from the vertices in `buf`, with its barycentric weights.
    #[inline(always)]
    pub(crate) fn slice<const W: usize>(&self, i: usize, buf: &[[f32; W]]) -> [f32; W] {
        let dp1 = self.d + 1;
        let at = i * dp1..(i + 1) * dp1;
        let mut acc = [0f32; W];
        for (&o, &w) in self.offset[at.clone()].iter().zip(&self.weight[at]) {
            let src = buf[o as usize];
            for l in 0..W {
                acc[l] += w * src[l];
            }
        }
        acc
    }

    /// Blurs the splatted values in `a` along each lattice axis, as densecrf: next = cur +
    /// (cur[lower] + cur[upper]) / 2, passes alternating between the two buffers. Returns
    /// whether the result is in `b` (an odd number of axes); the other buffer is left
    /// holding an intermediate pass. Row 0, the absent neighbour, must be zero in both and
    /// stays so; `b` need not be cleared otherwise (the first pass writes all its rows).
    #[inline(always)]
    pub(crate) fn blur<const W: usize>(&self, a: &mut [[f32; W]], b: &mut [[f32; W]]) -> bool {
        let nv = self.vertices;
        let dp1 = self.d + 1;
        if self.lean() {
            let (mut cur, mut next) = (a, b);
            for j in 0..dp1 {
                blur_axis_lean(cur, next, &self.lower[j * nv..(j + 1) * nv]);
                std::mem::swap(&mut cur, &mut next);
            }
            return dp1 % 2 == 1;
        }
        // The axes' passes run as a wavefront over blocks of vertices, axis j a lag behind
        // axis j - 1, so that a block is blurred along every axis while it is in cache. A
        // lag of the neighbours' farthest reach plus a block keeps each pass's reads to
        // rows the previous pass has written and the next one has not overwritten; the
        // per-vertex operations are those of one pass after another. The Gaussian kernel's
        // neighbours lie about one image row of vertices apart; where they lie far apart
        // (the bilateral kernel), the passes simply follow one another.
        const BLOCK: usize = 64;
        // A whole number of blocks, so that every pass starts at vertex 0.
        let lag = (self.reach + BLOCK).div_ceil(BLOCK) * BLOCK;
        let mut start = 0;
        while start < nv + (dp1 - 1) * lag {
            for j in 0..dp1 {
                let Some(from) = start.checked_sub(j * lag).filter(|&f| f < nv) else {
                    continue;
                };
                let to = (from + BLOCK).min(nv);
                let (cur, next): (&[[f32; W]], &mut [[f32; W]]) =
                    if j % 2 == 0 { (a, b) } else { (b, a) };
                let lower = &self.lower[j * nv + from..j * nv + to];
                let upper = &self.upper[j * nv + from..j * nv + to];
                for (((dst, me), &lo), &up) in next[from + 1..to + 1]
                    .iter_mut()
                    .zip(&cur[from + 1..to + 1])
                    .zip(lower)
                    .zip(upper)
                {
                    // By value: all loads before the store, so the lanes vectorise (the
                    // buffers might alias as far as the compiler knows).
                    let (me, below, above) = (*me, cur[lo as usize], cur[up as usize]);
                    let mut t = [0f32; W];
                    for l in 0..W {
                        t[l] = me[l] + 0.5 * (below[l] + above[l]);
                    }
                    *dst = t;
                }
            }
            start += BLOCK;
        }
        dp1 % 2 == 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The symmetrically normalised filter D^-1/2 K D^-1/2 v, lattice against exact, on a
    /// 24 x 24 grid of 2-D features (the Gaussian kernel at sxy 1.5) and of 5-D ones
    /// (position and a colour ramp), values in [0, 1]: the lattice's shape error is a few
    /// percent of the output's range.
    #[test]
    fn normalised_filter_is_close_to_the_exact_one() {
        let n = 24 * 24;
        let values: Vec<f32> = (0..n).map(|i| ((i * 7919) % 101) as f32 / 100.0).collect();
        for d in [2usize, 5] {
            let f: Vec<f32> = (0..n)
                .flat_map(|i| {
                    let (x, y) = ((i % 24) as f32, (i / 24) as f32);
                    let colour = [x * 4.0 / 13.0, y * 2.0 / 13.0, (x + y) / 13.0];
                    let mut v = vec![x / 1.5, y / 1.5];
                    v.extend(&colour[..d - 2]);
                    v
                })
                .collect();
            let lat = Lattice::new(&f, d).unwrap();
            let ones = vec![1f32; n];
            let mut scratch = Scratch::default();
            let mut sums = vec![0f32; n];
            lat.filter(&ones, 1, 1, &ones, &ones, None, &mut sums, &mut scratch);
            let norm: Vec<f32> = sums.iter().map(|s| 1.0 / s.sqrt()).collect();
            let mut got = vec![0f32; n];
            lat.filter(&values, 1, 1, &norm, &norm, None, &mut got, &mut scratch);
            // Exact.
            let k = |i: usize, j: usize| {
                let d2: f32 = (0..d).map(|c| (f[i * d + c] - f[j * d + c]).powi(2)).sum();
                (-0.5 * d2 as f64).exp()
            };
            let rows: Vec<f64> = (0..n).map(|i| (0..n).map(|j| k(i, j)).sum()).collect();
            let mut worst = 0f64;
            for i in 0..n {
                let want: f64 = (0..n)
                    .map(|j| k(i, j) * values[j] as f64 / (rows[i] * rows[j]).sqrt())
                    .sum();
                worst = worst.max((got[i] as f64 - want).abs());
            }
            eprintln!("d = {d}: max |lattice - exact| = {worst:.4}");
            // Measured: 0.025 (d = 2) and 0.051 (d = 5).
            assert!(worst < 0.08, "d = {d}: {worst}");
        }
    }

    #[test]
    fn rejects_features_beyond_exact_f32() {
        assert!(matches!(
            Lattice::new(&[1.0, f32::INFINITY], 2),
            Err(CrfError::FeatureRange { .. })
        ));
        assert!(Lattice::new(&[1.0, 2.0, 3.0], 2).is_err());
    }
}
