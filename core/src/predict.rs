//! How evaluation turns a feature map into per-pixel cluster ids, as the release does:
//! scores at the feature map's resolution, upsampled bilinearly to the image, then argmax.
//! The soft form of the same scores ([`unary`]) gives per-pixel cluster probabilities, the
//! dense CRF's input (`crate::crf`).

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::loss::classify;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Predictor {
    /// argmax 2<z, mu> - |mu|^2 with fresh k-means centroids (the release's final evaluation).
    NearestCentroid,
    /// argmax <z, mu> with the epoch's training centroids of view `view` (the release's
    /// in-training evaluation, which it runs for both views; needs the `centroids` input).
    DotProduct,
}

/// Scores N x K x h x w of features `z` (N x D x h x w) against K x D centroids.
pub fn scores(z: &Tensor, centroids: &Tensor, predictor: Predictor) -> Tensor {
    let dots = classify(z, centroids);
    match predictor {
        Predictor::NearestCentroid => {
            let norms = centroids.pow_tensor_scalar(2).sum_dim_intlist(
                [1i64].as_slice(),
                false,
                Kind::Float,
            );
            dots * 2.0 - norms.view([1, -1, 1, 1])
        }
        Predictor::DotProduct => dots,
    }
}

impl Predictor {
    /// The factor that turns this predictor's scores into cosine similarities (up to a
    /// per-pixel constant, which a softmax ignores) when features and centroids have unit
    /// norm: 1 for <z, mu>; 1/2 for 2<z, mu> - |mu|^2 = 2 cos - 1.
    pub fn soft_scale(self) -> f64 {
        match self {
            Predictor::NearestCentroid => 0.5,
            Predictor::DotProduct => 1.0,
        }
    }
}

/// [`scores`] upsampled bilinearly (`align_corners = false`, as released) to `size`:
/// N x K x size x size.
pub fn upsampled_scores(z: &Tensor, centroids: &Tensor, predictor: Predictor, size: i64) -> Tensor {
    scores(z, centroids, predictor).upsample_bilinear2d([size, size], false, None, None)
}

/// Cluster ids N x size x size (i64, on `z`'s device): [`upsampled_scores`], then argmax
/// over clusters.
pub fn predict(z: &Tensor, centroids: &Tensor, predictor: Predictor, size: i64) -> Tensor {
    upsampled_scores(z, centroids, predictor, size).argmax(1, false)
}

/// The smallest probability the soft form gives, as pydensecrf's `unary_from_softmax`
/// clips (STEGO's CRF input): a cluster is never ruled out outright.
pub const MIN_PROB: f64 = 1e-5;

/// The soft form of the predictors, as CRF unary energies: -log p, pixel-major N x H x W x K
/// (f32, contiguous, on the scores' device), with p = softmax(soft_scale * scores /
/// `temperature`) over clusters, clipped below at [`MIN_PROB`]. For unit-norm centroids
/// this is softmax(cos / temperature) for both predictors (STEGO's cluster probe:
/// log_softmax(2 cos), temperature 1/2), and its argmax is the hard prediction.
/// `upsampled` is [`upsampled_scores`]; `temperature` must be positive.
pub fn unary(upsampled: &Tensor, predictor: Predictor, temperature: f64) -> Tensor {
    let logits = upsampled.to_kind(Kind::Float) * (predictor.soft_scale() / temperature);
    logits
        .log_softmax(1, Kind::Float)
        .neg()
        .clamp_max(-MIN_PROB.ln())
        .permute([0, 2, 3, 1])
        .contiguous()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The soft form ranks clusters as the hard predictor does, and is cos / T for unit
    /// centroids whichever the predictor.
    #[test]
    fn soft_form_agrees_with_the_hard_prediction() {
        tch::manual_seed(0);
        let z = Tensor::randn([2, 8, 3, 4], (Kind::Float, tch::Device::Cpu));
        let z = &z / z.norm_scalaropt_dim(2.0, [1i64].as_slice(), true);
        let c = Tensor::randn([5, 8], (Kind::Float, tch::Device::Cpu));
        let c = &c / c.norm_scalaropt_dim(2.0, [1i64].as_slice(), true);
        let mut energies = Vec::new();
        for p in [Predictor::NearestCentroid, Predictor::DotProduct] {
            let up = upsampled_scores(&z, &c, p, 6);
            let u = unary(&up, p, 0.5);
            assert_eq!(u.size(), [2, 6, 6, 5]);
            let hard = predict(&z, &c, p, 6);
            assert!(u.argmin(3, false).equal(&hard), "{p:?}");
            let probs = u
                .neg()
                .exp()
                .sum_dim_intlist([3i64].as_slice(), false, Kind::Float);
            assert!((probs - 1.0).abs().max().double_value(&[]) < 1e-5);
            energies.push(u);
        }
        let diff = (&energies[0] - &energies[1]).abs().max().double_value(&[]);
        assert!(diff < 1e-4, "{diff}");
    }
}
