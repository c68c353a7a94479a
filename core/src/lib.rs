//! PiCIE (Cho et al., CVPR 2021) as a library, without any pipeline engine or storage
//! format: the network (`model`), k-means and the release's label rule (`kmeans`), the
//! loss and cluster weights (`loss`), augmentation draws (`augment_params`) and the image
//! transforms that apply them (`transforms`), data sets (`data`), and evaluation
//! (`metrics`). `../shared/reference/picie.md` states the algorithm as released; release
//! quirks stay behind named switches.

pub mod augment_params;
pub mod crf;
pub mod data;
pub mod device;
pub mod kmeans;
pub mod knn;
pub mod loss;
pub mod metrics;
pub mod model;
pub mod predict;
pub mod stego;
pub mod transforms;

#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(any(test, feature = "testing"))]
pub use testing::{max_abs_diff, read_tensors, run_oracle};

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
