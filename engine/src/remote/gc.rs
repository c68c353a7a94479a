//! gc on object storage, safe beside running runs.
//!
//! gc holds the lease `GC.json` (one gc at a time). It then reads the run records and the
//! live run leases, and deletes every artifact that no record names and no live run's lease
//! protects (a run's lease lists its plan's output keys): manifest first, so that the
//! artifact is gone at once, then its files. A run takes its lease first and then waits
//! while a gc holds `GC.json`; gc takes `GC.json` first and then reads the leases. So of a
//! run and a gc starting together, at least one sees the other: either gc keeps the run's
//! keys, or the run waits until gc is done (S3, GCS and Azure list and read what was
//! written before). Files without a manifest (an upload in progress, or one that died) go
//! only once older than [`ORPHAN_AGE`] and unprotected.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use tracing::info;

use super::check::split_object;
use super::client::Entry;
use super::{Remote, RemoteLease};
use crate::store::{GcReport, Store, StoreError, StoreLock};

/// The gc lease object, under the prefix.
pub(crate) const GC_LEASE: &str = "GC.json";

/// Files without a manifest younger than this may belong to a commit in progress.
const ORPHAN_AGE: Duration = Duration::from_secs(3600);

impl Store {
    /// Takes the store's gc lease, or says who holds it.
    pub(crate) fn remote_gc_lock(
        &self,
        remote: &Remote,
        what: &str,
    ) -> Result<StoreLock, StoreError> {
        match RemoteLease::acquire(&remote.client, GC_LEASE, what, remote.ttl, &[])? {
            Ok(lease) => Ok(StoreLock {
                _file: None,
                _lease: Some(lease),
            }),
            Err(holder) => Err(StoreError::Locked {
                root: self.location().to_path_buf(),
                holder,
            }),
        }
    }

    /// Waits while a gc holds the store (its lease live): a run calls this once its own
    /// lease is taken, before it looks at any artifact.
    pub(crate) fn wait_for_gc(&self, remote: &Remote) -> Result<(), StoreError> {
        let mut said = false;
        loop {
            let Some(got) = remote.client.get(GC_LEASE)? else {
                return Ok(());
            };
            match serde_json::from_slice::<super::LeaseBody>(&got.bytes) {
                Ok(body) if !body.expired() => {
                    if !said {
                        info!(
                            "{}: gc is running ({}); waiting for it",
                            remote.client.url,
                            body.describe()
                        );
                        said = true;
                    }
                    std::thread::sleep(self.poll_interval());
                }
                _ => return Ok(()),
            }
        }
    }

    pub(crate) fn gc_remote(
        &self,
        remote: &Remote,
        lock: &StoreLock,
        dry_run: bool,
    ) -> Result<GcReport, StoreError> {
        if lock._lease.is_none() {
            return Err(StoreError::Unsupported {
                location: self.location().to_path_buf(),
                message: "gc needs the store's gc lease (Store::lock)".into(),
            });
        }
        let c = &remote.client;
        let mut keep: HashSet<String> = self
            .run_records()?
            .into_iter()
            .flat_map(|r| r.nodes.into_iter().flat_map(|n| n.outputs.into_values()))
            .collect();
        let mut protected = HashSet::new();
        for (_, lease) in self.live_run_leases(remote)? {
            protected.extend(lease.protects);
        }
        keep.extend(protected.iter().cloned());

        // Every object under objects/, by artifact folder (a stray object is a folder of one).
        let mut folders: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
        for e in c.list_entries("objects/")? {
            let folder = match split_object(&e.rel) {
                Some((shard, key, _)) => format!("objects/{shard}/{key}"),
                None => e.rel.clone(),
            };
            folders.entry(folder).or_default().push(e);
        }
        let now = super::lease::now_ms() as i64;
        let mut report = GcReport::default();
        for (folder, files) in folders {
            let key = split_object(&format!("{folder}/x")).map(|(_, k, _)| k.to_string());
            let manifest = format!("{folder}/manifest.json");
            let published = key.is_some() && files.iter().any(|f| f.rel == manifest);
            if key.as_ref().is_some_and(|k| keep.contains(k)) {
                report.kept += 1;
                continue;
            }
            if !published {
                let young = files
                    .iter()
                    .any(|f| now - f.modified_ms < ORPHAN_AGE.as_millis() as i64);
                if young {
                    continue;
                }
                report.tmp_removed += 1;
            } else {
                report.removed += 1;
                report.bytes += files.iter().map(|f| f.size).sum::<u64>();
            }
            if dry_run {
                continue;
            }
            // The manifest first: the artifact is gone at once, never half there.
            if published {
                c.delete_listed(&manifest)?;
            }
            for f in files.iter().filter(|f| f.rel != manifest) {
                c.delete_listed(&f.rel)?;
            }
            if let Some(k) = &key {
                // This machine's cached copy would otherwise be published back.
                let _ = std::fs::remove_dir_all(self.object_dir(k));
            }
        }
        if !dry_run {
            self.clean_tmp()?;
        }
        if !protected.is_empty() {
            info!(
                "{}: kept {} artifact(s) of runs in progress",
                c.url,
                protected.len()
            );
        }
        Ok(report)
    }
}
