//! Scoring an evaluation: the confusion counts of the clusters (and, with a CRF or a probe,
//! those after the CRF and the linear probe's) matched and written as metrics, and the
//! joins that add up the counts of a sharded evaluation's parts.

use super::*;

/// The parts' confusion counts (stored as their `output`), added up.
pub(super) fn summed_confusion(ctx: &Context, output: &str) -> Result<Confusion, StageError> {
    let mut conf: Option<Confusion> = None;
    for part in ctx.parts(output)? {
        let c = tables::read_confusion(part)?;
        match conf.as_mut() {
            None => conf = Some(c),
            Some(total) => total.merge(&c)?,
        }
    }
    conf.ok_or_else(|| StageError::msg("no parts to join"))
}

/// The second round's join: the parts' confusion counts added, scored with the fitted
/// centroids stored beside them.
pub(super) fn score_parts(p: &EvaluateParams, ctx: &mut Context) -> Result<(), StageError> {
    let (centroids, counts) = tables::read_centroids(ctx.input(ROUND_STATE.name)?, 1)?;
    let c_out = ctx.output(CENTROIDS.name)?;
    c_out.write(&tables::centroids_batch(1, &centroids, &counts)?)?;
    c_out.set_meta("k", counts.len());
    score_summed(ctx, p, ROUND_STATS.name)
}

/// A join's scoring: the confusion counts (and with a CRF, those after it) that the parts
/// stored as `output`, added and scored against the val classes.
pub(super) fn score_summed(
    ctx: &mut Context,
    p: &EvaluateParams,
    output: &str,
) -> Result<(), StageError> {
    let conf = summed_confusion(ctx, output)?;
    let crf = p.crf.is_some();
    let conf_crf = summed_meta_confusion(ctx, crf, output, CRF_CONFUSION)?;
    // A probe without a linear probe writes no linear counts: not required.
    let conf_linear = summed_meta_confusion(ctx, false, output, LINEAR_CONFUSION)?;
    let conf_linear_crf = summed_meta_confusion(
        ctx,
        crf && conf_linear.is_some(),
        output,
        LINEAR_CRF_CONFUSION,
    )?;
    let val = ctx.dataset()?.clone().open(Split::Val)?;
    let is_thing: Option<Vec<bool>> = val.classes().iter().map(|c| c.is_thing).collect();
    score(
        ctx,
        p,
        &Confusions {
            clusters: &conf,
            crf: conf_crf.as_ref(),
            linear: conf_linear.as_ref(),
            linear_crf: conf_linear_crf.as_ref(),
        },
        &is_thing,
        p.kmeans_bn(),
        None,
    )
}

/// The meta keys of a part's CRF confusion counts, and of its linear probe's (before and
/// after the CRF).
pub(super) const CRF_CONFUSION: &str = "crf_confusion";
pub(super) const LINEAR_CONFUSION: &str = "linear_confusion";
pub(super) const LINEAR_CRF_CONFUSION: &str = "linear_crf_confusion";

/// A confusion's shape and row-major counts, as part meta.
pub(super) fn confusion_json(c: &Confusion) -> serde_json::Value {
    let counts: Vec<u64> = (0..c.classes())
        .flat_map(|g| (0..c.clusters()).map(move |k| c.get(g, k).unwrap_or(0)))
        .collect();
    serde_json::json!({"classes": c.classes(), "clusters": c.clusters(), "counts": counts})
}

/// The parts' confusion counts stored as meta `key` of their `output`, added up; `None`
/// when no part has them. `required`: every part must (a CRF evaluation's CRF counts).
pub(super) fn summed_meta_confusion(
    ctx: &Context,
    required: bool,
    output: &str,
    key: &str,
) -> Result<Option<Confusion>, StageError> {
    let mut total: Option<Confusion> = None;
    let parts = ctx.parts(output)?;
    let with = parts.iter().filter(|a| a.meta(key).is_some()).count();
    if with == 0 && !required {
        return Ok(None);
    }
    for part in parts {
        let v = part.meta(key).ok_or_else(|| {
            StageError::msg(format!(
                "a part of this evaluation lacks its `{key}` counts"
            ))
        })?;
        let dim = |key: &str| v.get(key).and_then(|x| x.as_u64()).unwrap_or(0) as usize;
        let counts: Vec<u64> = v
            .get("counts")
            .and_then(|c| c.as_array())
            .map(|a| a.iter().filter_map(|x| x.as_u64()).collect())
            .unwrap_or_default();
        let c = Confusion::from_counts(dim("classes"), dim("clusters"), counts)
            .map_err(|e| StageError::msg(format!("a part's `{key}` counts: {e}")))?;
        match total.as_mut() {
            None => total = Some(c),
            Some(t) => t.merge(&c)?,
        }
    }
    Ok(total)
}

/// The CRF's labels of a batch (row-major, one vector per image): `soft` of the upsampled
/// `scores` (N x K x H x W; the predictor's soft form, or a linear probe's) as the unary,
/// the evaluation crops' `rgbs` as the images. `threads` images at a time, so only their
/// unaries are in memory.
pub(super) fn crf_labels(
    c: &CrfParams,
    scores: &Tensor,
    rgbs: &[Vec<u8>],
    soft: &dyn Fn(&Tensor) -> Tensor,
    threads: usize,
    id: impl Fn(usize) -> String,
) -> Result<Vec<Vec<u32>>, StageError> {
    let (n, k, h, w) = scores.size4()?;
    if n as usize != rgbs.len() {
        return Err(StageError::msg(format!(
            "{n} predictions for {} images",
            rgbs.len()
        )));
    }
    let cfg = c.config();
    let mut labels = Vec::with_capacity(rgbs.len());
    for start in (0..rgbs.len()).step_by(threads.max(1)) {
        let end = (start + threads.max(1)).min(rgbs.len());
        let unary = tch::no_grad(|| {
            soft(&scores.narrow(0, start as i64, (end - start) as i64)).to_device(tch::Device::Cpu)
        });
        let unary = Vec::<f32>::try_from(unary.flatten(0, -1))?;
        let per = (h * w * k) as usize;
        let images: Vec<CrfImage> = (start..end)
            .map(|j| CrfImage {
                width: w as usize,
                height: h as usize,
                classes: k as usize,
                rgb: &rgbs[j],
                unary: &unary[(j - start) * per..(j - start + 1) * per],
            })
            .collect();
        let refined = crf::refine_batch(&cfg, &images, threads)
            .map_err(|e| StageError::context(id(start + e.image), e.source))?;
        labels.extend(refined.into_iter().map(|r| r.labels));
    }
    Ok(labels)
}

/// The confusion counts an evaluation scores: its clusters', after the CRF, and the linear
/// probe's (classes x classes), after the CRF.
pub(super) struct Confusions<'a> {
    pub(super) clusters: &'a Confusion,
    pub(super) crf: Option<&'a Confusion>,
    pub(super) linear: Option<&'a Confusion>,
    pub(super) linear_crf: Option<&'a Confusion>,
}

/// Matches clusters to classes and writes the metrics (the history's rows, then this
/// epoch's) and the confusion counts.
pub(super) fn score(
    ctx: &mut Context,
    p: &EvaluateParams,
    confs: &Confusions,
    is_thing: &Option<Vec<bool>>,
    bn: Option<BnMode>,
    cluster_px: Option<&[u64]>,
) -> Result<(), StageError> {
    let (conf, conf_crf) = (confs.clusters, confs.crf);
    let k = conf.clusters();
    let history: Vec<RecordBatch> = if ctx.has_input(HISTORY.name) {
        ctx.input(HISTORY.name)?.read_all()?
    } else {
        Vec::new()
    };
    // Outside the loop, a final evaluation after it counts for the last epoch its history
    // holds (its row sits beside that epoch's in-loop one, told apart by `predictor`);
    // `eval0`, with no history, is epoch 0.
    let epoch = match ctx.epoch() {
        Some(e) => e,
        None => tables::last_epoch(&history)?.unwrap_or(0),
    };
    let out = ctx.output(METRICS.name)?;
    for b in &history {
        out.write(&tables::with_metrics_schema(b)?)?;
    }
    if conf.total() == 0 {
        // No masks: say what the clusters look like instead of failing.
        info!("epoch {epoch}: no validation masks; pixels per cluster: {cluster_px:?}");
        return Ok(());
    }
    let matching = match p.matching {
        MatchingParam::Hungarian => Matching::Hungarian,
        MatchingParam::Majority => Matching::Majority,
    };
    let (mt, _assign) = metrics::evaluate(conf, matching, is_thing.as_deref())?;
    // The CRF's labels are matched to classes on their own, as STEGO scores them.
    let crf = conf_crf
        .map(|c| metrics::evaluate(c, matching, is_thing.as_deref()).map(|r| r.0))
        .transpose()?;
    // The linear probe's predictions are classes: scored as they are, no matching.
    let supervised = |c: Option<&Confusion>| {
        c.map(|c| supervised_scores(c, is_thing.as_deref()))
            .transpose()
            .map_err(|e| StageError::msg(format!("the linear probe's scores: {e}")))
    };
    let (linear, linear_crf) = (supervised(confs.linear)?, supervised(confs.linear_crf)?);
    let predictor = match p.predictor {
        Predictor::NearestCentroid => "nearest_centroid".to_string(),
        Predictor::DotProduct => format!("dot_product_view{}", p.view),
        Predictor::ClusterProbe => "cluster_probe".to_string(),
    };
    let bn_note = bn.map_or(String::new(), |b| format!(", BatchNorm {}", b.as_str()));
    info!(
        "epoch {epoch}: mIoU {:.2}, pixel accuracy {:.2} ({k} clusters, {predictor}{bn_note})",
        mt.miou, mt.pixel_accuracy
    );
    if let Some(c) = &crf {
        info!(
            "epoch {epoch}: after the dense CRF mIoU {:.2}, pixel accuracy {:.2}",
            c.miou, c.pixel_accuracy
        );
    }
    if let Some(l) = &linear {
        info!(
            "epoch {epoch}: linear probe (SUPERVISED) mIoU {:.2}, pixel accuracy {:.2}",
            l.miou, l.pixel_accuracy
        );
    }
    out.write(&tables::metrics_batch(&EpochMetrics {
        epoch,
        predictor: &predictor,
        k: k as u32,
        scores: &mt,
        kmeans_bn: bn.map(BnMode::as_str),
        crf: crf.as_ref(),
        linear: linear.as_ref(),
        linear_crf: linear_crf.as_ref(),
    })?)?;
    out.set_meta("miou", mt.miou);
    out.set_meta("pixel_accuracy", mt.pixel_accuracy);
    if let Some(c) = &crf {
        out.set_meta("miou_crf", c.miou);
        out.set_meta("pixel_accuracy_crf", c.pixel_accuracy);
    }
    for (name, m) in [
        ("linear_miou_supervised", &linear),
        ("linear_miou_supervised_crf", &linear_crf),
    ] {
        if let Some(m) = m {
            out.set_meta(name, m.miou);
        }
    }

    let conf_out = ctx.output(CONFUSION.name)?;
    conf_out.write(&tables::confusion_batch(conf)?)?;
    Ok(())
}
