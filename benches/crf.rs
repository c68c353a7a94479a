//! `picie-bench crf [CAMVID]`: the dense CRF (STEGO's settings: 10 iterations, Gaussian sxy 1
//! compat 3, bilateral sxy 67 srgb 3 compat 4) on 320 x 320 images, K = 11 and K = 27:
//! milliseconds per image on one thread and on two (images spread over the threads), then
//! pydensecrf on the same inputs in the same run (one process, then a pool of two as STEGO
//! runs it) when it is importable. The images are CamVid val frames (evaluation crops) when
//! the data is there, else synthetic scenes; the unary is a smooth random field of logits.

use std::path::Path;
use std::time::Instant;

use anyhow::Context as _;
use picie_core::crf::{self, CrfConfig, CrfImage};
use picie_core::data::preprocess;

const SIDE: usize = 320;
const IMAGES: usize = 8;

/// SplitMix64: the bench's inputs need only be fixed, not good random numbers (and the
/// binary's package does not depend on `rand`).
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [lo, hi).
    fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// `IMAGES` evaluation crops of CamVid's val frames, or synthetic scenes without the data.
fn images(camvid: &Path) -> anyhow::Result<(Vec<Vec<u8>>, String)> {
    let dir = camvid.join("val");
    if let Ok(rd) = std::fs::read_dir(&dir) {
        let mut files: Vec<_> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        if files.len() >= IMAGES {
            let mut out = Vec::new();
            for f in files.iter().take(IMAGES) {
                let img = image::open(f)
                    .with_context(|| format!("reading {}", f.display()))?
                    .to_rgb8();
                out.push(preprocess::eval_image(&img, SIDE as u32)?.into_raw());
            }
            return Ok((out, format!("CamVid val ({})", dir.display())));
        }
    }
    let mut rng = Mix(0);
    let out = (0..IMAGES)
        .map(|_| {
            let (cx, cy) = (rng.range(80.0, 240.0), rng.range(80.0, 240.0));
            (0..SIDE * SIDE)
                .flat_map(|p| {
                    let (x, y) = ((p % SIDE) as f32, (p / SIDE) as f32);
                    let inside = (x - cx).powi(2) + (y - cy).powi(2) < 70.0f32.powi(2);
                    let base: [u8; 3] = if inside { [200, 60, 40] } else { [60, 90, 180] };
                    base.map(|c| c.saturating_add(rng.range(0.0, 12.0) as u8))
                })
                .collect()
        })
        .collect();
    Ok((out, "synthetic scenes (no CamVid)".into()))
}

/// A smooth random field of logits (a 10 x 10 grid of random values, interpolated), as
/// -log softmax energies, pixel-major.
fn unary(k: usize, seed: u64) -> Vec<f32> {
    let mut rng = Mix(seed + 1);
    let g = 10;
    let grid: Vec<f32> = (0..g * g * k).map(|_| rng.range(-2.0, 2.0)).collect();
    let mut out = Vec::with_capacity(SIDE * SIDE * k);
    for p in 0..SIDE * SIDE {
        let (x, y) = ((p % SIDE) as f32, (p / SIDE) as f32);
        let gx = x / SIDE as f32 * (g - 1) as f32;
        let gy = y / SIDE as f32 * (g - 1) as f32;
        let (x0, y0) = (gx as usize, gy as usize);
        let (x1, y1) = ((x0 + 1).min(g - 1), (y0 + 1).min(g - 1));
        let (fx, fy) = (gx - x0 as f32, gy - y0 as f32);
        let logit = |c: usize| {
            let at = |xx: usize, yy: usize| grid[(yy * g + xx) * k + c];
            (at(x0, y0) * (1.0 - fx) + at(x1, y0) * fx) * (1.0 - fy)
                + (at(x0, y1) * (1.0 - fx) + at(x1, y1) * fx) * fy
                + rng.range(-0.5, 0.5)
        };
        let l: Vec<f32> = (0..k).map(logit).collect();
        let m = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let lse = m + l.iter().map(|v| (v - m).exp()).sum::<f32>().ln();
        out.extend(l.iter().map(|v| lse - v));
    }
    out
}

pub fn bench(camvid: &str) -> anyhow::Result<()> {
    let cfg = CrfConfig::default();
    let (rgbs, source) = images(Path::new(camvid))?;
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    println!(
        "crf      {IMAGES} images {SIDE}x{SIDE} from {source}, {} iterations, {cpu}",
        cfg.iterations
    );
    let dir = tempfile::tempdir()?;
    for k in [11usize, 27] {
        let unaries: Vec<Vec<f32>> = (0..IMAGES).map(|i| unary(k, i as u64)).collect();
        let imgs: Vec<CrfImage> = rgbs
            .iter()
            .zip(&unaries)
            .map(|(rgb, u)| CrfImage {
                width: SIDE,
                height: SIDE,
                classes: k,
                rgb,
                unary: u,
            })
            .collect();
        if k == 11 {
            let m = crf::lattice_memory(&cfg, &imgs[0])?;
            println!(
                "  lattice of one image: {} + {} vertices (Gaussian + bilateral), {:.1} MB kept, \
                 {:.1} MB value buffers",
                m.gaussian_vertices,
                m.bilateral_vertices,
                m.lattice_bytes as f64 / 1e6,
                m.scratch_bytes as f64 / 1e6
            );
        }
        let mut ours = Vec::new();
        for threads in [1usize, 2] {
            let t = Instant::now();
            ours = crf::refine_batch(&cfg, &imgs, threads)?;
            let ms = t.elapsed().as_secs_f64() * 1e3 / IMAGES as f64;
            println!("  picie      K {k:>2}  {threads} thread(s): {ms:8.1} ms/image");
        }
        // pydensecrf on the same inputs.
        for (i, (rgb, u)) in rgbs.iter().zip(&unaries).enumerate() {
            std::fs::write(dir.path().join(format!("rgb{i}.bin")), rgb)?;
            let n = SIDE * SIDE;
            let class_major: Vec<u8> = (0..k)
                .flat_map(|c| (0..n).flat_map(move |p| u[p * k + c].to_le_bytes()))
                .collect();
            std::fs::write(dir.path().join(format!("unary{i}.bin")), class_major)?;
        }
        for threads in [1usize, 2] {
            let out = std::process::Command::new(picie_core::python())
                .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/crf_ref.py"))
                .arg(dir.path())
                .args([IMAGES, SIDE, SIDE, k, threads].map(|v| v.to_string()))
                .output();
            match out {
                Ok(o) if o.status.success() => {
                    let ms = String::from_utf8_lossy(&o.stdout).trim().to_string();
                    // Label agreement with ours, over all images.
                    let mut agree = 0usize;
                    for (i, r) in ours.iter().enumerate() {
                        let theirs = std::fs::read(dir.path().join(format!("labels{i}.bin")))?;
                        agree += r
                            .labels
                            .iter()
                            .zip(&theirs)
                            .filter(|(a, b)| **a == **b as u32)
                            .count();
                    }
                    let share = agree as f64 / (IMAGES * SIDE * SIDE) as f64 * 100.0;
                    println!(
                        "  pydensecrf K {k:>2}  {threads} process(es): {ms:>8} ms/image \
                         (labels as picie's on {share:.3} % of pixels)"
                    );
                }
                Ok(o) => {
                    println!(
                        "  pydensecrf: skipped ({})",
                        String::from_utf8_lossy(&o.stderr).trim()
                    );
                    break;
                }
                Err(e) => {
                    println!("  pydensecrf: skipped (cannot run the venv's python: {e})");
                    break;
                }
            }
        }
    }
    Ok(())
}
