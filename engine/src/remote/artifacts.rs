//! Artifacts between the remote and the local cache: fetched into the cache verified,
//! published with the manifest last.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use object_store::PutMode;
use tracing::warn;

use super::client::Put;
use super::{object_rel, Remote};
use crate::artifact::{Artifact, Manifest};
use crate::store::{Listed, Lookup, Store, StoreError};

/// Whose artifact ended up under a key.
pub(crate) enum Published {
    Ours,
    /// Another writer published it first; it is kept, verified, in the cache.
    Theirs(Box<Artifact>),
}

impl Store {
    /// Downloads artifact `key` into the cache: every file into a private folder, checked
    /// against the manifest's sizes and checksums, then renamed into the cache's objects/.
    pub(crate) fn fetch(&self, remote: &Remote, key: &str) -> Result<Lookup, StoreError> {
        let c = &remote.client;
        let Some(got) = c.get(&object_rel(key, "manifest.json"))? else {
            return Ok(Lookup::Missing);
        };
        let manifest: Manifest = match serde_json::from_slice(&got.bytes) {
            Ok(m) => m,
            Err(e) => return Ok(Lookup::Corrupt(format!("manifest.json: {e}"))),
        };
        if manifest.key != key {
            return Ok(Lookup::Corrupt(format!(
                "manifest.json names key {}",
                manifest.key
            )));
        }
        // A file name must stay inside the artifact's folder.
        if let Some(f) = manifest.files.iter().find(|f| !plain(&f.name)) {
            return Ok(Lookup::Corrupt(format!(
                "manifest.json names file `{}`",
                f.name
            )));
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let dir = self.scratch()?.join(format!("{key}.fetch.{n}"));
        fs::create_dir_all(&dir).map_err(|e| self.io_err(&dir, e))?;
        let r = self.download_into(remote, &manifest, &got.bytes, &dir);
        match r {
            Ok(None) => {}
            Ok(Some(why)) => {
                let _ = fs::remove_dir_all(&dir);
                return Ok(Lookup::Corrupt(why));
            }
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                return Err(e);
            }
        }
        let target = self.object_dir(key);
        let parent = target.parent().expect("object dirs have a parent");
        let _g = self.commit_lock.lock().unwrap_or_else(|p| p.into_inner());
        fs::create_dir_all(parent).map_err(|e| self.io_err(parent, e))?;
        if target.exists() {
            // Another thread or process sharing this cache got it first.
            if let Ok(a) = self.verify(&target, key) {
                let _ = fs::remove_dir_all(&dir);
                return Ok(Lookup::Valid(Box::new(a)));
            }
            let _ = fs::remove_dir_all(&target);
        }
        if let Err(e) = fs::rename(&dir, &target) {
            let _ = fs::remove_dir_all(&dir);
            return match self.verify(&target, key) {
                Ok(a) => Ok(Lookup::Valid(Box::new(a))),
                Err(_) => Err(self.io_err(&target, e)),
            };
        }
        Ok(Lookup::Valid(Box::new(Artifact {
            dir: target,
            manifest,
        })))
    }

    /// The files of `manifest` into `dir`, then the manifest: `Some(why)` when a file is
    /// missing or does not match.
    fn download_into(
        &self,
        remote: &Remote,
        manifest: &Manifest,
        manifest_bytes: &[u8],
        dir: &Path,
    ) -> Result<Option<String>, StoreError> {
        let key = &manifest.key;
        for f in &manifest.files {
            let p = dir.join(&f.name);
            let Some((len, sum)) = remote.client.download(&object_rel(key, &f.name), &p)? else {
                return Ok(Some(format!("{} is missing from the object store", f.name)));
            };
            if let Err(problem) = f.check(len, Some(&sum)) {
                return Ok(Some(problem));
            }
        }
        let m = dir.join("manifest.json");
        crate::store::write_synced(&m, manifest_bytes).map_err(|e| self.io_err(&m, e))?;
        Ok(None)
    }

    /// Uploads a finished artifact folder (`dir`, its manifest written) and then publishes
    /// its manifest: created only if absent, unless `replace` (a forced run). When another
    /// writer published first, theirs is kept if it verifies; one that does not is replaced.
    pub(crate) fn publish(
        &self,
        remote: &Remote,
        dir: &Path,
        manifest: &Manifest,
        manifest_bytes: &[u8],
        replace: bool,
    ) -> Result<Published, StoreError> {
        let c = &remote.client;
        let key = &manifest.key;
        let mrel = object_rel(key, "manifest.json");
        // Published while we computed: leave its files alone (a reader may be fetching them).
        if !replace && c.exists(&mrel)? {
            return self.keep_theirs(remote, dir, manifest, manifest_bytes);
        }
        for f in &manifest.files {
            c.upload(&dir.join(&f.name), &object_rel(key, &f.name))?;
        }
        let mode = if replace {
            PutMode::Overwrite
        } else {
            PutMode::Create
        };
        match c.put(&mrel, manifest_bytes.to_vec(), mode)? {
            Put::Done { .. } => Ok(Published::Ours),
            Put::Exists | Put::Changed => self.keep_theirs(remote, dir, manifest, manifest_bytes),
        }
    }

    fn keep_theirs(
        &self,
        remote: &Remote,
        dir: &Path,
        manifest: &Manifest,
        manifest_bytes: &[u8],
    ) -> Result<Published, StoreError> {
        match self.fetch(remote, &manifest.key)? {
            Lookup::Valid(a) => Ok(Published::Theirs(a)),
            other => {
                warn!(
                    "{}: the artifact {} another run published is unusable ({other:?}); replacing it",
                    remote.client.url, manifest.key
                );
                self.publish(remote, dir, manifest, manifest_bytes, true)
            }
        }
    }

    /// Deletes an artifact from the remote: its manifest first, so that it is gone at once.
    pub(crate) fn remove_remote(&self, remote: &Remote, key: &str) -> Result<(), StoreError> {
        let c = &remote.client;
        self.check_key(key)?;
        c.delete(&object_rel(key, "manifest.json"))?;
        for rel in c.list(&object_rel(key, ""))? {
            c.delete(&rel)?;
        }
        Ok(())
    }

    /// Every published artifact's manifest (files without a manifest are no artifact).
    pub(crate) fn list_remote(&self, remote: &Remote) -> Result<Vec<Listed>, StoreError> {
        let c = &remote.client;
        let mut out = Vec::new();
        for rel in c.list("objects/")? {
            let Some(folder) = rel.strip_suffix("/manifest.json") else {
                continue;
            };
            // Only `objects/ab/KEY/manifest.json` names an artifact; anything else is
            // reported by its path, never sliced.
            let (shard, key) = match folder.split('/').collect::<Vec<_>>()[..] {
                [_, shard, key] => (shard, key),
                _ => ("", ""),
            };
            if !crate::store::valid_key(key) || shard != crate::store::shard_of(key) {
                out.push(Err((
                    PathBuf::from(format!("{}/{rel}", c.url)),
                    "not an artifact's manifest (its folder is not a key)".into(),
                )));
                continue;
            }
            let dir = self.object_dir(key);
            let got = c.get(&rel)?;
            out.push(
                match got.map(|g| serde_json::from_slice::<Manifest>(&g.bytes)) {
                    Some(Ok(manifest)) if manifest.key == key => Ok(Artifact { dir, manifest }),
                    Some(Ok(manifest)) => {
                        Err((dir, format!("manifest.json names key `{}`", manifest.key)))
                    }
                    Some(Err(e)) => Err((dir, format!("manifest.json: {e}"))),
                    None => continue,
                },
            );
        }
        Ok(out)
    }
}

/// A file name without separators or dots that climb.
pub(crate) fn plain(name: &str) -> bool {
    !name.is_empty() && !name.contains(['/', '\\']) && name != "." && name != ".."
}
