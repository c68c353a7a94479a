//! A run's artifacts as Polars DataFrames: metrics per epoch, cluster sizes, one epoch's
//! assignments. docs/analysis.md walks through it.
//!
//!     cargo run --example analysis -- artifacts synthetic-demo

use std::path::PathBuf;

use picie::analysis::Run;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let store = PathBuf::from(args.next().unwrap_or_else(|| "artifacts".into()));
    let name = args.next().unwrap_or_else(|| "synthetic-demo".into());

    let run = Run::open(&store, &name)?;
    let metrics = run.metrics()?; // one row per evaluated epoch: mIoU, accuracy, ...
    println!("{metrics}");
    let sizes = run.cluster_sizes()?; // epoch, view, cluster, count, weight
    println!("{sizes}");
    let first = run.assignments(1, 1)?; // epoch, view, image, y, x, cluster
    println!("{} labelled pixels in epoch 1", first.height());
    Ok(())
}
