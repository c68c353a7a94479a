//! The cache rule: a remote store's local cache saves downloads, it never stands in for the
//! store. A cached artifact counts only once the store is seen to hold it: its folder is
//! listed (one request per artifact, many in flight at once) and must hold the manifest
//! and every file at the manifest's size. What the store lacks is put back from the
//! verified cached copy, as any commit puts it (files, then the conditional create of the
//! manifest); what cannot be put back is recomputed. Each case is logged per artifact.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;

use tracing::{info, warn};

use super::{object_rel, Published, Remote};
use crate::artifact::{Artifact, FileEntry, Manifest};
use crate::store::{shard_of, valid_key, Lookup, Store, StoreError};

/// What the store holds of an artifact: its files by name with their sizes (the manifest
/// among them), or `None` when it has no manifest there (files alone are no artifact).
pub(crate) type Held = Option<BTreeMap<String, u64>>;

/// What the store holds of each of a batch of keys.
pub(crate) type Inventory = HashMap<String, Held>;

impl Store {
    /// What the store holds of those of `keys` that this machine has cached (for the others
    /// a lookup reads the manifest from the store anyway), in one batch of concurrent
    /// listings; `None` for a local store.
    pub(crate) fn remote_inventory(
        &self,
        keys: &[String],
    ) -> Result<Option<Inventory>, StoreError> {
        let Some(remote) = &self.remote else {
            return Ok(None);
        };
        let cached: Vec<String> = keys
            .iter()
            .filter(|k| valid_key(k) && self.object_dir(k).is_dir())
            .cloned()
            .collect();
        self.remote_inventory_of(remote, &cached).map(Some)
    }

    /// What the store holds of each of `keys` (valid keys), listed concurrently.
    pub(crate) fn remote_inventory_of(
        &self,
        remote: &Remote,
        keys: &[String],
    ) -> Result<Inventory, StoreError> {
        let folders: Vec<String> = keys.iter().map(|k| object_rel(k, "")).collect();
        let lists = remote.client.list_many(&folders)?;
        Ok(keys
            .iter()
            .zip(folders.iter().zip(lists))
            .map(|(k, (folder, entries))| {
                let files: BTreeMap<String, u64> = entries
                    .into_iter()
                    .filter_map(|e| {
                        e.rel
                            .strip_prefix(folder.as_str())
                            .map(|n| (n.to_string(), e.size))
                    })
                    .collect();
                let held = files.contains_key("manifest.json").then_some(files);
                (k.clone(), held)
            })
            .collect())
    }

    /// A verified cached artifact `a`, checked against what the store holds of it (`held`):
    /// valid when the store holds it whole; published back when the store has no manifest;
    /// its lost files uploaded again when the store's manifest is the cache's; the store's
    /// copy taken instead when it is another writer's, whole; else reported corrupt (the
    /// cached copy dropped), so that it is recomputed. Without `write` (a plan), nothing
    /// is changed and a copy the store does not hold whole is missing.
    pub(crate) fn check_cached(
        &self,
        remote: &Remote,
        a: Artifact,
        held: Option<&BTreeMap<String, u64>>,
        write: bool,
    ) -> Result<Lookup, StoreError> {
        let url = &remote.client.url;
        let m = &a.manifest;
        let what = format!("artifact {} ({}.{})", m.key, m.node, m.output);
        let whole = held.is_some_and(|h| m.files.iter().all(|f| h.get(&f.name) == Some(&f.bytes)));
        if !write && !whole {
            return Ok(Lookup::Missing);
        }
        let Some(held) = held else {
            info!(
                "{url}: {what} is in this machine's cache but not in the store: publishing it back"
            );
            return self.publish_back(remote, a);
        };
        let lacking: Vec<&FileEntry> = m
            .files
            .iter()
            .filter(|f| held.get(&f.name) != Some(&f.bytes))
            .collect();
        if lacking.is_empty() {
            return Ok(Lookup::Valid(Box::new(a)));
        }
        let names = lacking
            .iter()
            .map(|f| f.name.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let theirs = match remote.client.get(&object_rel(&m.key, "manifest.json"))? {
            // Deleted since the listing.
            None => {
                info!("{url}: {what} is in this machine's cache but not in the store: publishing it back");
                return self.publish_back(remote, a);
            }
            Some(g) => serde_json::from_slice::<Manifest>(&g.bytes).ok(),
        };
        match theirs {
            Some(t) if t.files == m.files => {
                info!("{url}: {what}: the store lacks {names}; uploading them from this machine's cache");
                for f in lacking {
                    remote
                        .client
                        .upload(&a.dir.join(&f.name), &object_rel(&m.key, &f.name))?;
                }
                Ok(Lookup::Valid(Box::new(a)))
            }
            Some(t) if t.files.iter().all(|f| held.get(&f.name) == Some(&f.bytes)) => {
                info!("{url}: {what}: the store holds another writer's copy; it replaces this machine's cached one");
                let key = m.key.clone();
                let _ = fs::remove_dir_all(&a.dir);
                self.fetch(remote, &key)
            }
            _ => {
                info!("{url}: {what}: the store's copy lacks {names} and is not this machine's; it will be recomputed");
                let _ = fs::remove_dir_all(&a.dir);
                Ok(Lookup::Corrupt(format!(
                    "the store's copy lacks {names} (or has them at other sizes)"
                )))
            }
        }
    }

    /// Publishes a verified cached artifact to the store as a commit does.
    fn publish_back(&self, remote: &Remote, a: Artifact) -> Result<Lookup, StoreError> {
        let mpath = a.dir.join("manifest.json");
        let bytes = fs::read(&mpath).map_err(|e| self.io_err(&mpath, e))?;
        match self.publish(remote, &a.dir, &a.manifest, &bytes, false)? {
            Published::Ours => Ok(Lookup::Valid(Box::new(a))),
            Published::Theirs(t) => Ok(Lookup::Valid(t)),
        }
    }

    /// Which of `keys` the store holds now, for a run record, which names only those.
    /// Keys marked `true` (what a run computed or read) that the store lacks are put back
    /// from this machine's verified cache where it has them (see [`Store::check_cached`]).
    pub fn confirm(&self, keys: &[(String, bool)]) -> Result<HashSet<String>, StoreError> {
        let Some(remote) = &self.remote else {
            return Ok(keys
                .iter()
                .filter(|(k, _)| valid_key(k) && self.object_dir(k).join("manifest.json").is_file())
                .map(|(k, _)| k.clone())
                .collect());
        };
        let valid: Vec<String> = keys
            .iter()
            .map(|(k, _)| k.clone())
            .filter(|k| valid_key(k))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let inventory = self.remote_inventory_of(remote, &valid)?;
        let mut present = HashSet::new();
        for (key, must) in keys {
            let Some(held) = inventory.get(key) else {
                continue;
            };
            if present.contains(key) {
                continue;
            }
            // The cached manifest says which files the store must hold.
            let dir = self.object_dir(key);
            let cached: Option<Manifest> = fs::read(dir.join("manifest.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            let whole = match (held, &cached) {
                (Some(h), Some(m)) => m.files.iter().all(|f| h.get(&f.name) == Some(&f.bytes)),
                (Some(_), None) => true,
                (None, _) => false,
            };
            if whole {
                present.insert(key.clone());
                continue;
            }
            if !*must || cached.is_none() {
                continue;
            }
            match self.verify(&dir, key) {
                Ok(a) => {
                    if let Lookup::Valid(_) = self.check_cached(remote, a, held.as_ref(), true)? {
                        present.insert(key.clone());
                    }
                }
                Err(why) => warn!(
                    "{}: artifact {key} is missing from the store and its cached copy is corrupt ({why})",
                    remote.client.url
                ),
            }
        }
        Ok(present)
    }
}

/// `objects/ab/KEY` of a listed path, when it is one: (shard, key, file name).
pub(crate) fn split_object(rel: &str) -> Option<(&str, &str, &str)> {
    let mut parts = rel.splitn(4, '/');
    let (Some("objects"), Some(shard), Some(key), Some(name)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    (valid_key(key) && shard == shard_of(key)).then_some((shard, key, name))
}
