//! The two training views of one image, in image space (u8), composed from
//! the photometric and geometric transforms.
//!
//! - view 1: `P1` on the base image, then the shared crop + resize to
//!   `out` + flip (PIL semantics, [`crop_resize_flip`]);
//! - view 2: `P2` on the base image, then a plain resize to `out`; the crop
//!   and flip of view 2 happen later, on its feature map
//!   ([`super::equivariance`]).
//!
//! For the release's exact view-1 path (crop + resize on the normalised
//! tensor, no antialiasing), use [`view1_tensor_release`].

use image::RgbImage;
use tch::Tensor;

use super::geometric::{crop_resize_flip, resize_bilinear, to_tensor_normalised};
use super::{equivariance, photometric, Result};
use crate::augment_params::ImageAug;

/// `[view 1, view 2]` as `out x out` images from a square base image.
pub fn train_views(base: &RgbImage, aug: &ImageAug, out: u32) -> Result<[RgbImage; 2]> {
    let v1 = photometric::apply(base, &aug.views[0]);
    let v1 = crop_resize_flip(&v1, &aug.geometric, out)?;
    let v2 = photometric::apply(base, &aug.views[1]);
    let v2 = resize_bilinear(&v2, out, out)?;
    Ok([v1, v2])
}

/// View 1 exactly as the release computes it: `P1`, `ToTensor` +
/// `Normalize` at the base size, then G to `out x out` on the tensor
/// (`F.interpolate`, bilinear, no antialiasing). Returns `3 x out x out`.
pub fn view1_tensor_release(base: &RgbImage, aug: &ImageAug, out: u32) -> Result<Tensor> {
    let v1 = photometric::apply(base, &aug.views[0]);
    let t = to_tensor_normalised(&v1).unsqueeze(0);
    let out = i64::from(out);
    let g = equivariance::apply_to_size(&t, &[aug.geometric], out, out)?;
    Ok(g.squeeze_dim(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::augment_params::{draw, AugmentConfig};

    #[test]
    fn views_have_the_requested_size() {
        let base = RgbImage::from_fn(64, 64, |x, y| image::Rgb([x as u8 * 4, y as u8 * 4, 99]));
        let cfg = AugmentConfig::default();
        for i in 0..8 {
            let aug = draw(&cfg, 1, 0, i);
            let [a, b] = train_views(&base, &aug, 32).unwrap();
            assert_eq!((a.dimensions(), b.dimensions()), ((32, 32), (32, 32)));
            let t = view1_tensor_release(&base, &aug, 32).unwrap();
            assert_eq!(t.size(), [3, 32, 32]);
        }
        assert!(train_views(&base, &draw(&cfg, 1, 0, 0), 0).is_err());
    }
}
