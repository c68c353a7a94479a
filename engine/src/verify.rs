//! `picie verify`: every artifact that a run record names is in the store, and each of its
//! files has the size and BLAKE3 checksum its manifest records. On object storage the
//! store is read, never this machine's cache (files are streamed and hashed, not kept).

use std::collections::HashMap;

use crate::remote::{object_rel, plain};
use crate::store::{valid_key, Store, StoreError};

/// One artifact a record names that the store does not hold whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub run: String,
    pub node: String,
    pub output: String,
    pub key: String,
    pub problem: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "run `{}`: {}.{} ({}): {}",
            self.run, self.node, self.output, self.key, self.problem
        )
    }
}

/// What `verify` looked at and found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    pub records: usize,
    /// Distinct artifacts checked.
    pub artifacts: usize,
    pub findings: Vec<Finding>,
}

impl Store {
    /// Checks every artifact every run record names (each once): present, and every file
    /// at its manifest's size and checksum. An error is the store failing, not a finding.
    pub fn verify_records(&self) -> Result<VerifyReport, StoreError> {
        let records = self.run_records()?;
        let mut checked: HashMap<String, Option<String>> = HashMap::new();
        let mut report = VerifyReport {
            records: records.len(),
            ..Default::default()
        };
        for r in &records {
            for n in &r.nodes {
                for (output, key) in &n.outputs {
                    let problem = match checked.get(key) {
                        Some(p) => p.clone(),
                        None => {
                            let p = self.check_artifact(key)?;
                            checked.insert(key.clone(), p.clone());
                            p
                        }
                    };
                    if let Some(problem) = problem {
                        report.findings.push(Finding {
                            run: r.name.clone(),
                            node: n.name.clone(),
                            output: output.clone(),
                            key: key.clone(),
                            problem,
                        });
                    }
                }
            }
        }
        report.artifacts = checked.len();
        Ok(report)
    }

    /// What is wrong with artifact `key` in the store, if anything.
    fn check_artifact(&self, key: &str) -> Result<Option<String>, StoreError> {
        if !valid_key(key) {
            return Ok(Some("not an artifact key".into()));
        }
        let Some(remote) = &self.remote else {
            let dir = self.object_dir(key);
            if !dir.join("manifest.json").is_file() {
                return Ok(Some(format!(
                    "missing ({} has no manifest.json)",
                    dir.display()
                )));
            }
            return Ok(self.verify(&dir, key).err());
        };
        let c = &remote.client;
        let Some(got) = c.get(&object_rel(key, "manifest.json"))? else {
            return Ok(Some("missing from the store (no manifest.json)".into()));
        };
        let manifest: crate::artifact::Manifest = match serde_json::from_slice(&got.bytes) {
            Ok(m) => m,
            Err(e) => return Ok(Some(format!("manifest.json: {e}"))),
        };
        if manifest.key != key {
            return Ok(Some(format!("manifest.json names key `{}`", manifest.key)));
        }
        for f in &manifest.files {
            if !plain(&f.name) {
                return Ok(Some(format!("manifest.json names file `{}`", f.name)));
            }
            let Some((len, sum)) = c.checksum(&object_rel(key, &f.name))? else {
                return Ok(Some(format!("{} is missing", f.name)));
            };
            if let Err(problem) = f.check(len, Some(&sum)) {
                return Ok(Some(problem));
            }
        }
        Ok(None)
    }
}
