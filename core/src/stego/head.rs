//! STEGO's segmentation head as released (`DinoFeaturizer` with `projection_type:
//! nonlinear`): code = linear(drop(F)) + out(relu(hidden(drop(F)))), all 1x1 convolutions,
//! drop = Dropout2d(0.1) drawn separately for each branch; with `drop_features` (the
//! release's `dropout: True`) the features handed to the loss are a third dropout draw of F.
//!
//! The variables are named as the network's ViT head (`linear`, `hidden`, `out`, see
//! `model::head`), and [`StegoHead::from_vars`] wraps that head's own variables: a STEGO
//! head trained there is the network's head, which evaluation runs as any other. Dropout
//! masks come from the caller's RNG (not libtorch's global generator), so a training step's
//! masks are a pure function of its seed like every other draw.

use std::collections::HashMap;

use rand::Rng;
use tch::nn;
use tch::Tensor;

use super::StegoError;
use crate::model::fpn::lateral;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StegoHeadConfig {
    /// Token channels C (384 for ViT-S, 768 for ViT-B).
    pub in_channels: i64,
    /// Code channels D (70 for the released ViT-S configs, 90 / 100 for ViT-B).
    pub dim: i64,
    /// Dropout2d probability on the head's input (0.1 as released).
    pub dropout: f64,
    /// Whether the loss sees dropped-out features too (the release's `dropout: True`).
    pub drop_features: bool,
}

impl Default for StegoHeadConfig {
    fn default() -> Self {
        Self {
            in_channels: 384,
            dim: 70,
            dropout: 0.1,
            drop_features: true,
        }
    }
}

impl StegoHeadConfig {
    /// Every bad setting, by field.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut e = Vec::new();
        if self.in_channels < 1 {
            e.push(("in_channels", "must be at least 1".to_string()));
        }
        if self.dim < 1 {
            e.push(("dim", "must be at least 1".to_string()));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            e.push((
                "dropout",
                format!("must be in [0, 1), got {}", self.dropout),
            ));
        }
        e
    }
}

/// One 1x1 convolution: weight D x C x 1 x 1 and bias D.
#[derive(Debug)]
struct Conv1x1 {
    weight: Tensor,
    bias: Tensor,
}

impl Conv1x1 {
    fn forward(&self, x: &Tensor) -> Result<Tensor, StegoError> {
        Ok(x.f_conv2d(&self.weight, Some(&self.bias), [1, 1], [0, 0], [1, 1], 1)?)
    }
}

/// The head's three 1x1 convolutions (PyTorch's default conv init).
#[derive(Debug)]
pub struct StegoHead {
    linear: Conv1x1,
    hidden: Conv1x1,
    out: Conv1x1,
    cfg: StegoHeadConfig,
}

const BRANCHES: [&str; 3] = ["linear", "hidden", "out"];

impl StegoHead {
    /// A new head with its variables under `vs`.
    pub fn new(vs: &nn::Path, cfg: &StegoHeadConfig) -> Result<Self, StegoError> {
        if let Some((field, message)) = cfg.problems().into_iter().next() {
            return Err(StegoError::Config { field, message });
        }
        let c = cfg.in_channels;
        let conv = |name: &str, out: i64| {
            let l = lateral(&(vs / name), c, out);
            Conv1x1 {
                bias: l.bias.expect("a lateral conv has a bias").shallow_clone(),
                weight: l.weight,
            }
        };
        Ok(Self {
            linear: conv("linear", cfg.dim),
            hidden: conv("hidden", c),
            out: conv("out", cfg.dim),
            cfg: *cfg,
        })
    }

    /// The head over existing variables `{prefix}linear.weight`, ... (a network's ViT head:
    /// prefix `head.`), shared, not copied: gradients land on those variables. Channels come
    /// from their shapes; `cfg`'s `in_channels` and `dim` are ignored.
    pub fn from_vars(
        vars: &HashMap<String, Tensor>,
        prefix: &str,
        cfg: &StegoHeadConfig,
    ) -> Result<Self, StegoError> {
        let get = |name: String| {
            vars.get(&name)
                .map(Tensor::shallow_clone)
                .ok_or_else(|| StegoError::Shape(format!("no variable `{name}`: not a ViT head")))
        };
        let mut convs = Vec::new();
        for b in BRANCHES {
            convs.push(Conv1x1 {
                weight: get(format!("{prefix}{b}.weight"))?,
                bias: get(format!("{prefix}{b}.bias"))?,
            });
        }
        let [linear, hidden, out] = <[Conv1x1; 3]>::try_from(convs).expect("three branches");
        let (ws, hs, os) = (
            linear.weight.size(),
            hidden.weight.size(),
            out.weight.size(),
        );
        let c = hs.get(1).copied().unwrap_or(0);
        let d = ws.first().copied().unwrap_or(0);
        if ws != [d, c, 1, 1] || hs != [c, c, 1, 1] || os != [d, c, 1, 1] {
            return Err(StegoError::Shape(format!(
                "head weights {ws:?}, {hs:?}, {os:?} are not a 1x1 head (D x C, C x C, D x C)"
            )));
        }
        let cfg = StegoHeadConfig {
            in_channels: c,
            dim: d,
            ..*cfg
        };
        if let Some((field, message)) = cfg.problems().into_iter().next() {
            return Err(StegoError::Config { field, message });
        }
        Ok(Self {
            linear,
            hidden,
            out,
            cfg,
        })
    }

    pub fn config(&self) -> &StegoHeadConfig {
        &self.cfg
    }

    /// Dropout2d: each (image, channel) kept with probability 1 - p and scaled by
    /// 1 / (1 - p), else zeroed, drawn from `rng` in image-major order.
    fn drop<R: Rng>(&self, x: &Tensor, rng: &mut R) -> Result<Tensor, StegoError> {
        let p = self.cfg.dropout;
        if p == 0.0 {
            return Ok(x.shallow_clone());
        }
        let (n, c) = (x.size()[0], x.size()[1]);
        let keep = 1.0 / (1.0 - p);
        let mask: Vec<f32> = (0..n * c)
            .map(|_| {
                if rng.random::<f64>() < p {
                    0.0
                } else {
                    keep as f32
                }
            })
            .collect();
        let mask = Tensor::from_slice(&mask)
            .view([n, c, 1, 1])
            .f_to_kind(x.kind())?
            .f_to_device(x.device())?;
        Ok(x.f_mul(&mask)?)
    }

    /// N x C x h x w tokens -> (features for the loss, N x D x h x w code). With an RNG
    /// (training), three dropout draws in the release's order: the linear branch's, the
    /// nonlinear branch's, the features'; without one (evaluation), none, and the features
    /// are the tokens themselves.
    pub fn forward_t<R: Rng>(
        &self,
        x: &Tensor,
        mut rng: Option<&mut R>,
    ) -> Result<(Tensor, Tensor), StegoError> {
        let s = x.size();
        if s.len() != 4 || s[1] != self.cfg.in_channels {
            return Err(StegoError::Shape(format!(
                "the head expects N x {} x h x w tokens, got {s:?}",
                self.cfg.in_channels
            )));
        }
        let x = x.f_to_kind(self.linear.weight.kind())?;
        let mut drop = |x: &Tensor| match rng.as_deref_mut() {
            Some(r) => self.drop(x, r),
            None => Ok(x.shallow_clone()),
        };
        let linear = self.linear.forward(&drop(&x)?)?;
        let hidden = self.hidden.forward(&drop(&x)?)?.f_relu()?;
        let code = linear.f_add(&self.out.forward(&hidden)?)?;
        let feats = if self.cfg.drop_features { drop(&x)? } else { x };
        Ok((feats, code))
    }

    /// The code alone, without dropout (evaluation).
    pub fn code(&self, x: &Tensor) -> Result<Tensor, StegoError> {
        Ok(self.forward_t::<rand_chacha::ChaCha8Rng>(x, None)?.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use tch::{Device, Kind};

    fn head(cfg: StegoHeadConfig) -> (nn::VarStore, StegoHead) {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let h = StegoHead::new(&vs.root(), &cfg).unwrap();
        (vs, h)
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }

    #[test]
    fn eval_mode_is_linear_plus_relu_branch() {
        let cfg = StegoHeadConfig {
            in_channels: 6,
            dim: 4,
            ..Default::default()
        };
        let (vs, h) = head(cfg);
        let v = vs.variables();
        let mut names: Vec<&String> = v.keys().collect();
        names.sort();
        assert_eq!(
            names,
            [
                "hidden.bias",
                "hidden.weight",
                "linear.bias",
                "linear.weight",
                "out.bias",
                "out.weight"
            ]
        );
        let x = Tensor::randn([2, 6, 3, 5], (Kind::Float, Device::Cpu));
        let (f, code) = h.forward_t::<ChaCha8Rng>(&x, None).unwrap();
        assert_eq!(code.size(), [2, 4, 3, 5]);
        assert_eq!(f, x);
        let conv = |x: &Tensor, n: &str| {
            x.conv2d(
                &v[&format!("{n}.weight")],
                Some(&v[&format!("{n}.bias")]),
                [1, 1],
                [0, 0],
                [1, 1],
                1,
            )
        };
        let want = conv(&x, "linear") + conv(&conv(&x, "hidden").relu(), "out");
        assert!(max_diff(&code, &want) < 1e-6);
        assert!(max_diff(&h.code(&x).unwrap(), &want) < 1e-6);
    }

    /// Dropout2d zeroes whole channels and scales the rest by 1 / (1 - p); the branches and
    /// the features get their own draws, which repeat with the RNG's seed.
    #[test]
    fn training_drops_whole_channels_from_the_callers_rng() {
        let cfg = StegoHeadConfig {
            in_channels: 64,
            dim: 3,
            dropout: 0.5,
            drop_features: true,
        };
        let (_vs, h) = head(cfg);
        let x = Tensor::ones([1, 64, 4, 4], (Kind::Float, Device::Cpu));
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let (f, c1) = h.forward_t(&x, Some(&mut rng)).unwrap();
        let hi = f.amax([2i64, 3].as_slice(), false);
        let lo = f.amin([2i64, 3].as_slice(), false);
        assert_eq!(hi, lo, "a channel is dropped whole or kept whole");
        let kept = hi.eq(2.0).sum(Kind::Int64).int64_value(&[]);
        let zero = hi.eq(0.0).sum(Kind::Int64).int64_value(&[]);
        assert_eq!(kept + zero, 64);
        assert!(kept > 10 && zero > 10, "{kept} kept, {zero} dropped");
        let (f2, c2) = h.forward_t(&x, Some(&mut rng)).unwrap();
        assert!(max_diff(&c1, &c2) > 0.0 && max_diff(&f, &f2) > 0.0);
        let (f3, c3) = h
            .forward_t(&x, Some(&mut ChaCha8Rng::seed_from_u64(4)))
            .unwrap();
        assert_eq!((f3, c3), (f, c1));
    }

    /// Over a network's head variables, shared: gradients land on them.
    #[test]
    fn wraps_a_networks_head_variables() {
        let (vs, h) = head(StegoHeadConfig {
            in_channels: 5,
            dim: 2,
            ..Default::default()
        });
        let prefixed: HashMap<String, Tensor> = vs
            .variables()
            .into_iter()
            .map(|(k, v)| (format!("head.{k}"), v))
            .collect();
        let w = StegoHead::from_vars(&prefixed, "head.", &StegoHeadConfig::default()).unwrap();
        assert_eq!((w.config().in_channels, w.config().dim), (5, 2));
        let x = Tensor::randn([1, 5, 2, 2], (Kind::Float, Device::Cpu));
        assert!(max_diff(&w.code(&x).unwrap(), &h.code(&x).unwrap()) == 0.0);
        w.code(&x).unwrap().sum(Kind::Float).backward();
        assert!(
            vs.variables()["linear.weight"]
                .grad()
                .abs()
                .sum(Kind::Float)
                .double_value(&[])
                > 0.0
        );
        let mut missing = prefixed;
        missing.remove("head.out.bias");
        assert!(matches!(
            StegoHead::from_vars(&missing, "head.", &StegoHeadConfig::default()),
            Err(StegoError::Shape(_))
        ));
    }

    #[test]
    fn bad_settings_and_inputs_are_refused() {
        let bad = StegoHeadConfig {
            dim: 0,
            dropout: 1.0,
            ..Default::default()
        };
        let fields: Vec<&str> = bad.problems().into_iter().map(|p| p.0).collect();
        assert_eq!(fields, ["dim", "dropout"]);
        let vs = nn::VarStore::new(Device::Cpu);
        assert!(matches!(
            StegoHead::new(&vs.root(), &bad),
            Err(StegoError::Config { field: "dim", .. })
        ));
        let (_vs, h) = head(StegoHeadConfig::default());
        let x = Tensor::zeros([1, 10, 2, 2], (Kind::Float, Device::Cpu));
        assert!(matches!(h.code(&x), Err(StegoError::Shape(_))));
    }
}
