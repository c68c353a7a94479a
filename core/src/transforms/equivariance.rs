//! The equivariance operator G of PiCIE on tensors: per sample, crop the
//! relative box of its [`Geometric`] parameters, resize bilinearly back
//! (`upsample_bilinear2d`, `align_corners = false`, no antialiasing, as the
//! release's `F.interpolate`), then flip horizontally if drawn.
//!
//! The release applies G to view 2's 80x80 feature map (crop box computed
//! for side 80 from the same crop fraction and offsets as the image crop) and
//! to view 1's normalised 640x640 image tensor with output size 320
//! ([`apply_to_size`]). Works for any channel count, any float kind, any
//! device; the crop box is computed per axis (`crop_box(W)` for x,
//! `crop_box(H)` for y), which on square maps is the release's single box.

use tch::{Kind, Tensor};

use super::{Result, TransformError};
use crate::augment_params::Geometric;

/// G with the output the same size as the input (the feature-map case).
pub fn apply(x: &Tensor, params: &[Geometric]) -> Result<Tensor> {
    let (h, w) = spatial(x)?;
    apply_to_size(x, params, h, w)
}

/// G with an explicit output size (`F.interpolate(crop, (out_h, out_w))`).
/// `x` is `N x C x H x W` with `N == params.len()`.
pub fn apply_to_size(x: &Tensor, params: &[Geometric], out_h: i64, out_w: i64) -> Result<Tensor> {
    let (h, w) = spatial(x)?;
    let n = x.size()[0];
    if n != params.len() as i64 {
        return Err(TransformError::Tensor(format!(
            "equivariance: batch of {n} but {} parameter sets",
            params.len()
        )));
    }
    if h == 0 || w == 0 || out_h <= 0 || out_w <= 0 {
        return Err(TransformError::Tensor(format!(
            "equivariance: cannot resize {h}x{w} to {out_h}x{out_w}"
        )));
    }
    if n == 0 {
        let s = x.size();
        return Ok(x.f_new_zeros([0, s[1], out_h, out_w], (x.kind(), x.device()))?);
    }
    let side = |v: i64| u32::try_from(v).map_err(|_| TransformError::Tensor(format!("side {v}")));
    let (hs, ws) = (side(h)?, side(w)?);
    let mut outs = Vec::with_capacity(params.len());
    for (i, g) in params.iter().enumerate() {
        let (x0, _, cw) = g.crop_box(ws);
        let (_, y0, ch) = g.crop_box(hs);
        let crop = x
            .f_narrow(0, i as i64, 1)?
            .f_narrow(2, i64::from(y0), i64::from(ch))?
            .f_narrow(3, i64::from(x0), i64::from(cw))?;
        // Same-size bilinear with align_corners = false is an exact copy;
        // skipping it saves the kernel launch.
        let resized = if i64::from(ch) == out_h && i64::from(cw) == out_w {
            crop
        } else {
            crop.f_upsample_bilinear2d([out_h, out_w], false, None, None)?
        };
        outs.push(if g.flip {
            resized.f_flip([3])?
        } else {
            resized
        });
    }
    Ok(Tensor::f_cat(&outs, 0)?)
}

/// `(H, W)` of an `N x C x H x W` floating-point tensor.
fn spatial(x: &Tensor) -> Result<(i64, i64)> {
    let s = x.size();
    if s.len() != 4 {
        return Err(TransformError::Tensor(format!(
            "equivariance: expected N x C x H x W, got shape {s:?}"
        )));
    }
    if !matches!(
        x.kind(),
        Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
    ) {
        return Err(TransformError::Tensor(format!(
            "equivariance: bilinear resize needs a float tensor, got {:?}",
            x.kind()
        )));
    }
    Ok((s[2], s[3]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn geo(crop_frac: f32, u_x: f32, u_y: f32, flip: bool) -> Geometric {
        Geometric {
            crop_frac,
            u_x,
            u_y,
            flip,
        }
    }

    /// Smooth test maps (low-frequency sinusoids): interpolation errors stay
    /// small so the equivariance check is meaningful.
    fn smooth(n: i64, c: i64, side: i64) -> Tensor {
        let ys = Tensor::arange(side, (Kind::Float, Device::Cpu)).view([1, 1, side, 1]);
        let xs = Tensor::arange(side, (Kind::Float, Device::Cpu)).view([1, 1, 1, side]);
        let ch = Tensor::arange(n * c, (Kind::Float, Device::Cpu)).view([n, c, 1, 1]);
        let f = 2.0 * std::f64::consts::PI / side as f64;
        ((&xs * f * 1.3 + &ch * 0.7).sin() + (&ys * f * 0.9 - &ch * 0.4).cos()) * 0.5
    }

    fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }

    #[test]
    fn full_extent_without_flip_is_identity() {
        let x = smooth(2, 3, 16);
        let y = apply(&x, &[geo(1.0, 0.4, 0.8, false); 2]).unwrap();
        assert!(y.equal(&x));
    }

    #[test]
    fn flip_twice_is_identity() {
        let x = smooth(1, 5, 12);
        let g = [geo(1.0, 0.0, 0.0, true)];
        let once = apply(&x, &g).unwrap();
        assert!(once.equal(&x.flip([3])));
        assert!(apply(&once, &g).unwrap().equal(&x));
    }

    #[test]
    fn channel_counts_and_per_sample_params() {
        for c in [1, 3, 128] {
            let x = smooth(3, c, 20);
            let gs = [
                geo(0.5, 0.0, 1.0, true),
                geo(1.0, 0.0, 0.0, false),
                geo(0.75, 0.5, 0.5, false),
            ];
            let y = apply(&x, &gs).unwrap();
            assert_eq!(y.size(), [3, c, 20, 20]);
            // Sample 1 is untouched; sample 0 is its own crop, flipped.
            assert!(y.get(1).equal(&x.get(1)));
            let want0 = x
                .narrow(0, 0, 1)
                .narrow(2, 10, 10)
                .narrow(3, 0, 10)
                .upsample_bilinear2d([20, 20], false, None, None)
                .flip([3]);
            assert!(y.narrow(0, 0, 1).equal(&want0));
        }
    }

    #[test]
    fn commutes_with_downsampling() {
        // G on a 320 map then 4x average-pool ~= G on the pooled 80 map. The
        // integer crop boxes at the two scales differ by under a pixel of the
        // 320 map, hence a tolerance rather than equality.
        let x = smooth(4, 3, 320);
        let gs = [
            geo(0.63, 0.2, 0.7, false),
            geo(0.5, 1.0, 0.0, true),
            geo(0.91, 0.5, 0.5, true),
            geo(1.0, 0.0, 0.0, false),
        ];
        let down = |t: &Tensor| t.avg_pool2d([4, 4], [4, 4], [0, 0], false, true, None::<i64>);
        let a = down(&apply(&x, &gs).unwrap());
        let b = apply(&down(&x), &gs).unwrap();
        let err = max_abs(&a, &b);
        eprintln!("max |G(x) pooled - G(x pooled)| = {err:.4}");
        assert!(err < 0.05, "max |G(x)v - G(xv)| = {err}");
    }

    #[test]
    fn apply_to_size_and_errors() {
        let x = smooth(2, 3, 40);
        let gs = [geo(0.5, 0.5, 0.5, false), geo(0.8, 0.1, 0.9, true)];
        assert_eq!(
            apply_to_size(&x, &gs, 10, 10).unwrap().size(),
            [2, 3, 10, 10]
        );
        assert!(apply(&x, &gs[..1]).is_err());
        assert!(apply(&x.view([6, 40, 40]), &gs).is_err());
        assert!(apply(&x.to_kind(Kind::Int64), &gs).is_err());
        assert!(apply_to_size(&x, &gs, 0, 5).is_err());
        let empty = Tensor::zeros([0, 4, 8, 8], (Kind::Float, Device::Cpu));
        assert_eq!(apply(&empty, &[]).unwrap().size(), [0, 4, 8, 8]);
        // Non-square maps get the same relative box on each axis.
        let r = smooth(1, 2, 24).narrow(3, 0, 12);
        let y = apply(&r, &[geo(0.5, 0.0, 0.0, false)]).unwrap();
        assert_eq!(y.size(), [1, 2, 24, 12]);
    }
}
