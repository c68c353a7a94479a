//! Test helpers for this crate's tests and its dependents' (feature `testing`): the Python
//! oracles and tensor comparisons. They panic on what a test should fail on; none of this is
//! compiled into picie itself.

use std::collections::HashMap;
use std::path::Path;

use crate::{python, repo_root};

/// Runs a reference script of `tests/python/` with the oracle Python. `None` when that
/// Python or its packages are absent (the script's exit status 77), after recording the skip
/// (`picie_testkit::skip_setup`: a failure under CI, whose set-up installs the oracle venv);
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
            picie_testkit::skip_setup(format!(
                "oracle venv: cannot run {} for {test}: {e} (run scripts/setup.sh)",
                py.display()
            ));
            return None;
        }
    };
    if out.status.code() == Some(77) {
        picie_testkit::skip_setup(format!(
            "oracle venv: {test}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
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

/// The largest |a - b| over all elements, computed in f64. Panics when the shapes differ.
pub fn max_abs_diff(a: &tch::Tensor, b: &tch::Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a.to_kind(tch::Kind::Double) - b.to_kind(tch::Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

/// A safetensors file's tensors by name (an oracle's output). Panics naming the file when it
/// cannot be read.
pub fn read_tensors(path: &Path) -> HashMap<String, tch::Tensor> {
    tch::Tensor::read_safetensors(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .collect()
}
