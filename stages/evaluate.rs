//! `evaluate`: the release's final protocol. Fresh k-means on the training images' features
//! (centre crops, no augmentation, network in eval mode), then every validation pixel gets
//! its cluster (nearest centroid, scores upsampled bilinearly to the label size), clusters
//! are matched to classes (Hungarian, or majority when over-clustering), and pixel accuracy
//! and mIoU are computed. The metrics of earlier epochs come in through `history`, so one
//! table holds them all. The centroids the predictions used are stored too (`centroids`),
//! so `picie report` draws exactly the evaluated predictions.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Float64Array, ListArray, RecordBatch, StringArray, UInt32Array, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Float64Type, Schema};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};
use tracing::info;

use crate::checkpoint;
use crate::data::{preprocess, Split};
use crate::kmeans::{self, KmeansConfig};
use crate::metrics::{self, Confusion, Matching};
use crate::stages::kmeans::{check_minibatch_rows, Mode as KmeansMode, Online};
use crate::tables;
use crate::transforms::geometric::to_tensor_normalised;
use crate::{Context, ParamError, Port, Stage, StageError};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Predictor {
    /// argmax 2<z, mu> - |mu|^2 with fresh k-means centroids (the release's final evaluation).
    NearestCentroid,
    /// argmax <z, mu> with the epoch's training centroids of view `view` (the release's
    /// in-training evaluation, which it runs for both views; needs the `centroids` input).
    DotProduct,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchingParam {
    Hungarian,
    Majority,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvaluateParams {
    /// Evaluation side: shorter side resized to it, centre crop (release: 320).
    pub res: u32,
    /// Clusters (null: the number of classes).
    pub k: Option<usize>,
    pub n_iter: usize,
    /// The fresh k-means: `lloyd` holds every training feature in memory (exact; fine for
    /// CamVid's 2.3M), `minibatch` is the release's scheme (full k-means on the first
    /// `init_rows` rows, then an online update every `batch_rows` rows), for data sets whose
    /// features do not fit (COCO-Stuff: 318M).
    pub mode: KmeansMode,
    pub init_rows: usize,
    pub batch_rows: usize,
    pub predictor: Predictor,
    pub matching: MatchingParam,
    pub batch: usize,
    pub threads: usize,
    /// Which view's training centroids `dot_product` uses (1 or 2).
    pub view: u8,
    /// Use only the first N training / validation images (null: all).
    pub train_limit: Option<usize>,
    pub val_limit: Option<usize>,
}

impl Default for EvaluateParams {
    fn default() -> Self {
        Self {
            res: 320,
            k: None,
            n_iter: 20,
            mode: KmeansMode::Lloyd,
            init_rows: 1 << 20,
            batch_rows: 1 << 17,
            predictor: Predictor::NearestCentroid,
            matching: MatchingParam::Hungarian,
            batch: 16,
            threads: 2,
            view: 1,
            train_limit: None,
            val_limit: None,
        }
    }
}

pub struct Evaluate(EvaluateParams);

pub fn metrics_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("epoch", DataType::UInt32, false),
        Field::new("predictor", DataType::Utf8, false),
        Field::new("k", DataType::UInt32, false),
        Field::new("pixel_accuracy", DataType::Float64, false),
        Field::new("miou", DataType::Float64, false),
        Field::new("thing_miou", DataType::Float64, true),
        Field::new("stuff_miou", DataType::Float64, true),
        Field::new("valid_pixels", DataType::UInt64, false),
        Field::new(
            "per_class_iou",
            DataType::List(Arc::new(Field::new("item", DataType::Float64, true))),
            false,
        ),
    ]))
}

impl Stage for Evaluate {
    type Params = EvaluateParams;
    const KIND: &'static str = "evaluate";
    // 2: the centroids used are an output. 3: `view`; dot_product's predictor names its view
    // and its k is the centroids'.
    const VERSION: u32 = 3;
    const DESCRIPTION: &'static str =
        "fresh k-means + Hungarian-matched mIoU and pixel accuracy on the validation split";

    fn inputs(_: &EvaluateParams) -> Vec<Port> {
        vec![
            Port::artifact("checkpoint", "checkpoint"),
            Port::artifact("centroids", "centroids").optional(),
            Port::artifact("history", "metrics").optional(),
        ]
    }
    fn outputs(_: &EvaluateParams) -> Vec<Port> {
        vec![
            Port::artifact("metrics", "metrics"),
            Port::artifact("confusion", "confusion"),
            Port::artifact("centroids", "centroids"),
        ]
    }
    fn validate(p: &EvaluateParams) -> Vec<ParamError> {
        let mut e = Vec::new();
        if p.res < 8 {
            e.push(ParamError::new("res", "must be at least 8"));
        }
        if p.k.is_some_and(|k| k < 2) {
            e.push(ParamError::new("k", "must be at least 2"));
        }
        check_minibatch_rows(p.init_rows, p.batch_rows, &mut e);
        if !(1..=2).contains(&p.view) {
            e.push(ParamError::new("view", "must be 1 or 2"));
        } else if p.view != 1 && p.predictor != Predictor::DotProduct {
            e.push(ParamError::new(
                "view",
                "only `predictor: dot_product` uses a view's centroids",
            ));
        }
        if p.batch == 0 || p.threads == 0 {
            e.push(ParamError::new(
                if p.batch == 0 { "batch" } else { "threads" },
                "must be at least 1",
            ));
        }
        e
    }
    fn reads_dataset() -> bool {
        true
    }
    fn new(p: EvaluateParams) -> Self {
        Self(p)
    }

    fn run(&mut self, ctx: &mut Context) -> Result<(), StageError> {
        let p = self.0.clone();
        let device = ctx.device().tch();
        let m = checkpoint::load(ctx.input("checkpoint")?, device)?;
        m.channels_last();
        let data = ctx.dataset()?.clone();
        let val = data.open(Split::Val).map_err(StageError::msg)?;
        let classes = val.classes().len();
        // dot_product predicts with the training centroids, so their count is k.
        let trained = match p.predictor {
            Predictor::DotProduct => {
                if !ctx.has_input("centroids") {
                    return Err(StageError::msg(
                        "predictor `dot_product` needs the `centroids` input",
                    ));
                }
                let (c, counts) = tables::read_centroids(ctx.input("centroids")?, p.view)?;
                if let Some(k) = p.k.filter(|&k| k != counts.len()) {
                    return Err(StageError::msg(format!(
                        "k = {k} but the view-{} centroids number {}: leave `k` unset with \
                         `predictor: dot_product`",
                        p.view,
                        counts.len()
                    )));
                }
                Some((c.to_device(device), counts))
            }
            Predictor::NearestCentroid => None,
        };
        let k = trained
            .as_ref()
            .map_or(p.k.unwrap_or(classes), |(_, counts)| counts.len());
        let ignore = val.ignore_index();
        if p.matching == MatchingParam::Hungarian && k != classes {
            // Checked before any work: the matching would fail only at the end.
            return Err(StageError::msg(format!(
                "k = {k} clusters for {classes} classes: Hungarian matching needs k = classes \
                 (set `k` to the classes, or use `matching: majority` to over-cluster)"
            )));
        }

        let (centroids, counts) = match trained {
            Some(c) => c,
            None => {
                let train = data.open(Split::Train).map_err(StageError::msg)?;
                let n = p.train_limit.map_or(train.len(), |l| l.min(train.len()));
                let cfg = KmeansConfig {
                    k,
                    n_iter: p.n_iter,
                    seed: ctx.seed(),
                    ..KmeansConfig::default()
                };
                // Lloyd keeps every feature; mini-batch folds them in as they come.
                let mut feats: Vec<Tensor> = Vec::new();
                let mut online = (p.mode == KmeansMode::Minibatch)
                    .then(|| Online::new(1, &cfg, p.init_rows, p.batch_rows, device));
                let mut stats = Vec::new();
                let ids: Vec<usize> = (0..n).collect();
                for chunk in ids.chunks(p.batch) {
                    ctx.check_cancelled()?;
                    let x = load_images(train.as_ref(), chunk, p.res, p.threads)?;
                    let z = tch::no_grad(|| m.net.forward_t(&x.to_device(device), false))
                        .map_err(StageError::msg)?;
                    let d = z.size()[1];
                    let rows = z.permute([0, 2, 3, 1]).reshape([-1, d]);
                    match online.as_mut() {
                        Some(o) => o.push(rows, &mut stats)?,
                        None => feats.push(rows),
                    }
                }
                match online {
                    Some(o) => o.finish(&mut stats)?,
                    None => {
                        let fit = kmeans::lloyd(
                            || feats.iter().map(|t| Ok::<_, StageError>(t.shallow_clone())),
                            &cfg,
                            device,
                        )
                        .map_err(StageError::msg)?;
                        (
                            fit.kmeans.centroids().shallow_clone(),
                            fit.kmeans.counts().to_vec(),
                        )
                    }
                }
            }
        };
        if centroids.size()[1] != m.net.dim() {
            return Err(StageError::msg(format!(
                "centroids have dimension {}, the network's features {}",
                centroids.size()[1],
                m.net.dim()
            )));
        }
        let c_out = ctx.output("centroids")?;
        c_out.write(&tables::centroids_batch(1, &centroids, &counts)?)?;
        c_out.set_meta("k", counts.len());

        let n = p.val_limit.map_or(val.len(), |l| l.min(val.len()));
        let mut conf = Confusion::new(classes, k).map_err(StageError::msg)?;
        let mut cluster_px = vec![0u64; k];
        let ids: Vec<usize> = (0..n).collect();
        ctx.progress().set_length(n as u64);
        for chunk in ids.chunks(p.batch) {
            ctx.check_cancelled()?;
            let loaded = preprocess::par_map(chunk, p.threads, |&i| {
                preprocess::load_eval(val.as_ref(), i, p.res).map_err(StageError::msg)
            });
            let mut imgs = Vec::new();
            let mut masks = Vec::new();
            for r in loaded {
                let (img, mask) = r?;
                imgs.push(to_tensor_normalised(&img));
                masks.push(mask);
            }
            let x = Tensor::stack(&imgs, 0).to_device(device);
            let pred = tch::no_grad(|| -> Result<Tensor, StageError> {
                let z = m.net.forward_t(&x, false).map_err(StageError::msg)?;
                let dots = crate::stages::train::classify(&z, &centroids);
                let scores = match p.predictor {
                    Predictor::NearestCentroid => {
                        let norms = centroids.pow_tensor_scalar(2).sum_dim_intlist(
                            [1i64].as_slice(),
                            false,
                            Kind::Float,
                        );
                        dots * 2.0 - norms.view([1, -1, 1, 1])
                    }
                    Predictor::DotProduct => dots,
                };
                let up =
                    scores.upsample_bilinear2d([p.res as i64, p.res as i64], false, None, None);
                Ok(up.argmax(1, false).to_device(tch::Device::Cpu))
            })?;
            let pred = Vec::<i64>::try_from(pred.flatten(0, -1))?;
            let per = (p.res * p.res) as usize;
            for (j, mask) in masks.iter().enumerate() {
                let px: Vec<u32> = pred[j * per..(j + 1) * per]
                    .iter()
                    .map(|&v| v as u32)
                    .collect();
                for &c in &px {
                    cluster_px[c as usize] += 1;
                }
                if let Some(mask) = mask {
                    conf.add(&mask.data, &px, Some(ignore))
                        .map_err(|e| StageError::msg(format!("{}: {e}", val.id(chunk[j]))))?;
                }
            }
            ctx.progress().inc(chunk.len() as u64);
        }

        let epoch = ctx.epoch().unwrap_or(0);
        let history: Vec<RecordBatch> = if ctx.has_input("history") {
            ctx.input("history")?.read_all()?
        } else {
            Vec::new()
        };
        let out = ctx.output("metrics")?;
        for b in &history {
            out.write(b)?;
        }
        if conf.total() == 0 {
            // No masks: say what the clusters look like instead of failing.
            info!("epoch {epoch}: no validation masks; pixels per cluster: {cluster_px:?}");
            return Ok(());
        }
        let is_thing: Option<Vec<bool>> = val.classes().iter().map(|c| c.is_thing).collect();
        let matching = match p.matching {
            MatchingParam::Hungarian => Matching::Hungarian,
            MatchingParam::Majority => Matching::Majority,
        };
        let (mt, _assign) =
            metrics::evaluate(&conf, matching, is_thing.as_deref()).map_err(StageError::msg)?;
        let predictor = match p.predictor {
            Predictor::NearestCentroid => "nearest_centroid".to_string(),
            Predictor::DotProduct => format!("dot_product_view{}", p.view),
        };
        info!(
            "epoch {epoch}: mIoU {:.2}, pixel accuracy {:.2} ({k} clusters, {predictor})",
            mt.miou, mt.pixel_accuracy
        );
        let cols: Vec<ArrayRef> = vec![
            Arc::new(UInt32Array::from(vec![epoch])),
            Arc::new(StringArray::from(vec![predictor.as_str()])),
            Arc::new(UInt32Array::from(vec![k as u32])),
            Arc::new(Float64Array::from(vec![mt.pixel_accuracy])),
            Arc::new(Float64Array::from(vec![mt.miou])),
            Arc::new(Float64Array::from(vec![mt.thing_miou])),
            Arc::new(Float64Array::from(vec![mt.stuff_miou])),
            Arc::new(UInt64Array::from(vec![mt.valid_pixels])),
            Arc::new(ListArray::from_iter_primitive::<Float64Type, _, _>(vec![
                Some(
                    mt.per_class_iou
                        .iter()
                        .map(|v| Some(*v))
                        .collect::<Vec<_>>(),
                ),
            ])),
        ];
        out.write(&RecordBatch::try_new(metrics_schema(), cols)?)?;
        out.set_meta("miou", mt.miou);
        out.set_meta("pixel_accuracy", mt.pixel_accuracy);

        let conf_out = ctx.output("confusion")?;
        let mut gt = Vec::new();
        let mut cl = Vec::new();
        let mut count = Vec::new();
        for g in 0..classes {
            for c in 0..k {
                gt.push(g as u32);
                cl.push(c as u32);
                count.push(conf.get(g, c).unwrap_or(0));
            }
        }
        let schema = Arc::new(Schema::new(vec![
            Field::new("class", DataType::UInt32, false),
            Field::new("cluster", DataType::UInt32, false),
            Field::new("pixels", DataType::UInt64, false),
        ]));
        conf_out.write(&RecordBatch::try_new(
            schema,
            vec![
                Arc::new(UInt32Array::from(gt)) as ArrayRef,
                Arc::new(UInt32Array::from(cl)),
                Arc::new(UInt64Array::from(count)),
            ],
        )?)?;
        Ok(())
    }
}

/// Evaluation preprocessing of a batch of images, as one normalised N x 3 x res x res tensor.
fn load_images(
    ds: &dyn crate::data::Dataset,
    ids: &[usize],
    res: u32,
    threads: usize,
) -> Result<Tensor, StageError> {
    let imgs = preprocess::par_map(ids, threads, |&i| {
        preprocess::load_eval(ds, i, res)
            .map(|(img, _)| to_tensor_normalised(&img))
            .map_err(StageError::msg)
    });
    let imgs: Vec<Tensor> = imgs.into_iter().collect::<Result<_, _>>()?;
    Ok(Tensor::stack(&imgs, 0))
}
