//! `picie-bench train`: seconds per training step (both views of 16 images at 320x320,
//! PiCIE's loss, backward, Adam; ResNet-18 + FPN, K 11, 2 threads) through the functions the
//! `train` stage runs, against the release's step in PyTorch eager (benches/train_ref.py),
//! alternating rounds so other load hits both alike.

use std::path::Path;
use std::time::Instant;

use picie::augment_params::Geometric;
use picie::batch::{HostTensor, ViewBatch};
use picie::checkpoint::{self, AdamState};
use picie::loss::picie_loss;
use picie::model::NetConfig;
use tch::{Device, Kind, Tensor};

const BATCH: i64 = 16;
const SIZE: i64 = 320;
const K: i64 = 11;
const THREADS: i32 = 2;
const WARMUP: usize = 1;
const ITERS: usize = 3;

/// Median seconds of our training step.
fn seconds_per_step() -> anyhow::Result<f64> {
    // As the train stage holds it.
    let m = checkpoint::build_seeded(&NetConfig::default(), Device::Cpu, 0)?;
    m.channels_last();
    let mut adam = AdamState::new(&m.vs);
    let opts = (Kind::Float, Device::Cpu);
    let h = SIZE / 4;
    let b = ViewBatch {
        epoch: 1,
        images: (0..BATCH as u32).collect(),
        view1: HostTensor::from_tensor(&Tensor::randn([BATCH, 3, SIZE, SIZE], opts))?,
        view2: HostTensor::from_tensor(&Tensor::randn([BATCH, 3, SIZE, SIZE], opts))?,
        geometric: (0..BATCH)
            .map(|i| Geometric {
                crop_frac: 0.75,
                u_x: (i % 5) as f32 / 5.0,
                u_y: (i % 3) as f32 / 3.0,
                flip: i % 2 == 0,
            })
            .collect(),
        tokens: false,
    };
    let c = [0, 1].map(|_| {
        let c = Tensor::randn([K, 128], opts);
        &c / c.norm_scalaropt_dim(2, [1], true)
    });
    let y = [0, 1].map(|_| Tensor::randint(K, [BATCH, h, h], (Kind::Int64, Device::Cpu)));
    let w = [0, 1].map(|_| Tensor::rand([K], opts) + 0.5);
    let mut times = Vec::new();
    for i in 0..WARMUP + ITERS {
        let t = Instant::now();
        let (z1, z2) = b.features(&m.net, Device::Cpu, true)?;
        let (loss, _, _) = picie_loss([&z1, &z2], [&y[0], &y[1]], [&c[0], &c[1]], [&w[0], &w[1]]);
        loss.backward();
        adam.step(&m.vs, 1e-4, (0.9, 0.999), 1e-8, 0.0);
        checkpoint::zero_grads(&m.vs);
        let dt = t.elapsed().as_secs_f64();
        anyhow::ensure!(loss.double_value(&[]).is_finite(), "loss is not finite");
        if i >= WARMUP {
            times.push(dt);
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(times[ITERS / 2])
}

pub fn bench() -> anyhow::Result<()> {
    tch::set_num_threads(THREADS);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/train_ref.py");
    let args = [
        ("--batch", BATCH as usize),
        ("--size", SIZE as usize),
        ("--k", K as usize),
        ("--threads", THREADS as usize),
        ("--warmup", WARMUP),
        ("--iters", ITERS),
    ];
    let (ours, theirs) = crate::extract::alternate_rounds("train   ", &script, &args, || {
        let s = seconds_per_step()?;
        Ok((
            s,
            format!("{s:.3} s/step (median of {ITERS}, batch {BATCH} x 2 views, {SIZE}x{SIZE}, K {K}, {THREADS} threads)"),
        ))
    })?;
    let best = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    if !theirs.is_empty() {
        println!(
            "train    ratio PyTorch / picie (best round each) = {:.2}x",
            best(&theirs) / best(&ours)
        );
    }
    Ok(())
}
