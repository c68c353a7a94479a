//! The release's photometric transforms on u8 RGB images, with the maths of
//! torchvision's functional ops on PIL images (Pillow 13's `ImageEnhance`,
//! `convert`, `GaussianBlur`).
//!
//! Measured against Pillow 13.0 / torchvision 0.28 (`pil_parity` test, and
//! once on an image holding all 2^24 colours): brightness, contrast,
//! saturation, hue, grayscale and blur are all bit-exact (max difference 0
//! levels). Exactness rests on replaying Pillow's arithmetic at the same
//! float widths; see each function.
//!
//! Pillow 13's grayscale is `L = (19595 R + 38470 G + 7471 B + 2^15) >> 16`
//! (rounded ITU-R 601-2 luma). Some older Pillow versions truncated
//! `(299 R + 587 G + 114 B) / 1000` instead; the two differ by at most one
//! level (in contrast, saturation and grayscale).

use image::RgbImage;

use super::{blur, hsv};
use crate::augment_params::Photometric;

/// Pillow's `L` of one RGB pixel (`rgb2l`, rounded fixed point).
#[inline]
pub fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((u32::from(r) * 19595 + u32::from(g) * 38470 + u32::from(b) * 7471 + 0x8000) >> 16) as u8
}

/// `Image.blend(im1, im2, alpha)` for one channel value: `im1 + alpha *
/// (im2 - im1)` in f32 (Pillow converts alpha to a C float), clipped to
/// [0, 255] and truncated. NaN alpha gives 0 instead of C's undefined cast.
#[inline]
fn blend(v1: u8, v2: u8, alpha: f32) -> u8 {
    let t = f32::from(v1) + alpha * (f32::from(v2) - f32::from(v1));
    t.clamp(0.0, 255.0) as u8
}

/// Table of `blend(base, v, alpha)` over all v: brightness and contrast are
/// per-value maps once their degenerate value is known.
fn blend_lut(base: u8, alpha: f32) -> [u8; 256] {
    std::array::from_fn(|v| blend(base, v as u8, alpha))
}

fn map_lut(img: &RgbImage, lut: &[u8; 256]) -> RgbImage {
    let mut out = img.clone();
    out.iter_mut().for_each(|v| *v = lut[usize::from(*v)]);
    out
}

/// Pillow's `Contrast` degenerate value: `int(mean(L) + 0.5)` over the image
/// after `lut` (identity when composing nothing).
fn contrast_mean(img: &RgbImage, lut: &[u8; 256]) -> u8 {
    let n = u64::from(img.width()) * u64::from(img.height());
    if n == 0 {
        return 0;
    }
    let sum: u64 = img
        .as_raw()
        .chunks_exact(3)
        .map(|p| {
            let [r, g, b] = [p[0], p[1], p[2]].map(|v| lut[usize::from(v)]);
            u64::from(luma(r, g, b))
        })
        .sum();
    // ImageStat's mean is a Python float division.
    (sum as f64 / n as f64 + 0.5) as u8
}

const IDENTITY: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = i as u8;
        i += 1;
    }
    t
};

/// torchvision `adjust_brightness` (PIL): blend with black.
pub fn adjust_brightness(img: &RgbImage, factor: f32) -> RgbImage {
    map_lut(img, &blend_lut(0, factor))
}

/// torchvision `adjust_contrast` (PIL): blend with the rounded mean of the
/// image's grayscale.
pub fn adjust_contrast(img: &RgbImage, factor: f32) -> RgbImage {
    let mean = contrast_mean(img, &IDENTITY);
    map_lut(img, &blend_lut(mean, factor))
}

/// torchvision `adjust_saturation` (PIL `Color`): blend each pixel with its
/// own grayscale value.
pub fn adjust_saturation(img: &RgbImage, factor: f32) -> RgbImage {
    let lut = SaturationLut::new(factor);
    let mut out = img.clone();
    out.pixels_mut().for_each(|p| p.0 = lut.apply(p.0));
    out
}

/// `blend(L, v, factor)` for every (L, v): 64 KiB, built in well under the
/// time of three float blends per pixel of a 640x640 image.
struct SaturationLut(Vec<u8>);

impl SaturationLut {
    fn new(factor: f32) -> Self {
        let t = (0..256 * 256)
            .map(|i| blend((i >> 8) as u8, i as u8, factor))
            .collect();
        Self(t)
    }

    #[inline]
    fn apply(&self, [r, g, b]: [u8; 3]) -> [u8; 3] {
        let row = &self.0[usize::from(luma(r, g, b)) << 8..][..256];
        [
            row[usize::from(r)],
            row[usize::from(g)],
            row[usize::from(b)],
        ]
    }
}

/// The u8 hue offset torchvision adds: `np.int32(hue * 255)` (truncation,
/// on the f64 value) wrapped to u8.
fn hue_shift(hue: f32) -> u8 {
    let s = f64::from(hue) * 255.0;
    // Saturating cast; torchvision rejects |hue| > 0.5 anyway.
    (s as i32) as u8
}

#[inline(always)]
fn shift_hue(t: &hsv::Tables, [r, g, b]: [u8; 3], shift: u8) -> [u8; 3] {
    let (h, s, v) = hsv::rgb_to_hsv_fast(t, r, g, b);
    let (r, g, b) = hsv::hsv_to_rgb_fast(t, h.wrapping_add(shift), s, v);
    [r, g, b]
}

/// torchvision `adjust_hue` (PIL): RGB -> HSV, add `int(hue * 255)` to the
/// u8 hue channel with wraparound, HSV -> RGB. No range check (torchvision
/// raises outside [-0.5, 0.5]; the parameter module never draws such values).
pub fn adjust_hue(img: &RgbImage, hue: f32) -> RgbImage {
    let shift = hue_shift(hue);
    let t = hsv::tables();
    let mut out = img.clone();
    out.pixels_mut()
        .for_each(|p| p.0 = shift_hue(t, p.0, shift));
    out
}

/// torchvision `rgb_to_grayscale(img, 3)` (PIL): `convert("L")` replicated
/// to three channels.
pub fn grayscale(img: &RgbImage) -> RgbImage {
    let mut out = img.clone();
    out.pixels_mut().for_each(|p| {
        let l = luma(p[0], p[1], p[2]);
        p.0 = [l; 3];
    });
    out
}

/// `img.filter(ImageFilter.GaussianBlur(radius))`: Pillow's three-pass
/// extended box blur, bit-exact (see the `blur` module). A zero or
/// non-finite radius returns a copy; a negative one blurs as `|radius|`.
pub fn gaussian_blur(img: &RgbImage, radius: f32) -> RgbImage {
    blur::gaussian_blur(img, radius)
}

/// All photometric transforms of one view, in the release's fixed order:
/// brightness, contrast, saturation, hue, grayscale, blur. `None`/`false`
/// components are skipped. Equal to applying the single-op functions in that
/// order, but fused into two passes over the pixels (plus the blur).
pub fn apply(img: &RgbImage, p: &Photometric) -> RgbImage {
    // Brightness then contrast compose into one per-value table; contrast's
    // mean is taken over the brightened image, as sequential application does.
    let mut lut = IDENTITY;
    if let Some(f) = p.brightness {
        lut = blend_lut(0, f);
    }
    if let Some(f) = p.contrast {
        let c = blend_lut(contrast_mean(img, &lut), f);
        lut = lut.map(|v| c[usize::from(v)]);
    }
    let shift = p.hue.map(|h| (hue_shift(h), hsv::tables()));
    let sat = p.saturation.map(SaturationLut::new);
    let mut out = img.clone();
    out.pixels_mut().for_each(|px| {
        let mut v = px.0.map(|c| lut[usize::from(c)]);
        if let Some(s) = &sat {
            v = s.apply(v);
        }
        if let Some((s, t)) = shift {
            v = shift_hue(t, v, s);
        }
        if p.grayscale {
            v = [luma(v[0], v[1], v[2]); 3];
        }
        px.0 = v;
    });
    match p.blur_radius {
        Some(r) => blur::gaussian_blur(&out, r),
        None => out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_image() -> RgbImage {
        RgbImage::from_fn(31, 17, |x, y| {
            image::Rgb([
                (x * 8 + y) as u8,
                (255 - y * 15) as u8,
                ((x * y * 13) % 256) as u8,
            ])
        })
    }

    #[test]
    fn luma_matches_pillow_examples() {
        assert_eq!(luma(255, 255, 255), 255);
        assert_eq!(luma(0, 0, 0), 0);
        assert_eq!(luma(255, 0, 0), 76); // (19595 * 255 + 32768) >> 16
        assert_eq!(luma(0, 255, 0), 150);
        assert_eq!(luma(0, 0, 255), 29);
    }

    #[test]
    fn identity_factors() {
        let img = test_image();
        assert_eq!(adjust_brightness(&img, 1.0), img);
        assert_eq!(adjust_contrast(&img, 1.0), img);
        assert_eq!(adjust_saturation(&img, 1.0), img);
        assert_eq!(apply(&img, &Photometric::identity()), img);
        assert_eq!(gaussian_blur(&img, 0.0), img);
    }

    #[test]
    fn fused_apply_equals_sequential_ops() {
        let img = test_image();
        for (b, c, s, h, g, r) in [
            (
                Some(1.2),
                Some(0.8),
                Some(1.3),
                Some(0.07),
                false,
                Some(1.1),
            ),
            (Some(0.7), Some(1.3), None, Some(-0.1), true, None),
            (None, Some(1.25), Some(0.75), None, false, Some(0.3)),
            (Some(1.3), None, Some(0.7), Some(-0.003), false, None),
        ] {
            let p = Photometric {
                brightness: b,
                contrast: c,
                saturation: s,
                hue: h,
                grayscale: g,
                blur_radius: r,
            };
            let mut want = img.clone();
            if let Some(f) = b {
                want = adjust_brightness(&want, f);
            }
            if let Some(f) = c {
                want = adjust_contrast(&want, f);
            }
            if let Some(f) = s {
                want = adjust_saturation(&want, f);
            }
            if let Some(f) = h {
                want = adjust_hue(&want, f);
            }
            if g {
                want = grayscale(&want);
            }
            if let Some(f) = r {
                want = gaussian_blur(&want, f);
            }
            assert_eq!(apply(&img, &p), want, "{p:?}");
        }
    }

    #[test]
    fn hue_shift_truncates_and_wraps() {
        assert_eq!(hue_shift(0.1), 25); // int(25.5)
        assert_eq!(hue_shift(-0.1), 231); // -25 wrapped
        assert_eq!(hue_shift(0.0), 0);
        assert_eq!(hue_shift(f32::NAN), 0);
    }

    #[test]
    fn bad_factors_do_not_panic() {
        let img = test_image();
        for f in [f32::NAN, f32::INFINITY, -3.0, 1e30] {
            let p = Photometric {
                brightness: Some(f),
                contrast: Some(f),
                saturation: Some(f),
                hue: Some(f),
                grayscale: true,
                blur_radius: Some(f),
            };
            assert_eq!(apply(&img, &p).dimensions(), img.dimensions());
        }
        let empty = RgbImage::new(0, 0);
        assert_eq!(adjust_contrast(&empty, 0.5).dimensions(), (0, 0));
    }
}
