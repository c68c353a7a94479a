//! Image transforms of the PiCIE release, on `image::RgbImage` (u8, as the
//! release works on PIL images) and on `tch` tensors.
//!
//! - [`photometric`]: torchvision's PIL colour ops (Pillow's `ImageEnhance`,
//!   HSV hue shift, grayscale) and Pillow's `GaussianBlur`, bit-exact with
//!   Pillow 13 (see each function for the measured tolerance).
//! - [`geometric`]: Pillow's bilinear resize (antialiased when shrinking),
//!   the release's base transform (shorter side to 640, centre crop), the
//!   square crop + resize + horizontal flip, and `ToTensor` + `Normalize`.
//! - [`equivariance`]: the equivariance operator G on `N x C x H x W` tensors
//!   (crop, `upsample_bilinear2d`, flip), per-sample parameters.
//! - [`views`]: the two training views of one image, composed from the above.
//!
//! Random parameters come from [`crate::augment_params`]; nothing here draws
//! random numbers.

mod blur;
pub mod equivariance;
pub mod geometric;
mod hsv;
pub mod photometric;
mod resample;
pub mod views;

#[cfg(test)]
mod pil_parity;

/// Why a transform refused its input.
#[derive(Debug, thiserror::Error)]
pub enum TransformError {
    /// An image or output size with a zero side, where pixels are needed.
    #[error("{what}: empty size {width}x{height}")]
    Empty {
        what: &'static str,
        width: u32,
        height: u32,
    },
    /// A tensor of the wrong rank, kind or batch size.
    #[error("{0}")]
    Tensor(String),
    /// An error raised by libtorch.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// Result of a transform.
pub type Result<T> = std::result::Result<T, TransformError>;
