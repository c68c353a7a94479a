//! `picie-bench evaluate [CAMVID]`: throughput of the `evaluate` stage at 320x320 on 2 cores:
//! ResNet-18 + FPN (untrained), eval-mode features of every CamVid train image, a fresh
//! 20-iteration k-means (K = 11), then every val image predicted, matched and scored.

use std::time::Instant;

use picie::exec::RunOptions;
use picie::{Plan, Store};

pub fn bench(camvid: &str) -> anyhow::Result<()> {
    let root = std::path::Path::new(camvid).canonicalize()?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("eval.yaml");
    std::fs::write(
        &path,
        format!(
            "name: bench-eval
seed: 0
device: cpu
store: store
dataset:
  kind: folder
  root: {}
  classes: classes.txt
  ignore_index: 11
  train: {{images: train, masks: trainannot}}
  val: {{images: val, masks: valannot}}
stages:
  - name: init
    kind: init
  - name: evaluate
    kind: evaluate
    params: {{res: 320, batch: 16, threads: 2}}
    inputs: {{checkpoint: init.checkpoint}}
",
            root.display()
        ),
    )?;
    tch::set_num_threads(2);
    let reg = picie::stages::builtin();
    let plan = Plan::load(&path, &reg)?;
    let store = Store::open(&plan.spec.store)?;
    let t = Instant::now();
    picie::run(&plan, &store, &RunOptions::default())?;
    let total = t.elapsed().as_secs_f64();
    let rec = store
        .run_records()?
        .pop()
        .ok_or_else(|| anyhow::anyhow!("no run record"))?;
    let node = rec
        .nodes
        .iter()
        .find(|n| n.name == "evaluate")
        .ok_or_else(|| anyhow::anyhow!("no evaluate node in the record"))?;
    let ds = picie::sections::dataset_of(&plan).ok_or_else(|| anyhow::anyhow!("no dataset"))?;
    let n_train = ds.open(picie::data::Split::Train)?.len();
    let n_val = ds.open(picie::data::Split::Val)?.len();
    println!(
        "evaluate CamVid at 320, 2 threads: {n_train} train images (features + k-means K 11, 20 it) \
         + {n_val} val images in {:.1} s = {:.1} images/s (run {total:.1} s)",
        node.seconds,
        (n_train + n_val) as f64 / node.seconds
    );
    Ok(())
}
