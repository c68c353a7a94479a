//! `extract`: runs the network over streamed view batches and stores every pixel's feature
//! of both views (the input of k-means).

use serde::{Deserialize, Serialize};

use crate::batch::ViewBatch;
use crate::checkpoint;
use crate::tables;
use crate::{Context, Port, Stage, StageError};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BnMode {
    /// Batch statistics (the release's clustering pass).
    Train,
    /// Running statistics.
    Eval,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExtractParams {
    pub bn: BnMode,
}

impl Default for ExtractParams {
    fn default() -> Self {
        Self { bn: BnMode::Train }
    }
}

pub struct Extract(ExtractParams);

impl Stage for Extract {
    type Params = ExtractParams;
    const KIND: &'static str = "extract";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str = "per-pixel features of both views (view 2 through G), stored";

    fn inputs(_: &ExtractParams) -> Vec<Port> {
        vec![
            Port::stream("batches", "view_batch"),
            Port::artifact("checkpoint", "checkpoint"),
        ]
    }
    fn outputs(_: &ExtractParams) -> Vec<Port> {
        vec![Port::artifact("features", "features")]
    }
    fn new(p: ExtractParams) -> Self {
        Self(p)
    }

    fn run(&mut self, ctx: &mut Context) -> Result<(), StageError> {
        let device = ctx.device().tch();
        let m = checkpoint::load(ctx.input("checkpoint")?, device)?;
        let train = self.0.bn == BnMode::Train;
        ctx.output("features")?.set_meta("dim", m.net.dim());
        while let Some(b) = ctx.recv_as::<ViewBatch>("batches")? {
            let (z1, z2) = tch::no_grad(|| b.features(&m.net, device, train))?;
            let w = ctx.output("features")?;
            w.write(&tables::features_batch(&b.images, 1, &z1)?)?;
            w.write(&tables::features_batch(&b.images, 2, &z2)?)?;
            ctx.progress().inc(b.images.len() as u64);
        }
        Ok(())
    }
}
