//! picie: PiCIE (Cho et al., CVPR 2021) as a reproducible, resumable dataflow pipeline.
//!
//! This crate is the application: the `picie` command (`cli`), reading runs back as Polars
//! frames (`analysis`, `sweep` for multi-seed sweeps, `target` to find them) and the HTML
//! report (`report`). It stands on three workspace crates,
//! re-exported here under their module names so that one path reaches everything:
//!
//! ```text
//! picie-engine  engine/   YAML DAG -> plan -> threads -> content-addressed store
//! picie-core    core/     PiCIE the method: model, kmeans, loss, transforms, data, metrics
//! picie-stages  stages/   one file per stage kind, wiring the method into the engine
//! ```

pub mod analysis;
pub mod cli;
pub mod report;
pub mod sweep;
pub mod target;

pub use picie_core::{
    augment_params, crf, data, device, kmeans, loss, metrics, model, predict, python, repo_root,
    transforms,
};
pub use picie_engine::{artifact, context, diag, error, exec, plan, shard, spec, stage, store};
pub use picie_engine::{run, Context, Error, Item, Mode, ParamError, Plan, Port, Registry};
pub use picie_engine::{RunOptions, Stage, StageError, Store};
pub use picie_stages as stages;
pub use picie_stages::io::{batch, checkpoint, tables};
pub use picie_stages::{memory, sections};
