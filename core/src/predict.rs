//! How evaluation turns a feature map into per-pixel cluster ids, as the release does:
//! scores at the feature map's resolution, upsampled bilinearly to the image, then argmax.

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

/// Cluster ids N x size x size (i64, on `z`'s device): [`scores`] upsampled bilinearly
/// (`align_corners = false`, as released) to `size`, then argmax over clusters.
pub fn predict(z: &Tensor, centroids: &Tensor, predictor: Predictor, size: i64) -> Tensor {
    scores(z, centroids, predictor)
        .upsample_bilinear2d([size, size], false, None, None)
        .argmax(1, false)
}
