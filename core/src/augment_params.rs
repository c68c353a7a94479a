//! Random augmentation parameters of the PiCIE release, as a pure function of
//! (seed, epoch, image index).
//!
//! The release draws, once per epoch, one table of random numbers per
//! transform indexed by image, so the clustering, labelling and training
//! passes of an epoch all see identical augmentations. Here the same property
//! comes from seeding a fresh ChaCha8 stream from a hash of
//! (seed, epoch, image): no table, no call-order dependence.
//!
//! What the release does (read from its `data/custom_transforms.py` and
//! `data/coco_train_dataset.py`):
//! - Photometric, per view, independent draws, in the fixed order
//!   brightness, contrast, saturation, hue, grayscale, blur. Each jitter
//!   component has its own "apply?" draw with p = 0.8 and its own value draw
//!   (factor U(max(0, 1 - x), 1 + x), hue shift U(-h, h)).
//! - Grayscale: its "apply?" number is drawn (p = 0.2), but the training
//!   script puts `'grey'` in the transform list while the dataset tests for
//!   `'gray'`, so it is never applied.
//! - Blur: ONE uniform v in [0, 1) decides and sets the radius:
//!   `if v < p { x = v - p; m = (max - min) / (1 - p); r = m * x + min }`.
//!   The linear map was evidently written for v in [1 - p, 1) (it sends that
//!   interval onto [min, max)), but the test is `v < p`, so x lies in [-p, 0)
//!   and, with p = 0.5 and sigma = [0.1, 2.0], r = 3.8 x + 0.1 lies in
//!   [-1.8, 0.1). Pillow uses |r|, so the real radius is in [0, 1.8].
//! - Geometric, shared by both views: crop fraction s ~ U(0.5, 1), two
//!   offsets u ~ U(0, 1), crop side int(s * side) (truncated), offset
//!   round((side - crop) * u) per axis; then a horizontal flip with p = 0.5.
//!
//! Draw order here (fixed; changing it changes every artifact): geometric
//! (crop_frac, u_x, u_y, flip), then view 0, then view 1, each view drawing
//! brightness (apply, value), contrast (apply, value), saturation (apply,
//! value), hue (apply, value), grayscale (apply), blur (apply, radius).
//! Every number is drawn whether or not it is used, so a config switch never
//! shifts the stream of later draws.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Augmentation settings; defaults are the release's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    /// Master switch for the photometric (per-view) transforms.
    pub photometric: bool,
    /// Brightness factor in [max(0, 1 - b), 1 + b].
    pub brightness: f32,
    /// Contrast factor in [max(0, 1 - c), 1 + c].
    pub contrast: f32,
    /// Saturation factor in [max(0, 1 - s), 1 + s].
    pub saturation: f32,
    /// Hue shift in [-h, h] (fraction of a full turn, as torchvision).
    pub hue: f32,
    /// Probability of applying each jitter component (independently).
    pub jitter_p: f32,
    /// Probability of grayscale (drawn but never applied with quirks).
    pub grayscale_p: f32,
    /// Probability of Gaussian blur.
    pub blur_p: f32,
    /// Intended blur radius range [min, max] (Pillow radius = sigma).
    pub blur_sigma: [f32; 2],
    /// Smallest crop side as a fraction of the image side.
    pub crop_min: f32,
    /// Largest crop side as a fraction of the image side.
    pub crop_max: f32,
    /// Probability of a horizontal flip.
    pub flip_p: f32,
    /// Reproduce the release's grayscale and blur-radius quirks.
    pub release_quirks: bool,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            photometric: true,
            brightness: 0.3,
            contrast: 0.3,
            saturation: 0.3,
            hue: 0.1,
            jitter_p: 0.8,
            grayscale_p: 0.2,
            blur_p: 0.5,
            blur_sigma: [0.1, 2.0],
            crop_min: 0.5,
            crop_max: 1.0,
            flip_p: 0.5,
            release_quirks: true,
        }
    }
}

impl AugmentConfig {
    /// Every problem with the settings at once; empty when valid.
    pub fn validate(&self) -> Vec<String> {
        let mut errs = Vec::new();
        for (name, p) in [
            ("jitter_p", self.jitter_p),
            ("grayscale_p", self.grayscale_p),
            ("blur_p", self.blur_p),
            ("flip_p", self.flip_p),
        ] {
            // Written as a negated range test so that NaN is rejected too.
            if !(0.0..=1.0).contains(&p) {
                errs.push(format!("{name}: {p} is not a probability in [0, 1]"));
            }
        }
        for (name, x) in [
            ("brightness", self.brightness),
            ("contrast", self.contrast),
            ("saturation", self.saturation),
        ] {
            if !(x.is_finite() && x >= 0.0) {
                errs.push(format!("{name}: {x} must be finite and >= 0"));
            }
        }
        // torchvision's adjust_hue only accepts shifts in [-0.5, 0.5].
        if !(0.0..=0.5).contains(&self.hue) {
            errs.push(format!("hue: {} must be in [0, 0.5]", self.hue));
        }
        let [s0, s1] = self.blur_sigma;
        if !(s0.is_finite() && s1.is_finite() && s0 > 0.0 && s0 <= s1) {
            errs.push(format!(
                "blur_sigma: [{s0}, {s1}] must be finite with 0 < min <= max"
            ));
        }
        if !(self.crop_min > 0.0 && self.crop_min <= 1.0) {
            errs.push(format!("crop_min: {} must be in (0, 1]", self.crop_min));
        }
        if !(self.crop_max > 0.0 && self.crop_max <= 1.0) {
            errs.push(format!("crop_max: {} must be in (0, 1]", self.crop_max));
        }
        if self.crop_min > self.crop_max {
            errs.push(format!(
                "crop_min: {} must not exceed crop_max ({})",
                self.crop_min, self.crop_max
            ));
        }
        // The release's radius formula divides by (1 - p): undefined at p = 1.
        if self.release_quirks && self.blur_p >= 1.0 {
            errs.push(
                "blur_p: 1 with release_quirks: true is undefined in the release \
                 (its radius formula divides by 1 - blur_p); lower it or set \
                 release_quirks: false"
                    .to_string(),
            );
        }
        errs
    }
}

/// Photometric parameters of one view. `None` means "not applied".
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Photometric {
    /// Brightness factor.
    pub brightness: Option<f32>,
    /// Contrast factor.
    pub contrast: Option<f32>,
    /// Saturation factor.
    pub saturation: Option<f32>,
    /// Hue shift, fraction of a turn.
    pub hue: Option<f32>,
    /// Whether grayscale is APPLIED (always false with release quirks, where
    /// it is drawn but never applied).
    pub grayscale: bool,
    /// Effective (non-negative) Gaussian blur radius actually applied; with
    /// quirks this is |r| of the release's drawn r.
    pub blur_radius: Option<f32>,
}

impl Photometric {
    /// Whether grayscale conversion is to be applied to this view.
    pub fn applied_grayscale(&self) -> bool {
        self.grayscale
    }

    /// No photometric change at all.
    pub fn identity() -> Self {
        Self {
            brightness: None,
            contrast: None,
            saturation: None,
            hue: None,
            grayscale: false,
            blur_radius: None,
        }
    }
}

/// Geometric parameters shared by both views of an image.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Geometric {
    /// Crop side as a fraction of the image side.
    pub crop_frac: f32,
    /// Horizontal offset fraction in [0, 1).
    pub u_x: f32,
    /// Vertical offset fraction in [0, 1).
    pub u_y: f32,
    /// Horizontal flip after cropping.
    pub flip: bool,
}

impl Geometric {
    /// Square crop `(x0, y0, size)` of a `side` x `side` image (or feature
    /// map): size = int(side * crop_frac) clamped to [1, side] (the release
    /// truncates, `int(...)`), offsets round((side - size) * u) with Python's
    /// round-half-to-even. A zero side gives (0, 0, 0).
    pub fn crop_box(&self, side: u32) -> (u32, u32, u32) {
        if side == 0 {
            return (0, 0, 0);
        }
        let frac = f64::from(self.crop_frac);
        // NaN/negative fractions fall back to the full side instead of panicking.
        let raw = if frac.is_finite() {
            (f64::from(side) * frac).floor()
        } else {
            f64::from(side)
        };
        let size = raw.clamp(1.0, f64::from(side)) as u32;
        let room = side - size;
        let off = |u: f32| -> u32 {
            let o = (f64::from(room) * f64::from(u)).round_ties_even();
            if o.is_finite() {
                o.clamp(0.0, f64::from(room)) as u32
            } else {
                0
            }
        };
        (off(self.u_x), off(self.u_y), size)
    }
}

/// All parameters for one image in one epoch.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageAug {
    /// Shared crop and flip.
    pub geometric: Geometric,
    /// Photometric parameters of view 1 (index 0) and view 2 (index 1).
    pub views: [Photometric; 2],
}

/// One row of the augmentation artifact table: one view of one image.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AugRow {
    pub image: u64,
    pub epoch: u32,
    /// 0 for view 1, 1 for view 2.
    pub view: u8,
    pub crop_frac: f32,
    pub u_x: f32,
    pub u_y: f32,
    pub flip: bool,
    pub brightness: Option<f32>,
    pub contrast: Option<f32>,
    pub saturation: Option<f32>,
    pub hue: Option<f32>,
    /// Applied grayscale (see [`Photometric::grayscale`]).
    pub grayscale: bool,
    /// Effective blur radius (see [`Photometric::blur_radius`]).
    pub blur_radius: Option<f32>,
}

impl ImageAug {
    /// The two table rows of this image; geometric columns are repeated
    /// because both views share them.
    pub fn rows(&self, image: u64, epoch: u32) -> [AugRow; 2] {
        let g = self.geometric;
        let row = |view: u8| {
            let p = self.views[usize::from(view)];
            AugRow {
                image,
                epoch,
                view,
                crop_frac: g.crop_frac,
                u_x: g.u_x,
                u_y: g.u_y,
                flip: g.flip,
                brightness: p.brightness,
                contrast: p.contrast,
                saturation: p.saturation,
                hue: p.hue,
                grayscale: p.grayscale,
                blur_radius: p.blur_radius,
            }
        };
        [row(0), row(1)]
    }
}

/// SplitMix64 finaliser: a cheap, well-mixed 64-bit hash step.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Domain tag so these streams never coincide with other seeded streams.
const DOMAIN: u64 = 0x5049_4349_4541_5547; // "PICIEAUG"

fn rng_for(seed: u64, epoch: u32, image: u64) -> ChaCha8Rng {
    let mut h = splitmix64(seed ^ DOMAIN);
    h = splitmix64(h ^ u64::from(epoch));
    h = splitmix64(h ^ image);
    ChaCha8Rng::seed_from_u64(h)
}

/// `a + (b - a) * u` for u in [0, 1): never panics on an empty range (unlike
/// `random_range`), result within [min(a,b), max(a,b)] up to f32 rounding.
fn lerp(a: f32, b: f32, u: f64) -> f32 {
    (f64::from(a) + (f64::from(b) - f64::from(a)) * u) as f32
}

fn draw_view(cfg: &AugmentConfig, rng: &mut ChaCha8Rng) -> Photometric {
    let jp = f64::from(cfg.jitter_p);
    // (apply, value) pairs, always both drawn.
    let mut factor = |x: f32| {
        let apply: f64 = rng.random();
        let u: f64 = rng.random();
        (apply < jp).then(|| lerp((1.0 - x).max(0.0), 1.0 + x, u))
    };
    let brightness = factor(cfg.brightness);
    let contrast = factor(cfg.contrast);
    let saturation = factor(cfg.saturation);
    let hue_apply: f64 = rng.random();
    let hue_u: f64 = rng.random();
    let hue = (hue_apply < jp).then(|| lerp(-cfg.hue, cfg.hue, hue_u));
    let gray_v: f64 = rng.random();
    let gray_drawn = gray_v < f64::from(cfg.grayscale_p);
    let blur_v: f64 = rng.random();
    let blur_u: f64 = rng.random();

    let p = f64::from(cfg.blur_p);
    let [s0, s1] = cfg.blur_sigma.map(f64::from);
    let blur_radius = if blur_v < p {
        let r = if cfg.release_quirks && p < 1.0 {
            // The release: x = v - p in [-p, 0), m = (max - min) / (1 - p),
            // r = m x + min; Pillow blurs with |r|. (p = 1 is rejected by
            // validate; here it falls through to the intended range.)
            let m = (s1 - s0) / (1.0 - p);
            (m * (blur_v - p) + s0).abs()
        } else {
            s0 + (s1 - s0) * blur_u
        };
        Some(r as f32)
    } else {
        None
    };

    let pm = Photometric {
        brightness,
        contrast,
        saturation,
        hue,
        // The release draws grayscale but never applies it.
        grayscale: gray_drawn && !cfg.release_quirks,
        blur_radius,
    };
    if cfg.photometric {
        pm
    } else {
        Photometric::identity()
    }
}

/// The augmentation of `image` in `epoch`: a pure function of its inputs.
pub fn draw(cfg: &AugmentConfig, seed: u64, epoch: u32, image: u64) -> ImageAug {
    let mut rng = rng_for(seed, epoch, image);
    let crop_u: f64 = rng.random();
    let ux: f64 = rng.random();
    let uy: f64 = rng.random();
    let flip_v: f64 = rng.random();
    let geometric = Geometric {
        crop_frac: lerp(cfg.crop_min, cfg.crop_max, crop_u),
        u_x: ux as f32,
        u_y: uy as f32,
        flip: flip_v < f64::from(cfg.flip_p),
    };
    let v0 = draw_view(cfg, &mut rng);
    let v1 = draw_view(cfg, &mut rng);
    ImageAug {
        geometric,
        views: [v0, v1],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const N: u64 = 20_000;

    #[test]
    fn validate_reports_every_problem_by_field() {
        let d = AugmentConfig::default();
        assert!(d.validate().is_empty(), "{:?}", d.validate());
        assert!(d.release_quirks && d.photometric && d.blur_sigma == [0.1, 2.0]);
        let c = AugmentConfig {
            jitter_p: 1.5,
            flip_p: f32::NAN,
            hue: 0.7,
            brightness: -1.0,
            blur_sigma: [2.0, 0.1],
            crop_min: 0.0,
            crop_max: 1.2,
            blur_p: 1.0,
            ..AugmentConfig::default()
        };
        let errs = c.validate();
        let fields = "jitter_p flip_p hue brightness blur_sigma crop_min crop_max blur_p";
        for field in fields.split(' ') {
            assert!(
                errs.iter().any(|e| e.starts_with(&format!("{field}:"))),
                "{field} missing from {errs:?}"
            );
        }
        let c = AugmentConfig {
            crop_min: 0.9,
            crop_max: 0.5,
            ..AugmentConfig::default()
        };
        assert!(c.validate().iter().any(|e| e.contains("crop_max")));
        let c = AugmentConfig {
            blur_p: 1.0,
            release_quirks: false,
            ..AugmentConfig::default()
        };
        assert!(c.validate().is_empty());
    }

    #[test]
    fn serde_defaults_and_unknown_fields() {
        use serde::de::value::{Error, MapDeserializer};
        let m = MapDeserializer::<_, Error>::new(vec![("flip_p", 0.25f32)].into_iter());
        let c = AugmentConfig::deserialize(m).unwrap();
        assert_eq!(c.flip_p, 0.25);
        assert_eq!(c.jitter_p, 0.8);
        let m = MapDeserializer::<_, Error>::new(vec![("flip_prob", 0.25f32)].into_iter());
        assert!(AugmentConfig::deserialize(m).is_err());
    }

    #[test]
    fn pure_and_order_independent() {
        let c = AugmentConfig::default();
        let forward: Vec<_> = (0..50).map(|i| draw(&c, 7, 3, i)).collect();
        let backward: Vec<_> = (0..50).rev().map(|i| draw(&c, 7, 3, i)).collect();
        for (i, a) in forward.iter().enumerate() {
            assert_eq!(*a, backward[49 - i]);
            assert_eq!(*a, draw(&c, 7, 3, i as u64));
        }
    }

    #[test]
    fn epoch_seed_and_image_change_draws() {
        let c = AugmentConfig::default();
        let mut same_epoch = 0;
        let mut same_seed = 0;
        for i in 0..100 {
            let a = draw(&c, 1, 0, i);
            same_epoch += usize::from(a == draw(&c, 1, 1, i));
            same_seed += usize::from(a == draw(&c, 2, 0, i));
            assert_ne!(a.geometric, draw(&c, 1, 0, i + 1).geometric);
        }
        assert_eq!(same_epoch, 0);
        assert_eq!(same_seed, 0);
        // The two views draw independently.
        let a = draw(&c, 1, 0, 0);
        assert_ne!(a.views[0], a.views[1]);
    }

    #[test]
    fn ranges_and_frequencies_release() {
        let c = AugmentConfig::default();
        let mut some = [0u64; 6]; // b, c, s, h, blur, flip
        let mut max_blur = 0f32;
        for i in 0..N {
            let a = draw(&c, 11, 2, i);
            let g = a.geometric;
            assert!((0.5..=1.0).contains(&g.crop_frac), "{g:?}");
            assert!((0.0..=1.0).contains(&g.u_x) && (0.0..=1.0).contains(&g.u_y));
            some[5] += u64::from(g.flip);
            // Count view 0 only so each count is over N draws.
            for (k, v) in a.views.iter().enumerate() {
                for f in [v.brightness, v.contrast, v.saturation]
                    .into_iter()
                    .flatten()
                {
                    assert!((0.7..=1.3).contains(&f), "{f}");
                }
                if let Some(h) = v.hue {
                    assert!((-0.1..=0.1).contains(&h), "{h}");
                }
                if let Some(r) = v.blur_radius {
                    // |r| with r in [-1.8, 0.1): effective radius in [0, 1.8].
                    assert!((0.0..=1.8 + 1e-5).contains(&r), "{r}");
                    max_blur = max_blur.max(r);
                }
                assert!(!v.applied_grayscale());
                if k == 0 {
                    some[0] += u64::from(v.brightness.is_some());
                    some[1] += u64::from(v.contrast.is_some());
                    some[2] += u64::from(v.saturation.is_some());
                    some[3] += u64::from(v.hue.is_some());
                    some[4] += u64::from(v.blur_radius.is_some());
                }
            }
        }
        let freq = |k: usize| some[k] as f64 / N as f64;
        for k in 0..4 {
            assert!((freq(k) - 0.8).abs() < 0.02, "jitter {k}: {}", freq(k));
        }
        assert!((freq(4) - 0.5).abs() < 0.02, "blur {}", freq(4));
        assert!((freq(5) - 0.5).abs() < 0.02, "flip {}", freq(5));
        // The release's radius never reaches the intended 2.0.
        assert!(max_blur > 1.7 && max_blur <= 1.8 + 1e-5, "{max_blur}");
    }

    #[test]
    fn ranges_and_frequencies_corrected() {
        let c = AugmentConfig {
            release_quirks: false,
            ..AugmentConfig::default()
        };
        let (mut gray, mut blur) = (0u64, 0u64);
        for i in 0..N {
            let v = draw(&c, 5, 0, i).views[1];
            gray += u64::from(v.applied_grayscale());
            if let Some(r) = v.blur_radius {
                assert!((0.1..=2.0).contains(&r), "{r}");
                blur += 1;
            }
        }
        let f = |n: u64| n as f64 / N as f64;
        assert!((f(gray) - 0.2).abs() < 0.02, "gray {}", f(gray));
        assert!((f(blur) - 0.5).abs() < 0.02, "blur {}", f(blur));
    }

    #[test]
    fn switches_do_not_shift_the_stream() {
        let on = AugmentConfig::default();
        let off = AugmentConfig {
            photometric: false,
            ..AugmentConfig::default()
        };
        let fixed = AugmentConfig {
            release_quirks: false,
            ..AugmentConfig::default()
        };
        for i in 0..20 {
            let a = draw(&on, 3, 1, i);
            let b = draw(&off, 3, 1, i);
            let q = draw(&fixed, 3, 1, i);
            assert_eq!(a.geometric, b.geometric);
            assert_eq!(b.views, [Photometric::identity(); 2]);
            // Same jitter with and without quirks; only grayscale/blur differ.
            assert_eq!(a.views[0].brightness, q.views[0].brightness);
            assert_eq!(a.views[1].hue, q.views[1].hue);
            assert_eq!(
                a.views[1].blur_radius.is_some(),
                q.views[1].blur_radius.is_some()
            );
        }
    }

    #[test]
    fn degenerate_ranges_do_not_panic() {
        let c = AugmentConfig {
            crop_min: 0.7,
            crop_max: 0.7,
            brightness: 0.0,
            hue: 0.0,
            jitter_p: 1.0,
            blur_p: 1.0,
            ..AugmentConfig::default()
        };
        let a = draw(&c, 0, 0, 0);
        assert_eq!(a.geometric.crop_frac, 0.7);
        assert_eq!(a.views[0].brightness, Some(1.0));
        assert_eq!(a.views[0].hue, Some(0.0));
        let r = a.views[0].blur_radius.unwrap();
        assert!(r.is_finite() && (0.1..=2.0).contains(&r));
    }

    fn geo(crop_frac: f32, u_x: f32, u_y: f32) -> Geometric {
        let flip = false;
        Geometric {
            crop_frac,
            u_x,
            u_y,
            flip,
        }
    }

    #[test]
    fn crop_box_inside_and_full_extent() {
        let c = AugmentConfig::default();
        for side in [1u32, 2, 7, 80, 320, 640] {
            for i in 0..500 {
                let g = draw(&c, 9, 0, i).geometric;
                let (x0, y0, s) = g.crop_box(side);
                assert!(s >= 1 && s <= side);
                assert!(x0 + s <= side && y0 + s <= side, "{side} {g:?}");
                assert!(s >= (side as f32 * 0.5).floor() as u32);
            }
            assert_eq!(geo(1.0, 0.99, 0.3).crop_box(side), (0, 0, side));
        }
        assert_eq!(geo(0.5, 1.0, 0.0).crop_box(80), (40, 0, 40));
        // The release truncates the side, int(0.749 * 80) = 59, and rounds
        // the offset half-to-even as Python: round(21 * 0.5) = 10.
        assert_eq!(geo(0.749, 0.5, 0.5).crop_box(80), (10, 10, 59));
        assert_eq!(geo(f32::NAN, f32::NAN, -3.0).crop_box(10), (0, 0, 10));
        assert_eq!(geo(0.7, 0.5, 0.5).crop_box(0), (0, 0, 0));
    }

    #[test]
    fn rows_repeat_geometry() {
        let a = draw(&AugmentConfig::default(), 4, 2, 17);
        let [r0, r1] = a.rows(17, 2);
        assert_eq!((r0.view, r1.view), (0, 1));
        assert_eq!((r0.image, r0.epoch), (17, 2));
        assert_eq!(
            (r0.crop_frac, r0.u_x, r0.u_y, r0.flip),
            (r1.crop_frac, r1.u_x, r1.u_y, r1.flip)
        );
        assert_eq!(r1.blur_radius, a.views[1].blur_radius);
        assert_eq!(r0.brightness, a.views[0].brightness);
    }
}
