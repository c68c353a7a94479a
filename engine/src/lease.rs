//! Many runs on one store: who may write what, on a local file system.
//!
//! ```text
//! STORE/LOCK                    shared by every run, exclusive for gc
//! STORE/runs/NAME/RUNNING       held by run NAME while it runs (who, since when)
//! STORE/claims/KEY.lock         held by the run computing node KEY
//! STORE/tmp/pPID-N.lock + pPID-N/   one process's half-written artifacts
//! ```
//! Every hold is an flock, which the OS releases when its process dies: a killed run leaves
//! nothing held, and the next run takes its nodes over. Runs of different names share the
//! store; each node is computed by the one run that claims it while the others wait and
//! then read it (see [`crate::exec`]).
//!
//! On a remote store the run lease and the claims are lease objects that expire unless
//! renewed (see [`crate::remote`]); there is no LOCK: gc holds the lease object `GC.json`
//! and keeps what running runs' leases protect (their plans' output keys), and a run that
//! finds a gc running waits for it. Scratch folders are the cache's, as here.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::remote::RemoteLease;
use crate::store::{now, Store, StoreError, StoreLock};

/// The right to run as NAME on a store: released on drop or when the process dies (on a
/// remote store: when its lease expires).
pub struct RunLease {
    _held: Held,
}

/// The right to compute one node: released on drop or when the process dies (on a remote
/// store: when its lease expires).
pub struct Claim {
    _held: Held,
}

/// What a lease or claim holds until dropped.
enum Held {
    Files { _files: Vec<File> },
    Object { _lease: RemoteLease },
}

/// Takes `path`'s flock (shared or exclusive) without waiting: the file, or who holds it.
fn try_hold(path: &Path, shared: bool) -> std::io::Result<Result<File, String>> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    let r = if shared {
        file.try_lock_shared()
    } else {
        file.try_lock()
    };
    match r {
        Ok(()) => Ok(Ok(file)),
        Err(fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            Ok(Err(if holder.is_empty() {
                "holder unknown".into()
            } else {
                holder.to_string()
            }))
        }
        Err(fs::TryLockError::Error(e)) => Err(e),
    }
}

/// Records who holds a file (read by those who find it held).
fn say(file: &mut File, what: &str) -> std::io::Result<()> {
    file.set_len(0)?;
    file.write_all(format!("pid {}, {what}, since {}", std::process::id(), now()).as_bytes())
}

/// Whether `path` is held by someone (read without taking or creating anything).
fn holder_of(path: &Path) -> Option<String> {
    let mut file = File::open(path).ok()?;
    match file.try_lock_shared() {
        Err(fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            Some(holder.trim().to_string())
        }
        _ => None,
    }
}

impl Store {
    /// Enters run `name` (`what` says who, for those who find it held): the store is
    /// shared with other runs but not with gc, and a second run of the same name is
    /// refused, with who holds it.
    pub fn enter_run(&self, name: &str, what: &str) -> Result<RunLease, StoreError> {
        self.enter_run_protecting(name, what, &[])
    }

    /// [`Store::enter_run`] for a run that will read or write the artifacts `protects`: on
    /// object storage its lease lists them, and gc keeps them while it runs (a folder's gc
    /// waits for every run to end instead). Then waits while a gc holds the store.
    pub fn enter_run_protecting(
        &self,
        name: &str,
        what: &str,
        protects: &[String],
    ) -> Result<RunLease, StoreError> {
        if let Some(remote) = &self.remote {
            let lease = match self.remote_run_lease(remote, name, what, protects)? {
                Ok(lease) => lease,
                Err(holder) => {
                    return Err(StoreError::RunInProgress {
                        name: name.to_string(),
                        holder,
                    })
                }
            };
            // After the lease is taken (see crate::remote::gc for why in this order).
            self.wait_for_gc(remote)?;
            return Ok(RunLease {
                _held: Held::Object { _lease: lease },
            });
        }
        let lock = self.root().join("LOCK");
        let store = try_hold(&lock, true)
            .map_err(|e| self.io_err(&lock, e))?
            .map_err(|holder| StoreError::Locked {
                root: self.location().to_path_buf(),
                holder,
            })?;
        let dir = self.root().join("runs").join(name);
        fs::create_dir_all(&dir).map_err(|e| self.io_err(&dir, e))?;
        let path = dir.join("RUNNING");
        let mut running = try_hold(&path, false)
            .map_err(|e| self.io_err(&path, e))?
            .map_err(|holder| StoreError::RunInProgress {
                name: name.to_string(),
                holder,
            })?;
        say(&mut running, what).map_err(|e| self.io_err(&path, e))?;
        Ok(RunLease {
            _held: Held::Files {
                _files: vec![store, running],
            },
        })
    }

    /// Claims node `key` for this process, or says who computes it now.
    pub fn claim(&self, key: &str, what: &str) -> Result<Result<Claim, String>, StoreError> {
        if let Some(remote) = &self.remote {
            return Ok(self.remote_claim(remote, key, what)?.map(|lease| Claim {
                _held: Held::Object { _lease: lease },
            }));
        }
        let dir = self.root().join("claims");
        fs::create_dir_all(&dir).map_err(|e| self.io_err(&dir, e))?;
        let path = dir.join(format!("{key}.lock"));
        match try_hold(&path, false).map_err(|e| self.io_err(&path, e))? {
            Ok(mut file) => {
                say(&mut file, what).map_err(|e| self.io_err(&path, e))?;
                Ok(Ok(Claim {
                    _held: Held::Files { _files: vec![file] },
                }))
            }
            Err(holder) => Ok(Err(holder)),
        }
    }

    /// The runs in progress on this store: (name, who).
    pub fn running(&self) -> Vec<(String, String)> {
        if let Some(remote) = &self.remote {
            return self.running_remote(remote);
        }
        let mut out: Vec<(String, String)> = fs::read_dir(self.root().join("runs"))
            .map(|it| {
                it.filter_map(|e| e.ok())
                    .filter_map(|e| {
                        let who = holder_of(&e.path().join("RUNNING"))?;
                        Some((e.file_name().to_string_lossy().into_owned(), who))
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    /// Takes the store for gc, or says who holds it. A folder: no run may be in progress
    /// (runs share it through [`Store::enter_run`]). Object storage: the gc lease, beside
    /// running runs (see [`crate::remote`]).
    pub fn lock(&self, what: &str) -> Result<StoreLock, StoreError> {
        if let Some(remote) = &self.remote {
            return self.remote_gc_lock(remote, what);
        }
        let path = self.root().join("LOCK");
        let mut file = try_hold(&path, false)
            .map_err(|e| self.io_err(&path, e))?
            .map_err(|holder| StoreError::Locked {
                root: self.location().to_path_buf(),
                holder,
            })?;
        say(&mut file, what).map_err(|e| self.io_err(&path, e))?;
        Ok(StoreLock {
            _file: Some(file),
            _lease: None,
        })
    }

    /// This process's folder for half-written artifacts, created (and held) on first use.
    pub(crate) fn scratch(&self) -> Result<PathBuf, StoreError> {
        let mut slot = self.scratch.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((dir, _)) = slot.as_ref() {
            return Ok(dir.clone());
        }
        let tmp = self.root().join("tmp");
        let stem = format!(
            "p{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        // The lock file first: a folder without one is a leftover, never a live writer's.
        let lock = tmp.join(format!("{stem}.lock"));
        let file = try_hold(&lock, false)
            .map_err(|e| self.io_err(&lock, e))?
            .map_err(|holder| {
                self.io_err(
                    &lock,
                    std::io::Error::other(format!("unexpectedly held by {holder}")),
                )
            })?;
        let dir = tmp.join(&stem);
        fs::create_dir_all(&dir).map_err(|e| self.io_err(&dir, e))?;
        *slot = Some((dir.clone(), file));
        Ok(dir)
    }

    /// Removes what interrupted runs left half-written: every process folder in tmp/ that
    /// its process no longer holds, and anything else there (older layouts). Live runs'
    /// folders are left alone.
    pub fn clean_tmp(&self) -> Result<usize, StoreError> {
        let tmp = self.root().join("tmp");
        let mine = self
            .scratch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(d, _)| d.clone());
        let mut n = 0;
        let entries: Vec<PathBuf> = fs::read_dir(&tmp)
            .map_err(|e| self.io_err(&tmp, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        for p in &entries {
            if Some(p) == mine.as_ref() {
                continue;
            }
            let lock = p.with_extension("lock");
            let live = if p.extension().is_some_and(|e| e == "lock") {
                // Held: a live process's; free: stale, removed with its folder below.
                holder_of(p).is_some()
            } else {
                lock.is_file() && holder_of(&lock).is_some()
            };
            if live {
                continue;
            }
            // A finished run leaves its scratch folder empty: only contents were half-written.
            let dir = p.is_dir() && fs::read_dir(p).is_ok_and(|mut d| d.next().is_some());
            let r = if p.is_dir() {
                fs::remove_dir_all(p)
            } else {
                fs::remove_file(p)
            };
            match r {
                Ok(()) => n += usize::from(dir),
                // Another run's cleanup got there first.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.io_err(p, e)),
            }
        }
        Ok(n)
    }
}
