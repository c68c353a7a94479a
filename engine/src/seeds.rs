//! Multi-seed sweeps: one pipeline run once per seed.
//!
//! ```text
//! STORE/runs/NAME-seedN/latest.json   each seed's run, an ordinary run record
//! STORE/runs/NAME-seeds/sweep.json    the sweep: its seeds and member runs, in order
//! ```
//! Each member is the pipeline with `seed: N` under the name `NAME-seedN` (see
//! [`crate::Plan::with_seed`]): its keys are those a single run with `seed: N` has, so a
//! sweep reuses such runs, and nodes that do not depend on the seed are shared by all.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::store::{Store, StoreError};

/// The run name of one seed of a sweep.
pub fn member_name(name: &str, seed: u64) -> String {
    format!("{name}-seed{seed}")
}

/// The name a sweep is recorded under.
pub fn sweep_name(name: &str) -> String {
    format!("{name}-seeds")
}

/// What a sweep ran: written after its last member finished.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SweepRecord {
    /// The sweep's name ([`sweep_name`] of the pipeline's `name`).
    pub name: String,
    pub pipeline: PathBuf,
    pub seeds: Vec<u64>,
    /// The member runs, one per seed, in the order of `seeds`.
    pub runs: Vec<String>,
    pub finished: String,
}

impl SweepRecord {
    pub fn new(name: &str, pipeline: &Path, seeds: &[u64]) -> Self {
        Self {
            name: sweep_name(name),
            pipeline: pipeline.to_path_buf(),
            seeds: seeds.to_vec(),
            runs: seeds.iter().map(|&s| member_name(name, s)).collect(),
            finished: crate::store::now(),
        }
    }
}

impl Store {
    /// The folder of a sweep's record and of what is derived from its members.
    pub fn sweep_dir(&self, sweep: &str) -> PathBuf {
        self.root().join("runs").join(sweep)
    }

    pub fn write_sweep_record(&self, record: &SweepRecord) -> Result<PathBuf, StoreError> {
        let dir = self.sweep_dir(&record.name);
        let path = dir.join("sweep.json");
        let text = serde_json::to_string_pretty(record).expect("sweep record serialises");
        self.write_atomic(&path, text.as_bytes())?;
        Ok(path)
    }

    /// The sweep recorded under `sweep`, if any.
    pub fn sweep_record(&self, sweep: &str) -> Result<Option<SweepRecord>, StoreError> {
        let path = self.sweep_dir(sweep).join("sweep.json");
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| StoreError::Bad {
                    path,
                    message: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Io {
                root: self.root().to_path_buf(),
                path,
                source: e,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.sweep_record("x-seeds").unwrap(), None);
        let rec = SweepRecord::new("x", Path::new("p.yaml"), &[2, 0]);
        assert_eq!(rec.runs, ["x-seed2", "x-seed0"]);
        store.write_sweep_record(&rec).unwrap();
        assert_eq!(store.sweep_record("x-seeds").unwrap(), Some(rec));
        // A sweep is not a run: gc and run listings read only latest.json.
        assert!(store.run_records().unwrap().is_empty());
    }
}
