//! k-means benchmarks: picie's Lloyd side by side with faiss-cpu and scikit-learn on the same
//! data and initial centroids (`kmeans`), and peak memory of Lloyd streamed from a features
//! artifact on disk (`kmeans-stream`).

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context as _};
use picie::kmeans::{self, KmeansConfig};
use tch::{Device, Kind, Tensor};

const THREADS: usize = 2;
const CHUNK: i64 = 65_536;

/// Sum over rows of the squared distance to the nearest centroid, in f64: the formula
/// `benches/kmeans_ref.py` applies to the peers' centroids.
fn objective(x: &Tensor, c: &Tensor) -> f64 {
    let c = c.to_kind(Kind::Double);
    let c_sq = c
        .pow_tensor_scalar(2)
        .sum_dim_intlist([1i64].as_slice(), false, Kind::Double);
    let mut total = 0.0;
    for xb in x.split(CHUNK, 0) {
        let xb = xb.to_kind(Kind::Double);
        let x_sq = xb
            .pow_tensor_scalar(2)
            .sum_dim_intlist([1i64].as_slice(), true, Kind::Double);
        let d = x_sq - xb.matmul(&c.tr()) * 2.0 + c_sq.unsqueeze(0);
        total += d
            .amin([1i64].as_slice(), false)
            .clamp_min(0.0)
            .sum(Kind::Double)
            .double_value(&[]);
    }
    total
}

/// `picie-bench kmeans [N K]`: N x 128 unit vectors, K clusters, 20 iterations, 2 threads.
pub fn bench(n: usize, k: usize) -> anyhow::Result<()> {
    let (d, iters) = (128usize, 20usize);
    let dir = std::env::temp_dir().join(format!("picie-bench-kmeans-{n}-{k}"));
    let py = picie::python();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/kmeans_ref.py");
    println!(
        "kmeans   {n} x {d}, K {k}, {iters} iterations, {THREADS} threads (data: {})",
        dir.display()
    );
    let out = std::process::Command::new(&py)
        .arg(&script)
        .arg("--dir")
        .arg(&dir)
        .args([
            "--n",
            &n.to_string(),
            "--d",
            &d.to_string(),
            "--k",
            &k.to_string(),
        ])
        .args([
            "--iters",
            &iters.to_string(),
            "--threads",
            &THREADS.to_string(),
            "--reuse",
        ])
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed (faiss-cpu and scikit-learn come with `scripts/setup.sh --bench`):\n{}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let x = Tensor::read_npy(dir.join("x.npy"))?;
    let init = Tensor::read_npy(dir.join("init.npy"))?;
    tch::set_num_threads(THREADS as i32);
    let cfg = KmeansConfig {
        k,
        n_iter: iters,
        ..KmeansConfig::default()
    };
    let t = Instant::now();
    let fit = kmeans::lloyd_from(
        &init,
        || {
            x.split(CHUNK, 0)
                .into_iter()
                .map(Ok::<_, std::convert::Infallible>)
        },
        &cfg,
        Device::Cpu,
    )?;
    let ours = t.elapsed().as_secs_f64();
    let ours_obj = objective(&x, fit.kmeans.centroids());

    let refs = std::fs::read_to_string(dir.join("ref.txt"))?;
    let mut best_peer = f64::MAX;
    println!(
        "kmeans   {:<10} {:>9} {:>22} {:>14}",
        "", "wall s", "objective", "rel. to picie"
    );
    println!(
        "kmeans   {:<10} {:>9.2} {:>22.6} {:>14}",
        "picie", ours, ours_obj, ""
    );
    for line in refs.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [name, secs, obj] = f[..] else { continue };
        let (secs, obj): (f64, f64) = (secs.parse()?, obj.parse()?);
        best_peer = best_peer.min(secs);
        println!(
            "kmeans   {name:<10} {secs:>9.2} {obj:>22.6} {:>14.2e}",
            (obj - ours_obj) / ours_obj
        );
    }
    println!(
        "kmeans   ratio fastest peer / picie = {:.2}x   target >= 1x, objective within 1e-4",
        best_peer / ours
    );
    Ok(())
}

/// Peak resident memory of this process so far (VmHWM), in bytes.
fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = s
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Resets VmHWM to the current RSS (Linux: write 5 to clear_refs).
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// `picie-bench kmeans-stream [MILLIONS]`: writes ~10M x 128 features as a real `features`
/// artifact (Parquet parts of 2^20 rows), then runs the kmeans stage's Lloyd path over it,
/// streamed, and reports peak memory against the data's size.
pub fn bench_stream(millions: usize) -> anyhow::Result<()> {
    use picie::artifact::Manifest;
    let (d, k, iters) = (128i64, 27usize, 3usize);
    let per_batch = 16 * 256 * 256; // 16 "images" of 256 x 256 pixels = 2^20 rows
    let batches = (millions * 1_000_000).div_ceil(per_batch as usize);
    let rows = batches as u64 * per_batch as u64;
    let tmp = tempfile::tempdir_in(std::env::current_dir()?)?;
    let store = picie::Store::open(&tmp.path().join("store"))?;
    tch::set_num_threads(THREADS as i32);
    tch::manual_seed(0);
    let t = Instant::now();
    let mut w = store.begin("bench")?;
    for b in 0..batches {
        let x = Tensor::randn([16, d, 256, 256], (Kind::Float, Device::Cpu));
        let x = &x / x.norm_scalaropt_dim(2.0, [1i64].as_slice(), true);
        let ids: Vec<u32> = (b as u32 * 16..b as u32 * 16 + 16).collect();
        w.write(&picie::tables::features_batch(&ids, 1, &x)?)?;
    }
    let manifest = Manifest {
        key: "bench".into(),
        node: "bench".into(),
        kind: "bench".into(),
        output: "features".into(),
        ty: "features".into(),
        epoch: None,
        files: Vec::new(),
        rows: 0,
        schema: Vec::new(),
        meta: Default::default(),
        wall_time_s: 0.0,
        created: picie::store::now(),
        picie_version: String::new(),
        provenance: serde_json::Value::Null,
    };
    let art = store.commit(w, manifest, true)?;
    let bytes: u64 = art.manifest.files.iter().map(|f| f.bytes).sum();
    println!(
        "stream   wrote {rows} x {d} features ({:.2} GB as f32, {:.2} GB of Parquet) in {:.0} s",
        rows as f64 * d as f64 * 4.0 / 1e9,
        bytes as f64 / 1e9,
        t.elapsed().as_secs_f64()
    );
    let reset = reset_peak();
    let before = peak_rss().unwrap_or(0);
    let cfg = KmeansConfig {
        k,
        n_iter: iters,
        ..KmeansConfig::default()
    };
    let t = Instant::now();
    let fit = kmeans::lloyd(
        || {
            art.batches().map(|b| {
                b.and_then(|b| picie::tables::features_of_view(&b, 1))
                    .map_err(picie::error::StageFailure)
            })
        },
        &cfg,
        Device::Cpu,
    )?;
    let secs = t.elapsed().as_secs_f64();
    let peak = peak_rss().unwrap_or(0);
    anyhow::ensure!(fit.rows == rows, "Lloyd saw {} rows of {rows}", fit.rows);
    println!(
        "stream   Lloyd K {k}, {iters} iterations (+ init and count passes) over the artifact: {secs:.0} s; \
         peak RSS {:.2} GB{} (RSS before {:.2} GB) vs {:.2} GB of data",
        peak as f64 / 1e9,
        if reset { "" } else { " (whole process: VmHWM could not be reset)" },
        before as f64 / 1e9,
        rows as f64 * d as f64 * 4.0 / 1e9
    );
    Ok(())
}
