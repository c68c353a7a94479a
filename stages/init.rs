//! `init`: the network before training, as a checkpoint artifact: seeded random weights,
//! optionally overwritten from a pretrained safetensors file (`picie weights import` makes
//! one from torchvision's .pth, the release's checkpoints or the Keras ResNet-50).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tracing::info;

use crate::io::checkpoint;
use crate::io::ports::CHECKPOINT;
use crate::sections::PicieContext;
use picie_core::model::weights::Scope;
use picie_core::model::NetConfig;
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

// No `deny_unknown_fields`: serde cannot combine it with `flatten`; the engine reports
// unknown params itself, each at its place.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct InitParams {
    /// The network: arch, dim, stride_in_1x1, bn_eps, input_norm; for ViTs pos_interp,
    /// feature_block, train_blocks.
    #[serde(flatten)]
    pub model: NetConfig,
    /// Pretrained weights (safetensors), relative to the pipeline file; its checksum is part
    /// of the cache key.
    pub weights: Option<PathBuf>,
    pub weights_scope: WeightsScope,
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
        vec![CHECKPOINT]
    }
    /// A file that sets every variable leaves nothing to the seed: a sweep shares it.
    fn seeded(p: &InitParams) -> bool {
        !(p.weights.is_some() && p.weights_scope == WeightsScope::Full)
    }
    fn validate(p: &InitParams) -> Vec<ParamError> {
        let mut e: Vec<ParamError> = p
            .model
            .problems()
            .into_iter()
            .map(|(field, msg)| ParamError::new(field, msg))
            .collect();
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
        let m = checkpoint::build_seeded(&p.model, ctx.device().tch(), ctx.seed())?;
        if let Some(file) = &p.weights {
            let scope = match p.weights_scope {
                WeightsScope::Auto => Scope::Auto,
                WeightsScope::Full => Scope::Full,
                WeightsScope::BackboneOnly => Scope::BackboneOnly,
            };
            let (path, report) = checkpoint::load_weights(ctx, &m, file, scope)?;
            info!(
                "init: {} variables from {} ({:?} layout); kept random: {}; skipped in the file: {}",
                report.loaded,
                path.display(),
                report.layout,
                report.not_loaded.len(),
                report.skipped.len()
            );
            let w = ctx.output(CHECKPOINT.name)?;
            w.set_meta("weights_loaded", report.loaded);
        }
        checkpoint::save(ctx.output(CHECKPOINT.name)?, &m)
    }
}

#[cfg(test)]
mod tests {
    use picie_engine::testing::Fixture;
    use picie_engine::Error;

    fn pipeline(params: &str) -> String {
        format!(
            "name: t\ndevice: cpu\nstages:\n  - name: init\n    kind: init\n    params: {params}\n"
        )
    }

    #[test]
    fn params_are_the_one_model_config_plus_weights() {
        let f = Fixture::new(crate::builtin());
        let plan = f
            .plan(&pipeline(
                "{arch: ResNet-50, dim: 64, stride_in_1x1: true, bn_eps: 1e-3, input_norm: caffe_bgr}",
            ))
            .unwrap();
        let p = &plan.nodes[0].provenance["params"];
        assert_eq!(p["arch"], "resnet50", "{p}");
        assert_eq!(p["dim"], 64);
        assert_eq!(p["stride_in_1x1"], true);
        assert_eq!(p["bn_eps"], 1e-3);
        assert_eq!(p["input_norm"], "caffe_bgr");
        assert!(p["weights"].is_null());
        assert_eq!(p["weights_scope"], "auto");

        match f.plan(&pipeline("{arch: resnet19, dims: 3}")) {
            Err(Error::Invalid(d)) => {
                let t = d.to_string();
                assert!(t.contains("unknown param `dims` for kind `init`"), "{t}");
                assert!(t.contains("unknown architecture `resnet19`"), "{t}");
            }
            other => panic!("expected diagnostics, got {:?}", other.map(|_| ())),
        }
    }
}
