//! Pillow's `ImageFilter.GaussianBlur(radius)`: three passes of an extended
//! (fractional-radius) box blur per axis (`BoxBlur.c`), reproduced in integer
//! arithmetic so that results are bit-identical to Pillow.
//!
//! Each output is `(acc * ww + (in[l] + in[r]) * fw + 2^23) >> 24`, where
//! `acc` sums the integer window `[x - r, x + r]` and `l`, `r` are the two
//! pixels just outside it (all indices clamped to the edge, i.e. Pillow's
//! edge extension). Every pass rounds to u8, as Pillow does.

use image::RgbImage;

/// Pillow blurs with 3 box passes per axis.
const PASSES: u32 = 3;
/// Largest integer box radius used (a Gaussian radius of about 7000): far
/// beyond any image here; the cap bounds the O(radius) work of the padding
/// and window set-up on absurd radii (Pillow would overflow there).
const MAX_BOX_RADIUS: u32 = 4096;

/// Pillow's `_gaussian_blur_radius`: the extended box radius whose `PASSES`
/// passes have variance `radius^2` (Gwosdek et al. 2011). Mixed f32/f64 as
/// in the C source.
fn box_radius(radius: f32) -> f32 {
    let sigma2 = radius * radius / PASSES as f32;
    let big_l = (12.0 * f64::from(sigma2) + 1.0).sqrt() as f32;
    let l = ((f64::from(big_l) - 1.0) / 2.0).floor() as f32;
    let mut a = (2.0 * l + 1.0) * (l * (l + 1.0) - 3.0 * sigma2);
    a /= 6.0 * (sigma2 - (l + 1.0) * (l + 1.0));
    l + a
}

/// Integer radius and the fixed-point weights of the inner and the two
/// fractional outer taps (`ImagingHorizontalBoxBlur`).
#[derive(Clone, Copy, Debug)]
struct BoxKernel {
    radius: usize,
    ww: u32,
    fw: u32,
    /// `ww` and `fw` split as `hi * 2^16 + lo`, when both `hi < 2^8` and no
    /// product can overflow (always, bar float-rounding corner cases).
    split: Option<[u16; 4]>,
}

impl BoxKernel {
    fn new(float_radius: f32) -> Self {
        let radius = (float_radius as u32).min(MAX_BOX_RADIUS);
        // (UINT32)(1 << 24) / (floatRadius * 2 + 1): an f32 division.
        let ww = ((1u32 << 24) as f32 / (float_radius * 2.0 + 1.0)) as u32;
        // Unsigned arithmetic as in C (wraps where Pillow's would).
        let fw = (1u32 << 24).wrapping_sub((radius * 2 + 1).wrapping_mul(ww)) / 2;
        // Products of u16 halves vectorise far better on baseline x86-64
        // than u32 multiplies. With (2r + 1) ww + 2 fw <= 2^24 the exact
        // result stays below 2^32, so the split sum equals the u32 one.
        let total = u64::from(radius * 2 + 1) * u64::from(ww) + 2 * u64::from(fw);
        let split = (radius <= 1 && ww < 1 << 24 && fw < 1 << 24 && total <= 1 << 24).then_some([
            (ww >> 16) as u16,
            ww as u16,
            (fw >> 16) as u16,
            fw as u16,
        ]);
        Self {
            radius: radius as usize,
            ww,
            fw,
            split,
        }
    }

    #[inline]
    fn out(&self, acc: u32, left: u8, right: u8) -> u8 {
        let bulk = acc
            .wrapping_mul(self.ww)
            .wrapping_add((u32::from(left) + u32::from(right)).wrapping_mul(self.fw));
        (bulk.wrapping_add(1 << 23) >> 24) as u8
    }

    /// [`Self::out`] in u16 lanes (8 per SSE2 register; `pmullw`/`pmulhuw`
    /// instead of emulated 32-bit multiplies); `acc <= 765`,
    /// `s = left + right`. With `bulk = acc ww + s fw < 2^32 - 2^24`,
    /// `bulk + 2^23 = H 2^16 + X` where `H = acc wh + s fh < 2^16` and
    /// `X = acc wl + s fl + 2^23`; the result is `(H + (X >> 16)) >> 8`,
    /// and `X >> 16` is assembled from the high halves plus the carry of the
    /// low halves.
    #[inline(always)]
    fn out_split([wh, wl, fh, fl]: [u16; 4], acc: u16, s: u16) -> u8 {
        let mulhi = |a: u16, b: u16| ((u32::from(a) * u32::from(b)) >> 16) as u16;
        let (al, sl) = (acc.wrapping_mul(wl), s.wrapping_mul(fl));
        let carry = u16::from(al.wrapping_add(sl) < al);
        let x16 = mulhi(acc, wl) + mulhi(s, fl) + 128 + carry;
        let h = acc.wrapping_mul(wh).wrapping_add(s.wrapping_mul(fh));
        (h.wrapping_add(x16) >> 8) as u8
    }
}

/// Gaussian blur as Pillow's `GaussianBlur(radius)`; a radius that is zero,
/// negative zero or not finite leaves the image unchanged. A negative radius
/// blurs as its absolute value (Pillow squares it).
pub(crate) fn gaussian_blur(img: &RgbImage, radius: f32) -> RgbImage {
    let (w, h) = img.dimensions();
    if !radius.is_finite() || radius == 0.0 || w == 0 || h == 0 {
        return img.clone();
    }
    let br = box_radius(radius);
    // Pillow skips an axis whose box radius is exactly 0.
    if br.is_nan() || br <= 0.0 {
        return img.clone();
    }
    let k = BoxKernel::new(br);
    let mut buf = img.as_raw().clone();
    let (w, h) = (w as usize, h as usize);
    horizontal_passes(&mut buf, w, h, k);
    vertical_passes(&mut buf, w * 3, h, k);
    RgbImage::from_raw(w as u32, h as u32, buf).unwrap_or_else(|| img.clone())
}

/// All horizontal passes, one row at a time: the row stays in L1 cache
/// across its passes. Each row is copied into a buffer padded with `r + 1`
/// edge pixels per side, so no index needs clamping: for output x the window
/// is padded pixels `x + 1 ..= x + 2r + 1` and the two fractional taps are
/// padded pixels `x` and `x + 2r + 2`.
fn horizontal_passes(buf: &mut [u8], w: usize, h: usize, k: BoxKernel) {
    let r = k.radius;
    let pad = r + 1;
    let n = w * 3;
    let mut p = vec![0u8; (w + 2 * pad) * 3];
    for row in buf.chunks_exact_mut(n).take(h) {
        for _ in 0..PASSES {
            let (first, last) = (
                [row[0], row[1], row[2]],
                [row[n - 3], row[n - 2], row[n - 1]],
            );
            for j in 0..pad {
                p[j * 3..j * 3 + 3].copy_from_slice(&first);
                let e = (pad + w + j) * 3;
                p[e..e + 3].copy_from_slice(&last);
            }
            p[pad * 3..pad * 3 + n].copy_from_slice(row);
            // Padded pixel x + j for every output x, as one flat slice.
            let at = |j: usize| &p[3 * j..3 * j + n];
            match r {
                0 => direct1(at(1), at(0), at(2), row, k),
                1 => direct3([at(1), at(2), at(3)], at(0), at(4), row, k),
                _ => running_row(&p, row, k),
            }
        }
    }
}

/// All vertical passes, one strip of byte columns at a time (every byte
/// column is independent): a 640-row strip fits in L2 across its passes.
fn vertical_passes(buf: &mut [u8], stride: usize, h: usize, k: BoxKernel) {
    const STRIP: usize = 256;
    let mut a = vec![0u8; STRIP * h];
    let mut b = vec![0u8; STRIP * h];
    let mut c0 = 0;
    while c0 < stride {
        let sw = STRIP.min(stride - c0);
        for (y, dst) in a.chunks_exact_mut(sw).take(h).enumerate() {
            dst.copy_from_slice(&buf[y * stride + c0..y * stride + c0 + sw]);
        }
        for _ in 0..PASSES {
            vertical_pass(&a[..sw * h], &mut b[..sw * h], sw, h, k);
            std::mem::swap(&mut a, &mut b);
        }
        for (y, src) in a.chunks_exact(sw).take(h).enumerate() {
            buf[y * stride + c0..y * stride + c0 + sw].copy_from_slice(src);
        }
        c0 += sw;
    }
}

/// Radius-0 box (Pillow's box radius < 1): one inner and two fractional
/// taps. Direct, so the loop vectorises (no running sum).
fn direct1(c: &[u8], left: &[u8], right: &[u8], out: &mut [u8], k: BoxKernel) {
    let n = out.len();
    let (c, left, right) = (&c[..n], &left[..n], &right[..n]);
    if let Some(sp) = k.split {
        for i in 0..n {
            let s = u16::from(left[i]) + u16::from(right[i]);
            out[i] = BoxKernel::out_split(sp, u16::from(c[i]), s);
        }
        return;
    }
    for i in 0..n {
        out[i] = k.out(u32::from(c[i]), left[i], right[i]);
    }
}

/// Radius-1 box (box radius 1 to 2, e.g. Gaussian radius 1.8 or 2).
fn direct3(win: [&[u8]; 3], left: &[u8], right: &[u8], out: &mut [u8], k: BoxKernel) {
    let n = out.len();
    let (a, b, c) = (&win[0][..n], &win[1][..n], &win[2][..n]);
    let (left, right) = (&left[..n], &right[..n]);
    if let Some(sp) = k.split {
        for i in 0..n {
            let acc = u16::from(a[i]) + u16::from(b[i]) + u16::from(c[i]);
            let s = u16::from(left[i]) + u16::from(right[i]);
            out[i] = BoxKernel::out_split(sp, acc, s);
        }
        return;
    }
    for i in 0..n {
        let acc = u32::from(a[i]) + u32::from(b[i]) + u32::from(c[i]);
        out[i] = k.out(acc, left[i], right[i]);
    }
}

/// Any radius: Pillow's running window sum over a padded row.
fn running_row(p: &[u8], out: &mut [u8], k: BoxKernel) {
    let r = k.radius;
    // Window of the virtual output -1: padded pixels 0 ..= 2r.
    let mut acc = [0u32; 3];
    for px in p[..(2 * r + 1) * 3].chunks_exact(3) {
        for c in 0..3 {
            acc[c] += u32::from(px[c]);
        }
    }
    let span = (2 * r + 2) * 3;
    for (x, o) in out.chunks_exact_mut(3).enumerate() {
        // Padded pixels x (leaves the window; left tap), x + 2r + 1 (enters)
        // and x + 2r + 2 (right tap), in one slice.
        let win = &p[x * 3..x * 3 + span + 3];
        for c in 0..3 {
            let (sub, add, far) = (win[c], win[span - 3 + c], win[span + c]);
            acc[c] = acc[c] + u32::from(add) - u32::from(sub);
            o[c] = k.out(acc[c], sub, far);
        }
    }
}

/// One box pass along each byte column of a `stride`-wide buffer, all
/// columns at once (row-vectorised; Pillow transposes and runs the row pass,
/// with identical arithmetic).
fn vertical_pass(src: &[u8], dst: &mut [u8], stride: usize, h: usize, k: BoxKernel) {
    let r = k.radius;
    // Row i of the image with i clamped to [0, h - 1] (edge extension).
    let row = |i: isize| {
        let i = i.clamp(0, h as isize - 1) as usize;
        &src[i * stride..(i + 1) * stride]
    };
    if r <= 1 {
        for (y, out) in dst.chunks_exact_mut(stride).enumerate() {
            let y = y as isize;
            if r == 0 {
                direct1(row(y), row(y - 1), row(y + 1), out, k);
            } else {
                direct3(
                    [row(y - 1), row(y), row(y + 1)],
                    row(y - 2),
                    row(y + 2),
                    out,
                    k,
                );
            }
        }
        return;
    }
    let r = r as isize;
    // Window of the virtual row -1: rows -r-1 ..= r-1, clamped.
    let mut acc = vec![0u32; stride];
    for i in -r - 1..r {
        for (a, &v) in acc.iter_mut().zip(row(i)) {
            *a += u32::from(v);
        }
    }
    for (y, out) in dst.chunks_exact_mut(stride).enumerate() {
        let y = y as isize;
        let (sub, add, far) = (row(y - r - 1), row(y + r), row(y + r + 1));
        for i in 0..stride {
            acc[i] = acc[i] + u32::from(add[i]) - u32::from(sub[i]);
            out[i] = k.out(acc[i], sub[i], far[i]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn box_radius_matches_pillow_formula() {
        // Values computed by hand from BoxBlur.c.
        assert_eq!(box_radius(0.0), 0.0);
        let r = box_radius(1.8);
        assert!((r - 1.2123).abs() < 1e-3, "{r}");
        assert!(box_radius(0.1) > 0.0 && box_radius(0.1) < 0.01);
        assert_eq!(box_radius(-1.8), box_radius(1.8));
    }

    #[test]
    fn split_arithmetic_equals_u32() {
        let mut radii: Vec<f32> = (1..=400).map(|i| i as f32 * 0.005).collect();
        radii.extend([0.1, 1.2123, 1.8, 2.0]);
        let mut used = 0;
        for r in radii {
            let k = BoxKernel::new(box_radius(r));
            let Some(sp) = k.split else { continue };
            used += 1;
            let max_acc = 255 * (2 * k.radius as u16 + 1);
            for acc in 0..=max_acc {
                for s in 0..=510u16 {
                    let (l, rr) = ((s / 2) as u8, (s - s / 2) as u8);
                    let want = k.out(u32::from(acc), l, rr);
                    assert_eq!(BoxKernel::out_split(sp, acc, s), want, "{r} {acc} {s}");
                }
            }
        }
        assert!(used > 300, "{used}");
    }

    #[test]
    fn constant_image_is_unchanged() {
        let img = RgbImage::from_pixel(9, 5, image::Rgb([3, 200, 77]));
        for r in [0.1, 0.7, 1.8, 5.0, 40.0] {
            assert_eq!(gaussian_blur(&img, r), img, "{r}");
        }
    }

    #[test]
    fn degenerate_inputs_do_not_panic() {
        let img = RgbImage::from_fn(3, 1, |x, _| image::Rgb([x as u8 * 90, 0, 255]));
        for r in [f32::NAN, f32::INFINITY, -0.0, 1e30, 1e6] {
            let out = gaussian_blur(&img, r);
            assert_eq!(out.dimensions(), (3, 1));
        }
        let empty = RgbImage::new(0, 4);
        assert_eq!(gaussian_blur(&empty, 1.0).dimensions(), (0, 4));
    }
}
