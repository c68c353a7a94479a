//! Dense CRF refinement of per-pixel class probabilities: the fully connected CRF of
//! Kraehenbuehl & Koltun (NIPS 2011), mean-field inference with Potts compatibilities, a
//! Gaussian kernel over position and a bilateral kernel over position and RGB, both filtered
//! on a permutohedral lattice (Adams, Baek & Davis 2010). It computes what densecrf (and
//! pydensecrf, which STEGO and its successors use) computes, in f32, without tch.
//!
//! `refine` does one image; `refine_batch` spreads images over threads (std::thread::scope),
//! each image's work sequential, so the output is the same bytes for any thread count.
//!
//! Layouts: RGB is row-major H x W x 3 u8; the unary is pixel-major H x W x K f32 energies
//! (-log p); labels are row-major, marginals pixel-major like the unary.

mod config;
mod hash;
mod lattice;
mod meanfield;

#[cfg(test)]
mod exact;
#[cfg(test)]
mod parity;
#[cfg(test)]
mod tests;

use thiserror::Error;

pub use config::{BilateralKernel, ConfigError, CrfConfig, GaussianKernel};

/// Everything that stops one image's inference.
#[derive(Clone, Debug, PartialEq, Error)]
pub enum CrfError {
    #[error("bad CRF setting: {0}")]
    Config(#[from] ConfigError),
    #[error("{what} holds {got} values; a {width}x{height} image with {classes} classes needs {expected}")]
    Shape {
        what: &'static str,
        width: usize,
        height: usize,
        classes: usize,
        got: usize,
        expected: usize,
    },
    #[error("an image needs at least one pixel and one class, got {width}x{height} with {classes} classes")]
    Empty {
        width: usize,
        height: usize,
        classes: usize,
    },
    #[error("unary energy {value} at pixel (x {x}, y {y}), class {class}: the predictor's probabilities are not finite numbers")]
    NonFiniteUnary {
        x: usize,
        y: usize,
        class: usize,
        value: f32,
    },
    #[error("a lattice feature is {value}, beyond +-{limit} (a kernel width far too small for the image)")]
    FeatureRange { value: f32, limit: f32 },
    #[error("internal CRF error: {0}")]
    Internal(String),
}

/// One image of a batch failed: `image` is its position in the batch (the caller knows its
/// name).
#[derive(Clone, Debug, PartialEq, Error)]
#[error("image {image} of the batch: {source}")]
pub struct ImageError {
    pub image: usize,
    #[source]
    pub source: CrfError,
}

/// One image's input.
#[derive(Clone, Copy, Debug)]
pub struct CrfImage<'a> {
    pub width: usize,
    pub height: usize,
    pub classes: usize,
    /// H x W x 3, 0..255.
    pub rgb: &'a [u8],
    /// H x W x K energies, -log p of the predictor's class probabilities.
    pub unary: &'a [f32],
}

impl CrfImage<'_> {
    fn check(&self) -> Result<(), CrfError> {
        self.check_shape(true)?;
        if let Some(i) = self.unary.iter().position(|u| !u.is_finite()) {
            let (p, classes) = (i / self.classes, self.classes);
            return Err(CrfError::NonFiniteUnary {
                x: p % self.width,
                y: p / self.width,
                class: i % classes,
                value: self.unary[i],
            });
        }
        Ok(())
    }

    /// Sizes agree (the unary's only when `unary`).
    fn check_shape(&self, unary: bool) -> Result<(), CrfError> {
        let (width, height, classes) = (self.width, self.height, self.classes);
        if width == 0 || height == 0 || classes == 0 {
            return Err(CrfError::Empty {
                width,
                height,
                classes,
            });
        }
        let n = width * height;
        let sizes = [
            ("rgb", self.rgb.len(), n * 3),
            ("unary", self.unary.len(), n * classes),
        ];
        for (what, got, expected) in &sizes[..if unary { 2 } else { 1 }] {
            let (got, expected) = (*got, *expected);
            if got != expected {
                return Err(CrfError::Shape {
                    what,
                    width,
                    height,
                    classes,
                    got,
                    expected,
                });
            }
        }
        Ok(())
    }
}

/// One refined image.
#[derive(Clone, Debug, PartialEq)]
pub struct Refined {
    /// H x W, the most probable class of each pixel (the first on ties).
    pub labels: Vec<u32>,
    /// H x W x K, the mean-field marginals Q.
    pub marginals: Vec<f32>,
}

/// Mean-field inference on one image.
pub fn refine(cfg: &CrfConfig, img: &CrfImage) -> Result<Refined, CrfError> {
    cfg.validate()?;
    img.check()?;
    meanfield::infer(cfg, img)
}

/// [`refine`] over `images` on up to `threads` scoped threads, results in image order. The
/// output does not depend on `threads`. On failure, the error of the first failing image
/// (by position).
pub fn refine_batch(
    cfg: &CrfConfig,
    images: &[CrfImage],
    threads: usize,
) -> Result<Vec<Refined>, ImageError> {
    cfg.validate().map_err(|e| ImageError {
        image: 0,
        source: e.into(),
    })?;
    crate::data::preprocess::par_map(images, threads, |img| refine(cfg, img))
        .into_iter()
        .enumerate()
        .map(|(image, r)| r.map_err(|source| ImageError { image, source }))
        .collect()
}

/// What one image's lattices hold, for the memory budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LatticeMemory {
    /// Lattice points of the Gaussian and the bilateral kernel.
    pub gaussian_vertices: usize,
    pub bilateral_vertices: usize,
    /// Bytes both lattices keep through inference (vertex ids, weights, neighbours,
    /// normalisations).
    pub lattice_bytes: usize,
    /// Bytes of the value buffers the filtering reuses (two rows of 4 to 16 floats per
    /// vertex of the larger lattice, whatever K).
    pub scratch_bytes: usize,
    /// The most held while the lattices were built (before the value buffers exist): both
    /// lattices, the larger transient key table and the bilateral features.
    pub build_peak_bytes: usize,
}

/// The lattices `refine` would build for `img` (its unary is not read).
pub fn lattice_memory(cfg: &CrfConfig, img: &CrfImage) -> Result<LatticeMemory, CrfError> {
    cfg.validate()?;
    img.check_shape(false)?;
    let mut scratch = lattice::Scratch::default();
    let both = CrfConfig {
        gaussian: GaussianKernel {
            compat: 1.0,
            ..cfg.gaussian
        },
        bilateral: BilateralKernel {
            compat: 1.0,
            ..cfg.bilateral
        },
        ..*cfg
    };
    let kernels = meanfield::kernels(&both, img, &mut scratch, false)?;
    Ok(LatticeMemory {
        gaussian_vertices: kernels[0].lattice.vertices(),
        bilateral_vertices: kernels[1].lattice.vertices(),
        lattice_bytes: kernels.iter().map(|k| k.heap_bytes()).sum(),
        scratch_bytes: scratch.heap_bytes(),
        build_peak_bytes: kernels
            .iter()
            .map(|k| k.lattice.heap_bytes())
            .sum::<usize>()
            + kernels
                .iter()
                .map(|k| k.lattice.table_bytes())
                .max()
                .unwrap_or(0)
            + img.width * img.height * 5 * 4,
    })
}

/// Energies -ln(max(p, clip)) of probabilities, as pydensecrf's `unary_from_softmax` makes
/// them (clip 1e-5 there): a zero probability becomes a large finite energy.
pub fn unary_from_probs(probs: &[f32], clip: f32) -> Vec<f32> {
    // NaN stays NaN (f32::max would replace it by `clip`), so `refine` refuses it.
    probs
        .iter()
        .map(|&p| -(if p.is_nan() { p } else { p.max(clip) }).ln())
        .collect()
}
