//! `picie-bench knn`: the `knn` stage on the stored tokens of 10,000 synthetic images,
//! 384 x 23 x 23 each in f16 (what `backbone` stores for DINOv2-S/14 at 322 px; 4 GB on
//! disk), k = 30: the stage's seconds and the process's peak resident memory (VmHWM).
//! Targets (issue 26): at most 30 s and 1 GB. The tokens are written first by a source
//! stage, untimed: 50 clusters of images (a random centre per cluster plus noise per token),
//! so the table can be checked too (each image's rank-1 neighbour is of its cluster).

use std::time::Instant;

use picie::exec::{Outcome, RunOptions};
use picie::tables::Precision;
use picie::{Context, Plan, Port, Stage, StageError, Store};
use picie_stages::io::knn_table::KnnTable;
use picie_stages::io::tokens::{self, EVAL_VIEW};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

const IMAGES: u32 = 10_000;
const CLUSTERS: u32 = 50;
const CHANNELS: i64 = 384;
const SIDE: i64 = 23;
const BATCH: u32 = 16;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct SynthParams {
    images: u32,
}

/// Image i belongs to cluster i mod 50: its tokens are the cluster's centre plus N(0, 2^2)
/// noise per token.
struct SynthTokens(SynthParams);
impl Stage for SynthTokens {
    type Params = SynthParams;
    const KIND: &'static str = "bench_tokens";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str = "synthetic evaluation-crop tokens";
    fn inputs(_: &SynthParams) -> Vec<Port> {
        vec![]
    }
    fn outputs(_: &SynthParams) -> Vec<Port> {
        vec![Port::artifact("tokens", "eval_tokens")]
    }
    fn new(p: SynthParams) -> Self {
        Self(p)
    }
    fn run(&mut self, ctx: &mut Context) -> Result<(), StageError> {
        tch::manual_seed(0);
        let opts = (Kind::Float, Device::Cpu);
        let centres = Tensor::randn([CLUSTERS as i64, CHANNELS, 1, 1], opts);
        let w = ctx.output("tokens")?;
        tokens::begin(w, [CHANNELS, SIDE, SIDE], Precision::F16, "synthetic");
        let g = picie::augment_params::Geometric {
            crop_frac: 1.0,
            u_x: 0.0,
            u_y: 0.0,
            flip: false,
        };
        for start in (0..self.0.images).step_by(BATCH as usize) {
            let ids: Vec<u32> = (start..(start + BATCH).min(self.0.images)).collect();
            let which: Vec<i64> = ids.iter().map(|&i| (i % CLUSTERS) as i64).collect();
            let n = ids.len() as i64;
            let t = centres.index_select(0, &Tensor::from_slice(&which))
                + Tensor::randn([n, CHANNELS, SIDE, SIDE], opts) * 2.0;
            let g = vec![g; ids.len()];
            w.write(&tokens::rows(&ids, EVAL_VIEW, &g, &t, Precision::F16)?)?;
        }
        Ok(())
    }
}

/// Peak resident memory of this process so far, in MiB (Linux's VmHWM).
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

fn yaml(stages: &str) -> String {
    format!(
        "name: knn-bench\nseed: 0\ndevice: cpu\nstore: store\nstages:\n  - name: tokens\n    kind: bench_tokens\n    params: {{images: {IMAGES}}}\n{stages}"
    )
}

pub fn bench() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("pipeline.yaml");
    let mut reg = picie::stages::builtin();
    reg.register::<SynthTokens>();
    let run = |text: String| -> anyhow::Result<(Plan, picie::exec::RunReport)> {
        std::fs::write(&path, text)?;
        let plan = Plan::load(&path, &reg)?;
        let store = Store::open(&plan.spec.store)?;
        let report = picie::run(&plan, &store, &RunOptions::default())?;
        Ok((plan, report))
    };
    let t = Instant::now();
    run(yaml(""))?;
    let written = peak_rss_mib();
    println!(
        "knn      tokens of {IMAGES} images ({CHANNELS} x {SIDE} x {SIDE}, f16) written in {:.1} s (setup, untimed), peak RSS so far {written:.0} MiB",
        t.elapsed().as_secs_f64()
    );
    let (plan, report) = run(yaml(
        "  - name: knn\n    kind: knn\n    params: {k: 30}\n    inputs: {tokens: tokens.tokens}\n",
    ))?;
    let seconds = match report.nodes.iter().find(|(n, _)| n.as_str() == "knn") {
        Some((_, Outcome::Ran { seconds })) => *seconds,
        other => anyhow::bail!("the knn stage did not run: {other:?}"),
    };
    let peak = peak_rss_mib();

    // The table: rank 0 itself, rank 1 of the same cluster.
    let i = plan.index_of("knn").expect("planned");
    let store = Store::open(&plan.spec.store)?;
    let a = match store.lookup(&plan.nodes[i].output_keys["knn"]) {
        picie::store::Lookup::Valid(a) => *a,
        other => anyhow::bail!("no knn table: {other:?}"),
    };
    let table = KnnTable::read(&a)?;
    anyhow::ensure!(table.rows.len() == IMAGES as usize && table.k == 30);
    anyhow::ensure!(table.rows.iter().all(|(img, nb)| nb[0] == *img));
    let same = table
        .rows
        .iter()
        .filter(|(img, nb)| nb[1] % CLUSTERS == img % CLUSTERS)
        .count();
    println!(
        "knn      {IMAGES} images, k 30: {seconds:.2} s, peak RSS {peak:.0} MiB (process)   target <= 30 s, <= 1024 MiB; rank 1 in the image's cluster for {same}/{IMAGES}"
    );

    // The blocked top-k alone (the rest of the stage reads and averages 4 GB of tokens).
    let emb = Tensor::randn([IMAGES as i64, CHANNELS], (Kind::Float, Device::Cpu));
    let emb = &emb / emb.norm_scalaropt_dim(2, [1i64].as_slice(), true);
    let emb = Vec::<f32>::try_from(emb.flatten(0, -1))?;
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    let t = Instant::now();
    let nn = picie_core::knn::top_k(
        &emb,
        CHANNELS as usize,
        30,
        picie_core::knn::DEFAULT_BLOCK,
        threads,
        |_| true,
    )?;
    anyhow::ensure!(nn.images() == IMAGES as usize);
    println!(
        "knn      of which the top-k pass ({IMAGES} x {IMAGES} / 2 dot products of {CHANNELS}, {threads} threads): {:.2} s",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
