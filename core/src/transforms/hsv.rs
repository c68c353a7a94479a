//! Pillow's u8 RGB <-> HSV conversions (`Convert.c`: `rgb2hsv_row`,
//! `hsv2rgb`), reproduced operation by operation.
//!
//! The C code mixes `float` variables with `double` literals; each step below
//! uses the same width (f32 where C stores into a `float`, f64 where a double
//! literal promotes the expression), so results are bit-identical on IEEE
//! hardware without FMA contraction (Pillow's x86-64 wheels). `fmod`,
//! `floor` and `round` are replaced by exact integer-conversion equivalents
//! valid on their (non-negative, small) arguments here: on the baseline
//! x86-64 target they would otherwise be libm calls, the bulk of the cost.

/// `(h, s, v)` of one RGB pixel, each u8 (hue as a fraction of 255): the
/// reference transcription of `rgb2hsv_row` (the tables below are built from
/// it; [`rgb_to_hsv_fast`] is the same function via those tables).
pub(crate) fn rgb_to_hsv(r: u8, g: u8, b: u8) -> (u8, u8, u8) {
    let maxc = r.max(g).max(b);
    let minc = r.min(g).min(b);
    if minc == maxc {
        return (0, 0, maxc);
    }
    let cr = f32::from(maxc - minc);
    let s = cr / f32::from(maxc);
    // (maxc - c) / cr, computed only for the two channels each branch reads.
    let q = |c: u8| f32::from(maxc - c) / cr;
    let h: f32 = if r == maxc {
        q(b) - q(g)
    } else if g == maxc {
        (2.0 + f64::from(q(r)) - f64::from(q(b))) as f32
    } else {
        (4.0 + f64::from(q(g)) - f64::from(q(r))) as f32
    };
    // fmod(x, 1.0) = x - trunc(x), exactly, for 0 <= x < 2^52 (here x lies
    // in [5/6, 11/6] since h is in [-1, 5]).
    let x = f64::from(h) / 6.0 + 1.0;
    let h = (x - trunc_nonneg(x)) as f32;
    let uh = clip8((f64::from(h) * 255.0) as i32);
    let us = clip8((f64::from(s) * 255.0) as i32);
    (uh, us, maxc)
}

/// Tables that replace the divisions of [`rgb_to_hsv`] (built once per
/// process from it, so they hold its exact results):
/// - `s[cr << 8 | maxc]`: the saturation byte, a function of
///   `cr = max - min` and `max` only;
/// - `p`: see the field;
/// - `h[(case << 16) | (cr << 8) | d]`: the hue byte. Whichever channel is
///   the max (Pillow's priority r, g, b) and which is the min fix one of six
///   formulas in which one quotient is exactly 1 and the other is `d / cr`,
///   `d` being the max minus the remaining channel (see [`hue_key`]).
pub(crate) struct Tables {
    s: Vec<u8>,
    h: Vec<u8>,
    /// `p[s << 8 | v]`: the `p` value of [`hsv_to_rgb`], a function of
    /// (s, v) only.
    p: Vec<u8>,
    /// `qt[h << 8 | s]`: the f64 factors that multiply `v` in `q` and `t`
    /// of [`hsv_to_rgb`], functions of (h, s) only.
    qt: Vec<[f64; 2]>,
}

/// The tables, built on first use.
pub(crate) fn tables() -> &'static Tables {
    &TABLES
}

static TABLES: std::sync::LazyLock<Tables> = std::sync::LazyLock::new(|| {
    let mut s = vec![0u8; 1 << 16];
    let mut h = vec![0u8; 6 << 16];
    let mut p = vec![0u8; 1 << 16];
    let mut qt = vec![[0f64; 2]; 1 << 16];
    for i in 0..1usize << 16 {
        p[i] = p_value((i >> 8) as u8, i as u8);
        qt[i] = qt_factors((i >> 8) as u8, i as u8);
    }
    for cr in 1..=255u8 {
        for maxc in cr..=255u8 {
            s[usize::from(cr) << 8 | usize::from(maxc)] = rgb_to_hsv(maxc, maxc - cr, maxc - cr).1;
        }
        for d in 0..=cr {
            // A pixel of each case with these (cr, d); max = 255.
            let (m, lo, mid) = (255u8, 255 - cr, 255 - d);
            let pixels = [
                (m, mid, lo), // 0: r max, b min, d = max - g
                (m, lo, mid), // 1: r max, g min, d = max - b
                (mid, m, lo), // 2: g max, b min, d = max - r
                (lo, m, mid), // 3: g max, r min, d = max - b
                (lo, mid, m), // 4: b max, r min, d = max - g
                (mid, lo, m), // 5: b max, g min, d = max - r
            ];
            for (case, (r, g, b)) in pixels.into_iter().enumerate() {
                let key = case << 16 | usize::from(cr) << 8 | usize::from(d);
                h[key] = rgb_to_hsv(r, g, b).0;
            }
        }
    }
    Tables { s, h, p, qt }
});

/// The index into `Tables::h` of a non-gray pixel, following the branch
/// order of `rgb2hsv_row` (`r == max` first, then `g == max`).
#[inline(always)]
fn hue_key(r: u8, g: u8, b: u8, maxc: u8, minc: u8) -> usize {
    let (case, other) = if r == maxc {
        if b == minc {
            (0, g)
        } else {
            (1, b)
        }
    } else if g == maxc {
        if b == minc {
            (2, r)
        } else {
            (3, b)
        }
    } else if r == minc {
        (4, g)
    } else {
        (5, r)
    };
    case << 16 | usize::from(maxc - minc) << 8 | usize::from(maxc - other)
}

/// [`rgb_to_hsv`] by table lookups: bit-identical (tested on all 2^24
/// colours), several times faster.
#[inline(always)]
pub(crate) fn rgb_to_hsv_fast(t: &Tables, r: u8, g: u8, b: u8) -> (u8, u8, u8) {
    let maxc = r.max(g).max(b);
    let minc = r.min(g).min(b);
    if minc == maxc {
        return (0, 0, maxc);
    }
    let s = t.s[usize::from(maxc - minc) << 8 | usize::from(maxc)];
    (t.h[hue_key(r, g, b, maxc, minc)], s, maxc)
}

/// Per hue byte: Pillow's sector `i = floor(h * 6.0 / 255.0)` (0..=6) and
/// remainder `f` (f32), evaluated at compile time with the same operations.
const SECTORS: [(i32, f32); 256] = {
    let mut t = [(0i32, 0f32); 256];
    let mut h = 0;
    while h < 256 {
        let hf = h as f64 * 6.0 / 255.0;
        let i = hf as i32; // floor for hf >= 0
        t[h] = (i, (hf - i as f64) as f32);
        h += 1;
    }
    t
};

/// Per saturation byte: `fs = s / 255.0` rounded to f32, as Pillow stores it.
const FS: [f32; 256] = {
    let mut t = [0f32; 256];
    let mut s = 0;
    while s < 256 {
        t[s] = (s as f64 / 255.0) as f32;
        s += 1;
    }
    t
};

/// `p = round(v * (1.0 - fs))` of `hsv2rgb`, clipped.
fn p_value(s: u8, v: u8) -> u8 {
    let fs = FS[usize::from(s)];
    clip8(round_half_away(f64::from(v) * (1.0 - f64::from(fs))))
}

/// The factors of `v` in `q = round(v * (1.0 - fs * f))` and
/// `t = round(v * (1.0 - fs * (1.0 - f)))` (`fs * f` is an f32 product in C).
fn qt_factors(h: u8, s: u8) -> [f64; 2] {
    let (_, f) = SECTORS[usize::from(h)];
    let fs = FS[usize::from(s)];
    [
        1.0 - f64::from(fs * f),
        1.0 - f64::from(fs) * (1.0 - f64::from(f)),
    ]
}

/// RGB of one HSV pixel: the reference transcription of `hsv2rgb` (the
/// tests hold [`hsv_to_rgb_fast`] to it).
#[cfg(test)]
pub(crate) fn hsv_to_rgb(h: u8, s: u8, v: u8) -> (u8, u8, u8) {
    hsv_to_rgb_with(h, s, v, p_value(s, v), qt_factors(h, s))
}

/// [`hsv_to_rgb`] with `p` and the `q`, `t` factors from the tables
/// (tested equal on all inputs).
#[inline(always)]
pub(crate) fn hsv_to_rgb_fast(t: &Tables, h: u8, s: u8, v: u8) -> (u8, u8, u8) {
    let hs = usize::from(h) << 8 | usize::from(s);
    hsv_to_rgb_with(h, s, v, t.p[usize::from(s) << 8 | usize::from(v)], t.qt[hs])
}

#[inline(always)]
fn hsv_to_rgb_with(h: u8, s: u8, v: u8, up: u8, [fq, ft]: [f64; 2]) -> (u8, u8, u8) {
    if s == 0 {
        return (v, v, v);
    }
    let vd = f64::from(v);
    let uq = clip8(round_half_away(vd * fq));
    let ut = clip8(round_half_away(vd * ft));
    match SECTORS[usize::from(h)].0 {
        0 | 6 => (v, ut, up),
        1 => (uq, v, up),
        2 => (up, v, ut),
        3 => (up, uq, v),
        4 => (ut, up, v),
        _ => (v, up, uq),
    }
}

/// `trunc(x)` for `0 <= x < 2^63` without a libm call.
#[inline]
fn trunc_nonneg(x: f64) -> f64 {
    (x as i64) as f64
}

/// C's `round` (half away from zero) for |x| < 2^31, as an integer; exact,
/// since `x - trunc(x)` is exactly representable.
#[inline]
fn round_half_away(x: f64) -> i32 {
    let a = x.abs();
    let t = a as i32;
    let r = t + i32::from(a - f64::from(t) >= 0.5);
    if x < 0.0 {
        -r
    } else {
        r
    }
}

/// Pillow's `CLIP8`.
#[inline]
fn clip8(v: i32) -> u8 {
    v.clamp(0, 255) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grays_and_primaries() {
        assert_eq!(rgb_to_hsv(7, 7, 7), (0, 0, 7));
        assert_eq!(rgb_to_hsv(255, 0, 0), (0, 255, 255));
        assert_eq!(rgb_to_hsv(0, 255, 0), (85, 255, 255));
        assert_eq!(rgb_to_hsv(0, 0, 255), (170, 255, 255));
        assert_eq!(hsv_to_rgb(0, 0, 9), (9, 9, 9));
        assert_eq!(hsv_to_rgb(0, 255, 255), (255, 0, 0));
        // h = 255 lands on i = 6, which Pillow folds back to sector 0.
        assert_eq!(hsv_to_rgb(255, 255, 255), (255, 0, 0));
    }

    #[test]
    fn tables_match_reference_on_every_colour() {
        let t = tables();
        for r in 0..=255u8 {
            for g in 0..=255u8 {
                for b in 0..=255u8 {
                    assert_eq!(
                        rgb_to_hsv_fast(t, r, g, b),
                        rgb_to_hsv(r, g, b),
                        "{r} {g} {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn fast_hsv_to_rgb_matches_reference() {
        let t = tables();
        for h in 0..=255u8 {
            for s in 0..=255u8 {
                for v in 0..=255u8 {
                    assert_eq!(hsv_to_rgb_fast(t, h, s, v), hsv_to_rgb(h, s, v));
                }
            }
        }
    }

    #[test]
    fn integer_replacements_match_libm() {
        for x in [
            0.0,
            0.49999999999999994,
            0.5,
            1.5,
            2.5,
            254.5,
            254.49999,
            3.7,
            -0.5,
            -2.5,
            -1.2,
        ] {
            assert_eq!(round_half_away(x), x.round() as i32, "{x}");
        }
        for x in [
            0.8333333333333334,
            1.0,
            1.8333333333333333,
            1.5000000000000002,
        ] {
            assert_eq!(x - trunc_nonneg(x), x % 1.0, "{x}");
        }
    }

    #[test]
    fn round_trip_is_close() {
        // u8 hue quantisation loses up to a few levels; never more.
        let mut worst = 0;
        for r in (0..=255u8).step_by(5) {
            for g in (0..=255u8).step_by(7) {
                for b in (0..=255u8).step_by(11) {
                    let (h, s, v) = rgb_to_hsv(r, g, b);
                    let (r2, g2, b2) = hsv_to_rgb(h, s, v);
                    for (a, c) in [(r, r2), (g, g2), (b, b2)] {
                        worst = worst.max(a.abs_diff(c));
                    }
                }
            }
        }
        assert!(worst <= 8, "{worst}");
    }
}
