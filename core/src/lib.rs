//! PiCIE (Cho et al., CVPR 2021) as a library, without any pipeline engine or storage
//! format: the network (`model`), k-means and the release's label rule (`kmeans`), the
//! loss and cluster weights (`loss`), augmentation draws (`augment_params`) and the image
//! transforms that apply them (`transforms`), data sets (`data`), and evaluation
//! (`metrics`). `../shared/reference/picie.md` states the algorithm as released; release
//! quirks stay behind named switches.

pub mod augment_params;
pub mod data;
pub mod device;
pub mod kmeans;
pub mod loss;
pub mod metrics;
pub mod model;
pub mod predict;
pub mod transforms;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The repository's root (this crate's parent folder): the venv, the Python reference
/// scripts and `../shared` are found from it.
pub fn repo_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The Python that reads `.pth` files and serves as the tests' numerical oracle:
/// `PICIE_PYTHON`, else the project venv that `scripts/setup.sh` makes (`PICIE_VENV`,
/// default `.venv`, relative to the repository root).
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("PICIE_PYTHON") {
        return p.into();
    }
    let venv = std::env::var_os("PICIE_VENV").map_or_else(|| PathBuf::from(".venv"), PathBuf::from);
    repo_root().join(venv).join("bin/python")
}

/// For tests: runs a reference script of `tests/python/` with the oracle Python. `None`
/// (after saying SKIP and why) when that Python or its packages are absent (exit status 77);
/// panics with the script's stderr when it fails.
pub fn run_oracle<I, S>(test: &str, script: &str, args: I) -> Option<std::process::Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let py = python();
    let path = repo_root().join("tests/python").join(script);
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

/// For tests: the largest |a - b| over all elements, computed in f64. Panics when the shapes
/// differ.
pub fn max_abs_diff(a: &tch::Tensor, b: &tch::Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a.to_kind(tch::Kind::Double) - b.to_kind(tch::Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

/// For tests: a safetensors file's tensors by name (an oracle's output). Panics naming the
/// file when it cannot be read.
pub fn read_tensors(path: &Path) -> HashMap<String, tch::Tensor> {
    tch::Tensor::read_safetensors(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .collect()
}
