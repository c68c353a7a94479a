//! Geometric transforms on u8 RGB images with Pillow's semantics, and the
//! conversion to a normalised tensor.
//!
//! Resizes are Pillow's `BILINEAR` (`Image.resize`), which widens its
//! triangle filter when shrinking (antialiasing); this is what torchvision's
//! `TF.resize` on a PIL image does. Bit-exact with Pillow 13 (see the
//! `resample` module), crops and flips trivially exact.
//!
//! Note on the release: it applies the random crop + flip of view 1 not to
//! the PIL image but to the normalised 640x640 tensor batch, with
//! `F.interpolate(..., 320, mode="bilinear", align_corners=False)` (no
//! antialiasing): that is [`super::equivariance::apply_to_size`]. The
//! PIL-style [`crop_resize_flip`] here is the image-space equivalent.

use image::RgbImage;
use tch::Tensor;

use super::resample::{self, Rect};
use super::{Result, TransformError};
use crate::augment_params::Geometric;

/// ImageNet channel means used by torchvision's `Normalize` in the release.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

fn non_empty(what: &'static str, width: u32, height: u32) -> Result<()> {
    if width == 0 || height == 0 {
        return Err(TransformError::Empty {
            what,
            width,
            height,
        });
    }
    Ok(())
}

/// `img.resize((width, height), Image.BILINEAR)`.
pub fn resize_bilinear(img: &RgbImage, width: u32, height: u32) -> Result<RgbImage> {
    non_empty("resize input", img.width(), img.height())?;
    non_empty("resize output", width, height)?;
    let src = Rect {
        x0: 0,
        y0: 0,
        w: img.width(),
        h: img.height(),
    };
    let win = Rect {
        x0: 0,
        y0: 0,
        w: width,
        h: height,
    };
    Ok(resample::resize(img, src, width, height, win))
}

/// Output size of torchvision's `TF.resize(img, side)`: the shorter side
/// becomes `side`, the longer `int(side * long / short)` (Python float maths).
pub fn shorter_side_size(width: u32, height: u32, side: u32) -> (u32, u32) {
    let long_of = |long: u32, short: u32| {
        (f64::from(side) * f64::from(long) / f64::from(short.max(1))) as u32
    };
    if width <= height {
        (side, long_of(height, width))
    } else {
        (long_of(width, height), side)
    }
}

/// The release's `BaseTransform(side)`: `TF.resize(img, side, BILINEAR)`, then
/// a `side x side` crop at `left = int(round((w - side) / 2))` (Python's
/// round-half-to-even), `top` likewise. Only the kept pixels are computed.
pub fn base_transform(img: &RgbImage, side: u32) -> Result<RgbImage> {
    non_empty("base_transform input", img.width(), img.height())?;
    non_empty("base_transform output", side, side)?;
    let (rw, rh) = shorter_side_size(img.width(), img.height(), side);
    // The long side is >= side by construction, up to float rounding.
    let offset = |full: u32| {
        let d = f64::from(full.saturating_sub(side)) / 2.0;
        d.round_ties_even() as u32
    };
    let win = Rect {
        x0: offset(rw),
        y0: offset(rh),
        w: side.min(rw),
        h: side.min(rh),
    };
    let src = Rect {
        x0: 0,
        y0: 0,
        w: img.width(),
        h: img.height(),
    };
    Ok(resample::resize(img, src, rw, rh, win))
}

/// `TF.hflip` on an image.
pub fn hflip(img: &RgbImage) -> RgbImage {
    image::imageops::flip_horizontal(img)
}

/// The shared geometric transform on an image, as PIL would do it: the crop
/// `g.crop_box` (computed per axis, so a non-square image gets the same
/// relative box on each axis; on a square image both axes share one box),
/// `crop(...).resize((out, out), BILINEAR)`, then a horizontal flip if
/// `g.flip`.
pub fn crop_resize_flip(img: &RgbImage, g: &Geometric, out: u32) -> Result<RgbImage> {
    non_empty("crop_resize_flip input", img.width(), img.height())?;
    non_empty("crop_resize_flip output", out, out)?;
    let (x0, _, w) = g.crop_box(img.width());
    let (_, y0, h) = g.crop_box(img.height());
    let src = Rect { x0, y0, w, h };
    let win = Rect {
        x0: 0,
        y0: 0,
        w: out,
        h: out,
    };
    let resized = resample::resize(img, src, out, out, win);
    Ok(if g.flip { hflip(&resized) } else { resized })
}

/// torchvision `ToTensor` + `Normalize(IMAGENET_MEAN, IMAGENET_STD)`: a
/// `3 x H x W` f32 CPU tensor of `(v / 255 - mean) / std`, computed in f32
/// in the same order as torchvision (so bit-identical to it).
pub fn to_tensor_normalised(img: &RgbImage) -> Tensor {
    // Each output depends only on (channel, value): a 3 x 256 table of the
    // exact f32 results replaces two divisions per value.
    let lut: [[f32; 256]; 3] = std::array::from_fn(|c| {
        std::array::from_fn(|v| (v as f32 / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c])
    });
    let (w, h) = img.dimensions();
    let plane = w as usize * h as usize;
    let mut data = vec![0f32; 3 * plane];
    let (r, rest) = data.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for (i, p) in img.as_raw().chunks_exact(3).enumerate() {
        r[i] = lut[0][usize::from(p[0])];
        g[i] = lut[1][usize::from(p[1])];
        b[i] = lut[2][usize::from(p[2])];
    }
    Tensor::from_slice(&data).view([3, i64::from(h), i64::from(w)])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x * 255 / w.max(2)) as u8, (y * 255 / h.max(2)) as u8, 128])
        })
    }

    fn geo(crop_frac: f32, u_x: f32, u_y: f32, flip: bool) -> Geometric {
        Geometric {
            crop_frac,
            u_x,
            u_y,
            flip,
        }
    }

    #[test]
    fn shorter_side_like_torchvision() {
        assert_eq!(shorter_side_size(960, 720, 640), (853, 640));
        assert_eq!(shorter_side_size(720, 960, 640), (640, 853));
        assert_eq!(shorter_side_size(500, 500, 320), (320, 320));
    }

    #[test]
    fn base_transform_is_resize_then_centre_crop() {
        let img = gradient(96, 72);
        let out = base_transform(&img, 64).unwrap();
        assert_eq!(out.dimensions(), (64, 64));
        let full = resize_bilinear(&img, 85, 64).unwrap();
        // (85 - 64) / 2 = 10.5 rounds to even: 10.
        let want = image::imageops::crop_imm(&full, 10, 0, 64, 64).to_image();
        assert_eq!(out, want);
    }

    #[test]
    fn crop_resize_flip_full_extent_and_flip() {
        let img = gradient(40, 40);
        let id = crop_resize_flip(&img, &geo(1.0, 0.3, 0.9, false), 40).unwrap();
        assert_eq!(id, img);
        let f = crop_resize_flip(&img, &geo(1.0, 0.0, 0.0, true), 40).unwrap();
        assert_eq!(f, hflip(&img));
        assert_eq!(hflip(&hflip(&img)), img);
        // A crop at exactly the output size is a plain crop.
        let c = crop_resize_flip(&img, &geo(0.5, 1.0, 0.0, false), 20).unwrap();
        assert_eq!(c, image::imageops::crop_imm(&img, 20, 0, 20, 20).to_image());
    }

    #[test]
    fn empty_sizes_are_errors() {
        let img = gradient(8, 8);
        assert!(crop_resize_flip(&img, &geo(0.5, 0.0, 0.0, false), 0).is_err());
        assert!(crop_resize_flip(&RgbImage::new(0, 0), &geo(0.5, 0.0, 0.0, false), 4).is_err());
        assert!(resize_bilinear(&img, 0, 3).is_err());
        assert!(base_transform(&RgbImage::new(5, 0), 4).is_err());
        // NaN parameters fall back to the full image (crop_box's rule).
        let n = crop_resize_flip(&img, &geo(f32::NAN, f32::NAN, 0.0, false), 8).unwrap();
        assert_eq!(n, img);
    }

    #[test]
    fn tensor_normalisation() {
        let img = RgbImage::from_fn(3, 2, |x, y| image::Rgb([x as u8 * 100, y as u8 * 255, 0]));
        let t = to_tensor_normalised(&img);
        assert_eq!(t.size(), [3, 2, 3]);
        assert_eq!(t.kind(), tch::Kind::Float);
        let v = t.double_value(&[0, 1, 2]);
        let want = (200.0f32 / 255.0 - 0.485) / 0.229;
        assert_eq!(v as f32, want);
        let g = t.double_value(&[1, 1, 0]);
        assert_eq!(g as f32, (1.0 - 0.456) / 0.224);
        let e = to_tensor_normalised(&RgbImage::new(0, 0));
        assert_eq!(e.size(), [3, 0, 0]);
    }
}
