//! Parity of the image transforms with PIL/torchvision, through
//! `tests/python/transforms_ref.py` run by the project's venv Python.
//!
//! Skips (passing, with a message) when the venv Python is missing or cannot
//! import Pillow. Per-op tolerances are the largest allowed |Rust - PIL| in
//! u8 levels; all ops are bit-exact against Pillow 13.0 / torchvision 0.28,
//! so every tolerance is 0 (a Pillow with the older truncating
//! `(299 R + 587 G + 114 B) / 1000` luma would differ by 1 level in
//! contrast, saturation and grayscale, and fail here by design).

use std::path::{Path, PathBuf};
use std::process::Command;

use image::RgbImage;
use serde_json::{json, Value};

use super::{geometric, photometric};
use crate::augment_params::{draw, AugmentConfig, Geometric, Photometric};

/// Documented tolerance per op: the largest allowed |Rust - PIL| in u8
/// levels. Every op replays Pillow's own arithmetic (integer fixed point, or
/// floats at Pillow's widths), so all are exact; measured max difference 0
/// on every case here and, for the colour ops and blur, on all 2^24 colours.
const TOLERANCE: &[(&str, u8)] = &[
    ("brightness", 0),
    ("contrast", 0),
    ("saturation", 0),
    ("hue", 0),
    ("grayscale", 0),
    ("blur", 0),
    ("photometric", 0),
    ("resize", 0),
    ("base", 0),
    ("crop_resize_flip", 0),
    ("hflip", 0),
];

fn tolerance(op: &str) -> u8 {
    TOLERANCE
        .iter()
        .find(|(name, _)| *name == op)
        .map_or(0, |&(_, t)| t)
}

fn script() -> PathBuf {
    crate::repo_root().join("tests/python/transforms_ref.py")
}

/// Deterministic test picture: gradients, saturated and gray patches, a
/// hard edge and pseudo-random noise, so every code path of the ops is hit.
fn synthetic(w: u32, h: u32) -> RgbImage {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    RgbImage::from_fn(w, h, |x, y| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let noise = (state >> 56) as u8;
        let (fx, fy) = (x * 255 / w.max(2), y * 255 / h.max(2));
        let p = match (x * 4 / w, y * 3 / h) {
            (0, _) => [fx as u8, fy as u8, (255 - fx) as u8],
            (1, 0) => [255, 0, (fy * 2).min(255) as u8],
            (1, 1) => [(fy as u8) / 2 + 60; 3],
            (1, _) => [0, 255 - fy as u8, 40],
            (2, _) => [noise, noise.wrapping_mul(7), noise.wrapping_add(fx as u8)],
            _ => {
                if (x + y) % 9 < 4 {
                    [230, 230, 20]
                } else {
                    [12, 30, fy as u8]
                }
            }
        };
        image::Rgb(p)
    })
}

fn f(x: f32) -> f64 {
    // The exact f32 value, so Python sees what the Rust code uses.
    f64::from(x)
}

fn photometric_json(name: &str, p: &Photometric) -> Value {
    json!({
        "name": name, "op": "photometric",
        "brightness": p.brightness.map(f), "contrast": p.contrast.map(f),
        "saturation": p.saturation.map(f), "hue": p.hue.map(f),
        "grayscale": p.grayscale, "blur_radius": p.blur_radius.map(f),
    })
}

fn geometric_json(name: &str, g: &Geometric, out: u32) -> Value {
    json!({
        "name": name, "op": "crop_resize_flip", "crop_frac": f(g.crop_frac),
        "u_x": f(g.u_x), "u_y": f(g.u_y), "flip": g.flip, "out": out,
    })
}

/// The cases of one input image, with their Rust outputs (None: tensor).
fn cases(img: &RgbImage, square: bool) -> Vec<(Value, Option<RgbImage>)> {
    let (w, h) = img.dimensions();
    let mut v: Vec<(Value, Option<RgbImage>)> = Vec::new();
    for x in [0.7f32, 0.93, 1.0, 1.17, 1.3] {
        let c = json!({"name": format!("brightness_{x}"), "op": "brightness", "factor": f(x)});
        v.push((c, Some(photometric::adjust_brightness(img, x))));
    }
    for x in [0.0f32, 0.7, 0.85, 1.3] {
        let c = json!({"name": format!("contrast_{x}"), "op": "contrast", "factor": f(x)});
        v.push((c, Some(photometric::adjust_contrast(img, x))));
        let c = json!({"name": format!("saturation_{x}"), "op": "saturation", "factor": f(x)});
        v.push((c, Some(photometric::adjust_saturation(img, x))));
    }
    for x in [-0.5f32, -0.1, -0.05, -0.003, 0.002, 0.05, 0.1, 0.5] {
        let c = json!({"name": format!("hue_{x}"), "op": "hue", "hue": f(x)});
        v.push((c, Some(photometric::adjust_hue(img, x))));
    }
    v.push((
        json!({"name": "grayscale", "op": "grayscale"}),
        Some(photometric::grayscale(img)),
    ));
    for r in [0.05f32, 0.1, 0.5, 1.0, 1.2123, 1.8, 3.0, 7.5] {
        let c = json!({"name": format!("blur_{r}"), "op": "blur", "radius": f(r)});
        v.push((c, Some(photometric::gaussian_blur(img, r))));
    }
    let quirks = AugmentConfig::default();
    let fixed = AugmentConfig {
        release_quirks: false,
        jitter_p: 1.0,
        grayscale_p: 0.5,
        ..AugmentConfig::default()
    };
    for i in 0..6u64 {
        let cfg = if i % 2 == 0 { &quirks } else { &fixed };
        let aug = draw(cfg, 42, 1, i);
        for (k, p) in aug.views.iter().enumerate() {
            let name = format!("photometric_{i}_{k}");
            v.push((photometric_json(&name, p), Some(photometric::apply(img, p))));
        }
        if square {
            for out in [w / 2 + 1, w, 2 * w + 3] {
                let name = format!("crop_resize_flip_{i}_{out}");
                let ours = geometric::crop_resize_flip(img, &aug.geometric, out).ok();
                v.push((geometric_json(&name, &aug.geometric, out), ours));
            }
        }
    }
    for (rw, rh) in [
        (w / 2, h / 2),
        (2 * w + 1, h + 7),
        (31, 2 * h),
        (w / 3, h / 5),
    ] {
        let c =
            json!({"name": format!("resize_{rw}x{rh}"), "op": "resize", "width": rw, "height": rh});
        v.push((c, geometric::resize_bilinear(img, rw, rh).ok()));
    }
    for side in [w.min(h) / 2 + 3, w.min(h) + 5, 640] {
        let c = json!({"name": format!("base_{side}"), "op": "base", "side": side});
        v.push((c, geometric::base_transform(img, side).ok()));
    }
    v.push((
        json!({"name": "hflip", "op": "hflip"}),
        Some(geometric::hflip(img)),
    ));
    v.push((json!({"name": "to_tensor", "op": "to_tensor"}), None));
    v
}

/// Runs the reference on `img`; false when it has to be skipped.
fn check_image(label: &str, img: &RgbImage, square: bool) -> bool {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("input.png");
    img.save(&input).expect("write input png");
    let cases = cases(img, square);
    let list: Vec<&Value> = cases.iter().map(|(c, _)| c).collect();
    let cases_path = dir.path().join("cases.json");
    std::fs::write(&cases_path, serde_json::to_vec(&list).unwrap()).unwrap();
    let out_dir = dir.path().join("out");
    let run = Command::new(crate::python())
        .arg(script())
        .arg(&input)
        .arg(&cases_path)
        .arg(&out_dir)
        .output()
        .expect("spawn python");
    if run.status.code() == Some(77) {
        picie_testkit::skip_setup(format!(
            "oracle venv: PIL parity: {}",
            String::from_utf8_lossy(&run.stderr).trim()
        ));
        return false;
    }
    assert!(
        run.status.success(),
        "transforms_ref.py failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let versions = std::fs::read_to_string(out_dir.join("versions.json")).unwrap_or_default();
    eprintln!("PIL parity on {label} {:?} ({versions})", img.dimensions());
    let mut failures = Vec::new();
    for (case, ours) in &cases {
        let name = case["name"].as_str().unwrap();
        let op = case["op"].as_str().unwrap();
        if op == "to_tensor" {
            check_tensor(img, &out_dir.join("to_tensor.f32"), &mut failures);
            continue;
        }
        let theirs = image::open(out_dir.join(format!("{name}.png")))
            .unwrap_or_else(|e| panic!("{name}: reference missing: {e}"))
            .to_rgb8();
        let Some(ours) = ours else {
            failures.push(format!("{name}: Rust refused an input PIL accepted"));
            continue;
        };
        if ours.dimensions() != theirs.dimensions() {
            failures.push(format!(
                "{name}: size {:?} vs PIL {:?}",
                ours.dimensions(),
                theirs.dimensions()
            ));
            continue;
        }
        let (mut max, mut n) = (0u8, 0usize);
        for (a, b) in ours.as_raw().iter().zip(theirs.as_raw()) {
            let d = a.abs_diff(*b);
            max = max.max(d);
            n += usize::from(d > 0);
        }
        let frac = n as f64 / ours.as_raw().len().max(1) as f64;
        eprintln!(
            "  {name:<28} max |diff| {max}  differing {:.4}%",
            100.0 * frac
        );
        if max > tolerance(op) {
            failures.push(format!(
                "{name}: max |diff| {max} > tolerance {} ({:.4}% of values differ)",
                tolerance(op),
                100.0 * frac
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "PIL parity failures on {label}:\n{}",
        failures.join("\n")
    );
    true
}

fn check_tensor(img: &RgbImage, path: &Path, failures: &mut Vec<String>) {
    let Ok(bytes) = std::fs::read(path) else {
        return picie_testkit::skip_setup(
            "oracle venv: to_tensor has no reference (torch missing)",
        );
    };
    let theirs: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let t = geometric::to_tensor_normalised(img);
    let ours: Vec<f32> = Vec::<f32>::try_from(t.flatten(0, -1)).expect("tensor to vec");
    if ours.len() != theirs.len() {
        failures.push(format!(
            "to_tensor: {} vs {} values",
            ours.len(),
            theirs.len()
        ));
        return;
    }
    let max = ours
        .iter()
        .zip(&theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    eprintln!("  {:<28} max |diff| {max:e}", "to_tensor");
    if max > 0.0 {
        failures.push(format!("to_tensor: max |diff| {max:e} > 0"));
    }
}

#[test]
fn transforms_match_pil() {
    let py = crate::python();
    if !py.exists() {
        return picie_testkit::skip_setup(format!(
            "oracle venv: PIL parity: {} not found",
            py.display()
        ));
    }
    if !check_image("synthetic", &synthetic(97, 83), false) {
        return;
    }
    check_image("synthetic square", &synthetic(120, 120), true);
    // A real photograph too, when the shared CamVid copy is present.
    let camvid = crate::repo_root().join("../shared/data/camvid/train/0001TP_006690.png");
    match image::open(&camvid) {
        Ok(im) => {
            check_image("camvid", &im.to_rgb8(), false);
        }
        Err(e) => picie_testkit::skip(format!(
            "camvid data: PIL parity on a photograph: {}: {e}",
            camvid.display()
        )),
    }
}
