//! The one integration test binary (ripgrep style): modules by area. The engine's own
//! tests (executor, cache, spec errors, sections) are in `engine/tests/`.

mod common;

mod analysis;
mod cli;
mod docs;
mod picie;
mod report;
mod shards;
mod slurm;
mod vit;
