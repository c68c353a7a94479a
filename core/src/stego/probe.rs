//! STEGO's two probes on a trained head's code, as released (mhamilton723/STEGO,
//! src/modules.py `ClusterLookup`, src/train_segmentation.py), trained on the detached code
//! of a frozen network:
//! - the cluster probe: K centroids (standard normal init), cosine similarity s between the
//!   L2-normalised code and the L2-normalised centroids, loss -(onehot(argmax s) * s)
//!   summed over clusters, averaged over pixels (gradient spherical k-means); it predicts
//!   argmax s, and its soft form is softmax(2 s) (`log_softmax(inner * 2)` at evaluation);
//! - the linear probe: a 1x1 convolution D -> classes with bias (PyTorch's default conv
//!   init), logits upsampled bilinearly (align_corners false) to the label size, cross-
//!   entropy over the labelled pixels (label in 0..classes). It is trained on the ground
//!   truth: a supervised measure of the code, never an unsupervised result.
//!
//! Both are trained with Adam (PyTorch's, lr 5e-3 as released). Every random draw (the
//! init) comes from the caller's RNG, so a probe is a pure function of its seed, its code
//! and the order it is shown the batches in.

use rand::Rng;
use tch::{nn, nn::OptimizerConfig, Device, Kind, Reduction, Tensor};

use super::StegoError;
use crate::metrics::{Confusion, Metrics, MetricsError};

/// Labels outside 0..classes become this before the cross-entropy (PyTorch's default
/// `ignore_index`).
pub const IGNORE: i64 = -100;

/// The probes' sizes and optimiser.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbeConfig {
    /// Code channels D.
    pub dim: i64,
    /// Cluster probe centroids K.
    pub k: i64,
    /// Linear probe classes (0: no linear probe).
    pub classes: i64,
    /// Adam's learning rate for both probes (5e-3 as released).
    pub lr: f64,
}

impl ProbeConfig {
    /// Every bad setting, by field.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut e = Vec::new();
        if self.dim < 1 {
            e.push(("dim", format!("must be at least 1, got {}", self.dim)));
        }
        if self.k < 1 {
            e.push(("k", format!("must be at least 1, got {}", self.k)));
        }
        if self.classes < 0 {
            e.push((
                "classes",
                format!("must be 0 or more, got {}", self.classes),
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            e.push((
                "lr",
                format!("must be positive and finite, got {}", self.lr),
            ));
        }
        e
    }
}

/// `F.normalize(x, dim)`: x / max(||x||_2, 1e-12) along `dim`.
fn normalize(x: &Tensor, dim: i64) -> Result<Tensor, StegoError> {
    let n = x
        .f_norm_scalaropt_dim(2.0, [dim].as_slice(), true)?
        .f_clamp_min(1e-12)?;
    Ok(x.f_div(&n)?)
}

/// The cluster probe's cosine similarities N x K x h x w between the code N x D x h x w
/// (any norm) and the K x D centroids (any norm), both L2-normalised first.
pub fn cluster_inner(code: &Tensor, centroids: &Tensor) -> Result<Tensor, StegoError> {
    check_code(code, centroids, "centroids")?;
    let (k, d) = (centroids.size()[0], centroids.size()[1]);
    let c = normalize(centroids, 1)?.f_to_kind(code.kind())?;
    Ok(normalize(code, 1)?.f_conv2d::<Tensor>(
        &c.f_view([k, d, 1, 1])?,
        None,
        [1, 1],
        [0, 0],
        [1, 1],
        1,
    )?)
}

/// STEGO's `ClusterLookup` loss with hard assignment (`alpha = None`):
/// -(onehot(argmax s) * s).sum(clusters).mean(), s = [`cluster_inner`]. The assignment
/// carries no gradient; the similarities do.
pub fn cluster_loss(code: &Tensor, centroids: &Tensor) -> Result<Tensor, StegoError> {
    let inner = cluster_inner(code, centroids)?;
    let k = inner.size()[1];
    let onehot = inner
        .f_argmax(1, false)?
        .f_one_hot(k)?
        .f_permute([0, 3, 1, 2])?
        .f_to_kind(inner.kind())?;
    Ok(onehot
        .f_mul(&inner)?
        .f_sum_dim_intlist([1i64].as_slice(), false, inner.kind())?
        .f_mean(inner.kind())?
        .f_neg()?)
}

/// The linear probe's logits N x C x h x w: a 1x1 convolution of the code with `weight`
/// (C x D) and `bias` (C).
pub fn linear_logits(code: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor, StegoError> {
    check_code(code, weight, "linear weight")?;
    let (c, d) = (weight.size()[0], weight.size()[1]);
    if bias.size() != [c] {
        return Err(StegoError::Shape(format!(
            "linear bias {:?} for {c} classes",
            bias.size()
        )));
    }
    let w = weight.f_to_kind(code.kind())?.f_view([c, d, 1, 1])?;
    Ok(code.f_conv2d(
        &w,
        Some(&bias.f_to_kind(code.kind())?),
        [1, 1],
        [0, 0],
        [1, 1],
        1,
    )?)
}

/// The linear probe's loss as released: [`linear_logits`] upsampled bilinearly
/// (align_corners false) to the targets' H x W, cross-entropy averaged over the pixels whose
/// target is not [`IGNORE`]. `targets`: N x H x W class ids (i64) or [`IGNORE`]. `None`
/// when no pixel of the batch is labelled (the mean would be 0 / 0).
pub fn linear_loss(
    code: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    targets: &Tensor,
) -> Result<Option<Tensor>, StegoError> {
    let (n, h, w) = targets.size3().map_err(|_| {
        StegoError::Shape(format!("targets {:?} are not N x H x W", targets.size()))
    })?;
    if n != code.size()[0] {
        return Err(StegoError::Shape(format!(
            "{n} target maps for {} code maps",
            code.size()[0]
        )));
    }
    let labelled = targets.f_ne(IGNORE)?.f_sum(Kind::Int64)?.int64_value(&[]);
    if labelled == 0 {
        return Ok(None);
    }
    // The upsampling as two matrix products (rows, then columns): the same interpolation as
    // `upsample_bilinear2d`, but its backward on CPU was most of a probe step's time.
    let logits = linear_logits(code, weight, bias)?;
    let (ch, cw) = (logits.size()[2], logits.size()[3]);
    let (ry, rx) = (
        bilinear_matrix(h, ch, logits.kind(), logits.device())?,
        bilinear_matrix(w, cw, logits.kind(), logits.device())?,
    );
    let logits = ry.f_matmul(&logits.f_matmul(&rx.f_transpose(0, 1)?)?)?;
    Ok(Some(logits.f_cross_entropy_loss::<Tensor>(
        &targets.f_to_device(logits.device())?,
        None,
        Reduction::Mean,
        IGNORE,
        0.0,
    )?))
}

/// The out x len matrix of 1-D bilinear interpolation from `len` samples to `out`, as
/// PyTorch computes it with `align_corners = false` (source = (i + 0.5) len / out - 0.5,
/// clamped at 0; the upper neighbour clamped at the edge).
fn bilinear_matrix(out: i64, len: i64, kind: Kind, device: Device) -> Result<Tensor, StegoError> {
    let scale = len as f64 / out as f64;
    let mut m = vec![0f32; (out * len) as usize];
    for i in 0..out {
        let src = ((i as f64 + 0.5) * scale - 0.5).max(0.0);
        let i0 = (src as i64).min(len - 1);
        let i1 = (i0 + 1).min(len - 1);
        let l1 = (src - i0 as f64) as f32;
        m[(i * len + i0) as usize] += 1.0 - l1;
        m[(i * len + i1) as usize] += l1;
    }
    Ok(Tensor::from_slice(&m)
        .f_view([out, len])?
        .f_to_kind(kind)?
        .f_to_device(device)?)
}

fn check_code(code: &Tensor, rows: &Tensor, what: &str) -> Result<(), StegoError> {
    let (cs, rs) = (code.size(), rows.size());
    if cs.len() != 4 || rs.len() != 2 || cs[1] != rs[1] || rs[0] < 1 {
        return Err(StegoError::Shape(format!(
            "code {cs:?} (N x D x h x w) and {what} {rs:?} (rows x D) do not fit"
        )));
    }
    Ok(())
}

/// Standard normal draws (Box-Muller) from `rng`.
fn normals<R: Rng>(rng: &mut R, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
            let u2: f64 = rng.random();
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        })
        .collect()
}

/// Uniform draws in [-bound, bound) from `rng`.
fn uniforms<R: Rng>(rng: &mut R, n: usize, bound: f64) -> Vec<f32> {
    (0..n)
        .map(|_| ((rng.random::<f64>() * 2.0 - 1.0) * bound) as f32)
        .collect()
}

/// One step's losses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbeLosses {
    pub cluster: f64,
    /// `None` without a linear probe or without a labelled pixel in the batch.
    pub linear: Option<f64>,
}

/// Both probes and their Adam state.
pub struct Probes {
    cfg: ProbeConfig,
    vs: nn::VarStore,
    centroids: Tensor,
    linear: Option<(Tensor, Tensor)>,
    opt: nn::Optimizer,
}

impl std::fmt::Debug for Probes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probes").field("cfg", &self.cfg).finish()
    }
}

impl Probes {
    /// Fresh probes on `device`, initialised from `rng` in this order: the K x D centroids
    /// (standard normal, as `torch.randn`), then the linear weight and bias (uniform in
    /// +-1/sqrt(D), PyTorch's default for a 1x1 convolution).
    pub fn new<R: Rng>(cfg: &ProbeConfig, rng: &mut R, device: Device) -> Result<Self, StegoError> {
        if let Some((field, message)) = cfg.problems().into_iter().next() {
            return Err(StegoError::Config { field, message });
        }
        let (k, d, c) = (cfg.k, cfg.dim, cfg.classes);
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let init = Tensor::from_slice(&normals(rng, (k * d) as usize)).view([k, d]);
        let centroids = root.var_copy("clusters", &init);
        let linear = (c > 0).then(|| {
            let bound = 1.0 / (d as f64).sqrt();
            let w = Tensor::from_slice(&uniforms(rng, (c * d) as usize, bound)).view([c, d]);
            let b = Tensor::from_slice(&uniforms(rng, c as usize, bound));
            let lin = &root / "linear";
            (lin.var_copy("weight", &w), lin.var_copy("bias", &b))
        });
        let opt = nn::Adam::default().build(&vs, cfg.lr)?;
        Ok(Self {
            cfg: *cfg,
            vs,
            centroids,
            linear,
            opt,
        })
    }

    pub fn config(&self) -> &ProbeConfig {
        &self.cfg
    }

    /// The K x D centroids as trained (not normalised).
    pub fn centroids(&self) -> Tensor {
        self.centroids.detach()
    }

    /// The linear probe's C x D weight and C bias, if there is one.
    pub fn linear(&self) -> Option<(Tensor, Tensor)> {
        self.linear.as_ref().map(|(w, b)| (w.detach(), b.detach()))
    }

    /// One Adam step of both probes on a batch of code (N x D x h x w, detached here) and,
    /// with a linear probe, its targets (N x H x W, class ids or [`IGNORE`]).
    pub fn step(
        &mut self,
        code: &Tensor,
        targets: Option<&Tensor>,
    ) -> Result<ProbeLosses, StegoError> {
        let code = code
            .f_detach()?
            .f_to_kind(Kind::Float)?
            .f_to_device(self.vs.device())?;
        let cluster = cluster_loss(&code, &self.centroids)?;
        let linear = match (&self.linear, targets) {
            (Some((w, b)), Some(t)) => linear_loss(&code, w, b, t)?,
            (Some(_), None) => {
                return Err(StegoError::Shape(
                    "the linear probe needs targets".to_string(),
                ))
            }
            (None, _) => None,
        };
        let total = match &linear {
            Some(l) => cluster.f_add(l)?,
            None => cluster.shallow_clone(),
        };
        self.opt.zero_grad();
        total.f_backward()?;
        self.opt.step();
        self.opt.zero_grad();
        Ok(ProbeLosses {
            cluster: cluster.double_value(&[]),
            linear: linear.map(|l| l.double_value(&[])),
        })
    }
}

/// Scores of predictions that are classes already (a supervised probe's): the confusion's
/// clusters are the classes, matched to themselves, no matching searched. Percent, as
/// [`crate::metrics::evaluate`] gives them.
pub fn supervised_scores(
    conf: &Confusion,
    is_thing: Option<&[bool]>,
) -> Result<Metrics, MetricsError> {
    let c = conf.classes();
    if conf.clusters() != c {
        return Err(MetricsError::TooManyClusters {
            clusters: conf.clusters(),
            classes: c,
        });
    }
    if let Some(t) = is_thing {
        if t.len() != c {
            return Err(MetricsError::IsThingLength {
                got: t.len(),
                classes: c,
            });
        }
    }
    if conf.total() == 0 {
        return Err(MetricsError::NoValidPixels);
    }
    // Class k predicts class k: the identity matching.
    let identity: Vec<Option<usize>> = (0..c).map(Some).collect();
    Ok(crate::metrics::score_matched(conf, &identity, is_thing))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn t(v: &[f32], shape: &[i64]) -> Tensor {
        Tensor::from_slice(v).view(shape)
    }

    /// Two pixels, D = 2, K = 2, by hand: code (3, 4) and (0, -2) normalise to (0.6, 0.8)
    /// and (0, -1); centroids (2, 0) and (1, 1) to (1, 0) and (1, 1)/sqrt 2. Pixel 1: s =
    /// (0.6, 1.4/sqrt 2 = 0.98995) -> cluster 1; pixel 2: s = (0, -1/sqrt 2) -> cluster 0.
    /// Loss = -(0.98995 + 0) / 2.
    #[test]
    fn cluster_loss_matches_a_hand_computation() {
        // N=1, D=2, h=1, w=2: channel-major.
        let code = t(&[3.0, 0.0, 4.0, -2.0], &[1, 2, 1, 2]);
        let centroids = t(&[2.0, 0.0, 1.0, 1.0], &[2, 2]);
        let s = cluster_inner(&code, &centroids).unwrap();
        let s: Vec<f32> = Vec::try_from(s.flatten(0, -1)).unwrap();
        let r = std::f32::consts::FRAC_1_SQRT_2;
        let want = [0.6, 0.0, 1.4 * r, -r];
        for (a, b) in s.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{s:?} vs {want:?}");
        }
        let l = cluster_loss(&code, &centroids).unwrap().double_value(&[]);
        let want = -(1.4 * std::f64::consts::FRAC_1_SQRT_2) / 2.0;
        assert!((l - want).abs() < 1e-6, "{l} vs {want}");
    }

    /// The gradient reaches only the assigned centroid: the hard assignment is a constant.
    #[test]
    fn cluster_loss_moves_only_assigned_centroids() {
        let code = t(&[3.0, 0.0, 4.0, -2.0], &[1, 2, 1, 2]);
        let c = t(&[2.0, 0.0, 1.0, 1.0, -5.0, 0.1], &[3, 2]).set_requires_grad(true);
        cluster_loss(&code, &c).unwrap().backward();
        let g = c.grad();
        let g: Vec<f32> = Vec::try_from(g.flatten(0, -1)).unwrap();
        assert!(g[4] == 0.0 && g[5] == 0.0, "{g:?}");
        assert!(g[..4].iter().any(|v| *v != 0.0), "{g:?}");
    }

    /// The linear loss is the cross-entropy of the upsampled logits over labelled pixels.
    #[test]
    fn linear_loss_ignores_unlabelled_pixels_and_upsamples() {
        let code = t(&[1.0, 0.0], &[1, 2, 1, 1]);
        let w = t(&[2.0, 0.0, 0.0, 1.0], &[2, 2]);
        let b = t(&[0.0, 0.5], &[2]);
        // A 1x1 code upsampled to 2x2 is constant: logits (2, 0.5) everywhere.
        let targets = Tensor::from_slice(&[0i64, 1, IGNORE, IGNORE]).view([1, 2, 2]);
        let l = linear_loss(&code, &w, &b, &targets)
            .unwrap()
            .unwrap()
            .double_value(&[]);
        let lse = (2f64.exp() + 0.5f64.exp()).ln();
        let want = ((lse - 2.0) + (lse - 0.5)) / 2.0;
        assert!((l - want).abs() < 1e-6, "{l} vs {want}");
        let none = Tensor::full([1, 2, 2], IGNORE, (Kind::Int64, Device::Cpu));
        assert!(linear_loss(&code, &w, &b, &none).unwrap().is_none());
    }

    /// The matrix form of the upsampling equals `upsample_bilinear2d` (align_corners false),
    /// down and up, at the probe's 23 -> 322 and at sizes with edge clamping.
    #[test]
    fn bilinear_matrix_matches_upsample_bilinear2d() {
        tch::manual_seed(7);
        for (h, w, oh, ow) in [
            (23, 23, 322, 322),
            (5, 3, 7, 11),
            (6, 9, 4, 2),
            (1, 1, 3, 2),
        ] {
            let x = Tensor::randn([2, 3, h, w], (Kind::Float, Device::Cpu));
            let want = x.upsample_bilinear2d([oh, ow], false, None, None);
            let ry = bilinear_matrix(oh, h, Kind::Float, Device::Cpu).unwrap();
            let rx = bilinear_matrix(ow, w, Kind::Float, Device::Cpu).unwrap();
            let got = ry.matmul(&x.matmul(&rx.transpose(0, 1)));
            let d = (got - want).abs().max().double_value(&[]);
            assert!(d < 1e-5, "{h}x{w} -> {oh}x{ow}: max |d| {d}");
        }
    }

    /// Training on two well-separated directions: the cluster loss falls and the linear
    /// probe learns them; the same seed gives the same probes.
    #[test]
    fn probes_learn_separated_code_and_repeat_with_their_seed() {
        let cfg = ProbeConfig {
            dim: 4,
            k: 2,
            classes: 2,
            lr: 5e-2,
        };
        // 8 pixels: class 0 near e0, class 1 near e1.
        let mut v = vec![0f32; 4 * 8];
        let mut lab = vec![0i64; 8];
        for p in 0..8 {
            let c = p % 2;
            v[c * 8 + p] = 1.0;
            v[2 * 8 + p] = 0.1 * p as f32;
            lab[p] = c as i64;
        }
        let code = t(&v, &[1, 4, 2, 4]);
        let targets = Tensor::from_slice(&lab).view([1, 2, 4]);
        let train = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut p = Probes::new(&cfg, &mut rng, Device::Cpu).unwrap();
            let losses: Vec<ProbeLosses> = (0..150)
                .map(|_| p.step(&code, Some(&targets)).unwrap())
                .collect();
            (p, losses)
        };
        let (p, losses) = train(3);
        assert!(
            losses.last().unwrap().cluster < losses[0].cluster,
            "{losses:?}"
        );
        assert!(losses.last().unwrap().linear.unwrap() < 0.1, "{losses:?}");
        let (w, b) = p.linear().unwrap();
        let pred = linear_logits(&code, &w, &b).unwrap().argmax(1, false);
        assert!(pred.view([-1]).equal(&targets.view([-1])));
        let (q, again) = train(3);
        assert_eq!(losses, again);
        assert!(p.centroids().equal(&q.centroids()));
        let (r, _) = train(4);
        assert!(!p.centroids().equal(&r.centroids()));
    }

    #[test]
    fn supervised_scores_use_the_identity_matching() {
        // Predictions swapped for class 1 and 2: Hungarian would fix it, identity does not.
        let conf = Confusion::from_counts(3, 3, vec![5, 0, 0, 0, 0, 4, 0, 4, 0]).unwrap();
        let m = supervised_scores(&conf, None).unwrap();
        assert!((m.pixel_accuracy - 100.0 * 5.0 / 13.0).abs() < 1e-9);
        assert_eq!(m.per_class_iou, vec![100.0, 0.0, 0.0]);
        assert!((m.miou - 100.0 / 3.0).abs() < 1e-9);
        let wide = Confusion::new(3, 4).unwrap();
        assert!(supervised_scores(&wide, None).is_err());
    }

    #[test]
    fn bad_configs_name_their_field() {
        let bad = ProbeConfig {
            dim: 0,
            k: 0,
            classes: -1,
            lr: f64::NAN,
        };
        let fields: Vec<_> = bad.problems().into_iter().map(|p| p.0).collect();
        assert_eq!(fields, ["dim", "k", "classes", "lr"]);
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        assert!(Probes::new(&bad, &mut rng, Device::Cpu).is_err());
    }
}
