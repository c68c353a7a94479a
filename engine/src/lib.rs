//! picie-engine: a YAML-defined DAG of plugin stages, run on threads joined by bounded
//! channels, leaving content-addressed Parquet/Arrow artifacts in a store, so that a re-run
//! resumes from what is already there.
//!
//! It knows nothing of any method, tensor library or data set: the application registers
//! its stage kinds ([`Stage`]), its typed top-level sections ([`SectionDef`], e.g.
//! `dataset:`) and the provenance fields of its cache keys in a [`Registry`].
//!
//! ```text
//! spec      the pipeline file as written, every problem with its line and column
//! plan      spec -> validated, unrolled, keyed DAG (every error at once)
//! exec      plan -> threads, channels, commits; what runs and why
//! stage     the plugin interface and the registry
//! context   what a running stage sees
//! section   application-defined top-level sections
//! store     the content-addressed store; artifact: its Parquet/Arrow tables
//! lease     many runs on one store: run leases, per-node claims, scratch folders
//! remote    stores on S3-compatible object storage: cache, commits, lease objects
//! seeds     multi-seed sweeps: member runs and the sweep record
//! shard     sharded passes: a run's per-image passes split over worker processes
//! diag      located diagnostics; error: the engine's errors
//! ```

pub mod artifact;
pub mod context;
pub mod diag;
pub mod error;
pub mod exec;
pub mod lease;
pub mod plan;
pub mod remote;
pub mod section;
pub mod seeds;
pub mod shard;
pub mod spec;
pub mod stage;
pub mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod verify;

pub use context::{Context, Item};
pub use error::{BoxError, Error, StageError, StageFailure};
pub use exec::{run, Decision, RunOptions, Why};
pub use plan::Plan;
pub use section::{Section, SectionDef, Sections};
pub use shard::Shard;
pub use stage::{Mode, ParamError, Port, Registry, Stage, StreamPort};
pub use store::Store;
