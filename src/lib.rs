//! picie: PiCIE (Cho et al., CVPR 2021) as a reproducible, resumable dataflow pipeline.
//!
//! A pipeline file (`spec`) becomes a validated DAG (`plan`) whose stages (`stage`,
//! implemented in `stages/`) run on threads joined by bounded channels (`exec`) and leave
//! content-addressed Parquet artifacts in a store (`store`, `artifact`).

pub mod analysis;
pub mod artifact;
pub mod augment_params;
pub mod batch;
pub mod checkpoint;
pub mod cli;
pub mod context;
pub mod data;
pub mod device;
pub mod diag;
pub mod error;
pub mod exec;
pub mod kmeans;
pub mod metrics;
pub mod model;
pub mod plan;
pub mod report;
pub mod spec;
pub mod stage;
pub mod store;
pub mod synthetic;
pub mod tables;

#[path = "../stages/mod.rs"]
pub mod stages;
pub mod transforms;

pub use context::{Context, Item};

/// The Python that reads `.pth` files and serves as the tests' numerical oracle:
/// `PICIE_PYTHON`, else the project venv that `scripts/setup.sh` makes.
pub fn python() -> std::path::PathBuf {
    std::env::var_os("PICIE_PYTHON")
        .map(Into::into)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python")
        })
}

/// Runs a reference script of `tests/python/` with the oracle Python. `None` (after saying
/// SKIP and why) when that Python or its packages are absent (exit status 77); panics with
/// the script's stderr when it fails.
#[cfg(test)]
pub(crate) fn run_oracle<I, S>(test: &str, script: &str, args: I) -> Option<std::process::Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let py = python();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(script);
    let out = match std::process::Command::new(&py)
        .arg(&path)
        .args(args)
        .output()
    {
        Ok(o) => o,
        Err(e) => {
            eprintln!(
                "SKIP {test}: cannot run {}: {e} (run scripts/setup.sh)",
                py.display()
            );
            return None;
        }
    };
    if out.status.code() == Some(77) {
        eprintln!(
            "SKIP {test}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return None;
    }
    assert!(
        out.status.success(),
        "{} failed:\n{}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(out)
}

pub use error::{Error, StageError};
pub use exec::{run, RunOptions};
pub use plan::Plan;
pub use stage::{Mode, ParamError, Port, Registry, Stage};
pub use store::Store;
