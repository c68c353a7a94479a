//! Test helper: the same mean field as `meanfield`, with each kernel summed exactly over
//! all pixel pairs (O(N^2), f64), the reference the lattice approximates.

use super::{CrfConfig, CrfImage};

/// exp(-|f_i - f_j|^2 / 2) for all pairs, N x N.
fn gram(features: &[Vec<f64>]) -> Vec<f64> {
    let n = features.len();
    let mut k = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..n {
            let d2: f64 = features[i]
                .iter()
                .zip(&features[j])
                .map(|(a, b)| (a - b) * (a - b))
                .sum();
            k[i * n + j] = (-0.5 * d2).exp();
        }
    }
    k
}

/// The marginals (H x W x K) after `cfg.iterations` exact mean-field updates.
pub(super) fn exact_marginals(cfg: &CrfConfig, img: &CrfImage) -> Vec<f32> {
    let (w, h, k) = (img.width, img.height, img.classes);
    let n = w * h;
    let mut kernels = Vec::new();
    let g = cfg.gaussian;
    let b = cfg.bilateral;
    let pos = |i: usize, s: f32| vec![(i % w) as f64 / s as f64, (i / w) as f64 / s as f64];
    if g.compat > 0.0 {
        let f: Vec<Vec<f64>> = (0..n).map(|i| pos(i, g.sxy)).collect();
        kernels.push((gram(&f), g.compat as f64));
    }
    if b.compat > 0.0 {
        let f: Vec<Vec<f64>> = (0..n)
            .map(|i| {
                let mut v = pos(i, b.sxy);
                v.extend((0..3).map(|c| img.rgb[i * 3 + c] as f64 / b.srgb as f64));
                v
            })
            .collect();
        kernels.push((gram(&f), b.compat as f64));
    }
    // Symmetric normalisation, as densecrf: 1 / sqrt(row sums).
    let norms: Vec<Vec<f64>> = kernels
        .iter()
        .map(|(m, _)| {
            (0..n)
                .map(|i| 1.0 / m[i * n..(i + 1) * n].iter().sum::<f64>().sqrt())
                .collect()
        })
        .collect();
    let softmax = |x: &mut [f64]| {
        for row in x.chunks_mut(k) {
            let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = row.iter().map(|v| (v - m).exp()).sum();
            for v in row.iter_mut() {
                *v = (*v - m).exp() / s;
            }
        }
    };
    let mut q: Vec<f64> = img.unary.iter().map(|&u| -(u as f64)).collect();
    softmax(&mut q);
    for _ in 0..cfg.iterations {
        let mut logits: Vec<f64> = img.unary.iter().map(|&u| -(u as f64)).collect();
        for ((m, w), norm) in kernels.iter().zip(&norms) {
            for i in 0..n {
                for j in 0..n {
                    let kij = w * norm[i] * m[i * n + j] * norm[j];
                    for c in 0..k {
                        logits[i * k + c] += kij * q[j * k + c];
                    }
                }
            }
        }
        softmax(&mut logits);
        q = logits;
    }
    q.into_iter().map(|v| v as f32).collect()
}
