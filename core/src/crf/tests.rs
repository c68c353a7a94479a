//! The CRF against an exact fully connected mean field, its properties, and bad input.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::exact::exact_marginals;
use super::*;

/// A synthetic test image: H x W RGB in three regions (a background, a disc, a bar), the
/// region of each pixel (its true class) and a noisy unary that gets about a fifth of the
/// pixels wrong on its own.
pub(super) struct Scene {
    pub width: usize,
    pub height: usize,
    pub classes: usize,
    pub rgb: Vec<u8>,
    pub truth: Vec<u32>,
    pub unary: Vec<f32>,
}

impl Scene {
    pub fn new(width: usize, height: usize, classes: usize, seed: u64) -> Self {
        assert!(classes >= 3);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let colours = [[200u8, 40, 40], [40, 180, 60], [50, 60, 210]];
        let (cx, cy, r) = (
            width as f32 * 0.35,
            height as f32 * 0.4,
            width as f32 * 0.25,
        );
        let mut rgb = Vec::with_capacity(width * height * 3);
        let mut truth = Vec::with_capacity(width * height);
        let mut unary = Vec::with_capacity(width * height * classes);
        for y in 0..height {
            for x in 0..width {
                let (fx, fy) = (x as f32, y as f32);
                let t = if (fx - cx).powi(2) + (fy - cy).powi(2) < r * r {
                    1
                } else if x > width * 2 / 3 && y > height / 4 {
                    2
                } else {
                    0
                };
                truth.push(t as u32);
                for c in colours[t] {
                    rgb.push((c as i32 + rng.random_range(-6..=6)).clamp(0, 255) as u8);
                }
                // Logits: +1.2 for the true class plus Gaussian-ish noise on all.
                let logits: Vec<f32> = (0..classes)
                    .map(|c| {
                        let noise: f32 = (0..4).map(|_| rng.random_range(-0.9f32..0.9)).sum();
                        noise + if c == t { 1.2 } else { 0.0 }
                    })
                    .collect();
                let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let lse = m + logits.iter().map(|l| (l - m).exp()).sum::<f32>().ln();
                unary.extend(logits.iter().map(|l| lse - l));
            }
        }
        Self {
            width,
            height,
            classes,
            rgb,
            truth,
            unary,
        }
    }

    pub fn image(&self) -> CrfImage<'_> {
        CrfImage {
            width: self.width,
            height: self.height,
            classes: self.classes,
            rgb: &self.rgb,
            unary: &self.unary,
        }
    }
}

fn argmax_rows(q: &[f32], k: usize) -> Vec<u32> {
    q.chunks(k)
        .map(|r| {
            (0..k)
                .fold(0, |b, i| if r[i] > r[b] { i } else { b })
                .try_into()
                .unwrap()
        })
        .collect()
}

fn agreement(a: &[u32], b: &[u32]) -> f64 {
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64
}

/// Settings at the scale of a 24 x 24 image: STEGO's bilateral sxy of 67 would make the
/// bilateral kernel position-blind here, so a local one exercises the spatial part too.
fn local_config() -> CrfConfig {
    CrfConfig {
        iterations: 10,
        gaussian: GaussianKernel {
            sxy: 1.5,
            compat: 3.0,
        },
        bilateral: BilateralKernel {
            sxy: 5.0,
            srgb: 13.0,
            compat: 4.0,
        },
    }
}

/// The lattice against the exact O(N^2) mean field on 24 x 24 images.
///
/// Tolerance: the permutohedral lattice replaces each Gaussian kernel by a piecewise-linear
/// splat, a [1/2 1 1/2] blur along each lattice axis and a slice, a kernel of roughly but
/// not exactly Gaussian shape. The symmetric normalisation cancels the overall scale, not
/// that shape error: on values in [0, 1] the normalised filter is off by up to 0.025 (2-D)
/// and 0.05 (5-D) (`lattice::tests::normalised_filter_is_close_to_the_exact_one`). The
/// messages are such filterings of marginals, scaled by the compats (7 in total), so a
/// logit moves by at most about 0.35, and a marginal p by at most p(1 - p) times that,
/// under 0.09: hence every |dQ| below 0.1. Most pixels are confident (p(1 - p) near 0),
/// so the mean |dQ| stays below 0.01, and the labels agree on at least 98 % of pixels
/// (measured: 100 %, mean 3e-4, max 0.05).
#[test]
fn lattice_matches_the_exact_mean_field() {
    for (cfg, seed) in [
        (CrfConfig::default(), 1),
        (local_config(), 2),
        (local_config(), 3),
    ] {
        let scene = Scene::new(24, 24, 4, seed);
        let img = scene.image();
        let got = refine(&cfg, &img).unwrap();
        let want = exact_marginals(&cfg, &img);
        let diffs: Vec<f32> = got
            .marginals
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .collect();
        let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
        let max = diffs.iter().copied().fold(0.0, f32::max);
        let agree = agreement(&got.labels, &argmax_rows(&want, img.classes));
        eprintln!("{cfg:?}: labels agree {agree:.4}, mean |dQ| {mean:.4}, max |dQ| {max:.4}");
        assert!(agree >= 0.98, "labels agree on {agree}");
        assert!(mean < 0.01 && max < 0.1, "mean {mean}, max {max}");
        // And the CRF does its job: it corrects the unary towards the regions.
        let before = agreement(
            &argmax_rows(&img.unary.iter().map(|u| -u).collect::<Vec<_>>(), 4),
            &scene.truth,
        );
        let after = agreement(&got.labels, &scene.truth);
        assert!(after > before, "truth agreement {before} -> {after}");
    }
}

/// Energies making `label` e^20 times likelier than any other class at every pixel.
fn confident(labels: &[u32], k: usize) -> Vec<f32> {
    labels
        .iter()
        .flat_map(|&l| (0..k).map(move |c| if c as u32 == l { 0.0 } else { 20.0 }))
        .collect()
}

/// On a flat image a confident unary survives: the Potts messages are at most
/// compat x (the normalised kernel's row sum, at most about 2 at the image's corners) =
/// 14, below the unary's margin of 20.
#[test]
fn confident_unary_on_a_flat_image_is_unchanged() {
    let (w, h, k) = (40, 30, 5);
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    // Blocks of 5 x 5 pixels with random labels: many borders for the smoothing to attack.
    let block: Vec<u32> = (0..64).map(|_| rng.random_range(0..k as u32)).collect();
    let labels: Vec<u32> = (0..w * h)
        .map(|i| block[(i / w / 5) * 8 + (i % w / 5)])
        .collect();
    let rgb = vec![128u8; w * h * 3];
    let unary = confident(&labels, k);
    let img = CrfImage {
        width: w,
        height: h,
        classes: k,
        rgb: &rgb,
        unary: &unary,
    };
    let out = refine(&CrfConfig::default(), &img).unwrap();
    assert_eq!(out.labels, labels);
    for (i, &l) in labels.iter().enumerate() {
        assert!(out.marginals[i * k + l as usize] > 0.99, "pixel {i}");
    }
}

/// A region of one colour that the CRF makes uniform stays uniform as the bilateral
/// compat rises.
#[test]
fn raising_bilateral_compat_keeps_uniform_regions() {
    let scene = Scene::new(48, 40, 3, 11);
    let img = scene.image();
    let regions: Vec<Vec<usize>> = (0..3u32)
        .map(|c| {
            (0..scene.truth.len())
                .filter(|&i| scene.truth[i] == c)
                .collect()
        })
        .collect();
    let uniform = |labels: &[u32], r: &[usize]| r.iter().all(|&i| labels[i] == labels[r[0]]);
    let mut cfg = local_config();
    let base = refine(&cfg, &img).unwrap();
    let uniform_at_base: Vec<&Vec<usize>> = regions
        .iter()
        .filter(|r| uniform(&base.labels, r))
        .collect();
    assert!(!uniform_at_base.is_empty(), "no uniform region to test");
    for compat in [6.0, 10.0, 20.0, 50.0] {
        cfg.bilateral.compat = compat;
        let out = refine(&cfg, &img).unwrap();
        for r in &uniform_at_base {
            assert!(uniform(&out.labels, r), "compat {compat} broke a region");
        }
    }
}

#[test]
fn same_bytes_at_one_and_two_threads() {
    let scenes: Vec<Scene> = (0..5)
        .map(|s| Scene::new(30 + s as usize, 20, 4, s))
        .collect();
    let images: Vec<CrfImage> = scenes.iter().map(Scene::image).collect();
    let cfg = CrfConfig::default();
    let one = refine_batch(&cfg, &images, 1).unwrap();
    let two = refine_batch(&cfg, &images, 2).unwrap();
    assert_eq!(one.len(), 5);
    for (a, b) in one.iter().zip(&two) {
        assert_eq!(a.labels, b.labels);
        assert_eq!(bits(a), bits(b));
    }
    // And a batch gives each image what it gets alone.
    assert_eq!(one[3], refine(&cfg, &images[3]).unwrap());
}

fn bits(r: &Refined) -> Vec<u32> {
    r.marginals.iter().map(|v| v.to_bits()).collect()
}

/// The AVX2 path (where the CPU has it) and the portable one, with the Gaussian kernel
/// cached or built afresh, give the same bytes, for class counts that fill the channel
/// groups in different ways.
#[test]
fn simd_portable_and_cached_give_the_same_bytes() {
    if !std::arch::is_x86_feature_detected!("avx2") {
        eprintln!("no AVX2 here: the portable path is compared with itself");
    }
    let cfg = CrfConfig::default();
    for (k, seed) in [(3, 21), (11, 22), (27, 23)] {
        let scene = Scene::new(37, 29, k, seed);
        let img = scene.image();
        let portable =
            meanfield::infer_with(&cfg, &img, lattice::Scratch::with_simd(false), false).unwrap();
        let simd =
            meanfield::infer_with(&cfg, &img, lattice::Scratch::with_simd(true), false).unwrap();
        assert_eq!(bits(&portable), bits(&simd), "K = {k}");
        // Twice through the cache: the second takes the cached Gaussian kernel.
        for _ in 0..2 {
            assert_eq!(
                bits(&refine(&cfg, &img).unwrap()),
                bits(&portable),
                "K = {k}"
            );
        }
    }
}

/// A lean lattice (no upper neighbours, insertion order) filters to the same bytes as the
/// full one (upper neighbours, Morton order), on both kernels' features.
#[test]
fn lean_and_full_lattices_give_the_same_bytes() {
    let scene = Scene::new(41, 33, 3, 31);
    let n = scene.width * scene.height;
    let pos = |i: usize, s: f32| [(i % scene.width) as f32 / s, (i / scene.width) as f32 / s];
    let gaussian: Vec<f32> = (0..n).flat_map(|i| pos(i, 1.0)).collect();
    let bilateral: Vec<f32> = (0..n)
        .flat_map(|i| {
            let mut f = pos(i, 7.0).to_vec();
            f.extend((0..3).map(|c| scene.rgb[i * 3 + c] as f32 / 3.0));
            f
        })
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let channels = 13;
    let values: Vec<f32> = (0..n * channels)
        .map(|_| rng.random_range(0.0..1.0))
        .collect();
    let pre: Vec<f32> = (0..n).map(|_| rng.random_range(0.5..1.5)).collect();
    let post: Vec<f32> = (0..n).map(|_| rng.random_range(0.5..1.5)).collect();
    for (f, d) in [(&gaussian, 2), (&bilateral, 5)] {
        let outs: Vec<Vec<u32>> = [false, true]
            .into_iter()
            .map(|lean| {
                let lat = lattice::Lattice::with_form(f, d, Some(lean)).unwrap();
                let mut out = vec![0.25f32; n * channels];
                let mut scratch = lattice::Scratch::default();
                lat.filter(
                    &values,
                    channels,
                    channels,
                    &pre,
                    &post,
                    None,
                    &mut out,
                    &mut scratch,
                );
                out.iter().map(|v| v.to_bits()).collect()
            })
            .collect();
        assert_eq!(outs[0], outs[1], "d = {d}");
    }
}

#[test]
fn a_nan_unary_is_an_error_naming_image_and_pixel() {
    let scenes: Vec<Scene> = (0..3).map(|s| Scene::new(10, 8, 3, s)).collect();
    let mut unary = scenes[1].unary.clone();
    unary[(2 * 10 + 7) * 3 + 1] = f32::NAN;
    let mut images: Vec<CrfImage> = scenes.iter().map(Scene::image).collect();
    images[1].unary = &unary;
    let e = refine_batch(&CrfConfig::default(), &images, 2).unwrap_err();
    assert_eq!(e.image, 1);
    assert!(
        matches!(
            e.source,
            CrfError::NonFiniteUnary {
                x: 7,
                y: 2,
                class: 1,
                ..
            }
        ),
        "{e}"
    );
    assert!(
        e.to_string()
            .starts_with("image 1 of the batch: unary energy NaN"),
        "{e}"
    );
    // NaN probabilities stay NaN through the clipped log.
    assert!(unary_from_probs(&[f32::NAN, 0.0], 1e-5)[0].is_nan());
    assert!((unary_from_probs(&[0.0], 1e-5)[0] - 11.512925).abs() < 1e-5);
}

#[test]
fn bad_settings_are_named() {
    let base = CrfConfig::default();
    assert!(base.problems().is_empty());
    let cases: Vec<(CrfConfig, &str)> = vec![
        (
            CrfConfig {
                iterations: 0,
                ..base
            },
            "iterations",
        ),
        (
            CrfConfig {
                gaussian: GaussianKernel {
                    sxy: 0.0,
                    ..base.gaussian
                },
                ..base
            },
            "gaussian.sxy",
        ),
        (
            CrfConfig {
                bilateral: BilateralKernel {
                    sxy: -1.0,
                    ..base.bilateral
                },
                ..base
            },
            "bilateral.sxy",
        ),
        (
            CrfConfig {
                bilateral: BilateralKernel {
                    srgb: f32::NAN,
                    ..base.bilateral
                },
                ..base
            },
            "bilateral.srgb",
        ),
        (
            CrfConfig {
                bilateral: BilateralKernel {
                    srgb: f32::INFINITY,
                    ..base.bilateral
                },
                ..base
            },
            "bilateral.srgb",
        ),
        (
            CrfConfig {
                gaussian: GaussianKernel {
                    compat: -2.0,
                    ..base.gaussian
                },
                ..base
            },
            "gaussian.compat",
        ),
    ];
    let scene = Scene::new(6, 5, 3, 0);
    for (cfg, field) in cases {
        let p = cfg.problems();
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].field, field);
        let e = refine(&cfg, &scene.image()).unwrap_err();
        assert!(e.to_string().contains(&format!("`{field}`")), "{e}");
    }
    // Shapes: a short unary and an empty image.
    let mut img = scene.image();
    img.unary = &scene.unary[1..];
    assert!(matches!(
        refine(&base, &img),
        Err(CrfError::Shape { what: "unary", .. })
    ));
    img.width = 0;
    assert!(matches!(refine(&base, &img), Err(CrfError::Empty { .. })));
}

/// The lattices of a 320 x 320 image stay under 50 MB, even for pure colour noise (the
/// worst case: every pixel its own bilateral lattice cell).
#[test]
fn lattice_memory_of_a_320_image() {
    let (w, h) = (320, 320);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let noise: Vec<u8> = (0..w * h * 3).map(|_| rng.random()).collect();
    let scene = Scene::new(w, h, 3, 5);
    for (what, rgb) in [("scene", &scene.rgb), ("noise", &noise)] {
        let img = CrfImage {
            width: w,
            height: h,
            classes: 27,
            rgb,
            unary: &[],
        };
        let m = lattice_memory(&CrfConfig::default(), &img).unwrap();
        let total = m.lattice_bytes + m.scratch_bytes;
        eprintln!(
            "{what}: vertices {} + {}, lattices {:.1} MB, buffers {:.1} MB, construction peak \
             {:.1} MB",
            m.gaussian_vertices,
            m.bilateral_vertices,
            m.lattice_bytes as f64 / 1e6,
            m.scratch_bytes as f64 / 1e6,
            m.build_peak_bytes as f64 / 1e6
        );
        assert!(total < 50_000_000, "{what}: {total} bytes");
        assert!(m.build_peak_bytes < 50_000_000, "{what}: {m:?}");
    }
}

/// Timing at STEGO's size, for tuning (`cargo test --release -p picie-core crf_timing --
/// --ignored --nocapture`); `picie-bench crf` is the benchmark of record.
#[test]
#[ignore]
fn crf_timing() {
    let scene = Scene::new(320, 320, 11, 9);
    let cfg = CrfConfig::default();
    for k in [11usize, 27] {
        let scene = Scene::new(320, 320, k, 9);
        let t = std::time::Instant::now();
        let out = refine(&cfg, &scene.image()).unwrap();
        eprintln!("K {k}: {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(out.labels.len(), 320 * 320);
    }
    let t = std::time::Instant::now();
    let mut scratch = lattice::Scratch::default();
    let kernels = meanfield::kernels(&cfg, &scene.image(), &mut scratch, false).unwrap();
    eprintln!("lattices: {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
    drop(kernels);
}
