//! STEGO's `ContrastiveCorrelationLoss` as released, with the random draws passed in
//! ([`Samples`]) so that a caller can make them a pure function of (seed, epoch, step).
//!
//! For a pair of feature maps and their codes, sampled at S x S points each (bilinear,
//! border padding, align_corners = true, the grid transposed as the release's `sample`
//! does): fd = corr(norm f1, norm f2) without gradient (with `pointwise`: centred over the
//! second image's points, global mean kept), cd = corr(norm c1, norm c2), and the term is
//! mean(-clamp(cd, lo, hi) * (fd - shift)) with lo = 0 under `zero_clamp` (else -9999, as
//! released) and hi = 0.8 under `stabalize`. Three terms: the image with itself (intra),
//! with its KNN partner (inter), with `neg_samples` permuted images of the batch (neg).

use rand::Rng;
use tch::{Kind, Tensor};

use super::{super_perm, StegoError};

/// The loss's settings, named as in the release's config. `Default` is the active values of
/// the release's `train_config.yml` (COCO-27, ViT-S/8).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CorrLossConfig {
    /// Centre the feature correlation over the partner's points.
    pub pointwise: bool,
    /// Clamp the code correlation below at 0.
    pub zero_clamp: bool,
    /// Clamp it above at 0.8 too (the release's spelling).
    pub stabalize: bool,
    /// S: the sampled grid is S x S points per image.
    pub feature_samples: i64,
    /// Negative partners per image per step (0: no negative term).
    pub neg_samples: i64,
    pub pos_intra_weight: f64,
    pub pos_inter_weight: f64,
    pub neg_inter_weight: f64,
    pub pos_intra_shift: f64,
    pub pos_inter_shift: f64,
    pub neg_inter_shift: f64,
}

impl Default for CorrLossConfig {
    fn default() -> Self {
        Self {
            pointwise: true,
            zero_clamp: true,
            stabalize: false,
            feature_samples: 11,
            neg_samples: 5,
            pos_intra_weight: 0.67,
            pos_inter_weight: 0.25,
            neg_inter_weight: 0.63,
            pos_intra_shift: 0.18,
            pos_inter_shift: 0.12,
            neg_inter_shift: 0.46,
        }
    }
}

impl CorrLossConfig {
    /// Every bad setting, by field (the release's name).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut e = Vec::new();
        if self.feature_samples < 1 {
            e.push((
                "feature_samples",
                format!("must be at least 1, got {}", self.feature_samples),
            ));
        }
        if self.neg_samples < 0 {
            e.push((
                "neg_samples",
                format!(
                    "must be 0 or more (0: no negative term), got {}",
                    self.neg_samples
                ),
            ));
        }
        for (field, v) in [
            ("pos_intra_weight", self.pos_intra_weight),
            ("pos_inter_weight", self.pos_inter_weight),
            ("neg_inter_weight", self.neg_inter_weight),
            ("pos_intra_shift", self.pos_intra_shift),
            ("pos_inter_shift", self.pos_inter_shift),
            ("neg_inter_shift", self.neg_inter_shift),
        ] {
            if !v.is_finite() {
                e.push((field, format!("must be a finite number, got {v}")));
            }
        }
        e
    }

    pub fn validate(&self) -> Result<(), StegoError> {
        match self.problems().into_iter().next() {
            Some((field, message)) => Err(StegoError::Config { field, message }),
            None => Ok(()),
        }
    }
}

/// One step's random draws: sample coordinates in [-1, 1) of shape B x S x S x 2 (x, y) for
/// the images (`coords1`) and for their partners and negatives (`coords2`), and one map of
/// the batch per negative sample (`perms`, the release's `super_perm`).
#[derive(Debug)]
pub struct Samples {
    pub coords1: Tensor,
    pub coords2: Tensor,
    pub perms: Vec<Vec<i64>>,
}

impl Samples {
    /// The draws of a batch of `batch` images, in the release's order (coords1, coords2,
    /// then the permutations), from `rng`.
    pub fn draw<R: Rng>(batch: usize, cfg: &CorrLossConfig, rng: &mut R) -> Self {
        let s = cfg.feature_samples.max(1);
        let shape = [batch as i64, s, s, 2];
        let n = (batch as i64 * s * s * 2) as usize;
        let mut coords = || {
            let v: Vec<f32> = (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
            Tensor::from_slice(&v).view(shape)
        };
        let (coords1, coords2) = (coords(), coords());
        let perms = (0..cfg.neg_samples.max(0))
            .map(|_| super_perm(batch, rng))
            .collect();
        Self {
            coords1,
            coords2,
            perms,
        }
    }

    fn check(&self, batch: i64, cfg: &CorrLossConfig) -> Result<(), StegoError> {
        let s = cfg.feature_samples;
        for (name, c) in [("coords1", &self.coords1), ("coords2", &self.coords2)] {
            if c.size() != [batch, s, s, 2] {
                return Err(StegoError::Shape(format!(
                    "{name} is {:?}, expected [{batch}, {s}, {s}, 2]",
                    c.size()
                )));
            }
        }
        if self.perms.len() as i64 != cfg.neg_samples {
            return Err(StegoError::Shape(format!(
                "{} negative permutations for neg_samples = {}",
                self.perms.len(),
                cfg.neg_samples
            )));
        }
        if let Some(p) = self
            .perms
            .iter()
            .find(|p| p.len() as i64 != batch || p.iter().any(|&i| !(0..batch).contains(&i)))
        {
            return Err(StegoError::Shape(format!(
                "negative permutation {p:?} is not a map of a batch of {batch}"
            )));
        }
        Ok(())
    }
}

/// The loss and its terms (scalars; `total` carries the gradient), with the mean code
/// correlation of each term (detached) as the release logs them (`cd/...`).
#[derive(Debug)]
pub struct Terms {
    pub total: Tensor,
    pub intra: Tensor,
    pub inter: Tensor,
    pub neg: Tensor,
    pub intra_cd: f64,
    pub inter_cd: f64,
    pub neg_cd: f64,
    /// The feature correlations each term compared with its shift (after the pointwise
    /// centring), flattened, without gradient: where the shifts cut them decides which pairs
    /// a term pulls together (fd > shift) and which it pushes apart.
    pub intra_fd: Tensor,
    pub inter_fd: Tensor,
    pub neg_fd: Tensor,
}

/// L2 over channels with the release's eps (1e-10).
fn norm(t: &Tensor) -> Result<Tensor, StegoError> {
    let n = t
        .f_square()?
        .f_sum_dim_intlist(1, true, t.kind())?
        .f_sqrt()?
        .f_clamp_min(1e-10)?;
    Ok(t.f_div(&n)?)
}

/// corr[n, h, w, i, j] = sum_c a[n, c, h, w] b[n, c, i, j].
fn correlation(a: &Tensor, b: &Tensor) -> Result<Tensor, StegoError> {
    Ok(Tensor::f_einsum("nchw,ncij->nhwij", &[a, b], None::<i64>)?)
}

/// The release's `sample`: grid_sample at `coords.permute(0, 2, 1, 3)` (so sample [i, j]
/// lands at output [j, i]), bilinear, border padding, align_corners = true.
fn sample(t: &Tensor, coords: &Tensor) -> Result<Tensor, StegoError> {
    let grid = coords.f_to_kind(t.kind())?.f_to_device(t.device())?;
    Ok(t.f_grid_sampler_2d(&grid.f_permute([0, 2, 1, 3])?, 0, 1, true)?)
}

/// One term: (loss map, code correlation, feature correlation).
fn term(
    cfg: &CorrLossConfig,
    f1: &Tensor,
    f2: &Tensor,
    c1: &Tensor,
    c2: &Tensor,
    shift: f64,
) -> Result<(Tensor, Tensor, Tensor), StegoError> {
    let fd = tch::no_grad(|| -> Result<Tensor, StegoError> {
        let fd = correlation(&norm(f1)?, &norm(f2)?)?;
        if !cfg.pointwise {
            return Ok(fd);
        }
        let old_mean = fd.f_mean(fd.kind())?;
        let fd = fd.f_sub(&fd.f_mean_dim([3i64, 4].as_slice(), true, fd.kind())?)?;
        Ok(fd.f_sub(&fd.f_mean(fd.kind())?)?.f_add(&old_mean)?)
    })?;
    let cd = correlation(&norm(c1)?, &norm(c2)?)?;
    let lo = if cfg.zero_clamp { 0.0 } else { -9999.0 };
    let clamped = if cfg.stabalize {
        cd.f_clamp(lo, 0.8)?
    } else {
        cd.f_clamp_min(lo)?
    };
    let loss = clamped.f_mul(&fd.f_sub_scalar(shift)?)?.f_neg()?;
    Ok((loss, cd, fd))
}

/// Histograms of the feature correlations each term saw (`Terms::*_fd`), over [-1, 1] in
/// `BINS` equal bins (values outside fall in the end bins): how the shifts cut the
/// backbone's correlation distribution, the first thing to look at when tuning them.
#[derive(Clone, Debug, PartialEq)]
pub struct CorrHistogram {
    /// Per term (intra, inter, neg), the count of each bin.
    pub counts: [[u64; CorrHistogram::BINS]; 3],
    /// Per term, the sum of the values and their count (for the mean).
    pub sums: [f64; 3],
    pub n: [u64; 3],
}

impl Default for CorrHistogram {
    fn default() -> Self {
        Self {
            counts: [[0; Self::BINS]; 3],
            sums: [0.0; 3],
            n: [0; 3],
        }
    }
}

impl CorrHistogram {
    pub const BINS: usize = 40;
    pub const TERMS: [&'static str; 3] = ["intra", "inter", "neg"];

    /// The lower and upper edge of bin `b`.
    pub fn edges(b: usize) -> (f64, f64) {
        let w = 2.0 / Self::BINS as f64;
        (-1.0 + w * b as f64, -1.0 + w * (b + 1) as f64)
    }

    /// Adds one step's correlations.
    pub fn add(&mut self, terms: &Terms) -> Result<(), StegoError> {
        for (t, fd) in [&terms.intra_fd, &terms.inter_fd, &terms.neg_fd]
            .into_iter()
            .enumerate()
        {
            let v = Vec::<f64>::try_from(fd.f_to_kind(Kind::Double)?.f_flatten(0, -1)?)?;
            for x in v {
                let b = ((x + 1.0) / 2.0 * Self::BINS as f64).floor();
                self.counts[t][b.clamp(0.0, (Self::BINS - 1) as f64) as usize] += 1;
                self.sums[t] += x;
                self.n[t] += 1;
            }
        }
        Ok(())
    }

    /// The mean correlation of term `t` (NaN when it saw none).
    pub fn mean(&self, t: usize) -> f64 {
        self.sums[t] / self.n[t] as f64
    }

    /// The fraction of term `t`'s correlations above `shift`: the pairs it pulls together.
    pub fn above(&self, t: usize, shift: f64) -> f64 {
        // Bin resolution: a bin counts as above when its centre is.
        let above: u64 = (0..Self::BINS)
            .filter(|&b| {
                let (lo, hi) = Self::edges(b);
                (lo + hi) / 2.0 > shift
            })
            .map(|b| self.counts[t][b])
            .sum();
        above as f64 / self.n[t].max(1) as f64
    }
}

fn mean_value(t: &Tensor) -> Result<f64, StegoError> {
    Ok(t.f_detach()?.f_mean(Kind::Double)?.f_double_value(&[])?)
}

/// STEGO's correspondence loss for a batch: `feats`/`code` of the images and
/// `feats_pos`/`code_pos` of their KNN partners (B x C x h x w and B x D x h x w; the
/// partners' maps may have another h x w), at the draws of `samples`. Gradients flow into
/// both codes, never into the features.
pub fn correspondence_loss(
    cfg: &CorrLossConfig,
    feats: &Tensor,
    feats_pos: &Tensor,
    code: &Tensor,
    code_pos: &Tensor,
    samples: &Samples,
) -> Result<Terms, StegoError> {
    cfg.validate()?;
    let b = feats.size().first().copied().unwrap_or(0);
    for (name, t) in [
        ("feats", feats),
        ("feats_pos", feats_pos),
        ("code", code),
        ("code_pos", code_pos),
    ] {
        let s = t.size();
        if s.len() != 4 || s[0] != b || b == 0 {
            return Err(StegoError::Shape(format!(
                "{name} is {s:?}: expected a non-empty B x C x h x w map of B = {b} images"
            )));
        }
    }
    samples.check(b, cfg)?;

    let f1 = sample(feats, &samples.coords1)?;
    let c1 = sample(code, &samples.coords1)?;
    let f2 = sample(feats_pos, &samples.coords2)?;
    let c2 = sample(code_pos, &samples.coords2)?;

    let (intra, intra_cd, intra_fd) = term(cfg, &f1, &f1, &c1, &c1, cfg.pos_intra_shift)?;
    let (inter, inter_cd, inter_fd) = term(cfg, &f1, &f2, &c1, &c2, cfg.pos_inter_shift)?;
    let intra = intra.f_mean(intra.kind())?;
    let inter = inter.f_mean(inter.kind())?;

    let mut neg_losses = Vec::new();
    let mut neg_cds = Vec::new();
    let mut neg_fds = Vec::new();
    for p in &samples.perms {
        let idx = Tensor::from_slice(p).to_device(feats.device());
        let fn_ = sample(&feats.f_index_select(0, &idx)?, &samples.coords2)?;
        let cn = sample(&code.f_index_select(0, &idx)?, &samples.coords2)?;
        let (l, cd, fd) = term(cfg, &f1, &fn_, &c1, &cn, cfg.neg_inter_shift)?;
        neg_losses.push(l);
        neg_cds.push(cd.f_detach()?);
        neg_fds.push(fd.f_flatten(0, -1)?);
    }
    let neg_fd = if neg_fds.is_empty() {
        Tensor::f_zeros([0], (code.kind(), code.device()))?
    } else {
        Tensor::f_cat(&neg_fds, 0)?
    };
    let (neg, neg_cd) = if neg_losses.is_empty() {
        (Tensor::f_zeros([], (code.kind(), code.device()))?, 0.0)
    } else {
        let l = Tensor::f_cat(&neg_losses, 0)?;
        (
            l.f_mean(l.kind())?,
            mean_value(&Tensor::f_cat(&neg_cds, 0)?)?,
        )
    };
    let total = inter
        .f_mul_scalar(cfg.pos_inter_weight)?
        .f_add(&intra.f_mul_scalar(cfg.pos_intra_weight)?)?
        .f_add(&neg.f_mul_scalar(cfg.neg_inter_weight)?)?;
    Ok(Terms {
        total,
        intra_cd: mean_value(&intra_cd)?,
        inter_cd: mean_value(&inter_cd)?,
        neg_cd,
        intra,
        inter,
        neg,
        intra_fd: intra_fd.f_flatten(0, -1)?,
        inter_fd: inter_fd.f_flatten(0, -1)?,
        neg_fd,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use tch::Device;

    fn maps(b: i64, c: i64, h: i64, w: i64) -> Tensor {
        Tensor::randn([b, c, h, w], (Kind::Double, Device::Cpu))
    }

    fn small() -> CorrLossConfig {
        CorrLossConfig {
            feature_samples: 4,
            neg_samples: 2,
            ..Default::default()
        }
    }

    #[test]
    fn the_histogram_counts_every_correlation_a_term_saw() {
        let cfg = small();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let (f, fp) = (maps(3, 6, 5, 5), maps(3, 6, 5, 5));
        let (c, cp) = (maps(3, 4, 5, 5), maps(3, 4, 5, 5));
        let s = Samples::draw(3, &cfg, &mut rng);
        let t = correspondence_loss(&cfg, &f, &fp, &c, &cp, &s).unwrap();
        let mut h = CorrHistogram::default();
        h.add(&t).unwrap();
        // B x S x S x S x S per term, neg_samples times that for neg.
        let per = 3 * 4u64.pow(4);
        assert_eq!(h.n, [per, per, 2 * per]);
        for (i, fd) in [&t.intra_fd, &t.inter_fd, &t.neg_fd]
            .into_iter()
            .enumerate()
        {
            assert_eq!(h.counts[i].iter().sum::<u64>(), h.n[i]);
            assert!((h.mean(i) - fd.mean(Kind::Double).double_value(&[])).abs() < 1e-12);
            let above = fd.gt(0.0).to_kind(Kind::Double).mean(Kind::Double);
            // Bin resolution (0.05): the fraction above 0 is exact at a bin edge.
            assert!((h.above(i, 0.0) - above.double_value(&[])).abs() < 1e-12);
        }
        assert_eq!(CorrHistogram::edges(0).0, -1.0);
        assert!((CorrHistogram::edges(CorrHistogram::BINS - 1).1 - 1.0).abs() < 1e-12);
    }

    #[test]
    fn defaults_are_the_released_vit_s_config() {
        let c = CorrLossConfig::default();
        assert!(c.pointwise && c.zero_clamp && !c.stabalize);
        assert_eq!((c.feature_samples, c.neg_samples), (11, 5));
        assert_eq!(
            (c.neg_inter_weight, c.pos_inter_weight, c.pos_intra_weight),
            (0.63, 0.25, 0.67)
        );
        assert_eq!(
            (c.neg_inter_shift, c.pos_inter_shift, c.pos_intra_shift),
            (0.46, 0.12, 0.18)
        );
        assert!(c.problems().is_empty());
    }

    #[test]
    fn bad_counts_and_non_finite_numbers_are_named() {
        let bad = CorrLossConfig {
            feature_samples: 0,
            neg_samples: -1,
            pos_inter_shift: f64::NAN,
            neg_inter_weight: f64::INFINITY,
            ..Default::default()
        };
        let fields: Vec<&str> = bad.problems().into_iter().map(|p| p.0).collect();
        assert_eq!(
            fields,
            [
                "feature_samples",
                "neg_samples",
                "neg_inter_weight",
                "pos_inter_shift"
            ]
        );
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("`feature_samples`"), "{e}");
    }

    /// The draws are a function of the RNG's seed alone, in [-1, 1).
    #[test]
    fn draws_repeat_with_the_seed() {
        let cfg = small();
        let a = Samples::draw(3, &cfg, &mut rand_chacha::ChaCha8Rng::seed_from_u64(7));
        let b = Samples::draw(3, &cfg, &mut rand_chacha::ChaCha8Rng::seed_from_u64(7));
        let c = Samples::draw(3, &cfg, &mut rand_chacha::ChaCha8Rng::seed_from_u64(8));
        assert_eq!(a.coords1, b.coords1);
        assert_eq!(a.coords2, b.coords2);
        assert_eq!(a.perms, b.perms);
        assert_ne!(a.coords1, c.coords1);
        assert_eq!(a.coords1.size(), [3, 4, 4, 2]);
        assert_eq!(a.perms.len(), 2);
        let (lo, hi) = (
            a.coords1.min().double_value(&[]),
            a.coords1.max().double_value(&[]),
        );
        assert!(lo >= -1.0 && hi < 1.0, "{lo} {hi}");
    }

    /// Sampling at the grid's own points reads the map back (align_corners = true), and the
    /// release's transposed grid puts coordinate (x, y) of sample [i, j] at output [j, i].
    #[test]
    fn samples_read_the_map_at_its_coordinates() {
        let t = Tensor::arange(12, (Kind::Double, Device::Cpu)).view([1, 1, 3, 4]);
        // Sample [0, 1] at pixel (x = 3, y = 0); sample [1, 0] at (x = 0, y = 2).
        let mut c = vec![0f32; 8];
        c[0..2].copy_from_slice(&[-1.0, -1.0]);
        c[2..4].copy_from_slice(&[1.0, -1.0]);
        c[4..6].copy_from_slice(&[-1.0, 1.0]);
        let coords = Tensor::from_slice(&c).view([1, 2, 2, 2]);
        let s = sample(&t, &coords).unwrap();
        assert_eq!(s.size(), [1, 1, 2, 2]);
        assert_eq!(s.double_value(&[0, 0, 1, 0]), 3.0);
        assert_eq!(s.double_value(&[0, 0, 0, 1]), 8.0);
        assert_eq!(s.double_value(&[0, 0, 0, 0]), 0.0);
        // The centre (0, 0) of sample [1, 1] is between pixels (1, 1) and (2, 1): 5.5.
        assert_eq!(s.double_value(&[0, 0, 1, 1]), 5.5);
    }

    /// Terms by hand on a case with a known answer: codes equal to the features, no
    /// pointwise centring, no clamp: intra = -mean(fd * (fd - shift)).
    #[test]
    fn intra_term_matches_its_definition() {
        let cfg = CorrLossConfig {
            pointwise: false,
            zero_clamp: false,
            neg_samples: 0,
            feature_samples: 3,
            ..Default::default()
        };
        let f = maps(2, 5, 4, 4);
        let s = Samples::draw(2, &cfg, &mut rand_chacha::ChaCha8Rng::seed_from_u64(1));
        let t = correspondence_loss(&cfg, &f, &f, &f, &f, &s).unwrap();
        let fs = norm(&sample(&f, &s.coords1).unwrap()).unwrap();
        let fd = correlation(&fs, &fs).unwrap();
        let want = (-(&fd * (&fd - cfg.pos_intra_shift))).mean(Kind::Double);
        assert!((t.intra.double_value(&[]) - want.double_value(&[])).abs() < 1e-12);
        assert_eq!(t.neg.double_value(&[]), 0.0);
        let total = 0.67 * t.intra.double_value(&[]) + 0.25 * t.inter.double_value(&[]);
        assert!((t.total.double_value(&[]) - total).abs() < 1e-12);
    }

    /// Only codes carry gradient; the loss falls when the code correlations follow the
    /// shifted feature correlations.
    #[test]
    fn gradients_reach_codes_not_features() {
        let cfg = small();
        let f = maps(3, 6, 5, 5);
        let fp = maps(3, 6, 5, 5);
        let code = maps(3, 4, 5, 5).set_requires_grad(true);
        let code_pos = maps(3, 4, 5, 5).set_requires_grad(true);
        let s = Samples::draw(3, &cfg, &mut rand_chacha::ChaCha8Rng::seed_from_u64(2));
        let t = correspondence_loss(&cfg, &f, &fp, &code, &code_pos, &s).unwrap();
        assert!(t.total.requires_grad());
        t.total.backward();
        assert!(code.grad().abs().sum(Kind::Double).double_value(&[]) > 0.0);
        assert!(code_pos.grad().abs().sum(Kind::Double).double_value(&[]) > 0.0);
        assert!(!f.requires_grad());
        assert!([t.intra_cd, t.inter_cd, t.neg_cd]
            .iter()
            .all(|v| v.is_finite()));
    }

    #[test]
    fn mismatched_draws_and_maps_are_refused() {
        let cfg = small();
        let f = maps(2, 6, 5, 5);
        let c = maps(2, 4, 5, 5);
        let s = Samples::draw(3, &cfg, &mut rand_chacha::ChaCha8Rng::seed_from_u64(2));
        assert!(matches!(
            correspondence_loss(&cfg, &f, &f, &c, &c, &s),
            Err(StegoError::Shape(_))
        ));
        let mut s = Samples::draw(2, &cfg, &mut rand_chacha::ChaCha8Rng::seed_from_u64(2));
        s.perms[0] = vec![0, 5];
        assert!(matches!(
            correspondence_loss(&cfg, &f, &f, &c, &c, &s),
            Err(StegoError::Shape(_))
        ));
        let s = Samples::draw(2, &cfg, &mut rand_chacha::ChaCha8Rng::seed_from_u64(2));
        let one = maps(1, 4, 5, 5);
        assert!(correspondence_loss(&cfg, &f, &f, &c, &one, &s).is_err());
    }
}
