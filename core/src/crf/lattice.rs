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

use super::hash::KeyTable;
use super::CrfError;

/// The widest feature a lattice takes (the CRF uses 2 and 5).
pub(crate) const MAX_DIM: usize = 5;

/// Lattice coordinates must stay exact in f32 and fit the keys: features (already divided
/// by their widths) up to this magnitude are accepted.
const MAX_COORD: f32 = (1 << 20) as f32;

/// The two value buffers may hold this many floats: a lattice filters as many channels at a
/// time (4 to 16) as fit, so a 320 x 320 image of pure colour noise (600,000 bilateral
/// vertices; a natural image has about 10,000) goes 4 channels at a time and a natural
/// image's K = 11 in one pass.
const BUFFER_FLOATS: usize = 4 << 20;

/// The filtering structure of one image's features.
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
    /// that lattice point holds no value). The upper one is not stored: v is the lower
    /// neighbour of its upper one, so the blur adds each pair both ways.
    lower: Vec<u32>,
    /// Bytes the key table held at the end of construction (dropped since).
    table_bytes: usize,
}

/// Value buffers reused across filterings (two rows of 4 or 8 lanes per vertex, plus the
/// zero row): the one allocation of the mean-field loop.
#[derive(Default)]
pub(crate) struct Scratch {
    a: Vec<f32>,
    b: Vec<f32>,
}

impl Scratch {
    pub(crate) fn heap_bytes(&self) -> usize {
        (self.a.capacity() + self.b.capacity()) * 4
    }
}

impl Lattice {
    /// The lattice of `pixels` features of `d` dimensions each, `features[i * d..(i+1) * d]`,
    /// already divided by the kernel's widths.
    pub(crate) fn new(features: &[f32], d: usize) -> Result<Self, CrfError> {
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
            1 => Self::build::<1>(features),
            2 => Self::build::<2>(features),
            3 => Self::build::<3>(features),
            4 => Self::build::<4>(features),
            _ => Self::build::<5>(features),
        })
    }

    fn build<const D: usize>(features: &[f32]) -> Self {
        let d = D;
        let pixels = features.len() / d;
        let dp1 = d + 1;
        // E's diagonal scaling (Adams et al. p. 5) times the expected standard deviation of
        // the [1/2 1 1/2]^(d+1) blur (p. 6), so that unit-width features get a unit Gaussian.
        let inv_std = (2.0f32 / 3.0).sqrt() * dp1 as f32;
        let mut scale = [0f32; MAX_DIM];
        for (i, s) in scale.iter_mut().enumerate().take(d) {
            *s = inv_std / (((i + 1) * (i + 2)) as f32).sqrt();
        }
        // canonical[r][j]: the remainder-r vertex of the canonical simplex, coordinate j.
        let mut canonical = [[0i32; MAX_DIM + 1]; MAX_DIM + 1];
        for (r, row) in canonical.iter_mut().enumerate().take(dp1) {
            for (j, c) in row.iter_mut().enumerate().take(dp1) {
                *c = if j + r <= d {
                    r as i32
                } else {
                    r as i32 - dp1 as i32
                };
            }
        }

        let mut table = KeyTable::<D>::new(pixels);
        let mut offset = vec![0u32; pixels * dp1];
        let mut weight = vec![0f32; pixels * dp1];
        let mut elevated = [0f32; MAX_DIM + 1];
        let mut rem0 = [0f32; MAX_DIM + 1];
        let mut rank = [0i32; MAX_DIM + 1];
        let mut bary = [0f32; MAX_DIM + 2];
        let mut key = [0i32; D];
        for (i, f) in features.chunks_exact(d).enumerate() {
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
                let v = (elevated[j] / dp1 as f32).round();
                rem0[j] = v * dp1 as f32;
                sum += v as i32;
            }
            // Rank of each coordinate's residual (0 = largest), ties by index.
            rank[..dp1].fill(0);
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
            bary[..d + 2].fill(0.0);
            for j in 0..dp1 {
                let v = (elevated[j] - rem0[j]) / dp1 as f32;
                let r = (d as i32 - rank[j]) as usize;
                bary[r] += v;
                bary[r + 1] -= v;
            }
            bary[0] += 1.0 + bary[d + 1];
            // The simplex's vertices.
            for r in 0..dp1 {
                for j in 0..d {
                    key[j] = rem0[j] as i32 + canonical[r][rank[j] as usize];
                }
                offset[i * dp1 + r] = table.insert(&key) + 1;
                weight[i * dp1 + r] = bary[r];
            }
        }

        // Before the neighbour lists, the largest allocation, come.
        table.shrink();
        let vertices = table.len();
        let mut lower = vec![0u32; dp1 * vertices];
        let mut n1 = [0i32; D];
        for j in 0..dp1 {
            for v in 0..vertices {
                let k = table.key(v);
                // One step down axis j: +d in coordinate j and -1 elsewhere (the implied
                // last coordinate takes the axis when j == d).
                for c in 0..d {
                    n1[c] = k[c] - 1;
                }
                if j < d {
                    n1[j] = k[j] + d as i32;
                }
                lower[j * vertices + v] = table.find(&n1).map_or(0, |v| v + 1);
            }
        }
        Self {
            d,
            pixels,
            vertices,
            offset,
            weight,
            lower,
            table_bytes: table.heap_bytes(),
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

    /// Bytes of the key table while the lattice was built: with [`Lattice::heap_bytes`],
    /// the peak of construction.
    pub(crate) fn table_bytes(&self) -> usize {
        self.table_bytes
    }

    /// Bytes the lattice keeps (the key table is dropped once built).
    pub(crate) fn heap_bytes(&self) -> usize {
        (self.offset.capacity() + self.weight.capacity() + self.lower.capacity()) * 4
    }

    /// `out[i * stride + c] += post[i] * sum_j k(i, j) pre[j] input[j * stride + c]` for the
    /// first `channels` channels, with k the lattice's Gaussian (the point itself included).
    /// Channels go through in groups of up to 16 (fewer for large lattices, see
    /// `BUFFER_FLOATS`), which bounds the value buffers whatever the class count.
    // The filter's operands, each a plain slice the mean-field loop owns.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn filter_add(
        &self,
        input: &[f32],
        stride: usize,
        channels: usize,
        pre: &[f32],
        post: &[f32],
        out: &mut [f32],
        scratch: &mut Scratch,
    ) {
        debug_assert!(input.len() >= self.pixels * stride && out.len() >= self.pixels * stride);
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
            match lanes {
                4 => self.filter_group::<4>(input, stride, c, width, pre, post, out, scratch),
                8 => self.filter_group::<8>(input, stride, c, width, pre, post, out, scratch),
                12 => self.filter_group::<12>(input, stride, c, width, pre, post, out, scratch),
                _ => self.filter_group::<16>(input, stride, c, width, pre, post, out, scratch),
            }
            c += width;
        }
    }

    /// One group of `width <= W` channels starting at `c0`.
    #[allow(clippy::too_many_arguments)]
    fn filter_group<const W: usize>(
        &self,
        input: &[f32],
        stride: usize,
        c0: usize,
        width: usize,
        pre: &[f32],
        post: &[f32],
        out: &mut [f32],
        scratch: &mut Scratch,
    ) {
        let dp1 = self.d + 1;
        let rows = self.vertices + 1;
        for buf in [&mut scratch.a, &mut scratch.b] {
            buf.clear();
            buf.resize(rows * W, 0.0);
        }
        let (a, _) = scratch.a.as_chunks_mut::<W>();
        let (b, _) = scratch.b.as_chunks_mut::<W>();

        // Splat.
        for i in 0..self.pixels {
            let mut v = [0f32; W];
            let src = &input[i * stride + c0..i * stride + c0 + width];
            for (x, &s) in v.iter_mut().zip(src) {
                *x = s * pre[i];
            }
            let offs = &self.offset[i * dp1..(i + 1) * dp1];
            let ws = &self.weight[i * dp1..(i + 1) * dp1];
            for (&o, &w) in offs.iter().zip(ws) {
                let dst = &mut a[o as usize];
                for l in 0..W {
                    dst[l] += w * v[l];
                }
            }
        }
        // Blur along each lattice axis: next = cur + (cur[lower] + cur[upper]) / 2, added
        // pair by pair (each vertex with its lower neighbour, both ways). Row 0 is where
        // absent neighbours point: it takes junk and is zeroed after each axis.
        let (mut cur, mut next) = (a, b);
        for j in 0..dp1 {
            next.copy_from_slice(cur);
            let lower = &self.lower[j * self.vertices..(j + 1) * self.vertices];
            for (v, &n) in lower.iter().enumerate() {
                let (me, below) = (cur[v + 1], cur[n as usize]);
                let dst = &mut next[v + 1];
                for l in 0..W {
                    dst[l] += 0.5 * below[l];
                }
                let dst = &mut next[n as usize];
                for l in 0..W {
                    dst[l] += 0.5 * me[l];
                }
            }
            next[0] = [0.0; W];
            std::mem::swap(&mut cur, &mut next);
        }
        // Slice.
        for i in 0..self.pixels {
            let mut acc = [0f32; W];
            let offs = &self.offset[i * dp1..(i + 1) * dp1];
            let ws = &self.weight[i * dp1..(i + 1) * dp1];
            for (&o, &w) in offs.iter().zip(ws) {
                let src = &cur[o as usize];
                for l in 0..W {
                    acc[l] += w * src[l];
                }
            }
            let dst = &mut out[i * stride + c0..i * stride + c0 + width];
            for (d, &x) in dst.iter_mut().zip(&acc) {
                *d += post[i] * x;
            }
        }
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
            lat.filter_add(&ones, 1, 1, &ones, &ones, &mut sums, &mut scratch);
            let norm: Vec<f32> = sums.iter().map(|s| 1.0 / s.sqrt()).collect();
            let mut got = vec![0f32; n];
            lat.filter_add(&values, 1, 1, &norm, &norm, &mut got, &mut scratch);
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
