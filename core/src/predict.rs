//! How evaluation turns a feature map into per-pixel cluster ids, as the release does:
//! scores at the feature map's resolution, upsampled bilinearly to the image, then argmax.
//! The soft form of the same scores ([`unary`]) gives per-pixel cluster probabilities, the
//! dense CRF's input (`crate::crf`). STEGO's evaluation options: the code upsampled before
//! the scores ([`upsampled_code`]) and the code averaged with its flipped crop's
//! ([`flip_averaged`]).

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
    /// argmax cos(z, mu) with a trained cluster probe's centroids (STEGO's cluster probe,
    /// `crate::stego::probe`): code and centroids L2-normalised, so the scores are cosine
    /// similarities whatever their norms.
    ClusterProbe,
}

/// Scores N x K x h x w of features `z` (N x D x h x w) against K x D centroids.
pub fn scores(z: &Tensor, centroids: &Tensor, predictor: Predictor) -> Tensor {
    if predictor == Predictor::ClusterProbe {
        return classify(&unit(z, 1), &unit(centroids, 1));
    }
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
        Predictor::DotProduct | Predictor::ClusterProbe => dots,
    }
}

/// `F.normalize(x, dim)`: x / max(||x||_2, 1e-12) along `dim`.
fn unit(x: &Tensor, dim: i64) -> Tensor {
    x / x
        .norm_scalaropt_dim(2.0, [dim].as_slice(), true)
        .clamp_min(1e-12)
}

/// A feature map N x D x h x w upsampled bilinearly (`align_corners = false`, STEGO's
/// `F.interpolate`) to size x size and L2-normalised again per pixel, so that every
/// predictor sees unit-norm code as at the feature map's resolution: the `upsample: code`
/// order (STEGO's evaluation), where the scores come from the upsampled code.
pub fn upsampled_code(z: &Tensor, size: i64) -> Tensor {
    unit(&z.upsample_bilinear2d([size, size], false, None, None), 1)
}

/// STEGO's flip averaging: the code of a crop `z` and the code `z_flipped` of its
/// horizontally flipped copy, flipped back and averaged (`(code1 + code2.flip(dims=[3])) /
/// 2`), then L2-normalised again per pixel (the network's code is unit-norm; the cluster
/// probe's and dot product's argmax do not depend on the norm, the nearest centroid's does).
pub fn flip_averaged(z: &Tensor, z_flipped: &Tensor) -> Tensor {
    unit(&((z + z_flipped.flip([3])) / 2.0), 1)
}

impl Predictor {
    /// The factor that turns this predictor's scores into cosine similarities (up to a
    /// per-pixel constant, which a softmax ignores) when features and centroids have unit
    /// norm: 1 for <z, mu>; 1/2 for 2<z, mu> - |mu|^2 = 2 cos - 1; 1 for the cluster probe,
    /// whose scores are cosines whatever the norms.
    pub fn soft_scale(self) -> f64 {
        match self {
            Predictor::NearestCentroid => 0.5,
            Predictor::DotProduct | Predictor::ClusterProbe => 1.0,
        }
    }
}

/// [`scores`] upsampled bilinearly (`align_corners = false`, as released) to `size`:
/// N x K x size x size. Scores already at that size (code upsampled before, see
/// [`upsampled_code`]) are returned as they are (the same as upsampling them).
pub fn upsampled_scores(z: &Tensor, centroids: &Tensor, predictor: Predictor, size: i64) -> Tensor {
    upsampled(&scores(z, centroids, predictor), size)
}

/// Per-pixel maps N x K x h x w upsampled bilinearly (`align_corners = false`) to size x
/// size; as they are when already at that size.
pub fn upsampled(maps: &Tensor, size: i64) -> Tensor {
    let s = maps.size();
    if s.len() == 4 && s[2] == size && s[3] == size {
        return maps.shallow_clone();
    }
    maps.upsample_bilinear2d([size, size], false, None, None)
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
/// this is softmax(cos / temperature) for every predictor (STEGO's cluster probe:
/// log_softmax(2 cos), temperature 1/2), and its argmax is the hard prediction.
/// `upsampled` is [`upsampled_scores`]; `temperature` must be positive.
pub fn unary(upsampled: &Tensor, predictor: Predictor, temperature: f64) -> Tensor {
    logits_unary(&(upsampled.to_kind(Kind::Float) * (predictor.soft_scale() / temperature)))
}

/// CRF unary energies of logits N x K x H x W as they are: -log softmax over K, clipped at
/// -log [`MIN_PROB`], pixel-major N x H x W x K (a linear probe's soft form: STEGO's
/// `log_softmax(linear_probe(code))`).
pub fn logits_unary(logits: &Tensor) -> Tensor {
    logits
        .to_kind(Kind::Float)
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

    /// The cluster probe scores cosines whatever the norms: its prediction on unit inputs
    /// is the dot product's, and scaling code or centroids changes nothing.
    #[test]
    fn cluster_probe_scores_are_cosines() {
        tch::manual_seed(1);
        let z = Tensor::randn([2, 8, 3, 4], (Kind::Float, tch::Device::Cpu));
        let c = Tensor::randn([5, 8], (Kind::Float, tch::Device::Cpu));
        let s = scores(&(&z * 3.0), &(&c * 0.2), Predictor::ClusterProbe);
        assert!(s.abs().max().double_value(&[]) <= 1.0 + 1e-6);
        let zu = unit(&z, 1);
        let cu = unit(&c, 1);
        let dots = scores(&zu, &cu, Predictor::DotProduct);
        assert!((&s - &dots).abs().max().double_value(&[]) < 1e-5);
        assert!(predict(&z, &c, Predictor::ClusterProbe, 6).equal(&predict(
            &zu,
            &cu,
            Predictor::DotProduct,
            6
        )));
        assert_eq!(Predictor::ClusterProbe.soft_scale(), 1.0);
    }

    /// Flip averaging of a horizontally symmetric code is the code; upsampled code is unit
    /// norm, and scores at the target size are not upsampled again.
    #[test]
    fn flip_averaging_and_upsampled_code() {
        tch::manual_seed(2);
        let half = Tensor::randn([1, 4, 3, 2], (Kind::Float, tch::Device::Cpu));
        let sym = unit(&Tensor::cat(&[half.shallow_clone(), half.flip([3])], 3), 1);
        // The flipped crop's code of a symmetric crop is the code itself.
        let avg = flip_averaged(&sym, &sym.flip([3]));
        assert!((&avg - &sym).abs().max().double_value(&[]) < 1e-6);
        // A general code: the mean of the code and the flipped-back flipped code.
        let z = unit(
            &Tensor::randn([1, 4, 3, 4], (Kind::Float, tch::Device::Cpu)),
            1,
        );
        let zf = unit(
            &Tensor::randn([1, 4, 3, 4], (Kind::Float, tch::Device::Cpu)),
            1,
        );
        let want = unit(&((&z + zf.flip([3])) / 2.0), 1);
        assert!(flip_averaged(&z, &zf).equal(&want));
        let up = upsampled_code(&z, 8);
        assert_eq!(up.size(), [1, 4, 8, 8]);
        let norms = up.norm_scalaropt_dim(2.0, [1i64].as_slice(), false);
        assert!((norms - 1.0).abs().max().double_value(&[]) < 1e-5);
        let c = Tensor::randn([3, 4], (Kind::Float, tch::Device::Cpu));
        let s = upsampled_scores(&up, &c, Predictor::NearestCentroid, 8);
        assert!(s.equal(&scores(&up, &c, Predictor::NearestCentroid)));
    }
}
