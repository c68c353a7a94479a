//! PiCIE's decoder exactly as released (`FPNDecoder` in the release's `modules/fpn.py`).
//!
//! Four 1x1 lateral convs with bias, top-down sum with bilinear upsampling
//! (align_corners = false) to stride 4; no 3x3 smoothing, no BN, no ReLU.
//!
//! Naming follows the release, where the numbering runs top-down, i.e. the reverse of the
//! ResNet stage numbering: `layer1` is the lateral of res5 (coarsest, 512*e channels),
//! `layer2` of res4, `layer3` of res3 and `layer4` of res2 (finest). Source: the release's
//! `FPNDecoder.__init__` (`self.layer4 = nn.Conv2d(512*mfactor//8, ...)`, ...,
//! `self.layer1 = nn.Conv2d(512*mfactor, ...)`) and its forward
//! (`o1 = self.layer1(x['res5'])`, ..., `o4 = upsample_add(o3, self.layer4(x['res2']))`).

use tch::nn::{self, Init};
use tch::Tensor;

use super::resnet::{Conv2d, Features};
use super::ModelError;

/// Decoder settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FpnConfig {
    /// Channels of res2, res3, res4, res5 (the backbone's outputs).
    pub in_channels: [i64; 4],
    /// Output channels D (128 for ResNet-18/34 in the release, 256 for ResNet-50).
    pub dim: i64,
}

impl Default for FpnConfig {
    /// ResNet-18's channels and the release's D = 128.
    fn default() -> Self {
        Self {
            in_channels: [64, 128, 256, 512],
            dim: 128,
        }
    }
}

/// The release's minimal FPN. Fields are named as the checkpoint's keys.
#[derive(Debug)]
pub struct FpnDecoder {
    /// Lateral of res5.
    layer1: Conv2d,
    /// Lateral of res4.
    layer2: Conv2d,
    /// Lateral of res3.
    layer3: Conv2d,
    /// Lateral of res2.
    layer4: Conv2d,
    dim: i64,
}

/// PyTorch's default `nn.Conv2d` init (kaiming_uniform with a = sqrt(5), and the matching bias
/// rule): both reduce to U(-1/sqrt(fan_in), 1/sqrt(fan_in)). The release keeps that default.
pub(crate) fn lateral(vs: &nn::Path, c_in: i64, dim: i64) -> Conv2d {
    let bound = 1.0 / (c_in as f64).sqrt();
    let init = Init::Uniform {
        lo: -bound,
        up: bound,
    };
    Conv2d::new(vs, c_in, dim, 1, 1, 0, Some(init), init)
}

impl FpnDecoder {
    pub fn new(vs: &nn::Path, cfg: &FpnConfig) -> Result<Self, ModelError> {
        if cfg.dim <= 0 || cfg.in_channels.iter().any(|&c| c <= 0) {
            return Err(ModelError::Config(format!(
                "decoder channels must be positive, got in_channels {:?}, dim {}",
                cfg.in_channels, cfg.dim
            )));
        }
        let [c2, c3, c4, c5] = cfg.in_channels;
        Ok(Self {
            layer1: lateral(&(vs / "layer1"), c5, cfg.dim),
            layer2: lateral(&(vs / "layer2"), c4, cfg.dim),
            layer3: lateral(&(vs / "layer3"), c3, cfg.dim),
            layer4: lateral(&(vs / "layer4"), c2, cfg.dim),
            dim: cfg.dim,
        })
    }

    pub fn dim(&self) -> i64 {
        self.dim
    }

    /// N x D x H2 x W2 (res2's size), not normalised.
    pub fn forward(&self, f: &Features) -> Result<Tensor, ModelError> {
        let o1 = self.layer1.forward(&f.res5)?;
        let o2 = upsample_add(&o1, &self.layer2.forward(&f.res4)?)?;
        let o3 = upsample_add(&o2, &self.layer3.forward(&f.res3)?)?;
        upsample_add(&o3, &self.layer4.forward(&f.res2)?)
    }
}

/// `F.interpolate(x, size=y.shape[2:], mode="bilinear", align_corners=False) + y`.
/// Scales are left unset so that, as in PyTorch with `size=`, they derive from the sizes
/// (matters for odd sizes, e.g. 7 -> 13, where the ratio is not 2).
fn upsample_add(x: &Tensor, y: &Tensor) -> Result<Tensor, ModelError> {
    let size = y.size();
    let (h, w) = match size[..] {
        [_, _, h, w] => (h, w),
        _ => {
            return Err(ModelError::BadInput {
                shape: size,
                reason: "decoder inputs must be N x C x H x W".into(),
            })
        }
    };
    Ok(x.f_upsample_bilinear2d([h, w], false, None, None)?
        .f_add(y)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn::VarStore, Device, Kind};

    fn zeros(c: i64, h: i64, w: i64) -> Tensor {
        Tensor::zeros([1, c, h, w], (Kind::Float, Device::Cpu))
    }

    #[test]
    fn lateral_names_follow_the_release() {
        let vs = VarStore::new(Device::Cpu);
        let _dec = FpnDecoder::new(&(vs.root() / "decoder"), &FpnConfig::default()).unwrap();
        let mut got: Vec<(String, Vec<i64>)> = vs
            .variables()
            .into_iter()
            .map(|(k, v)| (k, v.size()))
            .collect();
        got.sort();
        let want: Vec<(String, Vec<i64>)> = [
            ("decoder.layer1.bias", vec![128]),
            ("decoder.layer1.weight", vec![128, 512, 1, 1]),
            ("decoder.layer2.bias", vec![128]),
            ("decoder.layer2.weight", vec![128, 256, 1, 1]),
            ("decoder.layer3.bias", vec![128]),
            ("decoder.layer3.weight", vec![128, 128, 1, 1]),
            ("decoder.layer4.bias", vec![128]),
            ("decoder.layer4.weight", vec![128, 64, 1, 1]),
        ]
        .into_iter()
        .map(|(k, s)| (k.to_string(), s))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn top_down_sums_every_lateral_at_stride_4() {
        // Zero weights, bias b_i: each lateral is the constant b_i, bilinear upsampling keeps
        // constants, so the output is b1+b2+b3+b4 everywhere iff all four levels are summed.
        let vs = VarStore::new(Device::Cpu);
        let dec = FpnDecoder::new(
            &vs.root(),
            &FpnConfig {
                dim: 4,
                ..Default::default()
            },
        )
        .unwrap();
        tch::no_grad(|| {
            for (i, conv) in [&dec.layer1, &dec.layer2, &dec.layer3, &dec.layer4]
                .into_iter()
                .enumerate()
            {
                let _ = conv.weight.shallow_clone().fill_(0.0);
                let _ = conv
                    .bias
                    .as_ref()
                    .unwrap()
                    .shallow_clone()
                    .fill_(10f64.powi(i as i32));
            }
        });
        let f = Features {
            res2: zeros(64, 80, 80),
            res3: zeros(128, 40, 40),
            res4: zeros(256, 20, 20),
            res5: zeros(512, 10, 10),
        };
        let out = dec.forward(&f).unwrap();
        assert_eq!(out.size(), [1, 4, 80, 80]);
        assert!((out - 1111.0).abs().max().double_value(&[]) < 1e-3);
    }

    #[test]
    fn upsampling_is_bilinear_without_corner_alignment() {
        // A 1 x 2 ramp [0, 1] upsampled to 1 x 4 with align_corners=false: [0, .25, .75, 1].
        let x = Tensor::from_slice(&[0f32, 1.0]).view([1, 1, 1, 2]);
        let y = zeros(1, 1, 4);
        let out = upsample_add(&x, &y).unwrap().view([-1]);
        let want = Tensor::from_slice(&[0f32, 0.25, 0.75, 1.0]);
        assert!((out - want).abs().max().double_value(&[]) < 1e-6);
    }

    #[test]
    fn wrong_feature_channels_are_an_error_not_a_panic() {
        let vs = VarStore::new(Device::Cpu);
        let dec = FpnDecoder::new(&vs.root(), &FpnConfig::default()).unwrap();
        let f = Features {
            res2: zeros(256, 8, 8),
            res3: zeros(512, 4, 4),
            res4: zeros(1024, 2, 2),
            res5: zeros(2048, 1, 1),
        };
        assert!(matches!(dec.forward(&f), Err(ModelError::Torch(_))));
        assert!(FpnDecoder::new(
            &vs.root(),
            &FpnConfig {
                dim: 0,
                ..Default::default()
            }
        )
        .is_err());
    }
}
