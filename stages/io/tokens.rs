//! Backbone tokens: what a frozen ViT makes of each view of each image, stored once and read
//! by every later pass (see `backbone`). One row per (image, view): the geometric draw G of
//! that image (needed to apply G to view 2's head output) and the C x h x w tokens,
//! flattened channel-major, as f16 or f32. Arrow IPC, one record batch per written batch,
//! so readers get the batches back as they were made without decoding.
//!
//! Evaluation crops (view 0) may come with their horizontally flipped copy (`backbone`'s
//! `flip: true`): a second row of the same image and view with `flip` true, holding the
//! tokens of the flipped crop as the network computed them (not flipped back), in the same
//! written batch. [`Tokens::eval_batches`] reads the crops alone, so readers that know
//! nothing of flips see what they always saw; [`Tokens::eval_batches_with_flips_in`] reads
//! both.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, FixedSizeListArray, Float16Array, Float32Array, RecordBatch,
    UInt32Array, UInt8Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use tch::Tensor;

use super::batch::{HostTensor, ViewBatch};
use super::tables::{column, float_list, Precision};
use picie_core::augment_params::Geometric;
use picie_engine::artifact::{Artifact, ArtifactWriter};
use picie_engine::error::StageError;

/// The view number of evaluation crops (no augmentation, no G).
pub const EVAL_VIEW: u8 = 0;

fn schema(len: i32, precision: Precision) -> SchemaRef {
    let item = Arc::new(Field::new("item", precision.arrow(), false));
    Arc::new(Schema::new(vec![
        Field::new("image", DataType::UInt32, false),
        Field::new("view", DataType::UInt8, false),
        Field::new("crop_frac", DataType::Float32, false),
        Field::new("u_x", DataType::Float32, false),
        Field::new("u_y", DataType::Float32, false),
        Field::new("flip", DataType::Boolean, false),
        Field::new("tokens", DataType::FixedSizeList(item, len), false),
    ]))
}

/// Prepares a writer for tokens of shape C x h x w (recorded in the manifest).
pub fn begin(w: &mut ArtifactWriter, shape: [i64; 3], precision: Precision, digest: &str) {
    begin_with_flips(w, shape, precision, digest, false)
}

/// [`begin`], recording whether the evaluation crops come with flipped copies (`flips` in
/// the manifest, only when true).
pub fn begin_with_flips(
    w: &mut ArtifactWriter,
    shape: [i64; 3],
    precision: Precision,
    digest: &str,
    flips: bool,
) {
    if flips {
        w.set_meta("flips", true);
    }
    w.use_ipc();
    w.set_meta("channels", shape[0]);
    w.set_meta("height", shape[1]);
    w.set_meta("width", shape[2]);
    w.set_meta(
        "precision",
        serde_json::to_value(precision).expect("serialises"),
    );
    w.set_meta("backbone", digest);
}

/// One view's N x C x h x w tokens of `images`, with each image's G, as table rows.
pub fn rows(
    images: &[u32],
    view: u8,
    geometric: &[Geometric],
    tokens: &Tensor,
    precision: Precision,
) -> Result<RecordBatch, StageError> {
    let (n, c, h, w) = tokens.size4()?;
    if n as usize != images.len() || geometric.len() != images.len() {
        return Err(StageError::msg(
            "tokens, image ids and geometric draws differ in count",
        ));
    }
    let len = (c * h * w) as i32;
    let list = float_list(&tokens.to_device(tch::Device::Cpu), len, precision)?;
    let g = |f: fn(&Geometric) -> f32| {
        Arc::new(Float32Array::from_iter_values(geometric.iter().map(f)))
    };
    let cols: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from(images.to_vec())),
        Arc::new(UInt8Array::from(vec![view; images.len()])),
        g(|g| g.crop_frac),
        g(|g| g.u_x),
        g(|g| g.u_y),
        Arc::new(BooleanArray::from_iter(
            geometric.iter().map(|g| Some(g.flip)),
        )),
        Arc::new(list),
    ];
    Ok(RecordBatch::try_new(schema(len, precision), cols)?)
}

/// A tokens artifact, read back.
pub struct Tokens {
    artifact: Artifact,
    /// C, h, w.
    pub shape: [i64; 3],
    /// The backbone digest of the network that made them.
    pub backbone: String,
}

/// Row `i` of `list` as f32 values.
fn row_f32(list: &FixedSizeListArray, i: usize) -> Result<Vec<f32>, StageError> {
    let v = list.value(i);
    if let Some(a) = v.as_any().downcast_ref::<Float32Array>() {
        Ok(a.values().to_vec())
    } else if let Some(a) = v.as_any().downcast_ref::<Float16Array>() {
        Ok(a.values().iter().map(|h| h.to_f32()).collect())
    } else {
        Err(StageError::msg(format!(
            "token values are {}, not f32 or f16",
            v.data_type()
        )))
    }
}

fn host([c, h, w]: [i64; 3], data: Vec<f32>, n: usize) -> HostTensor {
    HostTensor {
        data,
        shape: [n as i64, c, h, w],
    }
}

/// One view of an image: its G and its tokens as f32.
type View = (Geometric, Vec<f32>);

/// One image's row: (image, view, G, tokens as f32).
type Row = (u32, u8, Geometric, Vec<f32>);

fn batch_rows(b: &RecordBatch) -> Result<Vec<Row>, StageError> {
    let image = column::<UInt32Array>(b, "image")?;
    let view = column::<UInt8Array>(b, "view")?;
    let cf = column::<Float32Array>(b, "crop_frac")?;
    let ux = column::<Float32Array>(b, "u_x")?;
    let uy = column::<Float32Array>(b, "u_y")?;
    let flip = column::<BooleanArray>(b, "flip")?;
    let list = column::<FixedSizeListArray>(b, "tokens")?;
    (0..b.num_rows())
        .map(|i| {
            let g = Geometric {
                crop_frac: cf.value(i),
                u_x: ux.value(i),
                u_y: uy.value(i),
                flip: flip.value(i),
            };
            Ok((image.value(i), view.value(i), g, row_f32(list, i)?))
        })
        .collect()
}

impl Tokens {
    pub fn open(artifact: &Artifact) -> Result<Self, StageError> {
        let dim = |k: &str| {
            artifact.meta(k).and_then(|v| v.as_i64()).ok_or_else(|| {
                StageError::msg(format!(
                    "artifact {} is not a tokens table (no `{k}` in its manifest)",
                    artifact.key()
                ))
            })
        };
        Ok(Self {
            artifact: artifact.clone(),
            shape: [dim("channels")?, dim("height")?, dim("width")?],
            backbone: artifact
                .meta("backbone")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string(),
        })
    }

    /// Refuses tokens made by another backbone than `digest`'s (other weights, or one that
    /// trains), which would silently mix two networks.
    pub fn check_backbone(&self, digest: &str) -> Result<(), StageError> {
        if self.backbone != digest {
            return Err(StageError::msg(format!(
                "the tokens in artifact {} were made by another backbone ({}) than this \
                 checkpoint's ({digest}): wire the backbone stage to the same init checkpoint, \
                 and keep `train_blocks: 0`",
                self.artifact.key(),
                self.backbone
            )));
        }
        Ok(())
    }

    fn tensor(&self, values: Vec<f32>, n: usize) -> HostTensor {
        host(self.shape, values, n)
    }

    /// The training views batch by batch as written, each as a [`ViewBatch`] of tokens,
    /// read as they are consumed.
    pub fn into_view_batches(
        self,
        epoch: u32,
    ) -> impl Iterator<Item = Result<ViewBatch, StageError>> + Send {
        let shape = self.shape;
        self.artifact.into_batches().map(move |b| {
            let rows = batch_rows(&b?)?;
            // Each written batch holds both views of the same images (see `backbone`).
            let mut by_image: BTreeMap<u32, [Option<View>; 2]> = BTreeMap::new();
            let mut order = Vec::new();
            for (img, view, g, t) in rows {
                if !(1..=2).contains(&view) {
                    return Err(StageError::msg(format!(
                        "tokens of view {view} in a training-views table (image {img})"
                    )));
                }
                let slot = by_image.entry(img).or_insert_with(|| {
                    order.push(img);
                    [None, None]
                });
                slot[view as usize - 1] = Some((g, t));
            }
            let mut out = ViewBatch {
                epoch,
                images: Vec::with_capacity(order.len()),
                view1: host(shape, Vec::new(), 0),
                view2: host(shape, Vec::new(), 0),
                geometric: Vec::with_capacity(order.len()),
                tokens: true,
            };
            for img in order {
                let [Some((_, t1)), Some((g, t2))] = by_image.remove(&img).expect("listed") else {
                    return Err(StageError::msg(format!(
                        "image {img} lacks one of its two views in the tokens table"
                    )));
                };
                out.images.push(img);
                out.view1.data.extend(t1);
                out.view2.data.extend(t2);
                out.geometric.push(g);
            }
            out.view1.shape[0] = out.images.len() as i64;
            out.view2.shape[0] = out.images.len() as i64;
            Ok(out)
        })
    }

    /// Evaluation tokens batch by batch as written: the image ids and their N x C x h x w
    /// tokens (f32, on the CPU).
    pub fn eval_batches(
        &self,
    ) -> impl Iterator<Item = Result<(Vec<usize>, Tensor), StageError>> + '_ {
        self.eval_batches_in(0..usize::MAX)
    }

    /// How many batches the tokens were written in (the units a sharded pass splits).
    pub fn batch_count(&self) -> Result<usize, StageError> {
        self.artifact.chunk_count()
    }

    /// [`Self::eval_batches`] of written batches `range` only (the crops; flipped copies,
    /// if stored, are skipped).
    pub fn eval_batches_in(
        &self,
        range: std::ops::Range<usize>,
    ) -> impl Iterator<Item = Result<(Vec<usize>, Tensor), StageError>> + '_ {
        self.eval_batches_with_flips_in(range)
            .map(|r| r.map(|(ids, t, _)| (ids, t)))
    }

    /// Evaluation tokens of written batches `range` with their flipped crops' tokens: the
    /// image ids, the crops' N x C x h x w tokens and, when the batch stores flipped copies
    /// (`backbone` with `flip: true`), theirs in the same image order (as computed on the
    /// flipped crop, not flipped back); `None` when it stores none. A batch that stores
    /// flipped copies of some of its images only is an error.
    #[allow(clippy::type_complexity)]
    pub fn eval_batches_with_flips_in(
        &self,
        range: std::ops::Range<usize>,
    ) -> impl Iterator<Item = Result<(Vec<usize>, Tensor, Option<Tensor>), StageError>> + '_ {
        self.artifact.chunks(range).map(move |b| {
            let mut ids = Vec::new();
            let mut data = Vec::new();
            let mut flipped: BTreeMap<u32, Vec<f32>> = BTreeMap::new();
            for (img, view, g, t) in batch_rows(&b?)? {
                if view != EVAL_VIEW {
                    return Err(StageError::msg(format!(
                        "artifact {} holds training views, not evaluation crops: give \
                         evaluate the tokens of a `backbone` stage with `split`",
                        self.artifact.key()
                    )));
                }
                if g.flip {
                    flipped.insert(img, t);
                } else {
                    ids.push(img as usize);
                    data.extend(t);
                }
            }
            let n = ids.len();
            let crops = self.tensor(data, n).to_device(tch::Device::Cpu);
            if flipped.is_empty() {
                return Ok((ids, crops, None));
            }
            let mut fdata = Vec::with_capacity(crops.numel());
            for &i in &ids {
                let t = flipped.remove(&(i as u32)).ok_or_else(|| {
                    StageError::msg(format!(
                        "artifact {} stores the flipped crop of some images but not of \
                         image {i}",
                        self.artifact.key()
                    ))
                })?;
                fdata.extend(t);
            }
            if let Some(img) = flipped.keys().next() {
                return Err(StageError::msg(format!(
                    "artifact {} stores a flipped crop of image {img} without the crop",
                    self.artifact.key()
                )));
            }
            let flips = self.tensor(fdata, n).to_device(tch::Device::Cpu);
            Ok((ids, crops, Some(flips)))
        })
    }

    /// Whether the tokens' writer stored flipped crops (`backbone` with `flip: true`; its
    /// manifest says so).
    pub fn has_flips(&self) -> bool {
        self.artifact
            .meta("flips")
            .and_then(|v| v.as_bool())
            .unwrap_or(false)
    }
}
