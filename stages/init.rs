//! `init`: the network before training, as a checkpoint artifact (random weights drawn
//! from the pipeline's seed).

use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, ModelSpec};
use crate::{Context, ParamError, Port, Stage, StageError};

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
}

impl Default for InitParams {
    fn default() -> Self {
        let m = ModelSpec::default();
        Self {
            arch: m.arch,
            dim: m.dim,
            stride_in_1x1: m.stride_in_1x1,
            bn_eps: m.bn_eps,
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
        }
    }
}

pub struct Init(InitParams);

impl Stage for Init {
    type Params = InitParams;
    const KIND: &'static str = "init";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str =
        "the untrained network (seeded random weights) as a checkpoint";

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
        e
    }
    fn new(p: InitParams) -> Self {
        Self(p)
    }

    fn run(&mut self, ctx: &mut Context) -> Result<(), StageError> {
        // libtorch's generator draws the initial weights: seed it for reproducible runs.
        tch::manual_seed(ctx.seed() as i64);
        let m = checkpoint::build(&self.0.spec(), ctx.device().tch())?;
        checkpoint::save(ctx.output("checkpoint")?, &m)
    }
}
