//! The dense CRF's settings: STEGO's by default, checked before any image is touched.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The appearance-free smoothness kernel: exp(-|p_i - p_j|^2 / 2 sxy^2), weighted by `compat`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GaussianKernel {
    /// Width in pixels.
    pub sxy: f32,
    /// Potts weight (0 turns the kernel off).
    pub compat: f32,
}

impl Default for GaussianKernel {
    fn default() -> Self {
        Self {
            sxy: 1.0,
            compat: 3.0,
        }
    }
}

/// The appearance kernel: exp(-|p_i - p_j|^2 / 2 sxy^2 - |I_i - I_j|^2 / 2 srgb^2), weighted
/// by `compat`; the colours are 0..255 RGB.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BilateralKernel {
    /// Width in pixels.
    pub sxy: f32,
    /// Width in 0..255 colour units.
    pub srgb: f32,
    /// Potts weight (0 turns the kernel off).
    pub compat: f32,
}

impl Default for BilateralKernel {
    fn default() -> Self {
        Self {
            sxy: 67.0,
            srgb: 3.0,
            compat: 4.0,
        }
    }
}

/// Mean-field inference settings. The defaults are STEGO's (`src/crf.py`): 10 iterations,
/// Gaussian sxy 1 compat 3, bilateral sxy 67 srgb 3 compat 4.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CrfConfig {
    pub iterations: usize,
    pub gaussian: GaussianKernel,
    pub bilateral: BilateralKernel,
}

impl Default for CrfConfig {
    fn default() -> Self {
        Self {
            iterations: 10,
            gaussian: GaussianKernel::default(),
            bilateral: BilateralKernel::default(),
        }
    }
}

/// A bad setting, named by its path in the config (`bilateral.srgb`).
#[derive(Clone, Debug, PartialEq, Error)]
#[error("`{field}` {reason}")]
pub struct ConfigError {
    pub field: &'static str,
    pub reason: String,
}

impl CrfConfig {
    /// Every bad setting at once (empty when the config is usable).
    pub fn problems(&self) -> Vec<ConfigError> {
        let mut out = Vec::new();
        if self.iterations == 0 {
            out.push(ConfigError {
                field: "iterations",
                reason: "must be at least 1".into(),
            });
        }
        let widths = [
            ("gaussian.sxy", self.gaussian.sxy),
            ("bilateral.sxy", self.bilateral.sxy),
            ("bilateral.srgb", self.bilateral.srgb),
        ];
        for (field, v) in widths {
            // The lattice divides by the widths: zero or NaN would put every pixel at infinity.
            if !(v.is_finite() && v > 0.0) {
                out.push(ConfigError {
                    field,
                    reason: format!("must be positive and finite, got {v}"),
                });
            }
        }
        let compats = [
            ("gaussian.compat", self.gaussian.compat),
            ("bilateral.compat", self.bilateral.compat),
        ];
        for (field, v) in compats {
            // A negative Potts weight rewards label changes between similar pixels: not a CRF
            // anyone means to run.
            if !(v.is_finite() && v >= 0.0) {
                out.push(ConfigError {
                    field,
                    reason: format!("must be finite and at least 0, got {v}"),
                });
            }
        }
        out
    }

    /// The first bad setting, if any.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.problems().into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
