//! `init`: the network before training, as a checkpoint artifact: seeded random weights,
//! optionally overwritten from a pretrained safetensors file (`picie weights import` makes
//! one from torchvision's .pth, the release's checkpoints or the Keras ResNet-50).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tracing::info;

use crate::io::checkpoint::{self, ModelSpec};
use crate::sections::PicieContext;
use picie_core::model::weights::{self, LoadConfig, Scope};
use picie_core::model::InputNorm;
use picie_engine::{Context, ParamError, Port, Stage, StageError};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightsScope {
    /// Backbone only for torchvision-layout files, everything otherwise.
    #[default]
    Auto,
    /// Every variable must come from the file (the release's checkpoints).
    Full,
    /// Only `backbone.*` (ImageNet weights); the decoder keeps its seeded random values.
    BackboneOnly,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InitParams {
    /// resnet18, resnet34 or resnet50.
    pub arch: String,
    /// Feature channels D (null: the release's 128 for ResNet-18/34, 256 for ResNet-50).
    pub dim: Option<i64>,
    /// ResNet-50 with the stride on the bottleneck's first 1x1 conv (Caffe/Keras weights).
    pub stride_in_1x1: bool,
    pub bn_eps: f64,
    /// The input the weights expect: `imagenet` (RGB mean/std) or `caffe_bgr` (Keras).
    pub input_norm: InputNorm,
    /// Pretrained weights (safetensors), relative to the pipeline file; its checksum is part
    /// of the cache key.
    pub weights: Option<PathBuf>,
    pub weights_scope: WeightsScope,
}

impl Default for InitParams {
    fn default() -> Self {
        let m = ModelSpec::default();
        Self {
            arch: m.arch,
            dim: m.dim,
            stride_in_1x1: m.stride_in_1x1,
            bn_eps: m.bn_eps,
            input_norm: m.input_norm,
            weights: None,
            weights_scope: WeightsScope::Auto,
        }
    }
}

impl InitParams {
    fn spec(&self) -> ModelSpec {
        ModelSpec {
            arch: self.arch.clone(),
            dim: self.dim,
            stride_in_1x1: self.stride_in_1x1,
            bn_eps: self.bn_eps,
            input_norm: self.input_norm,
        }
    }
}

pub struct Init(InitParams);

impl Stage for Init {
    type Params = InitParams;
    const KIND: &'static str = "init";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str =
        "the untrained network (seeded random weights, or pretrained ones) as a checkpoint";

    fn inputs(_: &InitParams) -> Vec<Port> {
        vec![]
    }
    fn outputs(_: &InitParams) -> Vec<Port> {
        vec![Port::artifact("checkpoint", "checkpoint")]
    }
    fn validate(p: &InitParams) -> Vec<ParamError> {
        let mut e = Vec::new();
        if let Err(m) = p.spec().net_config() {
            e.push(ParamError::new("arch", m));
        }
        if p.dim.is_some_and(|d| d < 1) {
            e.push(ParamError::new("dim", "must be at least 1"));
        }
        if p.bn_eps.is_nan() || p.bn_eps <= 0.0 {
            e.push(ParamError::new("bn_eps", "must be positive"));
        }
        if p.weights.is_none() && p.weights_scope != WeightsScope::Auto {
            e.push(ParamError::new(
                "weights_scope",
                "only applies with a `weights` file",
            ));
        }
        e
    }
    fn input_files(p: &InitParams) -> Vec<(&'static str, PathBuf)> {
        p.weights.iter().map(|w| ("weights", w.clone())).collect()
    }
    fn new(p: InitParams) -> Self {
        Self(p)
    }

    fn run(&mut self, ctx: &mut Context) -> Result<(), StageError> {
        let p = &self.0;
        let m = checkpoint::build_seeded(&p.spec(), ctx.device().tch(), ctx.seed())?;
        if let Some(file) = &p.weights {
            let path = ctx.base_dir().join(file);
            let scope = match p.weights_scope {
                WeightsScope::Auto => Scope::Auto,
                WeightsScope::Full => Scope::Full,
                WeightsScope::BackboneOnly => Scope::BackboneOnly,
            };
            let report = weights::load(&m.vs, &path, &LoadConfig { scope })
                .map_err(|e| StageError::msg(format!("`weights`: {e}")))?;
            info!(
                "init: {} variables from {} ({:?} layout); kept random: {}; skipped in the file: {}",
                report.loaded,
                path.display(),
                report.layout,
                report.not_loaded.len(),
                report.skipped.len()
            );
            let w = ctx.output("checkpoint")?;
            w.set_meta("weights_loaded", report.loaded);
        }
        checkpoint::save(ctx.output("checkpoint")?, &m)
    }
}
