//! What streams between PiCIE's stages: batches of the two augmented views of images.

use tch::Tensor;

use picie_core::augment_params::Geometric;
use picie_engine::error::StageError;

/// N x C x H x W floats in host memory. Stream items must be `Sync`, which a tch `Tensor`
/// is not; one copy per batch is cheap beside the network.
#[derive(Clone, Debug)]
pub struct HostTensor {
    pub data: Vec<f32>,
    pub shape: [i64; 4],
}

impl HostTensor {
    pub fn from_tensor(t: &Tensor) -> Result<Self, StageError> {
        let (n, c, h, w) = t.size4()?;
        let data = Vec::<f32>::try_from(t.to_kind(tch::Kind::Float).contiguous().flatten(0, -1))?;
        Ok(Self {
            data,
            shape: [n, c, h, w],
        })
    }

    pub fn to_device(&self, device: tch::Device) -> Tensor {
        Tensor::from_slice(&self.data)
            .reshape(self.shape)
            .to_device(device)
    }
}

/// One batch of training views: view 1 = G(P1 x), view 2 = P2 x (G is applied to view 2's
/// feature map by whoever runs the network). With `tokens`, the views are already a frozen
/// backbone's tokens of those images (read from a `backbone` stage's artifact), and only the
/// head runs.
#[derive(Clone, Debug)]
pub struct ViewBatch {
    pub epoch: u32,
    pub images: Vec<u32>,
    pub view1: HostTensor,
    pub view2: HostTensor,
    pub geometric: Vec<Geometric>,
    pub tokens: bool,
}

impl ViewBatch {
    /// The release's two feature maps: z1 = f(G(P1 x)), z2 = G(f(P2 x)).
    pub fn features(
        &self,
        net: &picie_core::model::PicieNet,
        device: tch::Device,
        train: bool,
    ) -> Result<(Tensor, Tensor), StageError> {
        let (x1, x2) = (self.view1.to_device(device), self.view2.to_device(device));
        let (z1, z2) = if self.tokens {
            (net.forward_head(&x1)?, net.forward_head(&x2)?)
        } else {
            (net.forward_t(&x1, train)?, net.forward_t(&x2, train)?)
        };
        let z2 = picie_core::transforms::equivariance::apply(&z2, &self.geometric)?;
        Ok((z1, z2))
    }
}

/// What `extract` streams: both views' feature maps of a batch (view 2 already through G),
/// B x D x h x w each.
#[derive(Clone, Debug)]
pub struct FeatureBatch {
    pub epoch: u32,
    pub images: Vec<u32>,
    pub z1: HostTensor,
    pub z2: HostTensor,
}

impl FeatureBatch {
    /// One view's features as N x D rows, pixel-major per image: the order `extract` stores
    /// them in.
    pub fn rows(&self, view: u8) -> Tensor {
        let z = if view == 1 { &self.z1 } else { &self.z2 };
        let d = z.shape[1];
        z.to_device(tch::Device::Cpu)
            .permute([0, 2, 3, 1])
            .reshape([-1, d])
    }
}

/// Where a pass gets its views: the `batches` stream of an `augment` stage, or the `tokens`
/// artifact of a `backbone` stage (whichever the pipeline wires; the plan checks that it is
/// exactly one).
pub struct Views {
    tokens: Option<Box<dyn Iterator<Item = Result<ViewBatch, StageError>> + Send>>,
}

impl Views {
    /// Opens the wired source. With tokens, checks that they come from `m`'s backbone.
    pub fn open(
        ctx: &picie_engine::Context,
        m: &super::checkpoint::Loaded,
    ) -> Result<Self, StageError> {
        use super::ports::TOKENS;
        if !ctx.has_input(TOKENS.name) {
            return Ok(Self { tokens: None });
        }
        let input = ctx.input(TOKENS.name)?;
        let t = super::tokens::Tokens::open(input)?;
        t.check_backbone(&super::checkpoint::backbone_digest(m)?)?;
        let views = t.into_view_batches(ctx.epoch().unwrap_or(0));
        Ok(Self {
            tokens: Some(match ctx.shard() {
                // A part takes its share of the stored batches (the others are read past).
                Some(shard) => {
                    let total = input.ipc_batch_count()?;
                    Box::new(
                        views
                            .enumerate()
                            .filter(move |(b, _)| shard.takes(*b, total))
                            .map(|(_, v)| v),
                    )
                }
                None => Box::new(views),
            }),
        })
    }

    pub fn next(
        &mut self,
        ctx: &mut picie_engine::Context,
    ) -> Result<Option<std::sync::Arc<ViewBatch>>, StageError> {
        match &mut self.tokens {
            Some(it) => {
                ctx.check_cancelled()?;
                Ok(it.next().transpose()?.map(std::sync::Arc::new))
            }
            None => ctx.recv_from(&super::ports::BATCHES),
        }
    }
}
