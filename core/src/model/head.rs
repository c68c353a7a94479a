//! The head a ViT backbone gets in place of the FPN: 1x1 convolutions from the token
//! channels C to the feature channels D, a linear projection plus a nonlinear branch
//! (1x1 conv, ReLU, 1x1 conv) added to it, as STEGO's segmentation head. PiCIE then
//! L2-normalises its output like the FPN's. At initialisation the linear branch is a random
//! projection of the tokens, which roughly keeps their distances, so epoch 0's k-means sees
//! close to the backbone's own clusters.

use tch::nn;
use tch::Tensor;

use super::fpn::lateral;
use super::resnet::Conv2d;
use super::ModelError;

/// Channels of the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadConfig {
    /// Token channels C (384 for ViT-S, 768 for ViT-B).
    pub in_channels: i64,
    /// Output channels D.
    pub dim: i64,
}

impl Default for HeadConfig {
    fn default() -> Self {
        Self {
            in_channels: 384,
            dim: 128,
        }
    }
}

/// `linear.*`, `hidden.*` and `out.*` under the head's path (PyTorch's default conv init).
#[derive(Debug)]
pub struct ConvHead {
    linear: Conv2d,
    hidden: Conv2d,
    out: Conv2d,
    dim: i64,
}

impl ConvHead {
    pub fn new(vs: &nn::Path, cfg: &HeadConfig) -> Result<Self, ModelError> {
        if cfg.in_channels < 1 || cfg.dim < 1 {
            return Err(ModelError::Config(format!(
                "head channels must be positive, got in_channels {}, dim {}",
                cfg.in_channels, cfg.dim
            )));
        }
        let c = cfg.in_channels;
        Ok(Self {
            linear: lateral(&(vs / "linear"), c, cfg.dim),
            hidden: lateral(&(vs / "hidden"), c, c),
            out: lateral(&(vs / "out"), c, cfg.dim),
            dim: cfg.dim,
        })
    }

    pub fn dim(&self) -> i64 {
        self.dim
    }

    /// A weight of the head: its dtype and device are the head's.
    pub fn weight_like(&self) -> &Tensor {
        &self.linear.weight
    }

    pub fn in_channels(&self) -> i64 {
        self.linear.weight.size()[1]
    }

    /// N x C x h x w tokens -> N x D x h x w, not normalised.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let nonlinear = self.out.forward(&self.hidden.forward(x)?.f_relu()?)?;
        Ok(self.linear.forward(x)?.f_add(&nonlinear)?)
    }
}
