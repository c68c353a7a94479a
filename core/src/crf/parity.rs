//! The CRF against pydensecrf (Kraehenbuehl's densecrf behind Cython), when it is installed
//! in the oracle venv (`tests/python/densecrf_ref.py` exits 77 otherwise).

use super::tests::Scene;
use super::*;

#[test]
fn matches_pydensecrf() {
    let probe = std::process::Command::new(crate::python())
        .args(["-c", "import pydensecrf.densecrf"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        return picie_testkit::skip_setup(
            "oracle venv: pydensecrf is not importable (scripts/setup.sh builds it from its \
             sdist with Cython < 3)",
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = CrfConfig::default();
    for (i, (w, h, k)) in [(64, 48, 5), (96, 80, 11)].into_iter().enumerate() {
        let scene = Scene::new(w, h, k, 40 + i as u64);
        let img = scene.image();
        let rgb = dir.path().join("rgb.bin");
        let unary = dir.path().join("unary.bin");
        let out = dir.path().join("q.bin");
        std::fs::write(&rgb, &scene.rgb).unwrap();
        // pydensecrf takes the unary class-major (K x N).
        let n = w * h;
        let class_major: Vec<u8> = (0..k)
            .flat_map(|c| (0..n).map(move |p| (p, c)))
            .flat_map(|(p, c)| scene.unary[p * k + c].to_le_bytes())
            .collect();
        std::fs::write(&unary, class_major).unwrap();
        let args = [
            rgb.display().to_string(),
            unary.display().to_string(),
            out.display().to_string(),
            format!("{w}"),
            format!("{h}"),
            format!("{k}"),
            format!("{}", cfg.iterations),
            format!("{}", cfg.gaussian.sxy),
            format!("{}", cfg.gaussian.compat),
            format!("{}", cfg.bilateral.sxy),
            format!("{}", cfg.bilateral.srgb),
            format!("{}", cfg.bilateral.compat),
        ];
        // None: the skip is recorded by run_oracle.
        if crate::run_oracle("matches_pydensecrf", "densecrf_ref.py", &args).is_none() {
            return;
        }
        let bytes = std::fs::read(&out).unwrap();
        let theirs: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(theirs.len(), n * k);
        let ours = refine(&cfg, &img).unwrap();
        let mut max = 0f32;
        let mut agree = 0;
        for p in 0..n {
            let mut best = 0;
            for c in 0..k {
                let t = theirs[c * n + p];
                max = max.max((ours.marginals[p * k + c] - t).abs());
                if t > theirs[best * n + p] {
                    best = c;
                }
            }
            agree += usize::from(best as u32 == ours.labels[p]);
        }
        let agree = agree as f64 / n as f64;
        eprintln!("{w}x{h}, K = {k}: labels agree {agree:.5}, max |dQ| {max:.2e}");
        // The same algorithm in f32; only rounding (SSE order, ties in the lattice's
        // rounding) differs.
        assert!(agree >= 0.999, "labels agree on {agree}");
        assert!(max < 1e-3, "max |dQ| {max}");
    }
}
