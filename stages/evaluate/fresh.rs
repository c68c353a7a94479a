//! The fresh k-means of an evaluation: its settings, the pass over the training images'
//! features (whole, or a part's share), and the first round's join that fits it.

use super::*;

/// The fresh k-means's settings.
pub(super) fn fresh_config(p: &EvaluateParams, k: usize, seed: u64) -> KmeansConfig {
    KmeansConfig {
        k,
        n_iter: p.n_iter,
        seed,
        ..KmeansConfig::default()
    }
}

/// How many training images the fresh k-means pass covers.
pub(super) fn train_images(ctx: &Context, p: &EvaluateParams) -> Result<usize, StageError> {
    let n = ctx.dataset()?.clone().open(Split::Train)?.len();
    Ok(p.train_limit.map_or(n, |l| l.min(n)))
}

/// The fresh k-means pass over the training images (a part: its share of whole batches, or
/// of the stored tokens' batches), each batch's pixel features as rows to `sink`; returns
/// the images seen.
pub(super) fn train_pass(
    ctx: &mut Context,
    m: &Loaded,
    p: &EvaluateParams,
    digest: Option<&str>,
    sink: &mut dyn FnMut(&mut Context, Tensor) -> Result<(), StageError>,
) -> Result<usize, StageError> {
    let device = ctx.device().tch();
    let train_bn = p.kmeans_bn() == Some(BnMode::Train);
    let train = ctx.dataset()?.clone().open(Split::Train)?;
    let n = train_images(ctx, p)?;
    let mut ids: Vec<usize> = ctx.shard_items(n, p.batch).collect();
    if train_bn {
        // The release's loader shuffles: batch statistics of consecutive video frames would
        // be far from the data set's.
        ids.shuffle(&mut shuffle_rng(ctx.seed(), ctx.epoch().unwrap_or(0)));
    }
    let tokens = open_tokens(ctx, TRAIN_TOKENS.name, digest)?;
    // With stored tokens a part takes whole written batches, so its rows come in the
    // chunks one process sees.
    let batches = match (&tokens, ctx.shard()) {
        (Some(t), Some(s)) => s.range(t.batch_count()?),
        _ => 0..usize::MAX,
    };
    let mut seen = 0;
    for item in passes(tokens.as_ref(), &ids, p.batch, 0..n, batches) {
        ctx.check_cancelled()?;
        let (chunk, tokens, _) = item?;
        seen += chunk.len();
        let z = match tokens {
            Some(t) => tch::no_grad(|| code(m, &t, p.features))?,
            None => {
                let x = load_images(train.as_ref(), &chunk, p.res, p.threads)?;
                tch::no_grad(|| m.net.forward_t(&x.to_device(device), train_bn))?
            }
        };
        let d = z.size()[1];
        sink(ctx, z.permute([0, 2, 3, 1]).reshape([-1, d]))?;
    }
    Ok(seen)
}

/// The fresh k-means as its rows come: Lloyd keeps them all, mini-batch folds them in.
pub(super) enum Fresh<'a> {
    Lloyd(Vec<Tensor>),
    Online(Box<Online<'a>>, Vec<kmeans::StatRow>),
}

impl<'a> Fresh<'a> {
    pub(super) fn new(p: &EvaluateParams, cfg: &'a KmeansConfig, device: tch::Device) -> Self {
        match p.mode {
            KmeansMode::Lloyd => Fresh::Lloyd(Vec::new()),
            KmeansMode::Minibatch => Fresh::Online(
                Box::new(Online::new(1, cfg, p.init_rows, p.batch_rows, device)),
                Vec::new(),
            ),
        }
    }

    pub(super) fn push(&mut self, rows: Tensor) -> Result<(), StageError> {
        match self {
            Fresh::Lloyd(feats) => feats.push(rows),
            Fresh::Online(o, stats) => o.push(rows, stats)?,
        }
        Ok(())
    }

    pub(super) fn finish(
        self,
        cfg: &KmeansConfig,
        device: tch::Device,
    ) -> Result<(Tensor, Vec<u64>), StageError> {
        Ok(match self {
            Fresh::Online(o, mut stats) => o.finish(&mut stats)?,
            Fresh::Lloyd(feats) => {
                let fit = kmeans::lloyd(
                    || {
                        feats
                            .iter()
                            .map(|t| Ok::<_, StageFailure>(t.shallow_clone()))
                    },
                    cfg,
                    device,
                )?;
                (
                    fit.kmeans.centroids().shallow_clone(),
                    fit.kmeans.counts().to_vec(),
                )
            }
        })
    }
}

/// The first round's join: the parts' training features, in part order, fit the fresh
/// k-means; its centroids are the state the second round predicts val with.
pub(super) fn fit_parts(p: &EvaluateParams, ctx: &mut Context) -> Result<(), StageError> {
    let device = ctx.device().tch();
    let classes = ctx.dataset()?.clone().open(Split::Val)?.classes().len();
    let cfg = fresh_config(p, p.k.unwrap_or(classes), ctx.seed());
    let mut fresh = Fresh::new(p, &cfg, device);
    let mut images = 0;
    for part in ctx.parts(ROUND_STATS.name)? {
        images += part.meta("images").and_then(|v| v.as_u64()).unwrap_or(0) as usize;
        for rows in lloyd_rounds::read_rows(part)? {
            ctx.check_cancelled()?;
            fresh.push(rows.to_device(device))?;
        }
    }
    covered(images, train_images(ctx, p)?, TRAIN_TOKENS.name)?;
    let (centroids, counts) = fresh.finish(&cfg, device)?;
    ctx.output(ROUND_STATE.name)?
        .write(&tables::centroids_batch(1, &centroids, &counts)?)
}
