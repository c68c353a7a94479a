//! `picie-bench`: engine benchmarks, printed as a table (run with `make bench`).
//!
//! - plan: validate, unroll and key a synthetic 1,000-node DAG (target < 1 s).
//! - rerun: the default pipeline cold, then fully cached (target < 2 % of cold).
//! - augment [DIR]: decode + augment both views at 320 (CamVid train by default), 2
//!   threads, then the same work with PIL/torchvision in the venv, same parameters
//!   (target: at least 2x).
//! - extract: ResNet-18 + FPN forward at 320, batch 16, 2 threads vs PyTorch eager (>= 1x).
//! - kmeans [N K]: Lloyd on N x 128 unit vectors (default 1M, K 27) vs faiss-cpu and
//!   scikit-learn from the same initial centroids (at most the faster peer's time).
//! - kmeans-camvid: the same at CamVid's shape, 2,348,800 x 128, K 11.
//! - kmeans-stream [MILLIONS]: peak memory of Lloyd streamed over ~10M features on disk.
//! - evaluate [CAMVID]: the evaluate stage's images/s at 320 on CamVid.
//! - vit [WEIGHTS]: ViT-S/14 features at 224 and 322, batch 8, all threads vs PyTorch eager
//!   on the same weights (>= 1x).
//! - train: seconds per training step (2 x 16 views at 320, loss, backward, Adam) vs the
//!   release's step in PyTorch eager.
//! - crf [CAMVID]: the dense CRF per 320 x 320 image, K 11 and 27, 10 iterations, on 1 and 2
//!   threads vs pydensecrf (one process, a pool of 2) in the venv.
//! - knn: the knn stage on 10,000 synthetic images of 23 x 23 x 384 tokens (<= 30 s, 1 GB).
//!
//! `all` (the default) runs plan, augment and rerun; the others are named explicitly.

mod crf;
mod evaluate;
mod extract;
mod kmeans;
mod knn;
mod train;
mod vit;

use std::time::Instant;

use picie::exec::RunOptions;
use picie::{Context, Plan, Port, Stage, StageError, Store};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct PassParams {
    salt: u64,
}

/// A stage with two artifact inputs and one output, for planning only.
struct Pass;
impl Stage for Pass {
    type Params = PassParams;
    const KIND: &'static str = "bench_pass";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str = "benchmark node";
    fn inputs(_: &PassParams) -> Vec<Port> {
        vec![
            Port::artifact("a", "t").optional(),
            Port::artifact("b", "t").optional(),
        ]
    }
    fn outputs(_: &PassParams) -> Vec<Port> {
        vec![Port::artifact("out", "t")]
    }
    fn new(_: PassParams) -> Self {
        Self
    }
    fn run(&mut self, _: &mut Context) -> Result<(), StageError> {
        Ok(())
    }
}

/// 100 top-level nodes plus a 9-stage loop body unrolled over 100 epochs = 1,000 nodes.
fn thousand_node_yaml() -> String {
    let mut y = String::from("name: bench\nstore: store\ndevice: cpu\nstages:\n");
    for i in 0..100 {
        y.push_str(&format!(
            "  - name: t{i}\n    kind: bench_pass\n    params: {{salt: {i}}}\n"
        ));
        if i > 0 {
            y.push_str(&format!("    inputs: {{a: t{}.out", i - 1));
            if i > 1 {
                y.push_str(&format!(", b: t{}.out", i / 2));
            }
            y.push_str("}\n");
        }
    }
    y.push_str("loop:\n  epochs: 100\n  stages:\n");
    for j in 0..9 {
        y.push_str(&format!(
            "    - name: l{j}\n      kind: bench_pass\n      params: {{salt: {j}}}\n"
        ));
        if j == 0 {
            y.push_str(
                "      inputs:\n        a: t99.out\n        b: {from: l8.out, epoch: prev}\n",
            );
        } else {
            y.push_str(&format!(
                "      inputs: {{a: l{}.out, b: t{j}.out}}\n",
                j - 1
            ));
        }
    }
    y
}

fn bench_plan() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("bench.yaml");
    std::fs::write(&path, thousand_node_yaml())?;
    let mut reg = picie::stages::builtin();
    reg.register::<Pass>();
    let mut best = f64::MAX;
    let mut nodes = 0;
    for _ in 0..5 {
        let t = Instant::now();
        let plan = Plan::load(&path, &reg)?;
        let store = Store::open(&plan.spec.store)?;
        let d = picie::exec::decide(&plan, &store, &RunOptions::default(), false)?;
        best = best.min(t.elapsed().as_secs_f64());
        nodes = plan.nodes.len();
        assert_eq!(d.len(), nodes);
    }
    println!(
        "plan     {nodes} nodes: {:.1} ms (best of 5; parse, validate, unroll, key, cache lookup)   target < 1000 ms",
        best * 1e3
    );
    Ok(())
}

fn bench_rerun(pipeline: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(pipeline)?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("pipeline.yaml");
    // Same pipeline, private store.
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("store:") {
                "store: store"
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&path, text)?;
    let reg = picie::stages::builtin();
    let run = || -> anyhow::Result<f64> {
        let t = Instant::now();
        let plan = Plan::load(&path, &reg)?;
        let store = Store::open(&plan.spec.store)?;
        picie::run(&plan, &store, &RunOptions::default())?;
        Ok(t.elapsed().as_secs_f64())
    };
    let cold = run()?;
    let warm = (0..3).map(|_| run()).collect::<anyhow::Result<Vec<_>>>()?;
    let warm = warm.into_iter().fold(f64::MAX, f64::min);
    println!(
        "rerun    {pipeline}: cold {cold:.2} s, fully cached {:.1} ms = {:.2} % of cold   target < 2 %",
        warm * 1e3,
        100.0 * warm / cold
    );
    Ok(())
}

/// Decode + the release's base transform + both views, as the `augment` stage does.
fn bench_augment(dir: &str) -> anyhow::Result<()> {
    use picie::augment_params::{draw, AugmentConfig};
    use picie::transforms::{geometric, views};
    use std::sync::atomic::{AtomicUsize, Ordering};
    const PASSES: u32 = 3;
    const THREADS: usize = 2;
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("{dir}: {e} (pass a folder of images)"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|x| x == "png" || x == "jpg" || x == "jpeg")
        })
        .collect();
    files.sort();
    anyhow::ensure!(!files.is_empty(), "{dir} holds no images");
    tch::set_num_threads(1);
    let cfg = AugmentConfig::default();
    // The exact parameters, so the Python reference does identical work.
    let rows: Vec<serde_json::Value> = (0..PASSES)
        .flat_map(|epoch| {
            let (files, cfg) = (&files, &cfg);
            (0..files.len()).map(move |i| {
                serde_json::json!({
                    "epoch": epoch,
                    "file": files[i].file_name().map(|f| f.to_string_lossy().into_owned()),
                    "aug": draw(cfg, 0, epoch, i as u64),
                })
            })
        })
        .collect();
    let tmp = tempfile::tempdir()?;
    let params = tmp.path().join("params.json");
    std::fs::write(&params, serde_json::to_vec(&rows)?)?;
    let work = |epoch: u32, i: usize| -> anyhow::Result<u8> {
        let img = image::open(&files[i])?.to_rgb8();
        let base = geometric::base_transform(&img, 640)?;
        let [v1, v2] = views::train_views(&base, &draw(&cfg, 0, epoch, i as u64), 320)?;
        Ok(v1.as_raw()[0] ^ v2.as_raw()[0])
    };
    let mut rates = Vec::new();
    for epoch in 0..PASSES {
        let next = AtomicUsize::new(0);
        let t = Instant::now();
        std::thread::scope(|s| -> anyhow::Result<()> {
            let hs: Vec<_> = (0..THREADS)
                .map(|_| {
                    s.spawn(|| -> anyhow::Result<()> {
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= files.len() {
                                return Ok(());
                            }
                            work(epoch, i)?;
                        }
                    })
                })
                .collect();
            for h in hs {
                h.join().map_err(|_| anyhow::anyhow!("worker panicked"))??;
            }
            Ok(())
        })?;
        rates.push(files.len() as f64 / t.elapsed().as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    let ours = rates[rates.len() / 2];
    println!(
        "augment  picie: {} images x {PASSES} passes, {THREADS} threads: median {ours:.1} images/s",
        files.len()
    );
    let py = picie::python();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/augment_ref.py");
    let out = std::process::Command::new(&py)
        .arg(&script)
        .args([
            "--dir",
            dir,
            "--workers",
            "2",
            "--passes",
            &PASSES.to_string(),
        ])
        .arg("--params")
        .arg(&params)
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            let line = text.lines().last().unwrap_or("");
            println!("augment  {line}");
            if let Some(theirs) = line
                .split("median ")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
            {
                println!(
                    "augment  ratio picie / PIL = {:.2}x   target >= 2x",
                    ours / theirs
                );
            }
        }
        Ok(o) => println!(
            "augment  reference failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => println!(
            "augment  reference not run ({}: {e}); run scripts/setup.sh",
            py.display()
        ),
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // As `picie` runs its stages.
    picie::memory::tune_malloc();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let which = args.first().map(String::as_str).unwrap_or("all");
    if matches!(which, "all" | "plan") {
        bench_plan()?;
    }
    if matches!(which, "all" | "augment") {
        let dir = match which {
            "augment" => args.get(1).cloned(),
            _ => None,
        };
        let dir = dir.unwrap_or_else(|| {
            format!("{}/../shared/data/camvid/train", env!("CARGO_MANIFEST_DIR"))
        });
        if std::path::Path::new(&dir).is_dir() {
            bench_augment(&dir)?;
        } else {
            println!("augment  skipped: {dir} is absent (give a folder of images)");
        }
    }
    if matches!(which, "all" | "rerun") {
        bench_rerun(args.get(1).map(String::as_str).unwrap_or("pipeline.yaml"))?;
    }
    let num = |i: usize, default: usize| -> anyhow::Result<usize> {
        args.get(i).map_or(Ok(default), |v| {
            v.parse()
                .map_err(|_| anyhow::anyhow!("`{v}` is not a whole number"))
        })
    };
    let camvid = format!("{}/../shared/data/camvid", env!("CARGO_MANIFEST_DIR"));
    match which {
        "extract" => extract::bench()?,
        "kmeans" => kmeans::bench(num(1, 1_000_000)?, num(2, 27)?)?,
        "kmeans-camvid" => kmeans::bench(2_348_800, 11)?,
        "kmeans-stream" => kmeans::bench_stream(num(1, 10)?)?,
        "knn" => knn::bench()?,
        "crf" => crf::bench(args.get(1).unwrap_or(&camvid))?,
        "evaluate" => evaluate::bench(args.get(1).unwrap_or(&camvid))?,
        "train" => train::bench()?,
        "vit" => vit::bench(args.get(1).map(String::as_str))?,
        "all" | "plan" | "augment" | "rerun" => {}
        other => anyhow::bail!(
            "unknown benchmark `{other}`: all, plan, augment, rerun, extract, kmeans, \
             kmeans-camvid, kmeans-stream, evaluate, train, vit"
        ),
    }
    Ok(())
}
