//! torchvision's ResNet-18/34/50 without `avgpool`/`fc`, returning res2..res5.
//!
//! Architecture and variable names follow torchvision exactly (`conv1`, `bn1`,
//! `layer1.0.conv1`, `layer1.0.downsample.0`, `running_mean`, `num_batches_tracked`, ...), so
//! torchvision and PiCIE-release weights load by name. BatchNorm is implemented here rather
//! than taken from `tch::nn` because tch's has no `num_batches_tracked` buffer and panics on
//! bad input instead of returning an error.

use std::str::FromStr;

use tch::nn::init::{FanInOut, NonLinearity, NormalOrUniform};
use tch::nn::{self, Init};
use tch::{Kind, Tensor};

use super::ModelError;

/// Which ResNet. Written as `resnet18`, `resnet34` or `resnet50` (case, `-` and `_` are
/// ignored when read).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Arch {
    #[default]
    ResNet18,
    ResNet34,
    ResNet50,
}

impl Arch {
    /// Blocks per stage (torchvision's `layers`).
    pub fn blocks(self) -> [usize; 4] {
        match self {
            Arch::ResNet18 => [2, 2, 2, 2],
            Arch::ResNet34 | Arch::ResNet50 => [3, 4, 6, 3],
        }
    }

    /// Output channels = planes * expansion (1 for BasicBlock, 4 for Bottleneck).
    pub fn expansion(self) -> i64 {
        match self {
            Arch::ResNet18 | Arch::ResNet34 => 1,
            Arch::ResNet50 => 4,
        }
    }

    pub fn uses_bottleneck(self) -> bool {
        self.expansion() == 4
    }

    /// Channels of res2, res3, res4, res5.
    pub fn out_channels(self) -> [i64; 4] {
        let e = self.expansion();
        [64 * e, 128 * e, 256 * e, 512 * e]
    }

    /// The decoder width D: 128 for ResNet-18/34, 256 for ResNet-50. (The release tests
    /// `arch == 'resnet18'` and treats every other arch as a bottleneck ResNet, so ResNet-34
    /// would not even build there; here it gets ResNet-18's channels and width.)
    pub fn default_dim(self) -> i64 {
        if self.uses_bottleneck() {
            256
        } else {
            128
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Arch::ResNet18 => "resnet18",
            Arch::ResNet34 => "resnet34",
            Arch::ResNet50 => "resnet50",
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl TryFrom<String> for Arch {
    type Error = ModelError;
    fn try_from(s: String) -> Result<Self, ModelError> {
        s.parse()
    }
}

impl From<Arch> for String {
    fn from(a: Arch) -> String {
        a.name().to_string()
    }
}

impl FromStr for Arch {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
            "resnet18" => Ok(Arch::ResNet18),
            "resnet34" => Ok(Arch::ResNet34),
            "resnet50" => Ok(Arch::ResNet50),
            _ => Err(ModelError::Config(format!(
                "unknown architecture `{s}` (expected resnet18, resnet34 or resnet50)"
            ))),
        }
    }
}

/// Backbone settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResNetConfig {
    pub arch: Arch,
    /// ResNet-50 only: put the stride on the bottleneck's first 1x1 conv (Caffe/Keras and
    /// the original MSRA models) instead of on the 3x3 conv (torchvision, "ResNet v1.5").
    pub stride_in_1x1: bool,
    /// BatchNorm epsilon: PyTorch uses 1e-5; Keras-converted weights expect 1e-3.
    pub bn_eps: f64,
    /// BatchNorm running-statistics momentum (PyTorch convention: weight of the new batch).
    pub bn_momentum: f64,
}

impl Default for ResNetConfig {
    fn default() -> Self {
        Self {
            arch: Arch::ResNet18,
            stride_in_1x1: false,
            bn_eps: 1e-5,
            bn_momentum: 0.1,
        }
    }
}

impl ResNetConfig {
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.stride_in_1x1 && !self.arch.uses_bottleneck() {
            return Err(ModelError::Config(format!(
                "stride_in_1x1 applies to bottleneck ResNets (resnet50) only, not {}",
                self.arch
            )));
        }
        if !(self.bn_eps.is_finite() && self.bn_eps > 0.0) {
            return Err(ModelError::Config(format!(
                "BatchNorm eps must be a positive number, got {}",
                self.bn_eps
            )));
        }
        if !(0.0..=1.0).contains(&self.bn_momentum) {
            return Err(ModelError::Config(format!(
                "BatchNorm momentum must lie in [0, 1], got {}",
                self.bn_momentum
            )));
        }
        Ok(())
    }
}

/// A bias-free-or-not 2-D convolution holding its own stride/padding, with a fallible forward.
#[derive(Debug)]
pub(crate) struct Conv2d {
    pub(crate) weight: Tensor,
    pub(crate) bias: Option<Tensor>,
    stride: i64,
    padding: i64,
}

impl Conv2d {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        vs: &nn::Path,
        c_in: i64,
        c_out: i64,
        k: i64,
        stride: i64,
        padding: i64,
        bias: Option<Init>,
        init: Init,
    ) -> Self {
        let weight = vs.var("weight", &[c_out, c_in, k, k], init);
        let bias = bias.map(|b| vs.var("bias", &[c_out], b));
        Self {
            weight,
            bias,
            stride,
            padding,
        }
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        Ok(x.f_conv2d(
            &self.weight,
            self.bias.as_ref(),
            [self.stride, self.stride],
            [self.padding, self.padding],
            [1, 1],
            1,
        )?)
    }
}

/// torchvision's conv init: kaiming_normal_(mode="fan_out", nonlinearity="relu").
const CONV_INIT: Init = Init::Kaiming {
    dist: NormalOrUniform::Normal,
    fan: FanInOut::FanOut,
    non_linearity: NonLinearity::ReLU,
};

fn conv(vs: &nn::Path, c_in: i64, c_out: i64, k: i64, stride: i64) -> Conv2d {
    // "same" padding for the odd kernels used here (1, 3, 7).
    Conv2d::new(vs, c_in, c_out, k, stride, k / 2, None, CONV_INIT)
}

/// BatchNorm2d with PyTorch's parameters and buffers, including `num_batches_tracked`.
#[derive(Debug)]
pub struct BatchNorm2d {
    pub weight: Tensor,
    pub bias: Tensor,
    pub running_mean: Tensor,
    pub running_var: Tensor,
    pub num_batches_tracked: Tensor,
    eps: f64,
    momentum: f64,
}

impl BatchNorm2d {
    pub fn new(vs: &nn::Path, channels: i64, eps: f64, momentum: f64) -> Self {
        // torchvision's init: weight 1, bias 0.
        let weight = vs.var("weight", &[channels], Init::Const(1.0));
        let bias = vs.var("bias", &[channels], Init::Const(0.0));
        let running_mean = vs.zeros_no_train("running_mean", &[channels]);
        let running_var = vs.ones_no_train("running_var", &[channels]);
        // A 0-d int64 like PyTorch's, so that files round-trip with identical shapes/dtypes.
        let num_batches_tracked = vs.add(
            "num_batches_tracked",
            Tensor::zeros([], (Kind::Int64, vs.device())),
            false,
        );
        Self {
            weight,
            bias,
            running_mean,
            running_var,
            num_batches_tracked,
            eps,
            momentum,
        }
    }

    /// `train`: normalise with batch statistics and update the running ones (PyTorch's
    /// unbiased running variance); otherwise use the running statistics.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor, ModelError> {
        if train {
            let size = x.size();
            let per_channel: i64 = size
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != 1)
                .map(|(_, s)| *s)
                .product();
            if per_channel <= 1 {
                // PyTorch refuses this too; the batch variance would be meaningless.
                return Err(ModelError::BadInput {
                    shape: size,
                    reason: "BatchNorm in training mode needs more than one value per channel \
                             (use a larger batch or input, or eval mode)"
                        .into(),
                });
            }
            let mut n = self.num_batches_tracked.shallow_clone();
            // In place; the returned alias is not needed.
            let _ = tch::no_grad(|| n.f_add_scalar_(1))?;
        }
        Ok(x.f_batch_norm(
            Some(&self.weight),
            Some(&self.bias),
            Some(&self.running_mean),
            Some(&self.running_var),
            train,
            self.momentum,
            self.eps,
            true,
        )?)
    }
}

/// The 1x1 conv + BN projection shortcut, named `downsample.0` / `downsample.1`.
#[derive(Debug)]
struct Downsample {
    conv: Conv2d,
    bn: BatchNorm2d,
}

impl Downsample {
    fn new(vs: &nn::Path, c_in: i64, c_out: i64, stride: i64, cfg: &ResNetConfig) -> Self {
        Self {
            conv: conv(&(vs / 0), c_in, c_out, 1, stride),
            bn: BatchNorm2d::new(&(vs / 1), c_out, cfg.bn_eps, cfg.bn_momentum),
        }
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor, ModelError> {
        self.bn.forward_t(&self.conv.forward(x)?, train)
    }
}

/// ResNet-18/34 block: 3x3 -> BN -> ReLU -> 3x3 -> BN, plus shortcut, ReLU.
#[derive(Debug)]
pub struct BasicBlock {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    conv2: Conv2d,
    bn2: BatchNorm2d,
    downsample: Option<Downsample>,
}

impl BasicBlock {
    fn new(vs: &nn::Path, c_in: i64, planes: i64, stride: i64, cfg: &ResNetConfig) -> Self {
        let downsample = (stride != 1 || c_in != planes)
            .then(|| Downsample::new(&(vs / "downsample"), c_in, planes, stride, cfg));
        Self {
            conv1: conv(&(vs / "conv1"), c_in, planes, 3, stride),
            bn1: BatchNorm2d::new(&(vs / "bn1"), planes, cfg.bn_eps, cfg.bn_momentum),
            conv2: conv(&(vs / "conv2"), planes, planes, 3, 1),
            bn2: BatchNorm2d::new(&(vs / "bn2"), planes, cfg.bn_eps, cfg.bn_momentum),
            downsample,
        }
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor, ModelError> {
        let y = self
            .bn1
            .forward_t(&self.conv1.forward(x)?, train)?
            .f_relu()?;
        let y = self.bn2.forward_t(&self.conv2.forward(&y)?, train)?;
        let shortcut = match &self.downsample {
            Some(d) => d.forward_t(x, train)?,
            None => x.shallow_clone(),
        };
        Ok(y.f_add(&shortcut)?.f_relu()?)
    }
}

/// ResNet-50 block: 1x1 -> 3x3 -> 1x1 (x4 channels), BN after each, plus shortcut, ReLU.
#[derive(Debug)]
pub struct Bottleneck {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    conv2: Conv2d,
    bn2: BatchNorm2d,
    conv3: Conv2d,
    bn3: BatchNorm2d,
    downsample: Option<Downsample>,
}

impl Bottleneck {
    fn new(vs: &nn::Path, c_in: i64, planes: i64, stride: i64, cfg: &ResNetConfig) -> Self {
        let c_out = planes * 4;
        let (s1, s3) = if cfg.stride_in_1x1 {
            (stride, 1)
        } else {
            (1, stride)
        };
        let downsample = (stride != 1 || c_in != c_out)
            .then(|| Downsample::new(&(vs / "downsample"), c_in, c_out, stride, cfg));
        Self {
            conv1: conv(&(vs / "conv1"), c_in, planes, 1, s1),
            bn1: BatchNorm2d::new(&(vs / "bn1"), planes, cfg.bn_eps, cfg.bn_momentum),
            conv2: conv(&(vs / "conv2"), planes, planes, 3, s3),
            bn2: BatchNorm2d::new(&(vs / "bn2"), planes, cfg.bn_eps, cfg.bn_momentum),
            conv3: conv(&(vs / "conv3"), planes, c_out, 1, 1),
            bn3: BatchNorm2d::new(&(vs / "bn3"), c_out, cfg.bn_eps, cfg.bn_momentum),
            downsample,
        }
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor, ModelError> {
        let y = self
            .bn1
            .forward_t(&self.conv1.forward(x)?, train)?
            .f_relu()?;
        let y = self
            .bn2
            .forward_t(&self.conv2.forward(&y)?, train)?
            .f_relu()?;
        let y = self.bn3.forward_t(&self.conv3.forward(&y)?, train)?;
        let shortcut = match &self.downsample {
            Some(d) => d.forward_t(x, train)?,
            None => x.shallow_clone(),
        };
        Ok(y.f_add(&shortcut)?.f_relu()?)
    }
}

#[derive(Debug)]
enum Block {
    Basic(BasicBlock),
    Bottleneck(Bottleneck),
}

impl Block {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor, ModelError> {
        match self {
            Block::Basic(b) => b.forward_t(x, train),
            Block::Bottleneck(b) => b.forward_t(x, train),
        }
    }
}

/// The four stage outputs, finest first.
#[derive(Debug)]
pub struct Features {
    /// Stride 4 (64 channels for ResNet-18/34, 256 for ResNet-50).
    pub res2: Tensor,
    /// Stride 8.
    pub res3: Tensor,
    /// Stride 16.
    pub res4: Tensor,
    /// Stride 32.
    pub res5: Tensor,
}

impl Features {
    pub fn levels(&self) -> [&Tensor; 4] {
        [&self.res2, &self.res3, &self.res4, &self.res5]
    }
}

/// The ResNet trunk: conv1/bn1/relu/maxpool and layer1..layer4.
#[derive(Debug)]
pub struct ResNet {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    layers: [Vec<Block>; 4],
    cfg: ResNetConfig,
}

impl ResNet {
    /// Creates the variables under `vs` with torchvision's names and initialisation.
    pub fn new(vs: &nn::Path, cfg: &ResNetConfig) -> Result<Self, ModelError> {
        cfg.validate()?;
        let e = cfg.arch.expansion();
        let mut c_in = 64;
        let layers = std::array::from_fn(|stage| {
            let planes = 64i64 << stage;
            let vs_layer = vs / format!("layer{}", stage + 1);
            (0..cfg.arch.blocks()[stage])
                .map(|i| {
                    // torchvision: the first block of stages 2-4 halves the resolution.
                    let stride = if i == 0 && stage > 0 { 2 } else { 1 };
                    let p = &vs_layer / i;
                    let block = if cfg.arch.uses_bottleneck() {
                        Block::Bottleneck(Bottleneck::new(&p, c_in, planes, stride, cfg))
                    } else {
                        Block::Basic(BasicBlock::new(&p, c_in, planes, stride, cfg))
                    };
                    c_in = planes * e;
                    block
                })
                .collect()
        });
        Ok(Self {
            conv1: conv(&(vs / "conv1"), 3, 64, 7, 2),
            bn1: BatchNorm2d::new(&(vs / "bn1"), 64, cfg.bn_eps, cfg.bn_momentum),
            layers,
            cfg: *cfg,
        })
    }

    pub fn config(&self) -> &ResNetConfig {
        &self.cfg
    }

    /// The stem's weight: where the network's dtype and device can be read.
    pub(crate) fn first_conv_weight(&self) -> &Tensor {
        &self.conv1.weight
    }

    /// Channels of res2..res5.
    pub fn out_channels(&self) -> [i64; 4] {
        self.cfg.arch.out_channels()
    }

    /// Runs the trunk on an N x 3 x H x W batch. Input checks live in `PicieNet`; here a
    /// bad input surfaces as a libtorch error, never a panic.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Features, ModelError> {
        let y = self
            .bn1
            .forward_t(&self.conv1.forward(x)?, train)?
            .f_relu()?;
        let y = y.f_max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false)?;
        let stage = |i: usize, x: &Tensor| -> Result<Tensor, ModelError> {
            let mut y = x.shallow_clone();
            for block in &self.layers[i] {
                y = block.forward_t(&y, train)?;
            }
            Ok(y)
        };
        let res2 = stage(0, &y)?;
        let res3 = stage(1, &res2)?;
        let res4 = stage(2, &res3)?;
        let res5 = stage(3, &res4)?;
        Ok(Features {
            res2,
            res3,
            res4,
            res5,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn::VarStore, Device};

    /// torchvision 0.28 `resnet18().state_dict()` without `fc.*`: names and shapes, in order.
    const RESNET18_KEYS: &[(&str, &[i64])] = &[
        ("conv1.weight", &[64, 3, 7, 7]),
        ("bn1.weight", &[64]),
        ("bn1.bias", &[64]),
        ("bn1.running_mean", &[64]),
        ("bn1.running_var", &[64]),
        ("bn1.num_batches_tracked", &[]),
        ("layer1.0.conv1.weight", &[64, 64, 3, 3]),
        ("layer1.0.bn1.weight", &[64]),
        ("layer1.0.bn1.bias", &[64]),
        ("layer1.0.bn1.running_mean", &[64]),
        ("layer1.0.bn1.running_var", &[64]),
        ("layer1.0.bn1.num_batches_tracked", &[]),
        ("layer1.0.conv2.weight", &[64, 64, 3, 3]),
        ("layer1.0.bn2.weight", &[64]),
        ("layer1.0.bn2.bias", &[64]),
        ("layer1.0.bn2.running_mean", &[64]),
        ("layer1.0.bn2.running_var", &[64]),
        ("layer1.0.bn2.num_batches_tracked", &[]),
        ("layer1.1.conv1.weight", &[64, 64, 3, 3]),
        ("layer1.1.bn1.weight", &[64]),
        ("layer1.1.bn1.bias", &[64]),
        ("layer1.1.bn1.running_mean", &[64]),
        ("layer1.1.bn1.running_var", &[64]),
        ("layer1.1.bn1.num_batches_tracked", &[]),
        ("layer1.1.conv2.weight", &[64, 64, 3, 3]),
        ("layer1.1.bn2.weight", &[64]),
        ("layer1.1.bn2.bias", &[64]),
        ("layer1.1.bn2.running_mean", &[64]),
        ("layer1.1.bn2.running_var", &[64]),
        ("layer1.1.bn2.num_batches_tracked", &[]),
        ("layer2.0.conv1.weight", &[128, 64, 3, 3]),
        ("layer2.0.bn1.weight", &[128]),
        ("layer2.0.bn1.bias", &[128]),
        ("layer2.0.bn1.running_mean", &[128]),
        ("layer2.0.bn1.running_var", &[128]),
        ("layer2.0.bn1.num_batches_tracked", &[]),
        ("layer2.0.conv2.weight", &[128, 128, 3, 3]),
        ("layer2.0.bn2.weight", &[128]),
        ("layer2.0.bn2.bias", &[128]),
        ("layer2.0.bn2.running_mean", &[128]),
        ("layer2.0.bn2.running_var", &[128]),
        ("layer2.0.bn2.num_batches_tracked", &[]),
        ("layer2.0.downsample.0.weight", &[128, 64, 1, 1]),
        ("layer2.0.downsample.1.weight", &[128]),
        ("layer2.0.downsample.1.bias", &[128]),
        ("layer2.0.downsample.1.running_mean", &[128]),
        ("layer2.0.downsample.1.running_var", &[128]),
        ("layer2.0.downsample.1.num_batches_tracked", &[]),
        ("layer2.1.conv1.weight", &[128, 128, 3, 3]),
        ("layer2.1.bn1.weight", &[128]),
        ("layer2.1.bn1.bias", &[128]),
        ("layer2.1.bn1.running_mean", &[128]),
        ("layer2.1.bn1.running_var", &[128]),
        ("layer2.1.bn1.num_batches_tracked", &[]),
        ("layer2.1.conv2.weight", &[128, 128, 3, 3]),
        ("layer2.1.bn2.weight", &[128]),
        ("layer2.1.bn2.bias", &[128]),
        ("layer2.1.bn2.running_mean", &[128]),
        ("layer2.1.bn2.running_var", &[128]),
        ("layer2.1.bn2.num_batches_tracked", &[]),
        ("layer3.0.conv1.weight", &[256, 128, 3, 3]),
        ("layer3.0.bn1.weight", &[256]),
        ("layer3.0.bn1.bias", &[256]),
        ("layer3.0.bn1.running_mean", &[256]),
        ("layer3.0.bn1.running_var", &[256]),
        ("layer3.0.bn1.num_batches_tracked", &[]),
        ("layer3.0.conv2.weight", &[256, 256, 3, 3]),
        ("layer3.0.bn2.weight", &[256]),
        ("layer3.0.bn2.bias", &[256]),
        ("layer3.0.bn2.running_mean", &[256]),
        ("layer3.0.bn2.running_var", &[256]),
        ("layer3.0.bn2.num_batches_tracked", &[]),
        ("layer3.0.downsample.0.weight", &[256, 128, 1, 1]),
        ("layer3.0.downsample.1.weight", &[256]),
        ("layer3.0.downsample.1.bias", &[256]),
        ("layer3.0.downsample.1.running_mean", &[256]),
        ("layer3.0.downsample.1.running_var", &[256]),
        ("layer3.0.downsample.1.num_batches_tracked", &[]),
        ("layer3.1.conv1.weight", &[256, 256, 3, 3]),
        ("layer3.1.bn1.weight", &[256]),
        ("layer3.1.bn1.bias", &[256]),
        ("layer3.1.bn1.running_mean", &[256]),
        ("layer3.1.bn1.running_var", &[256]),
        ("layer3.1.bn1.num_batches_tracked", &[]),
        ("layer3.1.conv2.weight", &[256, 256, 3, 3]),
        ("layer3.1.bn2.weight", &[256]),
        ("layer3.1.bn2.bias", &[256]),
        ("layer3.1.bn2.running_mean", &[256]),
        ("layer3.1.bn2.running_var", &[256]),
        ("layer3.1.bn2.num_batches_tracked", &[]),
        ("layer4.0.conv1.weight", &[512, 256, 3, 3]),
        ("layer4.0.bn1.weight", &[512]),
        ("layer4.0.bn1.bias", &[512]),
        ("layer4.0.bn1.running_mean", &[512]),
        ("layer4.0.bn1.running_var", &[512]),
        ("layer4.0.bn1.num_batches_tracked", &[]),
        ("layer4.0.conv2.weight", &[512, 512, 3, 3]),
        ("layer4.0.bn2.weight", &[512]),
        ("layer4.0.bn2.bias", &[512]),
        ("layer4.0.bn2.running_mean", &[512]),
        ("layer4.0.bn2.running_var", &[512]),
        ("layer4.0.bn2.num_batches_tracked", &[]),
        ("layer4.0.downsample.0.weight", &[512, 256, 1, 1]),
        ("layer4.0.downsample.1.weight", &[512]),
        ("layer4.0.downsample.1.bias", &[512]),
        ("layer4.0.downsample.1.running_mean", &[512]),
        ("layer4.0.downsample.1.running_var", &[512]),
        ("layer4.0.downsample.1.num_batches_tracked", &[]),
        ("layer4.1.conv1.weight", &[512, 512, 3, 3]),
        ("layer4.1.bn1.weight", &[512]),
        ("layer4.1.bn1.bias", &[512]),
        ("layer4.1.bn1.running_mean", &[512]),
        ("layer4.1.bn1.running_var", &[512]),
        ("layer4.1.bn1.num_batches_tracked", &[]),
        ("layer4.1.conv2.weight", &[512, 512, 3, 3]),
        ("layer4.1.bn2.weight", &[512]),
        ("layer4.1.bn2.bias", &[512]),
        ("layer4.1.bn2.running_mean", &[512]),
        ("layer4.1.bn2.running_var", &[512]),
        ("layer4.1.bn2.num_batches_tracked", &[]),
    ];

    fn build(cfg: &ResNetConfig) -> (VarStore, ResNet) {
        let vs = VarStore::new(Device::Cpu);
        let net = ResNet::new(&vs.root(), cfg).expect("valid config");
        (vs, net)
    }

    #[test]
    fn resnet18_names_and_shapes_match_torchvision() {
        let (vs, _net) = build(&ResNetConfig::default());
        let mut ours: Vec<(String, Vec<i64>)> = vs
            .variables()
            .into_iter()
            .map(|(k, v)| (k, v.size()))
            .collect();
        ours.sort();
        let mut expected: Vec<(String, Vec<i64>)> = RESNET18_KEYS
            .iter()
            .map(|(k, s)| (k.to_string(), s.to_vec()))
            .collect();
        expected.sort();
        assert_eq!(ours, expected);
        assert_eq!(
            vs.trainable_variables().len(),
            60,
            "conv weights + BN affine params"
        );
        let nbt = vs.variables()["bn1.num_batches_tracked"].shallow_clone();
        assert_eq!(nbt.kind(), Kind::Int64);
    }

    #[test]
    fn resnet18_shapes_at_320() {
        let (_vs, net) = build(&ResNetConfig::default());
        let x = Tensor::randn([1, 3, 320, 320], (Kind::Float, Device::Cpu));
        let f = tch::no_grad(|| net.forward_t(&x, false)).unwrap();
        assert_eq!(f.res2.size(), [1, 64, 80, 80]);
        assert_eq!(f.res3.size(), [1, 128, 40, 40]);
        assert_eq!(f.res4.size(), [1, 256, 20, 20]);
        assert_eq!(f.res5.size(), [1, 512, 10, 10]);
    }

    #[test]
    fn resnet34_and_50_shapes_and_counts() {
        let x = Tensor::randn([2, 3, 64, 96], (Kind::Float, Device::Cpu));
        for (arch, n_vars, ch) in [
            (Arch::ResNet34, 216, [64, 128, 256, 512]),
            (Arch::ResNet50, 318, [256, 512, 1024, 2048]),
        ] {
            for stride_in_1x1 in [false, arch == Arch::ResNet50] {
                let cfg = ResNetConfig {
                    arch,
                    stride_in_1x1,
                    ..Default::default()
                };
                let (vs, net) = build(&cfg);
                // torchvision's state_dict sizes minus fc.weight/fc.bias.
                assert_eq!(vs.variables().len(), n_vars, "{arch}");
                let f = tch::no_grad(|| net.forward_t(&x, true)).unwrap();
                let got: Vec<Vec<i64>> = f.levels().iter().map(|t| t.size()).collect();
                let want: Vec<Vec<i64>> = [(16, 24), (8, 12), (4, 6), (2, 3)]
                    .iter()
                    .zip(ch)
                    .map(|(&(h, w), c)| vec![2, c, h, w])
                    .collect();
                assert_eq!(got, want, "{arch} stride_in_1x1={stride_in_1x1}");
            }
        }
    }

    #[test]
    fn stride_in_1x1_moves_the_stride() {
        // With stride on the 1x1 conv, the 3x3 conv of layer2.0 sees the downsampled map.
        let cfg = ResNetConfig {
            arch: Arch::ResNet50,
            stride_in_1x1: true,
            ..Default::default()
        };
        let (_vs, net) = build(&cfg);
        let Block::Bottleneck(b) = &net.layers[1][0] else {
            panic!("resnet50 has bottlenecks")
        };
        assert_eq!((b.conv1.stride, b.conv2.stride), (2, 1));
        let (_vs, net) = build(&ResNetConfig {
            stride_in_1x1: false,
            ..cfg
        });
        let Block::Bottleneck(b) = &net.layers[1][0] else {
            panic!("resnet50 has bottlenecks")
        };
        assert_eq!((b.conv1.stride, b.conv2.stride), (1, 2));
    }

    #[test]
    fn bad_configs_are_errors() {
        let vs = VarStore::new(Device::Cpu);
        for cfg in [
            ResNetConfig {
                stride_in_1x1: true,
                ..Default::default()
            },
            ResNetConfig {
                bn_eps: 0.0,
                ..Default::default()
            },
            ResNetConfig {
                bn_momentum: f64::NAN,
                ..Default::default()
            },
        ] {
            assert!(matches!(
                ResNet::new(&vs.root(), &cfg),
                Err(ModelError::Config(_))
            ));
        }
        assert_eq!("ResNet-50".parse::<Arch>().unwrap(), Arch::ResNet50);
        assert!("vgg16".parse::<Arch>().is_err());
    }

    #[test]
    fn train_mode_updates_running_stats_and_counter() {
        let (vs, net) = build(&ResNetConfig::default());
        let x = Tensor::randn([2, 3, 64, 64], (Kind::Float, Device::Cpu));
        tch::no_grad(|| net.forward_t(&x, true)).unwrap();
        let vars = vs.variables();
        assert_eq!(vars["layer1.0.bn1.num_batches_tracked"].int64_value(&[]), 1);
        assert!(
            vars["bn1.running_mean"]
                .abs()
                .sum(Kind::Float)
                .double_value(&[])
                > 0.0
        );
        tch::no_grad(|| net.forward_t(&x, false)).unwrap();
        assert_eq!(vars["layer1.0.bn1.num_batches_tracked"].int64_value(&[]), 1);
        // A single value per channel cannot be batch-normalised.
        let one = Tensor::randn([1, 3, 16, 16], (Kind::Float, Device::Cpu));
        assert!(matches!(
            net.forward_t(&one, true),
            Err(ModelError::BadInput { .. })
        ));
    }
}
