//! The sample panels: the last evaluation's predictions for the first validation images,
//! drawn as image | ground truth | prediction | overlay (raster: they are images), and when
//! that evaluation ran a dense CRF (`crf:`), its refined prediction as a fifth panel.
//!
//! Predictions are the last evaluation's: its network (the `checkpoint` it wrote after a
//! train-mode k-means pass, else its recorded `checkpoint` input), its preprocessing at its
//! `res`, network in eval mode, the centroids it stored (fresh k-means, or the training
//! centroids for `dot_product`) with its predictor's score, upsampled bilinearly, argmax;
//! clusters are coloured through the matching of the evaluation's own confusion over the
//! whole validation split (Hungarian when K == classes, majority otherwise).

use image::{Rgb, RgbImage};
use tch::Tensor;

use crate::analysis::{AnalysisError, Run};
use crate::data::{preprocess, ClassInfo, Split};
use crate::metrics::{self, Matching};
use crate::predict::{self, Predictor};
use crate::transforms::geometric::to_tensor_normalised;

const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
/// Ignored or unlabelled pixels of the ground truth.
const BLACK: Rgb<u8> = Rgb([0, 0, 0]);
/// Clusters matched to no class.
const GREY: Rgb<u8> = Rgb([200, 200, 200]);

/// The evaluation data set of the run's pipeline file.
fn dataset(r: &Run) -> Result<std::sync::Arc<crate::data::DatasetConfig>, AnalysisError> {
    let path = &r.record.pipeline;
    let plan = crate::plan::Plan::load(path, &crate::stages::builtin()).map_err(|e| {
        AnalysisError::Other(format!(
            "loading the run's pipeline {} (needed for its data set): {e}",
            path.display()
        ))
    })?;
    crate::sections::dataset_of(&plan)
        .cloned()
        .map(std::sync::Arc::new)
        .ok_or_else(|| AnalysisError::Other(format!("{} names no data set", path.display())))
}

pub(super) fn dataset_classes(r: &Run) -> Result<Vec<ClassInfo>, AnalysisError> {
    Ok(open_val(r)?.classes().to_vec())
}

fn class_colour(classes: &[ClassInfo], c: Option<usize>) -> Rgb<u8> {
    match c.and_then(|c| classes.get(c)) {
        Some(ci) => Rgb(ci.colour),
        None => GREY,
    }
}

/// One validation image as the last evaluation saw it: the preprocessed image, its mask,
/// the cluster of every pixel (row-major, `res` x `res`), and the clusters after the
/// evaluation's dense CRF when it ran one.
pub struct Predicted {
    pub image: RgbImage,
    pub mask: Option<crate::data::Mask>,
    pub clusters: Vec<u32>,
    pub refined: Option<Vec<u32>>,
}

/// The last evaluation's predictions for the first `n` validation images, with its network,
/// preprocessing, centroids and predictor, and its k.
pub fn predictions(r: &Run, n: usize) -> Result<(Vec<Predicted>, usize), AnalysisError> {
    predict(r, open_val(r)?.as_ref(), n)
}

fn open_val(r: &Run) -> Result<Box<dyn crate::data::Dataset>, AnalysisError> {
    dataset(r)?
        .open(Split::Val)
        .map_err(|e| AnalysisError::Other(e.to_string()))
}

fn predict(
    r: &Run,
    val: &dyn crate::data::Dataset,
    n: usize,
) -> Result<(Vec<Predicted>, usize), AnalysisError> {
    let n = n.min(val.len());

    let eval = r.last_node("evaluate", "metrics")?;
    let eval_art = r.artifact(eval, "metrics")?;
    let prov = &eval_art.manifest.provenance;
    let res = prov["params"]["res"].as_u64().unwrap_or(320) as u32;
    // With a train-mode fresh k-means pass the evaluation predicted with the network that
    // pass updated (its `checkpoint` output); otherwise with its input checkpoint.
    let ckpt = if eval.outputs.contains_key("checkpoint") {
        r.artifact(eval, "checkpoint")?
    } else {
        let key = prov["inputs"]["checkpoint"]
            .as_str()
            .ok_or_else(|| AnalysisError::BadArtifact {
                key: eval_art.key().into(),
                message: "its provenance names no checkpoint input".into(),
            })?
            .to_string();
        r.artifact_by_key(&key, &eval.name, "checkpoint (input)")?
    };
    let (centroids, _) = crate::tables::read_centroids(&r.artifact(eval, "centroids")?, 1)?;
    let crf_params: Option<crate::stages::evaluate::CrfParams> = match &prov["params"]["crf"] {
        serde_json::Value::Null => None,
        v => Some(
            serde_json::from_value(v.clone()).map_err(|e| AnalysisError::BadArtifact {
                key: eval_art.key().into(),
                message: format!("its `crf` params: {e}"),
            })?,
        ),
    };

    let device = tch::Device::Cpu;
    let m = crate::checkpoint::load(&ckpt, device)?;
    m.channels_last();
    let k = m
        .net
        .check_centroids(&centroids)
        .map_err(|e| AnalysisError::Other(format!("`{}`: {e}", eval.name)))?;
    // cluster_probe's stored centroids are unit vectors: its cosine is nearest_centroid's
    // ranking, and its soft form (for the CRF) is its own.
    let predictor = match prov["params"]["predictor"].as_str() {
        Some("dot_product") => Predictor::DotProduct,
        Some("cluster_probe") => Predictor::ClusterProbe,
        _ => Predictor::NearestCentroid,
    };

    let mut items = Vec::new();
    for i in 0..n {
        let (img, mask) =
            preprocess::load_eval(val, i, res).map_err(|e| AnalysisError::Other(e.to_string()))?;
        if img.dimensions() != (res, res) {
            return Err(AnalysisError::Other(format!(
                "evaluation preprocessing of {} gave {:?}, not {res}x{res}",
                val.id(i),
                img.dimensions()
            )));
        }
        let x = to_tensor_normalised(&img).unsqueeze(0);
        let (pred, unary) = tch::no_grad(|| -> Result<(Tensor, Option<Tensor>), AnalysisError> {
            let z = m
                .net
                .forward_t(&x, false)
                .map_err(|e| AnalysisError::Other(e.to_string()))?;
            // As the evaluate stage predicts.
            let up = predict::upsampled_scores(&z, &centroids, predictor, res as i64);
            let unary = crf_params
                .as_ref()
                .map(|c| predict::unary(&up, predictor, c.temperature));
            Ok((up.argmax(1, false), unary))
        })?;
        let err = |e: tch::TchError| AnalysisError::Other(e.to_string());
        let pred: Vec<u32> = Vec::<i64>::try_from(pred.flatten(0, -1))
            .map_err(err)?
            .into_iter()
            .map(|v| v as u32)
            .collect();
        let refined = match (&crf_params, unary) {
            (Some(c), Some(u)) => {
                let u = Vec::<f32>::try_from(u.flatten(0, -1)).map_err(err)?;
                let rgb = img.as_raw();
                let out = crate::crf::refine(
                    &c.config(),
                    &crate::crf::CrfImage {
                        width: res as usize,
                        height: res as usize,
                        classes: k,
                        rgb,
                        unary: &u,
                    },
                )
                .map_err(|e| AnalysisError::Other(format!("{}: {e}", val.id(i))))?;
                Some(out.labels)
            }
            _ => None,
        };
        items.push(Predicted {
            image: img,
            mask,
            clusters: pred,
            refined,
        });
    }
    Ok((items, k))
}

/// The sample panels of the first `n` validation images, and the classes.
pub(super) fn samples(r: &Run, n: usize) -> Result<(Vec<RgbImage>, Vec<ClassInfo>), AnalysisError> {
    let val = open_val(r)?;
    let (items, k) = predict(r, val.as_ref(), n)?;
    let eval = r.last_node("evaluate", "metrics")?;
    let classes = val.classes().to_vec();
    let ignore = val.ignore_index();
    let res = items.first().map_or(0, |p| p.image.width());
    // The evaluation's matching, over its whole validation confusion.
    let conf = r
        .confusion(eval.epoch.unwrap_or(0))
        .ok()
        .filter(|c| c.total() > 0);
    let matching = match conf {
        None => vec![None; k],
        Some(c) if c.clusters() != k => {
            return Err(AnalysisError::Other(format!(
                "the confusion of `{}` has {} clusters, its centroids {k}",
                eval.name,
                c.clusters()
            )))
        }
        Some(c) if k == c.classes() => metrics::match_clusters(&c, Matching::Hungarian)?,
        Some(c) => metrics::match_clusters(&c, Matching::Majority)?,
    };

    // Small evaluation crops are scaled up (nearest) so the panels stay visible.
    let scale = (128 / res.max(1)).max(1);
    let side = res * scale;
    let gap = 4;
    let mut out = Vec::new();
    for Predicted {
        image: img,
        mask,
        clusters: pred,
        refined,
    } in items
    {
        let panels = if refined.is_some() { 5 } else { 4 };
        let mut panel = RgbImage::from_pixel(panels * side + (panels - 1) * gap, side, WHITE);
        for y in 0..side {
            for x in 0..side {
                let (sx, sy) = (x / scale, y / scale);
                let p = *img.get_pixel(sx, sy);
                let idx = (sy * res + sx) as usize;
                let gt = match mask.as_ref().and_then(|m| m.get(sx, sy)) {
                    Some(g) if g != ignore => class_colour(&classes, Some(g as usize)),
                    _ => BLACK,
                };
                let pc = class_colour(
                    &classes,
                    matching.get(pred[idx] as usize).copied().flatten(),
                );
                let blend = Rgb(std::array::from_fn(|c| {
                    ((p.0[c] as u16 + pc.0[c] as u16) / 2) as u8
                }));
                panel.put_pixel(x, y, p);
                panel.put_pixel(side + gap + x, y, gt);
                panel.put_pixel(2 * (side + gap) + x, y, pc);
                panel.put_pixel(3 * (side + gap) + x, y, blend);
                if let Some(r) = &refined {
                    // The CRF's clusters, coloured through the same matching: it relabels
                    // pixels among the same clusters.
                    let rc =
                        class_colour(&classes, matching.get(r[idx] as usize).copied().flatten());
                    panel.put_pixel(4 * (side + gap) + x, y, rc);
                }
            }
        }
        out.push(panel);
    }
    Ok((out, classes))
}
