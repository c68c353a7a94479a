//! Pillow's bilinear `Image.resize` on 8-bit RGB (`Resample.c`), bit-exact:
//! a separable triangle filter whose support widens with the shrink factor
//! (so downscaling is antialiased), coefficients in f64 rounded to 22-bit
//! fixed point, a horizontal pass rounded to u8, then a vertical pass.
//!
//! One generalisation: only a window of the output may be computed. Each
//! output pixel depends only on its own coefficients, so resize-then-crop
//! equals resizing into the window, without the wasted work.

use image::RgbImage;

/// Fixed-point fraction bits of Pillow's 8-bit resampler (32 - 8 - 2).
const PRECISION_BITS: u32 = 22;

/// Source rectangle in pixels: `x0, y0, w, h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Rect {
    pub x0: u32,
    pub y0: u32,
    pub w: u32,
    pub h: u32,
}

/// Per-output-pixel taps along one axis, all of one length `taps`: the
/// first input index of each output and its fixed-point weights, zero-padded
/// (and the start shifted left at the far edge) so that every output reads
/// exactly `taps` in-range inputs. Zero weights add exact integer zeros, so
/// the sums equal Pillow's variable-length ones.
struct Coeffs {
    start: Vec<usize>,
    taps: usize,
    k: Vec<i32>,
}

impl Coeffs {
    /// `precompute_coeffs` + `normalize_coeffs_8bpc` for outputs
    /// `out0 .. out0 + count` of a resize of `in_size` pixels to `out_size`.
    fn new(in_size: u32, out_size: u32, out0: u32, count: u32) -> Self {
        // box = (0, in_size) as f32, as Pillow passes it.
        let (in0, in1) = (0.0f32, in_size as f32);
        let scale = f64::from(in1 - in0) / f64::from(out_size);
        let filterscale = scale.max(1.0);
        let support = 1.0 * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let taps = ksize.min(in_size as usize);
        let ss = 1.0 / filterscale;
        let mut start = Vec::with_capacity(count as usize);
        let mut k = vec![0i32; count as usize * taps];
        let mut w = vec![0f64; ksize];
        for (j, xx) in (out0..out0 + count).enumerate() {
            let center = f64::from(in0) + (f64::from(xx) + 0.5) * scale;
            // C's (int) truncates toward zero; then clamp to the image.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(i64::from(in_size));
            let n = (xmax - xmin).clamp(0, taps as i64) as usize;
            let xmin = xmin as usize;
            let mut total = 0.0;
            for (x, wx) in w.iter_mut().enumerate().take(n) {
                let t = ((x + xmin) as f64 - center + 0.5) * ss;
                *wx = bilinear(t);
                total += *wx;
            }
            let s0 = xmin.min(in_size as usize - taps);
            let row = &mut k[j * taps..(j + 1) * taps];
            for (x, &wx) in w.iter().enumerate().take(n) {
                let v = if total != 0.0 { wx / total } else { wx };
                let scaled = v * f64::from(1u32 << PRECISION_BITS);
                row[xmin - s0 + x] = if v < 0.0 {
                    (-0.5 + scaled) as i32
                } else {
                    (0.5 + scaled) as i32
                };
            }
            start.push(s0);
        }
        Self { start, taps, k }
    }

    fn weights(&self, j: usize) -> &[i32] {
        &self.k[j * self.taps..(j + 1) * self.taps]
    }
}

#[inline]
fn bilinear(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

/// Pillow's `clip8` for an accumulator that started at half a unit.
#[inline]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Bilinear resize of the `src` rectangle of `img` to `out_w x out_h`, as
/// `img.crop(src).resize((out_w, out_h), BILINEAR)`, returning only the
/// output window `win` (which must lie inside `out_w x out_h`). The caller
/// guarantees non-empty sizes and rectangles inside their images.
pub(crate) fn resize(img: &RgbImage, src: Rect, out_w: u32, out_h: u32, win: Rect) -> RgbImage {
    let stride = img.width() as usize * 3;
    let raw = img.as_raw();
    let need_h = out_w != src.w;
    let need_v = out_h != src.h;

    let vert = need_v.then(|| Coeffs::new(src.h, out_h, win.y0, win.h));
    // Source rows feeding the output window (all of them when no vertical pass).
    let (row0, nrows) = match &vert {
        Some(c) => {
            let lo = c.start.iter().copied().min().unwrap_or(0);
            let hi = c.start.iter().copied().max().unwrap_or(lo) + c.taps;
            (lo, hi - lo)
        }
        None => (win.y0 as usize, win.h as usize),
    };

    // Horizontal pass: rows row0 .. row0 + nrows of the source rectangle.
    let tw = win.w as usize;
    let mut tmp = vec![0u8; nrows * tw * 3];
    if need_h {
        let hc = Coeffs::new(src.w, out_w, win.x0, win.w);
        for r in 0..nrows {
            let y = src.y0 as usize + row0 + r;
            let line = &raw[y * stride + src.x0 as usize * 3..][..src.w as usize * 3];
            let out = &mut tmp[r * tw * 3..(r + 1) * tw * 3];
            match hc.taps {
                3 => horizontal_row::<3>(line, out, &hc),
                5 => horizontal_row::<5>(line, out, &hc),
                _ => horizontal_row_dyn(line, out, &hc),
            }
        }
    } else {
        for r in 0..nrows {
            let y = src.y0 as usize + row0 + r;
            let start = y * stride + (src.x0 + win.x0) as usize * 3;
            tmp[r * tw * 3..(r + 1) * tw * 3].copy_from_slice(&raw[start..start + tw * 3]);
        }
    }

    let Some(vc) = vert else {
        return RgbImage::from_raw(win.w, win.h, tmp).unwrap_or_default();
    };
    // Vertical pass, a whole output row at a time (vectorises).
    let row_len = tw * 3;
    let mut out = vec![0u8; win.h as usize * row_len];
    let mut acc = vec![0i32; row_len];
    for (j, orow) in out.chunks_exact_mut(row_len).enumerate() {
        let y0 = vc.start[j];
        acc.fill(1 << (PRECISION_BITS - 1));
        for (t, &kt) in vc.weights(j).iter().enumerate() {
            if kt == 0 {
                continue; // padding tap: adds an exact zero
            }
            let r = y0 + t - row0;
            let irow = &tmp[r * row_len..(r + 1) * row_len];
            for (a, &v) in acc.iter_mut().zip(irow) {
                *a += i32::from(v) * kt;
            }
        }
        for (o, &a) in orow.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    RgbImage::from_raw(win.w, win.h, out).unwrap_or_default()
}

/// One output row of the horizontal pass with a compile-time tap count.
#[inline]
fn horizontal_row<const T: usize>(line: &[u8], out: &mut [u8], hc: &Coeffs) {
    for (j, px) in out.chunks_exact_mut(3).enumerate() {
        let s = hc.start[j] * 3;
        let src = &line[s..s + 3 * T];
        let k = &hc.k[j * T..(j + 1) * T];
        let half = 1i32 << (PRECISION_BITS - 1);
        let mut acc = [half; 3];
        for t in 0..T {
            for c in 0..3 {
                acc[c] += i32::from(src[3 * t + c]) * k[t];
            }
        }
        for c in 0..3 {
            px[c] = clip8(acc[c]);
        }
    }
}

/// [`horizontal_row`] for any tap count.
fn horizontal_row_dyn(line: &[u8], out: &mut [u8], hc: &Coeffs) {
    let taps = hc.taps;
    for (j, px) in out.chunks_exact_mut(3).enumerate() {
        let s = hc.start[j] * 3;
        let src = &line[s..s + 3 * taps];
        let half = 1i32 << (PRECISION_BITS - 1);
        let mut acc = [half; 3];
        for (p, &kt) in src.chunks_exact(3).zip(hc.weights(j)) {
            for c in 0..3 {
                acc[c] += i32::from(p[c]) * kt;
            }
        }
        for c in 0..3 {
            px[c] = clip8(acc[c]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(w: u32, h: u32) -> Rect {
        Rect { x0: 0, y0: 0, w, h }
    }

    #[test]
    fn same_size_is_identity() {
        let img = RgbImage::from_fn(7, 5, |x, y| image::Rgb([x as u8 * 30, y as u8 * 50, 9]));
        assert_eq!(resize(&img, full(7, 5), 7, 5, full(7, 5)), img);
    }

    #[test]
    fn window_equals_crop_of_full_resize() {
        let img = RgbImage::from_fn(37, 23, |x, y| {
            image::Rgb([
                (x * 7 % 256) as u8,
                (y * 11 % 256) as u8,
                ((x * y) % 256) as u8,
            ])
        });
        let fullout = resize(&img, full(37, 23), 29, 17, full(29, 17));
        let win = Rect {
            x0: 5,
            y0: 3,
            w: 11,
            h: 9,
        };
        let part = resize(&img, full(37, 23), 29, 17, win);
        let crop = image::imageops::crop_imm(&fullout, 5, 3, 11, 9).to_image();
        assert_eq!(part, crop);
    }

    #[test]
    fn coefficients_sum_to_one() {
        for (i, o) in [(640u32, 320u32), (853, 640), (100, 320), (201, 320), (3, 1)] {
            let c = Coeffs::new(i, o, 0, o);
            for j in 0..o as usize {
                let s: i32 = c.weights(j).iter().sum();
                assert!((s - (1 << PRECISION_BITS)).abs() <= 4, "{i}->{o} {j}: {s}");
            }
        }
    }
}
