//! picie: PiCIE (Cho et al., CVPR 2021) as a reproducible, resumable dataflow pipeline.
//!
//! The engine (crate `picie-engine`: spec, plan, exec, stage, store, artifact) runs a
//! pipeline file's DAG; its modules are re-exported here under the same names. This crate
//! adds PiCIE's stage kinds (`stages/`), its sections (`dataset:`, `device:`) and the
//! method itself (model, k-means, transforms, data sets, metrics).

pub mod analysis;
pub mod augment_params;
pub mod batch;
pub mod checkpoint;
pub mod cli;
pub mod data;
pub mod device;
pub mod kmeans;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod report;
pub mod sections;
pub mod synthetic;
pub mod tables;

#[path = "../stages/mod.rs"]
pub mod stages;
pub mod transforms;

pub use picie_engine::{artifact, context, diag, error, exec, plan, spec, stage, store};
pub use picie_engine::{Context, Item};

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

pub use picie_engine::{run, Error, Mode, ParamError, Plan, Port, Registry, RunOptions};
pub use picie_engine::{Stage, StageError, Store};
