//! Assignment: the release's label rule, and nearest-centroid labels, objective, counts
//! and f64 sums per block of rows (the host kernel on CPU, tensor ops elsewhere); shape
//! checks and conversions shared by the other files.

use super::*;

/// The release's label rule: argmax_k (2 <z, mu_k> - |mu_k|^2), i.e. the nearest centroid in
/// L2. `z` is N x D (gives N labels) or a B x D x H x W feature map (gives B x H x W labels).
/// Computed on `z`'s device; labels are i64.
pub fn label_release(z: &Tensor, centroids: &Tensor) -> Result<Tensor, KmeansError> {
    let _guard = tch::no_grad_guard();
    let (k, d) = check_matrix(centroids)?;
    if k == 0 {
        return Err(KmeansError::ZeroK);
    }
    let size = z.size();
    let (flat, out_shape) = match size.as_slice() {
        [_, _] => (z.shallow_clone(), None),
        &[b, c, h, w] => {
            if c != d {
                return Err(KmeansError::DimMismatch {
                    expected: d,
                    got: c,
                });
            }
            (
                z.f_permute([0, 2, 3, 1])?.f_reshape([-1, c])?,
                Some([b, h, w]),
            )
        }
        _ => return Err(KmeansError::Shape(size)),
    };
    let dev = z.device();
    let mu = centroids.f_to_device_(dev, Kind::Float, false, false)?;
    let mu_t2 = mu.f_tr()?.f_mul_scalar(2.0)?;
    let mu_sq = mu
        .f_square()?
        .f_sum_dim_intlist(&[1i64][..], false, Kind::Float)?;
    let mut labels = Vec::new();
    for block in blocks(&flat, d, KmeansConfig::default().chunk_rows, dev)? {
        let logits = block?.f_mm(&mu_t2)?.f_sub(&mu_sq)?;
        labels.push(logits.f_argmax(1, false)?);
    }
    let labels = if labels.is_empty() {
        Tensor::f_zeros([0], (Kind::Int64, dev))?
    } else {
        Tensor::f_cat(&labels, 0)?
    };
    Ok(match out_shape {
        Some(shape) => labels.f_reshape(shape)?,
        None => labels,
    })
}

/// Which code computes assignments and sums.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum AccumPath {
    /// The fused host kernel on CPU, tensor ops (matmuls) on other devices.
    Auto,
    /// Tensor ops everywhere (tests compare the two on CPU).
    #[cfg_attr(not(test), allow(dead_code))]
    Tensor,
}

/// Centroids in the forms the assignment wants.
pub(super) struct Prepared {
    pub(super) k: usize,
    pub(super) d: usize,
    pub(super) device: Device,
    /// D x K, holding -2 c^T (exact: a power of two), so one addmm gives |c|^2 - 2 x.c.
    pub(super) neg2_ct: Tensor,
    /// K, |c|^2.
    pub(super) c_sq: Tensor,
    /// The host kernel's layout, when it is used (CPU).
    pub(super) host: Option<HostCentroids>,
    pub(super) threads: usize,
}

/// One block's assignment: labels (when asked for), objective, per-cluster counts and (when
/// asked for) f64 sums, K x D row-major.
pub(super) struct BlockOut {
    pub(super) labels: Option<Tensor>,
    pub(super) objective: f64,
    pub(super) counts: Vec<u64>,
    pub(super) sums: Vec<f64>,
}

impl Prepared {
    pub(super) fn new(c: &Tensor, path: AccumPath) -> Result<Self, KmeansError> {
        let (k, d) = c.size2()?;
        let device = c.device();
        let host = if device == Device::Cpu && path == AccumPath::Auto {
            Some(HostCentroids::new(&to_host_f32(c)?, k as usize, d as usize))
        } else {
            None
        };
        Ok(Self {
            k: k as usize,
            d: d as usize,
            device,
            neg2_ct: c.f_tr()?.f_mul_scalar(-2.0)?,
            c_sq: c
                .f_square()?
                .f_sum_dim_intlist(&[1i64][..], false, Kind::Float)?,
            host,
            threads: usize::try_from(tch::get_num_threads()).unwrap_or(1).max(1),
        })
    }

    /// Assign the rows of one f32 block (contiguous, on the centroids' device). `offset` is
    /// the block's first row, for error messages.
    pub(super) fn block(
        &self,
        x: &Tensor,
        offset: u64,
        want_labels: bool,
        want_sums: bool,
    ) -> Result<BlockOut, KmeansError> {
        let out = match &self.host {
            Some(hc) => {
                let xs = cpu_slice::<f32>(x)?;
                let mut labels = want_labels.then(|| vec![0i64; xs.len() / self.d]);
                let t = host_block(hc, xs, labels.as_deref_mut(), want_sums, self.threads)?;
                BlockOut {
                    labels: labels.map(|l| Tensor::f_from_slice(&l)).transpose()?,
                    objective: t.objective,
                    counts: t.counts,
                    sums: t.sums,
                }
            }
            None => self.tensor_block(x, want_sums)?,
        };
        // Any NaN or infinity in x makes every distance of its row non-finite, so checking the
        // block's total is enough; the full element check runs only to name the cause.
        if !out.objective.is_finite() {
            check_finite(x, offset)?;
            return Err(KmeansError::Overflow {
                start: offset,
                end: offset + x.size()[0] as u64,
            });
        }
        Ok(out)
    }

    pub(super) fn tensor_block(
        &self,
        x: &Tensor,
        want_sums: bool,
    ) -> Result<BlockOut, KmeansError> {
        let dist = self.c_sq.f_addmm(x, &self.neg2_ct)?;
        let (mins, labels) = dist.f_min_dim(1, false)?;
        let mut per_row = x
            .f_square()?
            .f_sum_dim_intlist(&[1i64][..], false, Kind::Float)?;
        // Rounding can make a tiny distance negative; clamp per row before summing.
        let _ = per_row.f_add_(&mins)?;
        let _ = per_row.f_clamp_min_(0.0)?;
        let objective = per_row.f_sum(Kind::Double)?.f_double_value(&[])?;
        let counts = Vec::<i64>::try_from(
            labels
                .f_bincount(None::<Tensor>, self.k as i64)?
                .f_to_device(Device::Cpu)?,
        )?
        .into_iter()
        .map(|c| c as u64)
        .collect();
        let sums = if want_sums {
            // One-hot^T x in f64: a deterministic matmul (index_add uses atomics on GPU).
            let n = x.size()[0];
            let mut onehot = Tensor::f_zeros([n, self.k as i64], (Kind::Double, self.device))?;
            let _ = onehot.f_scatter_value_(1, &labels.f_unsqueeze(1)?, 1.0)?;
            let part = onehot.f_tr()?.f_mm(&x.f_to_kind(Kind::Double)?)?;
            Vec::<f64>::try_from(part.f_to_device(Device::Cpu)?.f_reshape([-1])?)?
        } else {
            Vec::new()
        };
        Ok(BlockOut {
            labels: Some(labels),
            objective,
            counts,
            sums,
        })
    }
}

pub(super) fn check_finite(x: &Tensor, offset: u64) -> Result<(), KmeansError> {
    if !bool::try_from(x.f_isfinite()?.f_all()?)? {
        return Err(KmeansError::NonFinite {
            start: offset,
            end: offset + x.size()[0] as u64,
        });
    }
    Ok(())
}

/// Per-cluster sums (f64) and counts over one pass.
pub(super) struct Accum {
    pub(super) k: usize,
    pub(super) d: usize,
    pub(super) sums: Vec<f64>,
    pub(super) counts: Vec<u64>,
    pub(super) objective: f64,
    pub(super) rows: u64,
}

impl Accum {
    pub(super) fn new(k: usize, d: usize) -> Self {
        Self {
            k,
            d,
            sums: vec![0.0; k * d],
            counts: vec![0; k],
            objective: 0.0,
            rows: 0,
        }
    }

    pub(super) fn add_block(&mut self, prep: &Prepared, x: &Tensor) -> Result<(), KmeansError> {
        if (prep.k, prep.d) != (self.k, self.d) {
            return Err(KmeansError::Internal("accumulator and centroids disagree"));
        }
        let out = prep.block(x, self.rows, false, true)?;
        self.add_stats(BlockStats {
            rows: x.size()[0] as u64,
            objective: out.objective,
            counts: out.counts,
            sums: out.sums,
        })
    }

    /// Adds one block's statistics: the one place a pass's totals grow, so that folding
    /// stored blocks in order is the same arithmetic as a pass in one process.
    pub(super) fn add_stats(&mut self, b: BlockStats) -> Result<(), KmeansError> {
        if b.counts.len() != self.k || b.sums.len() != self.k * self.d {
            return Err(KmeansError::Config(format!(
                "block statistics of {} clusters x {} values do not fit k = {}, d = {}",
                b.counts.len(),
                b.sums.len(),
                self.k,
                self.d
            )));
        }
        self.objective += b.objective;
        self.rows += b.rows;
        self.sums.iter_mut().zip(b.sums).for_each(|(a, b)| *a += b);
        self.counts
            .iter_mut()
            .zip(b.counts)
            .for_each(|(a, b)| *a += b);
        Ok(())
    }
}

/// Rows x features, floating point, at least one feature.
pub(super) fn check_matrix(x: &Tensor) -> Result<(i64, i64), KmeansError> {
    let size = x.size();
    let &[n, d] = size.as_slice() else {
        return Err(KmeansError::Shape(size));
    };
    if d == 0 {
        return Err(KmeansError::Shape(size));
    }
    let kind = x.f_kind()?;
    if !matches!(
        kind,
        Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
    ) {
        return Err(KmeansError::Kind(kind));
    }
    Ok((n, d))
}

/// Split a chunk into blocks of at most `rows` rows, each f32, contiguous and on `device`
/// (converted block by block, so a large f64 or host tensor is never copied whole).
pub(super) fn blocks(
    x: &Tensor,
    d: i64,
    rows: usize,
    device: Device,
) -> Result<impl Iterator<Item = Result<Tensor, KmeansError>> + '_, KmeansError> {
    let (n, got) = check_matrix(x)?;
    if got != d {
        return Err(KmeansError::DimMismatch { expected: d, got });
    }
    let step = rows.max(1) as i64;
    Ok((0..n).step_by(step as usize).map(move |start| {
        let len = step.min(n - start);
        Ok(x.f_narrow(0, start, len)?
            .f_detach()?
            .f_to_device_(device, Kind::Float, false, false)?
            .f_contiguous()?)
    }))
}

/// An in-memory tensor as a source of row chunks (views, no copies).
pub fn tensor_chunks(
    data: &Tensor,
    rows: usize,
) -> impl Iterator<Item = Result<Tensor, tch::TchError>> + '_ {
    let n = data.size().first().copied().unwrap_or(0);
    let step = rows.max(1) as i64;
    (0..n)
        .step_by(step as usize)
        .map(move |start| data.f_narrow(0, start, step.min(n - start)))
}

pub(super) fn to_host_f32(t: &Tensor) -> Result<Vec<f32>, KmeansError> {
    Ok(Vec::<f32>::try_from(
        t.f_to_device_(Device::Cpu, Kind::Float, false, false)?
            .f_contiguous()?
            .f_reshape([-1])?,
    )?)
}

pub(super) fn centroids_tensor(
    host: &[f64],
    k: i64,
    d: i64,
    device: Device,
) -> Result<Tensor, KmeansError> {
    let v: Vec<f32> = host.iter().map(|&x| x as f32).collect();
    Ok(Tensor::f_from_slice(&v)?
        .f_reshape([k, d])?
        .f_to_device(device)?)
}
