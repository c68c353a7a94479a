//! The content-addressed artifact store.
//!
//! ```text
//! STORE/LOCK                      shared by runs, exclusive for gc (see crate::lease)
//! STORE/objects/ab/abcd…/         one committed artifact: its files + manifest.json
//! STORE/tmp/                      artifacts being written (cleaned at the next run)
//! STORE/runs/NAME/latest.json     what a run's nodes map to, for gc, inspect and report
//! STORE/runs/NAME-seeds/          a multi-seed sweep (see crate::seeds)
//! ```
//! A commit writes into tmp/, fsyncs every file and the manifest, then renames the folder
//! into objects/: a crash leaves either the old state or the new one, never half of it.
//!
//! A store may also live on object storage (`s3://`, `gs://` or `az://bucket/prefix`): the folder
//! above is then its local cache, and [`crate::remote`] says what lives where and how
//! commits and leases work there.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::artifact::{Artifact, ArtifactWriter, FileEntry, Format, Manifest};
use crate::remote::{Location, Remote, RemoteOptions};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("artifact store {root}: I/O error on {path}: {source}")]
    Io {
        root: PathBuf,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("artifact store {root} is in use ({holder}); wait for it to finish")]
    Locked { root: PathBuf, holder: String },
    #[error(
        "run `{name}` is already running ({holder}); wait for it, or give this one another `name:`"
    )]
    RunInProgress { name: String, holder: String },
    #[error("no artifact in {root} has a key starting with `{prefix}`")]
    NotFound { root: PathBuf, prefix: String },
    #[error("`{prefix}` matches {count} artifacts in {root}; give more of the key")]
    Ambiguous {
        root: PathBuf,
        prefix: String,
        count: usize,
    },
    #[error("{path}: {message}")]
    Bad { path: PathBuf, message: String },
    /// A remote store failed or refused a request (unreachable, missing bucket, denied).
    #[error("artifact store {url}: {message}")]
    Remote { url: String, message: String },
    #[error("artifact store {location}: {message}")]
    Unsupported { location: PathBuf, message: String },
    /// A key read from a record, a listing or the command line that cannot name an artifact.
    #[error("artifact store {root}: `{key}` is not an artifact key (keys are 2 or more ASCII letters and digits)")]
    BadKey { root: PathBuf, key: String },
}

/// What a lookup found under a key.
#[derive(Debug)]
pub enum Lookup {
    Valid(Box<Artifact>),
    Missing,
    /// Present but unusable (truncated, altered, unreadable manifest): the reason.
    Corrupt(String),
}

/// A listed artifact, or its folder and why its manifest could not be read.
pub type Listed = Result<Artifact, (PathBuf, String)>;

pub struct Store {
    /// The local folder: the store itself, or a remote store's cache.
    root: PathBuf,
    /// What errors name: the folder, or the remote store's URL.
    location: PathBuf,
    pub(crate) remote: Option<Remote>,
    pub(crate) commit_lock: Mutex<()>,
    pub(crate) counter: AtomicU64,
    /// This process's folder under tmp/ and the lock that marks it live (see `lease`).
    pub(crate) scratch: Mutex<Option<(PathBuf, File)>>,
    /// A remote store's stand-in cache when its cache folder is not writable: removed on drop.
    _temp_cache: Option<tempfile::TempDir>,
}

/// Exclusive use of a store for gc: on a folder, its LOCK held exclusively (released on
/// drop or when the process dies); on object storage, the `GC.json` lease object.
pub struct StoreLock {
    pub(crate) _file: Option<File>,
    pub(crate) _lease: Option<crate::remote::RemoteLease>,
}

/// Whether `key` can name an artifact: 2 or more ASCII letters and digits (the first two
/// name its folder). Keys read back from a store, a record or a user are checked with it
/// before they become paths.
pub fn valid_key(key: &str) -> bool {
    key.len() >= 2 && key.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// The folder (`ab`) of a key under objects/: `__` for a key that is not valid, which no
/// lookup uses (they check first), so that no path is ever built by slicing into a char.
pub(crate) fn shard_of(key: &str) -> &str {
    match key.get(..2) {
        Some(s) if valid_key(key) => s,
        _ => "__",
    }
}

impl Store {
    /// Opens (creating) the store at `root`: a folder, `file://DIR`, or `s3://`, `gs://`, `az://bucket/prefix`
    /// with the endpoint and credentials from the environment (see [`crate::remote`]).
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        Self::open_with(root, &RemoteOptions::default())
    }

    /// [`Store::open`] with a remote store's cache folder, lease ttl or S3 settings given.
    pub fn open_with(root: &Path, opts: &RemoteOptions) -> Result<Self, StoreError> {
        let location = Location::of_path(root).map_err(|message| StoreError::Unsupported {
            location: root.to_path_buf(),
            message,
        })?;
        let (dir, remote, location, temp) = match location {
            Location::Local(dir) => (dir.clone(), None, dir, None),
            Location::Remote {
                url,
                bucket,
                prefix,
            } => {
                // Probed first: a store that cannot be opened fails before any node runs.
                let remote = Remote::open(&url, &bucket, &prefix, opts)?;
                let cache = opts
                    .cache
                    .clone()
                    .unwrap_or_else(|| crate::remote::cache_dir(&url));
                let (cache, temp) = usable_cache(cache, &url)?;
                (cache, Some(remote), PathBuf::from(url), temp)
            }
        };
        let store = Self {
            root: dir,
            location,
            remote,
            commit_lock: Mutex::new(()),
            counter: AtomicU64::new(0),
            scratch: Mutex::new(None),
            _temp_cache: temp,
        };
        if store.remote.is_none() {
            for d in ["objects", "tmp", "runs"] {
                let p = store.root.join(d);
                fs::create_dir_all(&p).map_err(|e| store.io(&p, e))?;
            }
        }
        if let Some(remote) = &store.remote {
            // For whoever wonders what a cache folder is for.
            let _ = fs::write(store.root.join("URL"), format!("{}\n", remote.client.url));
            store.sync_records(remote)?;
        }
        Ok(store)
    }

    /// Whether `root` may name a store to read from (inspect, report, ls): a folder with
    /// objects/ and runs/, or a URL (probed, or refused with why, when opened).
    pub fn exists(root: &Path) -> bool {
        match Location::of_path(root) {
            Ok(Location::Local(dir)) => dir.join("objects").is_dir() && dir.join("runs").is_dir(),
            Ok(Location::Remote { .. }) | Err(_) => true,
        }
    }

    /// The local folder: the store itself, or a remote store's cache (laid out alike).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The store as its user named it: its folder, or its URL (`s3://bucket/prefix`, ...).
    pub fn location(&self) -> &Path {
        &self.location
    }

    pub fn is_remote(&self) -> bool {
        self.remote.is_some()
    }

    pub(crate) fn io_err(&self, path: &Path, source: std::io::Error) -> StoreError {
        self.io(path, source)
    }

    fn io(&self, path: &Path, source: std::io::Error) -> StoreError {
        StoreError::Io {
            root: self.location.clone(),
            path: path.to_path_buf(),
            source,
        }
    }

    pub fn object_dir(&self, key: &str) -> PathBuf {
        self.root.join("objects").join(shard_of(key)).join(key)
    }

    /// `key`, or the error saying it cannot name an artifact.
    pub(crate) fn check_key(&self, key: &str) -> Result<(), StoreError> {
        if valid_key(key) {
            Ok(())
        } else {
            Err(StoreError::BadKey {
                root: self.location.clone(),
                key: key.to_string(),
            })
        }
    }

    /// Finds an artifact and verifies every file against its manifest checksum. A remote
    /// store that cannot be read is reported as corrupt, with why; [`Store::try_lookup`]
    /// tells that apart.
    pub fn lookup(&self, key: &str) -> Lookup {
        self.try_lookup(key)
            .unwrap_or_else(|e| Lookup::Corrupt(e.to_string()))
    }

    /// Finds an artifact, verified: in the folder, or for a remote store in its cache,
    /// else downloaded from the remote into the cache (once per machine). On a remote store
    /// a cached copy counts only once the store is seen to hold it (one listing of its
    /// folder); one the store lacks is published back (see [`crate::remote`]). An error is
    /// the remote failing, or a key that cannot name an artifact.
    pub fn try_lookup(&self, key: &str) -> Result<Lookup, StoreError> {
        self.lookup_in(key, None, true)
    }

    /// [`Store::try_lookup`], with what the remote holds of `key` when a batch listing of
    /// it was done already (`inventory`, see [`Store::remote_inventory`]). Without
    /// `write`, what the store lacks is not put back: the cached copy counts as missing.
    pub(crate) fn lookup_in(
        &self,
        key: &str,
        inventory: Option<&crate::remote::Inventory>,
        write: bool,
    ) -> Result<Lookup, StoreError> {
        self.check_key(key)?;
        let dir = self.object_dir(key);
        if dir.exists() {
            match (self.verify(&dir, key), &self.remote) {
                (Ok(a), None) => return Ok(Lookup::Valid(Box::new(a))),
                (Ok(a), Some(remote)) => {
                    // The cache saves downloads; the store decides what exists.
                    let held = match inventory.and_then(|inv| inv.get(key)) {
                        Some(h) => h.clone(),
                        None => self
                            .remote_inventory_of(remote, &[key.to_string()])?
                            .remove(key)
                            .flatten(),
                    };
                    return self.check_cached(remote, a, held.as_ref(), write);
                }
                (Err(reason), None) => return Ok(Lookup::Corrupt(reason)),
                (Err(reason), Some(_)) => {
                    // Only the cached copy is bad: fetch the artifact again.
                    warn!("cached copy of artifact {key} is corrupt ({reason}); fetching it again");
                    let _ = fs::remove_dir_all(&dir);
                }
            }
        }
        match &self.remote {
            None => Ok(Lookup::Missing),
            Some(remote) => self.fetch(remote, key),
        }
    }

    pub(crate) fn verify(&self, dir: &Path, key: &str) -> Result<Artifact, String> {
        let mpath = dir.join("manifest.json");
        let text = fs::read_to_string(&mpath).map_err(|e| format!("manifest.json: {e}"))?;
        let manifest: Manifest =
            serde_json::from_str(&text).map_err(|e| format!("manifest.json: {e}"))?;
        if manifest.key != key {
            return Err(format!("manifest.json names key {}", manifest.key));
        }
        for f in &manifest.files {
            let p = dir.join(&f.name);
            let len = fs::metadata(&p)
                .map_err(|e| format!("{}: {e}", f.name))?
                .len();
            // The size first: a truncated file is told without reading it.
            f.check(len, None)?;
            let sum = checksum(&p).map_err(|e| format!("{}: {e}", f.name))?;
            f.check(len, Some(&sum))?;
        }
        Ok(Artifact {
            dir: dir.to_path_buf(),
            manifest,
        })
    }

    /// A writer for a new artifact, in a private folder under tmp/.
    pub fn begin(&self, key: &str) -> Result<ArtifactWriter, StoreError> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let dir = self.scratch()?.join(format!("{key}.{n}"));
        fs::create_dir_all(&dir).map_err(|e| self.io(&dir, e))?;
        Ok(ArtifactWriter::new(dir))
    }

    /// Checksums, fsyncs and renames a finished writer into place. An artifact already
    /// under the key is replaced (only after the new one is complete on disk) when `replace`
    /// (a forced re-run) or when it is not valid; a valid one is otherwise kept and the new
    /// files dropped: the key says they hold the same result, and another run may be
    /// reading it.
    pub fn commit(
        &self,
        mut writer: ArtifactWriter,
        mut manifest: Manifest,
        replace: bool,
    ) -> Result<Artifact, crate::error::StageError> {
        writer.finish()?;
        if !replace {
            if let Lookup::Valid(existing) = self.try_lookup(&manifest.key)? {
                let _ = fs::remove_dir_all(&writer.dir);
                return Ok(*existing);
            }
        }
        let dir = writer.dir.clone();
        let mut files = Vec::new();
        for (name, format, rows) in &writer.files {
            let p = dir.join(name);
            let f = File::open(&p).map_err(|e| self.io(&p, e))?;
            f.sync_all().map_err(|e| self.io(&p, e))?;
            let bytes = f.metadata().map_err(|e| self.io(&p, e))?.len();
            files.push(FileEntry {
                name: name.clone(),
                format: *format,
                bytes,
                rows: *rows,
                blake3: checksum(&p).map_err(|e| self.io(&p, e))?,
            });
        }
        manifest.rows = files
            .iter()
            .filter(|f| f.format != Format::File)
            .map(|f| f.rows)
            .sum();
        manifest.files = files;
        manifest.schema = writer
            .schema()
            .map(|s| {
                s.fields()
                    .iter()
                    .map(|f| (f.name().clone(), f.data_type().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        manifest.meta = std::mem::take(&mut writer.meta);
        let mpath = dir.join("manifest.json");
        let text = serde_json::to_string_pretty(&manifest).expect("manifest serialises");
        write_synced(&mpath, text.as_bytes()).map_err(|e| self.io(&mpath, e))?;
        sync_dir(&dir).map_err(|e| self.io(&dir, e))?;
        // On a remote store the artifact exists once its manifest is published there; the
        // cache takes it only then, so that it never holds what the remote lacks.
        if let Some(remote) = &self.remote {
            let published = self.publish(remote, &dir, &manifest, text.as_bytes(), replace)?;
            if let crate::remote::Published::Theirs(a) = published {
                let _ = fs::remove_dir_all(&dir);
                return Ok(*a);
            }
        }

        let target = self.object_dir(&manifest.key);
        let parent = target.parent().expect("object dirs have a parent");
        let _g = self.commit_lock.lock().unwrap_or_else(|p| p.into_inner());
        fs::create_dir_all(parent).map_err(|e| self.io(parent, e))?;
        let old = if target.exists() {
            // Another process may have committed it since the check above.
            if !replace {
                if let Lookup::Valid(existing) = self.try_lookup(&manifest.key)? {
                    let _ = fs::remove_dir_all(&dir);
                    return Ok(*existing);
                }
            }
            let old = self.scratch()?.join(format!(
                "{}.replaced.{}",
                manifest.key,
                self.counter.fetch_add(1, Ordering::Relaxed)
            ));
            match fs::rename(&target, &old) {
                Ok(()) => Some(old),
                // Another process moved it away first.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(self.io(&target, e).into()),
            }
        } else {
            None
        };
        if let Err(e) = fs::rename(&dir, &target) {
            // Another process committed the same key between the check above and here (the
            // lock covers this process only): the key says it holds the same result.
            let taken = matches!(
                e.kind(),
                std::io::ErrorKind::DirectoryNotEmpty | std::io::ErrorKind::AlreadyExists
            );
            if taken && !replace {
                if let Lookup::Valid(existing) = self.try_lookup(&manifest.key)? {
                    let _ = fs::remove_dir_all(&dir);
                    return Ok(*existing);
                }
            }
            return Err(self.io(&target, e).into());
        }
        sync_dir(parent).map_err(|e| self.io(parent, e))?;
        if let Some(old) = old {
            let _ = fs::remove_dir_all(old);
        }
        Ok(Artifact {
            dir: target,
            manifest,
        })
    }

    /// Deletes a corrupt artifact so that it is recomputed (from a remote store too).
    pub fn remove(&self, key: &str) -> Result<(), StoreError> {
        self.check_key(key)?;
        let dir = self.object_dir(key);
        match fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.io(&dir, e)),
        }
        match &self.remote {
            Some(remote) => self.remove_remote(remote, key),
            None => Ok(()),
        }
    }

    /// Every artifact's folder and manifest (unverified; unreadable manifests are skipped
    /// with their reason).
    pub fn list(&self) -> Result<Vec<Listed>, StoreError> {
        if let Some(remote) = &self.remote {
            return self.list_remote(remote);
        }
        let objects = self.root.join("objects");
        let mut out = Vec::new();
        for shard in sorted_entries(&objects).map_err(|e| self.io(&objects, e))? {
            // Anything but a folder of artifact folders is reported, never sliced or read.
            if !shard.is_dir() {
                out.push(Err((shard, "not an artifact folder (a stray file)".into())));
                continue;
            }
            let dirs = match sorted_entries(&shard) {
                Ok(d) => d,
                Err(e) => {
                    out.push(Err((shard, e.to_string())));
                    continue;
                }
            };
            for dir in dirs {
                let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if !valid_key(name)
                    || shard.file_name().and_then(|n| n.to_str()) != Some(shard_of(name))
                {
                    out.push(Err((
                        dir,
                        "not an artifact folder (its name is not a key of this folder)".into(),
                    )));
                    continue;
                }
                let m = dir.join("manifest.json");
                let r = fs::read_to_string(&m)
                    .map_err(|e| format!("manifest.json: {e}"))
                    .and_then(|t| {
                        serde_json::from_str::<Manifest>(&t)
                            .map_err(|e| format!("manifest.json: {e}"))
                    })
                    .and_then(|m| {
                        if m.key == name {
                            Ok(m)
                        } else {
                            Err(format!("manifest.json names key `{}`", m.key))
                        }
                    });
                out.push(match r {
                    Ok(manifest) => Ok(Artifact { dir, manifest }),
                    Err(e) => Err((dir, e)),
                });
            }
        }
        Ok(out)
    }

    /// The artifact whose key starts with `prefix`, verified.
    pub fn find(&self, prefix: &str) -> Result<Artifact, StoreError> {
        let matches: Vec<String> = self
            .list()?
            .into_iter()
            .filter_map(|a| match a {
                Ok(a) => Some(a.manifest.key),
                // A folder with an unreadable manifest is found (and reported corrupt); a
                // stray entry that is no key is not.
                Err((dir, _)) => dir
                    .file_name()
                    .and_then(|n| n.to_str())
                    .filter(|n| valid_key(n))
                    .map(str::to_string),
            })
            .filter(|k| k.starts_with(prefix))
            .collect();
        match matches.len() {
            0 => Err(StoreError::NotFound {
                root: self.location.clone(),
                prefix: prefix.to_string(),
            }),
            1 => match self.try_lookup(&matches[0])? {
                Lookup::Valid(a) => Ok(*a),
                Lookup::Missing => Err(StoreError::NotFound {
                    root: self.location.clone(),
                    prefix: prefix.to_string(),
                }),
                Lookup::Corrupt(why) => Err(StoreError::Bad {
                    path: self.object_dir(&matches[0]),
                    message: format!("corrupt artifact: {why}"),
                }),
            },
            count => Err(StoreError::Ambiguous {
                root: self.location.clone(),
                prefix: prefix.to_string(),
                count,
            }),
        }
    }

    pub fn write_run_record(&self, record: &RunRecord) -> Result<PathBuf, StoreError> {
        let path = self
            .root
            .join("runs")
            .join(&record.name)
            .join("latest.json");
        let text = serde_json::to_string_pretty(record).expect("run record serialises");
        self.write_atomic(&path, text.as_bytes())?;
        Ok(path)
    }

    /// Writes a file beside the store's objects (a record): a reader sees the old contents
    /// or the new ones, never half of them. On a remote store it is written to the cache
    /// and then uploaded to the same place under the prefix.
    pub fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        self.write_local(path, bytes)?;
        match &self.remote {
            Some(remote) => self.upload_record(remote, path),
            None => Ok(()),
        }
    }

    pub(crate) fn write_local(&self, path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|e| self.io(dir, e))?;
        }
        // Unique per writer: processes sharing a cache may mirror one record at once.
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(
            ".{}-{}.tmp",
            std::process::id(),
            self.counter.fetch_add(1, Ordering::Relaxed)
        ));
        let tmp = PathBuf::from(tmp);
        write_synced(&tmp, bytes).map_err(|e| self.io(&tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| self.io(path, e))
    }

    pub fn run_records(&self) -> Result<Vec<RunRecord>, StoreError> {
        if let Some(remote) = &self.remote {
            self.sync_records(remote)?;
        }
        let runs = self.root.join("runs");
        let mut out = Vec::new();
        for e in fs::read_dir(&runs).map_err(|e| self.io(&runs, e))? {
            let p = e.map_err(|e| self.io(&runs, e))?.path().join("latest.json");
            if let Ok(text) = fs::read_to_string(&p) {
                let r: RunRecord = serde_json::from_str(&text).map_err(|e| StoreError::Bad {
                    path: p.clone(),
                    message: e.to_string(),
                })?;
                out.push(r);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Deletes artifacts that no run's latest record refers to, and leftovers in tmp/. On
    /// object storage, artifacts that a running run's lease protects are kept too, and
    /// half-published files only go once old (see [`crate::remote`]).
    pub fn gc(&self, lock: &StoreLock, dry_run: bool) -> Result<GcReport, StoreError> {
        if let Some(remote) = &self.remote {
            return self.gc_remote(remote, lock, dry_run);
        }
        let keep: std::collections::HashSet<String> = self
            .run_records()?
            .into_iter()
            .flat_map(|r| r.nodes.into_iter().flat_map(|n| n.outputs.into_values()))
            .collect();
        let mut report = GcReport::default();
        for a in self.list()? {
            let (dir, key) = match &a {
                Ok(a) => (a.dir.clone(), a.manifest.key.clone()),
                // A stray file or folder under objects/ is no artifact: it goes too.
                Err((dir, _)) => (dir.clone(), String::new()),
            };
            if keep.contains(&key) {
                report.kept += 1;
                continue;
            }
            report.removed += 1;
            report.bytes += dir_size(&dir);
            if !dry_run {
                let r = if dir.is_dir() {
                    fs::remove_dir_all(&dir)
                } else {
                    fs::remove_file(&dir)
                };
                r.map_err(|e| self.io(&dir, e))?;
            }
        }
        if !dry_run {
            report.tmp_removed = self.clean_tmp()?;
            // With the store held, no claim is live: their files are leftovers.
            let _ = fs::remove_dir_all(self.root.join("claims"));
        }
        Ok(report)
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct GcReport {
    pub kept: usize,
    pub removed: usize,
    pub bytes: u64,
    pub tmp_removed: usize,
}

/// What one `picie run` planned and did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub name: String,
    pub pipeline: PathBuf,
    pub started: String,
    pub finished: String,
    pub ok: bool,
    pub error: Option<String>,
    pub device: String,
    pub nodes: Vec<NodeRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    pub stage: String,
    pub kind: String,
    pub epoch: Option<u32>,
    pub status: String,
    pub seconds: f64,
    /// Output name -> artifact key (artifact outputs only).
    pub outputs: std::collections::BTreeMap<String, String>,
}

pub fn checksum(path: &Path) -> std::io::Result<String> {
    let mut h = blake3::Hasher::new();
    h.update_reader(File::open(path)?)?;
    Ok(h.finalize().to_hex().to_string())
}

pub(crate) fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The entries of a folder, sorted.
fn sorted_entries(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    v.sort();
    Ok(v)
}

/// A remote store's cache folder, or, when it cannot be written, a temporary one for this
/// process (with a warning): the run goes on, reading from the store.
fn usable_cache(
    cache: PathBuf,
    url: &str,
) -> Result<(PathBuf, Option<tempfile::TempDir>), StoreError> {
    let probe = || -> std::io::Result<()> {
        for d in ["objects", "tmp", "runs"] {
            fs::create_dir_all(cache.join(d))?;
        }
        let p = cache
            .join("tmp")
            .join(format!(".probe-{}", std::process::id()));
        fs::write(&p, b"")?;
        fs::remove_file(&p)
    };
    let why = match probe() {
        Ok(()) => return Ok((cache, None)),
        Err(e) => e,
    };
    let temp = tempfile::Builder::new()
        .prefix("picie-cache-")
        .tempdir()
        .map_err(|e| StoreError::Io {
            root: PathBuf::from(url),
            path: std::env::temp_dir(),
            source: e,
        })?;
    warn!(
        "{url}: the cache folder {} is not writable ({why}); using {} for this run instead \
         (every artifact is downloaded again; set PICIE_CACHE to a writable folder)",
        cache.display(),
        temp.path().display()
    );
    let dir = temp.path().to_path_buf();
    for d in ["objects", "tmp", "runs"] {
        let p = dir.join(d);
        fs::create_dir_all(&p).map_err(|e| StoreError::Io {
            root: PathBuf::from(url),
            path: p.clone(),
            source: e,
        })?;
    }
    Ok((dir, Some(temp)))
}

fn dir_size(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|it| {
            it.filter_map(|e| e.ok())
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// RFC 3339 UTC timestamp.
pub fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
