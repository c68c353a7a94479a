//! `picie-bench extract`: images/s of feature extraction (ResNet-18 + the release's FPN,
//! eval mode, no gradients) at 320x320, batch 16, 2 threads, against the same model in
//! PyTorch eager (benches/extract_ref.py), alternating rounds so other load hits both alike.

use std::path::Path;
use std::time::Instant;

use anyhow::Context as _;
use picie::checkpoint;
use picie::model::NetConfig;
use picie::model::PicieNet;
use tch::{Device, Kind, Tensor};

const BATCH: i64 = 16;
const SIZE: i64 = 320;
const THREADS: i32 = 2;
const WARMUP: usize = 2;
const ITERS: usize = 5;

/// Median images/s of our forward.
fn rate(net: &PicieNet, x: &Tensor) -> anyhow::Result<f64> {
    let mut rates = Vec::new();
    for i in 0..WARMUP + ITERS {
        let t = Instant::now();
        let out = tch::no_grad(|| net.forward_t(x, false))?;
        let dt = t.elapsed().as_secs_f64();
        anyhow::ensure!(out.size() == [BATCH, 128, SIZE / 4, SIZE / 4]);
        if i >= WARMUP {
            rates.push(BATCH as f64 / dt);
        }
    }
    rates.sort_by(f64::total_cmp);
    Ok(rates[ITERS / 2])
}

pub fn bench() -> anyhow::Result<()> {
    tch::set_num_threads(THREADS);
    // As the extract, label and evaluate stages hold it.
    let m = checkpoint::build_seeded(&NetConfig::default(), Device::Cpu, 0)?;
    m.channels_last();
    let net = &m.net;
    let x = Tensor::randn([BATCH, 3, SIZE, SIZE], (Kind::Float, Device::Cpu));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/extract_ref.py");
    let args = [
        ("--batch", BATCH as usize),
        ("--size", SIZE as usize),
        ("--threads", THREADS as usize),
        ("--warmup", WARMUP),
        ("--iters", ITERS),
    ];
    let (ours, theirs) = alternate_rounds("extract ", &script, &args, || {
        let r = rate(net, &x)?;
        Ok((
            r,
            format!("{r:.2} images/s (median of {ITERS}, batch {BATCH}, {SIZE}x{SIZE}, {THREADS} threads)"),
        ))
    })?;
    print_ratio("extract ", &ours, &theirs);
    Ok(())
}

/// Prints our best round's rate over the reference's (rates: higher is faster), if it ran.
pub fn print_ratio(name: &str, ours: &[f64], theirs: &[f64]) {
    let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    if !theirs.is_empty() {
        println!(
            "{name} ratio picie / PyTorch (best round each) = {:.2}x   target >= 1x",
            best(ours) / best(theirs)
        );
    }
}

/// Two alternating rounds of ours (its figure and the line to print) and the reference
/// script, so other load on the machine hits both alike; returns each side's figures.
pub fn alternate_rounds<V: std::fmt::Display>(
    name: &str,
    script: &Path,
    args: &[(&str, V)],
    mut ours: impl FnMut() -> anyhow::Result<(f64, String)>,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let (mut mine, mut theirs) = (Vec::new(), Vec::new());
    for round in 1..=2 {
        let (v, line) = ours()?;
        println!("{name} round {round} picie:   {line}");
        mine.push(v);
        let (line, value) = reference(script, args)?;
        println!("{name} round {round} PyTorch: {line}");
        theirs.extend(value);
    }
    Ok((mine, theirs))
}

/// Runs a reference script with the venv's Python; returns its line (without the
/// `name: ` prefix) and the number that follows the prefix.
pub fn reference<V: std::fmt::Display>(
    script: &Path,
    args: &[(&str, V)],
) -> anyhow::Result<(String, Option<f64>)> {
    let mut cmd = std::process::Command::new(picie::python());
    cmd.arg(script);
    for (flag, value) in args {
        cmd.args([flag.to_string(), value.to_string()]);
    }
    let out = cmd
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "{}: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.trim();
    let line = line
        .split_once(": ")
        .map_or(line, |(_, rest)| rest)
        .to_string();
    let value = line.split_whitespace().next().and_then(|v| v.parse().ok());
    Ok((line, value))
}
