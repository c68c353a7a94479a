//! PiCIE's loss (paper eq. 5-7, as released): each view's features are classified by the
//! frozen k-means centroids of both views, L = 1/2 (L_within + L_cross), each a weighted
//! cross-entropy in PyTorch's convention; and the cluster weights of that cross-entropy.

use serde::{Deserialize, Serialize};
use tch::{Reduction, Tensor};

/// Logits of a frozen centroid classifier: plain dot products <z, mu_k>, no bias.
pub fn classify(z: &Tensor, centroids: &Tensor) -> Tensor {
    let (k, d) = (centroids.size()[0], centroids.size()[1]);
    z.conv2d::<Tensor>(
        &centroids.view([k, d, 1, 1]),
        None,
        [1, 1],
        [0, 0],
        [1, 1],
        1,
    )
}

/// Weighted cross-entropy, PyTorch's mean: sum w_y * loss / sum w_y.
pub fn ce(logits: &Tensor, target: &Tensor, weight: &Tensor) -> Tensor {
    logits.cross_entropy_loss::<&Tensor>(target, Some(weight), Reduction::Mean, -100, 0.0)
}

/// PiCIE's loss; returns (L, L_within, L_cross).
pub fn picie_loss(
    z: [&Tensor; 2],
    y: [&Tensor; 2],
    c: [&Tensor; 2],
    w: [&Tensor; 2],
) -> (Tensor, Tensor, Tensor) {
    let within =
        (ce(&classify(z[0], c[0]), y[0], w[0]) + ce(&classify(z[1], c[1]), y[1], w[1])) * 0.5;
    let cross =
        (ce(&classify(z[0], c[1]), y[1], w[1]) + ce(&classify(z[1], c[0]), y[0], w[0])) * 0.5;
    ((&within + &cross) * 0.5, within, cross)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Weighting {
    /// count_k / total: the release's "balanced" loss (weights grow with cluster size).
    AsReleased,
    /// Normalised 1 / count_k: what a user report says was intended.
    Inverse,
    /// Plain cross-entropy.
    None,
}

/// Loss weights from cluster counts (empty clusters weigh 0 under `inverse`).
pub fn cluster_weights(counts: &[u64], how: Weighting) -> Vec<f64> {
    let total: u64 = counts.iter().sum();
    match how {
        Weighting::None => vec![1.0; counts.len()],
        Weighting::AsReleased => counts
            .iter()
            .map(|&c| c as f64 / total.max(1) as f64)
            .collect(),
        Weighting::Inverse => {
            let inv: Vec<f64> = counts
                .iter()
                .map(|&c| if c == 0 { 0.0 } else { 1.0 / c as f64 })
                .collect();
            let s: f64 = inv.iter().sum();
            inv.iter().map(|v| v / s.max(f64::MIN_POSITIVE)).collect()
        }
    }
}
