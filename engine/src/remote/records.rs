//! Run and sweep records and run leases on a remote store. Records are written through to
//! the remote and mirrored into the cache's runs/, where everything that reads records
//! (inspect, report, sweeps) finds them as in a local store.

use std::path::Path;
use std::time::Duration;

use super::{LeaseBody, Remote, RemoteLease};
use crate::store::{Store, StoreError};

/// The records mirrored from the remote: run records and sweep records.
const RECORDS: [&str; 2] = ["latest.json", "sweep.json"];

impl Store {
    /// Copies every run and sweep record of the remote into the cache's runs/.
    pub(crate) fn sync_records(&self, remote: &Remote) -> Result<(), StoreError> {
        for rel in remote.client.list("runs/")? {
            let parts: Vec<&str> = rel.split('/').collect();
            let [_, name, file] = parts[..] else {
                continue;
            };
            // Run names, and sharded workers' `NAME.shard-I-of-N`: nothing that climbs.
            let safe =
                name != ".." && name != "." && crate::spec::valid_name(&name.replace('.', "_"));
            if !RECORDS.contains(&file) || !safe {
                continue;
            }
            if let Some(got) = remote.client.get(&rel)? {
                let path = self.root().join(&rel);
                self.write_local(&path, &got.bytes)?;
            }
        }
        Ok(())
    }

    /// Uploads a record written under the cache's root to the same place on the remote.
    pub(crate) fn upload_record(&self, remote: &Remote, path: &Path) -> Result<(), StoreError> {
        let Ok(rel) = path.strip_prefix(self.root()) else {
            return Ok(());
        };
        let rel = rel.to_string_lossy().replace('\\', "/");
        remote.client.upload(path, &rel)
    }

    /// Run `name`'s lease on the remote (keeping `protects` from gc), or who holds it.
    pub(crate) fn remote_run_lease(
        &self,
        remote: &Remote,
        name: &str,
        what: &str,
        protects: &[String],
    ) -> Result<Result<RemoteLease, String>, StoreError> {
        RemoteLease::acquire(
            &remote.client,
            &format!("runs/{name}/RUNNING.json"),
            what,
            remote.ttl,
            protects,
        )
    }

    /// Node `key`'s claim on the remote, or who holds it.
    pub(crate) fn remote_claim(
        &self,
        remote: &Remote,
        key: &str,
        what: &str,
    ) -> Result<Result<RemoteLease, String>, StoreError> {
        RemoteLease::acquire(
            &remote.client,
            &format!("claims/{key}.json"),
            what,
            remote.ttl,
            &[],
        )
    }

    /// Runs whose lease is live: (name, who).
    pub(crate) fn running_remote(&self, remote: &Remote) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .live_run_leases(remote)
            .unwrap_or_default()
            .into_iter()
            .map(|(name, body)| (name, body.describe()))
            .collect();
        out.sort();
        out
    }

    /// The live run leases on the remote: (run name, lease).
    pub(crate) fn live_run_leases(
        &self,
        remote: &Remote,
    ) -> Result<Vec<(String, LeaseBody)>, StoreError> {
        let mut out = Vec::new();
        for rel in remote.client.list("runs/")? {
            let Some(name) = rel
                .strip_suffix("/RUNNING.json")
                .and_then(|p| p.strip_prefix("runs/"))
            else {
                continue;
            };
            let Some(got) = remote.client.get(&rel)? else {
                continue;
            };
            if let Ok(body) = serde_json::from_slice::<LeaseBody>(&got.bytes) {
                if !body.expired() {
                    out.push((name.to_string(), body));
                }
            }
        }
        Ok(out)
    }

    /// How often a run waiting for another run's node looks again: each look is a request
    /// or two on a remote store.
    pub fn poll_interval(&self) -> Duration {
        match &self.remote {
            None => Duration::from_millis(200),
            Some(_) => Duration::from_millis(500),
        }
    }
}
