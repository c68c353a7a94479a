//! `train`: one pass of PiCIE's loss over streamed view batches, from the previous
//! checkpoint to the next. Classifiers are the frozen k-means centroids of each view;
//! L = 1/2 (L_within + L_cross) with weighted cross-entropy in PyTorch's convention.

use std::collections::HashMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::io::batch::Views;
use crate::io::checkpoint::{self, AdamState};
use crate::io::ports::{BATCHES, CENTROIDS, CHECKPOINT, LABELS, TOKENS, TRAIN_METRICS, WEIGHTS};
use crate::io::tables::{self, TrainStep};
use crate::sections::PicieContext;
use picie_core::loss::picie_loss;
use picie_engine::{Context, ParamError, Port, Stage, StageError};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainParams {
    /// Adam learning rate (release: 1e-4 COCO-Stuff, 1e-3 Cityscapes).
    pub lr: f64,
    pub betas: [f64; 2],
    pub eps: f64,
    pub weight_decay: f64,
    /// Batches whose gradients add up before one optimizer step (8 x 16 = the release's 128).
    pub accumulate: usize,
    /// The loss's logits are <z, mu> / temperature. The release has none (1): with unit
    /// features and centroids its logits span at most [-1, 1], so the softmax can never be
    /// confident. Left out of the cache key at 1, so keys stay what they were.
    #[serde(skip_serializing_if = "is_one")]
    pub temperature: f64,
}

fn is_one(t: &f64) -> bool {
    *t == 1.0
}

impl Default for TrainParams {
    fn default() -> Self {
        Self {
            lr: 1e-4,
            betas: [0.9, 0.999],
            eps: 1e-8,
            weight_decay: 0.0,
            accumulate: 1,
            temperature: 1.0,
        }
    }
}

pub struct Train(TrainParams);

fn stack_labels(
    map: &HashMap<u32, Tensor>,
    images: &[u32],
    view: u8,
    hw: (i64, i64),
) -> Result<Tensor, StageError> {
    let mut v = Vec::with_capacity(images.len());
    for i in images {
        let t = map.get(i).ok_or_else(|| {
            StageError::msg(format!("the labels artifact has no labels for image {i}, view {view}: labels and images do not match"))
        })?;
        if t.size() != [hw.0, hw.1] {
            return Err(StageError::msg(format!(
                "labels of image {i} are {:?}, the features {}x{}: labels and images do not match",
                t.size(),
                hw.0,
                hw.1
            )));
        }
        v.push(t.shallow_clone());
    }
    Ok(Tensor::stack(&v, 0))
}

impl Stage for Train {
    type Params = TrainParams;
    const KIND: &'static str = "train";
    // 2: epoch and seed in the checkpoint's meta.
    const VERSION: u32 = 3;
    const DESCRIPTION: &'static str =
        "one epoch of PiCIE's loss with Adam: checkpoint in, checkpoint out";

    fn inputs(_: &TrainParams) -> Vec<Port> {
        vec![
            BATCHES.port().instead_of(TOKENS.name),
            TOKENS.instead_of(BATCHES.name),
            CHECKPOINT,
            CENTROIDS,
            LABELS,
            WEIGHTS,
        ]
    }
    fn outputs(_: &TrainParams) -> Vec<Port> {
        vec![CHECKPOINT, TRAIN_METRICS]
    }
    fn validate(p: &TrainParams) -> Vec<ParamError> {
        let mut e = Vec::new();
        if p.lr.is_nan() || p.lr <= 0.0 {
            e.push(ParamError::new("lr", "must be positive"));
        }
        if p.betas.iter().any(|b| !(0.0..1.0).contains(b)) {
            e.push(ParamError::new("betas", "each must be in [0, 1)"));
        }
        if p.accumulate == 0 {
            e.push(ParamError::new("accumulate", "must be at least 1"));
        }
        if p.temperature.is_nan() || p.temperature <= 0.0 {
            e.push(ParamError::new("temperature", "must be positive"));
        }
        e
    }
    fn new(p: TrainParams) -> Self {
        Self(p)
    }

    fn run(&mut self, ctx: &mut Context) -> Result<(), StageError> {
        let p = self.0.clone();
        let device = ctx.device().tch();
        let mut m = checkpoint::load(ctx.input(CHECKPOINT.name)?, device)?;
        m.channels_last();
        let mut c = Vec::new();
        let mut y = Vec::new();
        let mut w = Vec::new();
        for view in [1u8, 2] {
            let (cent, _) = tables::read_centroids(ctx.input(CENTROIDS.name)?, view)?;
            let k = m.net.check_centroids(&cent)?;
            let weights = tables::read_weights(ctx.input(WEIGHTS.name)?, view)?;
            if weights.len() != k {
                return Err(StageError::msg(format!(
                    "{} cluster weights for {k} centroids",
                    weights.len()
                )));
            }
            c.push(cent.to_device(device));
            w.push(
                Tensor::from_slice(&weights)
                    .to_kind(tch::Kind::Float)
                    .to_device(device),
            );
            y.push(tables::read_labels(ctx.input(LABELS.name)?, view, k)?);
        }
        let mut adam = m.adam.take().unwrap_or_else(|| AdamState::new(&m.vs));
        let epoch = ctx.epoch().unwrap_or(0);
        let mut rows = Vec::new();
        let mut pending = 0usize;
        let mut step = 0u32;
        let t0 = Instant::now();
        let mut seen = 0usize;
        let mut views = Views::open(ctx, &m)?;
        while let Some(b) = views.next(ctx)? {
            let (z1, z2) = b.features(&m.net, device, true)?;
            // Logits are linear in z: scaling z scales them.
            let (z1, z2) = if p.temperature == 1.0 {
                (z1, z2)
            } else {
                (z1 / p.temperature, z2 / p.temperature)
            };
            let hw = (z1.size()[2], z1.size()[3]);
            let y1 = stack_labels(&y[0], &b.images, 1, hw)?.to_device(device);
            let y2 = stack_labels(&y[1], &b.images, 2, hw)?.to_device(device);
            let (loss, within, cross) =
                picie_loss([&z1, &z2], [&y1, &y2], [&c[0], &c[1]], [&w[0], &w[1]]);
            (&loss / p.accumulate as f64).backward();
            pending += 1;
            seen += b.images.len();
            if pending == p.accumulate {
                adam.step(&m.vs, p.lr, (p.betas[0], p.betas[1]), p.eps, p.weight_decay);
                checkpoint::zero_grads(&m.vs);
                pending = 0;
            }
            step += 1;
            rows.push(TrainStep {
                epoch,
                step,
                loss: loss.double_value(&[]),
                loss_within: within.double_value(&[]),
                loss_cross: cross.double_value(&[]),
                lr: p.lr,
                images_per_s: seen as f64 / t0.elapsed().as_secs_f64().max(1e-9),
            });
            ctx.progress().inc(b.images.len() as u64);
            ctx.progress()
                .set_message(format!("loss {:.4}", loss.double_value(&[])));
        }
        if pending > 0 {
            adam.step(&m.vs, p.lr, (p.betas[0], p.betas[1]), p.eps, p.weight_decay);
            checkpoint::zero_grads(&m.vs);
        }
        if step == 0 {
            return Err(StageError::msg("no training batches arrived"));
        }
        m.adam = Some(adam);
        // No generator state to keep: every random draw in picie is a pure function of
        // (seed, epoch, image), so the seed and epoch are the whole RNG state to resume from.
        let seed = ctx.seed();
        let out = ctx.output(CHECKPOINT.name)?;
        out.set_meta("epoch", epoch);
        out.set_meta("seed", seed);
        checkpoint::save(out, &m)?;
        ctx.output(TRAIN_METRICS.name)?
            .write(&tables::train_metrics_batch(&rows)?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::batch::{HostTensor, ViewBatch};
    use picie_core::augment_params::Geometric;
    use picie_core::model::weights::{self, LoadConfig};
    use picie_core::model::NetConfig;

    fn get(ts: &[(String, Tensor)], name: &str) -> Tensor {
        ts.iter()
            .find(|(k, _)| k == name)
            .unwrap_or_else(|| panic!("no `{name}` in the reference"))
            .1
            .shallow_clone()
    }

    /// The release's loss (no temperature) keeps the cache keys it had before the param
    /// existed; another temperature is keyed, and a non-positive one refused.
    #[test]
    fn temperature_one_is_left_out_of_the_key() {
        let keyed = |t: f64| {
            serde_json::to_value(TrainParams {
                temperature: t,
                ..TrainParams::default()
            })
            .unwrap()
        };
        assert!(keyed(1.0).get("temperature").is_none());
        assert_eq!(keyed(0.1)["temperature"], 0.1);
        let bad = Train::validate(&TrainParams {
            temperature: 0.0,
            ..TrainParams::default()
        });
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].field, "temperature");
    }

    fn max_abs(t: &Tensor) -> f64 {
        t.abs().max().double_value(&[])
    }

    /// Our loss terms and the gradients of the first conv and of a decoder conv equal
    /// PyTorch's for the same weights, views, G, centroids, labels and cluster weights, with
    /// the weights in the default order and in the channels-last order `train` uses.
    #[test]
    fn loss_and_gradients_match_pytorch() {
        let dir = tempfile::tempdir().unwrap();
        if picie_core::run_oracle("loss parity", "loss_parity.py", [dir.path()]).is_none() {
            return;
        }
        for channels_last in [false, true] {
            eprintln!("channels last: {channels_last}");
            check_loss_parity(dir.path(), channels_last);
        }
    }

    fn check_loss_parity(dir: &std::path::Path, channels_last: bool) {
        let m = checkpoint::build(&NetConfig::default(), tch::Device::Cpu).unwrap();
        weights::load(
            &m.vs,
            dir.join("weights.safetensors"),
            &LoadConfig::default(),
        )
        .unwrap();
        if channels_last {
            m.channels_last();
            let w = &m.vs.variables()["backbone.conv1.weight"];
            assert_eq!(w.stride()[1], 1, "conv1 weight is not channels-last");
        }
        let case = Tensor::read_safetensors(dir.join("case.safetensors")).unwrap();
        let refs = Tensor::read_safetensors(dir.join("ref.safetensors")).unwrap();
        let geo = |crop_frac, u_x, u_y, flip| Geometric {
            crop_frac,
            u_x,
            u_y,
            flip,
        };
        let b = ViewBatch {
            epoch: 1,
            images: vec![0, 1],
            view1: HostTensor::from_tensor(&get(&case, "x1")).unwrap(),
            view2: HostTensor::from_tensor(&get(&case, "x2")).unwrap(),
            geometric: vec![geo(0.5, 0.25, 0.75, true), geo(0.75, 0.25, 0.75, false)],
            tokens: false,
        };
        let (z1, z2) = b.features(&m.net, tch::Device::Cpu, true).unwrap();
        let (c1, c2) = (get(&case, "c1"), get(&case, "c2"));
        let (y1, y2) = (get(&case, "y1"), get(&case, "y2"));
        let (w1, w2) = (get(&case, "w1"), get(&case, "w2"));
        let (loss, within, cross) = picie_loss([&z1, &z2], [&y1, &y2], [&c1, &c2], [&w1, &w2]);
        loss.backward();
        for (name, ours) in [("loss", &loss), ("within", &within), ("cross", &cross)] {
            let theirs = get(&refs, name).double_value(&[0]);
            let ours = ours.double_value(&[]);
            eprintln!("{name}: ours {ours}, PyTorch {theirs}");
            assert!(
                (ours - theirs).abs() < 1e-4,
                "{name}: ours {ours}, PyTorch {theirs}"
            );
        }
        let vars = m.vs.variables();
        for (var, name) in [
            ("backbone.conv1.weight", "grad_conv1"),
            ("decoder.layer1.weight", "grad_decoder_layer1"),
        ] {
            let ours = vars[var].grad();
            let theirs = get(&refs, name);
            assert_eq!(ours.size(), theirs.size(), "{var}");
            let err = max_abs(&(&ours - &theirs));
            let scale = max_abs(&theirs);
            eprintln!("{var}: max |ours - PyTorch| {err:e}, max |PyTorch| {scale:e}");
            assert!(scale > 0.0, "{var}: zero reference gradient");
            assert!(
                err < 1e-4 && err <= 1e-3 * scale,
                "{var}: max |ours - PyTorch| {err:e} (max |PyTorch| {scale:e})"
            );
        }
    }
}
