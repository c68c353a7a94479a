//! PiCIE's network: a torchvision ResNet backbone and the release's minimal FPN decoder,
//! producing an L2-normalised D-channel feature map at stride 4.
//!
//! Variables live under `backbone.*` (torchvision's names) and `decoder.*` (the release's
//! `layer1..layer4`), so the release's checkpoints and torchvision's weights load by name
//! (see [`weights`]).
//!
//! [`vit`] holds a DINO / DINOv2 Vision Transformer backbone with its own loader; it is not
//! part of [`PicieNet`] yet.

pub mod fpn;
pub mod keras;
pub mod resnet;
pub mod vit;
pub mod weights;

use std::path::PathBuf;

use tch::{nn, Tensor};

pub use fpn::{FpnConfig, FpnDecoder};
pub use resnet::{Arch, Features, ResNet, ResNetConfig};
pub use weights::{KeyMismatch, LoadConfig, LoadReport, Scope, ShapeMismatch};

/// How a forward pass uses BatchNorm. In `Train` it normalises with each batch's own
/// statistics and updates the running ones (momentum 0.1), as the release's clustering passes
/// do (`model.train()` under `no_grad`); in `Eval` it uses the running statistics. A network
/// without BatchNorm computes the same in both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BnMode {
    /// Batch statistics, running statistics updated.
    Train,
    /// Running statistics.
    Eval,
}

impl BnMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Train => "train",
            Self::Eval => "eval",
        }
    }
}

/// Everything that can go wrong building, running, loading or saving the network.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("bad network input of shape {shape:?}: {reason}")]
    BadInput { shape: Vec<i64>, reason: String },
    #[error("invalid network configuration: {0}")]
    Config(String),
    #[error("centroids of shape {shape:?} do not fit the network's {dim}-channel features (K x {dim} expected)")]
    Centroids { shape: Vec<i64>, dim: i64 },
    #[error("weights from {source_name} do not fit the network:{mismatch}")]
    Checkpoint {
        /// The file (or "in-memory tensors").
        source_name: String,
        mismatch: Box<KeyMismatch>,
    },
    #[error("cannot read weights file {path}: {source}")]
    Read {
        path: PathBuf,
        source: tch::TchError,
    },
    #[error("cannot write weights file {path}: {source}")]
    Write {
        path: PathBuf,
        source: tch::TchError,
    },
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// What the backbone's weights expect as input. Every stage feeds ImageNet-normalised RGB
/// (the release's preprocessing); the network converts it first when its weights were
/// trained on something else, so data pipelines never change with the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputNorm {
    /// RGB, (x / 255 - mean) / std: torchvision's and the release's.
    #[default]
    Imagenet,
    /// BGR on the 0..255 scale minus Caffe's per-channel mean, unscaled: Keras/Caffe
    /// ResNet-50 weights (see [`keras::CAFFE_BGR_MEAN`]).
    CaffeBgr,
}

impl InputNorm {
    /// Converts an ImageNet-normalised RGB batch (N x 3 x H x W) to what the weights expect.
    pub fn adapt(self, x: &Tensor) -> Result<Tensor, ModelError> {
        use crate::transforms::geometric::{IMAGENET_MEAN, IMAGENET_STD};
        match self {
            Self::Imagenet => Ok(x.shallow_clone()),
            Self::CaffeBgr => {
                let (dev, kind) = (x.device(), x.kind());
                let col = |v: [f64; 3]| {
                    Tensor::from_slice(&v)
                        .to_kind(kind)
                        .to_device(dev)
                        .view([1, 3, 1, 1])
                };
                let rgb255 = (x * col(IMAGENET_STD.map(f64::from))
                    + col(IMAGENET_MEAN.map(f64::from)))
                    * 255.0;
                Ok(rgb255.f_flip([1])? - col(keras::CAFFE_BGR_MEAN))
            }
        }
    }
}

/// The network's settings: the one model configuration, as `init`'s params name it, as a
/// checkpoint's manifest stores it (`model`), and as [`PicieNet::new`] builds from it.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct NetConfig {
    /// resnet18, resnet34 or resnet50.
    pub arch: Arch,
    /// Feature channels D; `None` = the release's choice (128 for ResNet-18/34, 256 for 50).
    pub dim: Option<i64>,
    /// ResNet-50 only: stride on the bottleneck's 1x1 conv (Caffe/Keras weights).
    pub stride_in_1x1: bool,
    /// BatchNorm epsilon (1e-5 PyTorch; 1e-3 for Keras-converted weights).
    pub bn_eps: f64,
    /// The input the weights expect: `imagenet` (RGB mean/std) or `caffe_bgr` (Keras); the
    /// network converts the pipeline's ImageNet input.
    pub input_norm: InputNorm,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            arch: Arch::ResNet18,
            stride_in_1x1: false,
            dim: None,
            bn_eps: ResNetConfig::default().bn_eps,
            input_norm: InputNorm::Imagenet,
        }
    }
}

impl NetConfig {
    pub fn dim(&self) -> i64 {
        self.dim.unwrap_or_else(|| self.arch.default_dim())
    }

    pub fn resnet(&self) -> ResNetConfig {
        ResNetConfig {
            arch: self.arch,
            stride_in_1x1: self.stride_in_1x1,
            bn_eps: self.bn_eps,
            ..Default::default()
        }
    }
}

/// Backbone + decoder ("PanopticFPN" in the release).
#[derive(Debug)]
pub struct PicieNet {
    backbone: ResNet,
    decoder: FpnDecoder,
    input_norm: InputNorm,
}

/// `F.normalize(x, dim=1)`: x / max(||x||_2, 1e-12) over channels.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor, ModelError> {
    let norm = x
        .f_norm_scalaropt_dim(2.0, [1i64].as_slice(), true)?
        .f_clamp_min(1e-12)?;
    Ok(x.f_div(&norm)?)
}

/// Checks that `x` is a non-empty N x 3 x H x W floating-point batch of `weight`'s dtype and
/// on its device (every backbone's first check), so that misuse gets a message naming the
/// shape instead of a deep libtorch error.
pub(crate) fn check_image_batch(x: &Tensor, weight: &Tensor) -> Result<(), ModelError> {
    let shape = x.size();
    let bad = |reason: String| {
        Err(ModelError::BadInput {
            shape: shape.clone(),
            reason,
        })
    };
    let [n, c, h, w] = shape[..] else {
        return bad(format!(
            "expected 4 dimensions (N x 3 x H x W), got {}",
            shape.len()
        ));
    };
    if c != 3 {
        return bad(format!(
            "expected 3 input channels (N x 3 x H x W), got {c}"
        ));
    }
    if n < 1 || h < 1 || w < 1 {
        return bad("the batch and the images must be non-empty".into());
    }
    if !x.is_floating_point() {
        return bad(format!(
            "expected a floating-point image batch, got {:?} (convert, and normalise, first)",
            x.kind()
        ));
    }
    if x.kind() != weight.kind() {
        return bad(format!(
            "input dtype {:?} differs from the network's {:?}",
            x.kind(),
            weight.kind()
        ));
    }
    if x.device() != weight.device() {
        return bad(format!(
            "input is on {:?} but the network is on {:?}",
            x.device(),
            weight.device()
        ));
    }
    Ok(())
}

impl PicieNet {
    /// Creates `backbone.*` and `decoder.*` under `vs`.
    pub fn new(vs: &nn::Path, cfg: &NetConfig) -> Result<Self, ModelError> {
        let backbone = ResNet::new(&(vs / "backbone"), &cfg.resnet())?;
        let decoder = FpnDecoder::new(
            &(vs / "decoder"),
            &FpnConfig {
                in_channels: cfg.arch.out_channels(),
                dim: cfg.dim(),
            },
        )?;
        Ok(Self {
            backbone,
            decoder,
            input_norm: cfg.input_norm,
        })
    }

    pub fn backbone(&self) -> &ResNet {
        &self.backbone
    }

    pub fn decoder(&self) -> &FpnDecoder {
        &self.decoder
    }

    /// Output channels D.
    pub fn dim(&self) -> i64 {
        self.decoder.dim()
    }

    /// The one check of centroids against this network: K x D with D its feature channels.
    /// Returns K.
    pub fn check_centroids(&self, centroids: &Tensor) -> Result<usize, ModelError> {
        match centroids.size().as_slice() {
            &[k, d] if d == self.dim() && k > 0 => Ok(k as usize),
            shape => Err(ModelError::Centroids {
                shape: shape.to_vec(),
                dim: self.dim(),
            }),
        }
    }

    /// Checks that `x` is an N x 3 x H x W floating-point batch on the weights' device and
    /// of their dtype, so that misuse gets a message naming the shape instead of a deep
    /// libtorch error.
    pub fn check_input(&self, x: &Tensor) -> Result<(), ModelError> {
        check_image_batch(x, self.backbone.first_conv_weight())
    }

    /// The L2-normalised N x D x H/4 x W/4 feature map (sizes rounded up at each stride-2
    /// step, as in PyTorch). `train` selects BatchNorm's batch statistics (and updates the
    /// running ones) or its running statistics.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor, ModelError> {
        let (_, dec) = self.forward_parts_t(x, train)?;
        l2_normalize(&dec)
    }

    /// The backbone's res2..res5 and the decoder's output before normalisation.
    pub fn forward_parts_t(
        &self,
        x: &Tensor,
        train: bool,
    ) -> Result<(Features, Tensor), ModelError> {
        self.check_input(x)?;
        let x = self.input_norm.adapt(x)?;
        let feats = self.backbone.forward_t(&x, train)?;
        let dec = self.decoder.forward(&feats)?;
        Ok((feats, dec))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{max_abs_diff as max_diff, read_tensors as read};
    use std::collections::HashMap;
    use tch::{nn::VarStore, Device, Kind};

    fn net(cfg: &NetConfig) -> (VarStore, PicieNet) {
        let vs = VarStore::new(Device::Cpu);
        let net = PicieNet::new(&vs.root(), cfg).unwrap();
        (vs, net)
    }

    #[test]
    fn centroids_are_checked_against_the_feature_channels() {
        let (_vs, n) = net(&NetConfig {
            dim: Some(8),
            ..Default::default()
        });
        let c = |shape: &[i64]| Tensor::zeros(shape, (Kind::Float, Device::Cpu));
        assert_eq!(n.check_centroids(&c(&[5, 8])).unwrap(), 5);
        for bad in [&[5i64, 7][..], &[0, 8], &[8]] {
            let e = n.check_centroids(&c(bad)).unwrap_err().to_string();
            assert!(
                e.contains("do not fit the network's 8-channel features"),
                "{e}"
            );
        }
    }

    #[test]
    fn output_is_unit_norm_at_stride_4() {
        let (_vs, net) = net(&NetConfig::default());
        let x = Tensor::randn([2, 3, 320, 320], (Kind::Float, Device::Cpu));
        for train in [false, true] {
            let out = tch::no_grad(|| net.forward_t(&x, train)).unwrap();
            assert_eq!(out.size(), [2, 128, 80, 80]);
            let norms = out
                .pow_tensor_scalar(2)
                .sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
                .sqrt();
            let dev = (norms - 1.0).abs().max().double_value(&[]);
            assert!(dev < 1e-5, "train={train}: max |norm - 1| = {dev}");
        }
    }

    #[test]
    fn dim_defaults_per_arch_and_can_be_set() {
        assert_eq!(NetConfig::default().dim(), 128);
        let r50 = NetConfig {
            arch: Arch::ResNet50,
            ..Default::default()
        };
        assert_eq!(r50.dim(), 256);
        let (_vs, n) = net(&NetConfig {
            arch: Arch::ResNet34,
            dim: Some(32),
            ..Default::default()
        });
        let x = Tensor::randn([1, 3, 64, 48], (Kind::Float, Device::Cpu));
        let out = tch::no_grad(|| n.forward_t(&x, false)).unwrap();
        assert_eq!(out.size(), [1, 32, 16, 12]);
    }

    #[test]
    fn bad_inputs_are_errors_naming_the_shape() {
        let (_vs, net) = net(&NetConfig::default());
        let cases = [
            (
                Tensor::zeros([1, 4, 32, 32], (Kind::Float, Device::Cpu)),
                "[1, 4, 32, 32]",
                "3 input channels",
            ),
            (
                Tensor::zeros([3, 32, 32], (Kind::Float, Device::Cpu)),
                "[3, 32, 32]",
                "4 dimensions",
            ),
            (
                Tensor::zeros([1, 3, 32, 32], (Kind::Uint8, Device::Cpu)),
                "[1, 3, 32, 32]",
                "floating-point",
            ),
            (
                Tensor::zeros([1, 3, 32, 32], (Kind::Double, Device::Cpu)),
                "[1, 3, 32, 32]",
                "Double",
            ),
            (
                Tensor::zeros([0, 3, 32, 32], (Kind::Float, Device::Cpu)),
                "[0, 3, 32, 32]",
                "non-empty",
            ),
        ];
        for (x, shape, why) in cases {
            let err = net.forward_t(&x, false).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, ModelError::BadInput { .. }), "{msg}");
            assert!(msg.contains(shape) && msg.contains(why), "{msg}");
        }
    }

    /// The pipeline's ImageNet-normalised input, converted for Caffe weights, equals Caffe
    /// preprocessing applied to the same 8-bit pixels directly.
    #[test]
    fn caffe_bgr_input_equals_direct_caffe_preprocessing() {
        let px: Vec<u8> = (0..3 * 5 * 7).map(|i| (i * 37 % 256) as u8).collect();
        let img = Tensor::from_slice(&px)
            .view([1, 3, 5, 7])
            .to_kind(Kind::Float);
        let mean =
            Tensor::from_slice(&crate::transforms::geometric::IMAGENET_MEAN).view([1, 3, 1, 1]);
        let std =
            Tensor::from_slice(&crate::transforms::geometric::IMAGENET_STD).view([1, 3, 1, 1]);
        let imagenet = (&img / 255.0 - mean) / std;
        let caffe_mean = Tensor::from_slice(&keras::CAFFE_BGR_MEAN)
            .to_kind(Kind::Float)
            .view([1, 3, 1, 1]);
        let direct = img.flip([1]) - caffe_mean;
        let got = InputNorm::CaffeBgr.adapt(&imagenet).unwrap();
        let err = (got - &direct).abs().max().double_value(&[]);
        assert!(err < 1e-4, "max error {err}");
        let same = InputNorm::Imagenet.adapt(&imagenet).unwrap();
        assert_eq!((same - &imagenet).abs().max().double_value(&[]), 0.0);
    }

    #[test]
    fn bad_net_configs_are_errors() {
        let vs = VarStore::new(Device::Cpu);
        for cfg in [
            NetConfig {
                dim: Some(0),
                ..Default::default()
            },
            NetConfig {
                stride_in_1x1: true,
                ..Default::default()
            },
        ] {
            assert!(matches!(
                PicieNet::new(&vs.root(), &cfg),
                Err(ModelError::Config(_))
            ));
        }
    }

    // ---- PyTorch parity --------------------------------------------------------------

    /// Compares `got` with `reference[prefix.name]` for each name; returns the report lines.
    fn compare(
        reference: &HashMap<String, Tensor>,
        prefix: &str,
        got: &[(&str, &Tensor)],
    ) -> Vec<(String, f64)> {
        got.iter()
            .map(|(name, t)| {
                let key = format!("{prefix}.{name}");
                let want = reference
                    .get(&key)
                    .unwrap_or_else(|| panic!("reference lacks {key}"));
                (key, max_diff(t, want))
            })
            .collect()
    }

    /// Runs tests/python/model_parity.py (torch 2.13 + torchvision) and checks our outputs
    /// against it: ResNet-18 + decoder in eval and train BatchNorm modes, running statistics
    /// after the train step, the loaders' layouts, torchvision's key lists, and a ResNet-50
    /// with stride_in_1x1 and Keras' eps. Skips (passing) without the venv or its packages.
    #[test]
    fn pytorch_parity() {
        let dir = tempfile::tempdir().unwrap();
        if crate::run_oracle("pytorch_parity", "model_parity.py", [dir.path()]).is_none() {
            return;
        }
        let d = dir.path();
        let mut diffs = Vec::new();

        // ResNet-18 + decoder from the release-layout file.
        let vs = VarStore::new(Device::Cpu);
        let net = PicieNet::new(&vs.root(), &NetConfig::default()).unwrap();
        let rep = weights::load(
            &vs,
            d.join("r18_release.safetensors"),
            &LoadConfig::default(),
        )
        .unwrap();
        assert_eq!(rep.layout, weights::Layout::Release);
        assert_eq!(rep.loaded, vs.variables().len());
        let reference = read(&d.join("r18_reference.safetensors"));
        let x = &reference["input"];
        // Eval first: the train step changes the running statistics eval mode uses.
        for mode in ["eval", "train"] {
            let (f, dec) = tch::no_grad(|| net.forward_parts_t(x, mode == "train")).unwrap();
            let out = l2_normalize(&dec).unwrap();
            diffs.extend(compare(
                &reference,
                mode,
                &[
                    ("res2", &f.res2),
                    ("res3", &f.res3),
                    ("res4", &f.res4),
                    ("res5", &f.res5),
                    ("fpn", &dec),
                    ("out", &out),
                ],
            ));
        }
        // Buffers after the train step (momentum 0.1, unbiased variance, counter + 1).
        let after = read(&d.join("r18_after_train.safetensors"));
        let vars = vs.variables();
        let mut buffers = 0.0f64;
        for (k, want) in &after {
            let name = k.strip_prefix("module.").unwrap_or(k);
            if name.contains("running_") || name.ends_with("num_batches_tracked") {
                buffers = buffers.max(max_diff(&vars[name], want));
            }
        }
        diffs.push(("train.bn_buffers_after_step".into(), buffers));

        // The torchvision-layout file (with fc) fills the same backbone.
        let vs2 = VarStore::new(Device::Cpu);
        let _net2 = PicieNet::new(&vs2.root(), &NetConfig::default()).unwrap();
        let rep = weights::load(
            &vs2,
            d.join("r18_torchvision.safetensors"),
            &LoadConfig::default(),
        )
        .unwrap();
        assert_eq!(rep.layout, weights::Layout::Torchvision);
        assert_eq!(rep.skipped, ["fc.bias", "fc.weight"]);
        assert_eq!(rep.not_loaded.len(), 8);
        let before_train = read(&d.join("r18_release.safetensors"));
        let v2 = vs2.variables();
        for (k, t) in &before_train {
            if let Some(name) = k.strip_prefix("module.backbone.") {
                assert_eq!(max_diff(&v2[&format!("backbone.{name}")], t), 0.0, "{name}");
            }
        }

        // Key names and shapes equal torchvision's (minus fc) for all three archs.
        for (arch, file) in [
            (Arch::ResNet18, "keys_resnet18.txt"),
            (Arch::ResNet34, "keys_resnet34.txt"),
            (Arch::ResNet50, "keys_resnet50.txt"),
        ] {
            let text = std::fs::read_to_string(d.join(file)).unwrap();
            let mut want: Vec<String> = text
                .lines()
                .filter(|l| !l.starts_with("fc."))
                .map(str::to_string)
                .collect();
            let vs = VarStore::new(Device::Cpu);
            let _b = ResNet::new(
                &vs.root(),
                &ResNetConfig {
                    arch,
                    ..Default::default()
                },
            )
            .unwrap();
            let mut ours: Vec<String> = vs
                .variables()
                .iter()
                .map(|(k, v)| {
                    let dims: Vec<String> = v.size().iter().map(i64::to_string).collect();
                    format!("{k} {}", dims.join(","))
                })
                .collect();
            want.sort();
            ours.sort();
            assert_eq!(ours, want, "{arch}");
        }

        // ResNet-50, stride in the 1x1 convs, eps 1e-3, standalone backbone, torchvision file.
        let vs3 = VarStore::new(Device::Cpu);
        let r50 = ResNet::new(
            &vs3.root(),
            &ResNetConfig {
                arch: Arch::ResNet50,
                stride_in_1x1: true,
                bn_eps: 1e-3,
                ..Default::default()
            },
        )
        .unwrap();
        let rep = weights::load(
            &vs3,
            d.join("r50s1_torchvision.safetensors"),
            &LoadConfig::default(),
        )
        .unwrap();
        assert_eq!(rep.loaded, vs3.variables().len());
        let reference = read(&d.join("r50s1_reference.safetensors"));
        for mode in ["eval", "train"] {
            let f = tch::no_grad(|| r50.forward_t(&reference["input"], mode == "train")).unwrap();
            diffs.extend(compare(
                &reference,
                &format!("r50s1.{mode}"),
                &[
                    ("res2", &f.res2),
                    ("res3", &f.res3),
                    ("res4", &f.res4),
                    ("res5", &f.res5),
                ],
            ));
        }

        for (k, v) in &diffs {
            eprintln!("parity {k:<32} max|diff| = {v:.3e}");
        }
        let worst =
            diffs
                .iter()
                .cloned()
                .fold(("".to_string(), 0.0), |a, b| if b.1 > a.1 { b } else { a });
        assert!(worst.1 < 1e-4, "worst: {} = {:e}", worst.0, worst.1);
    }
}
