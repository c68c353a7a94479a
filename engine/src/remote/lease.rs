//! Leases as objects, for many runs (on many machines) sharing one remote store.
//!
//! A lease is a small JSON object (`claims/KEY.json`, `runs/NAME/RUNNING.json`) created
//! only if absent (`If-None-Match: *`; on GCS, generation 0), so exactly one run gets it.
//! Its holder renews it every ttl/3, updating only the version it last wrote (`If-Match`
//! on the ETag; on GCS, on the generation); a run that dies stops renewing, and once the
//! expiry written in it has passed, another run may take it over, again updating only the
//! version it observed, so that of several runs taking over at once (or a late renewal)
//! exactly one wins. Expiry is wall-clock time: machines sharing a store
//! need clocks that agree to well within the ttl.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use object_store::{PutMode, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::client::{can_update, Client, Put};
use super::Service;
use crate::store::StoreError;

/// What a lease object holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseBody {
    /// Who: host, pid and what it runs.
    pub holder: String,
    /// Tells this holder's lease from a successor's of the same process.
    pub token: String,
    /// Milliseconds since the Unix epoch after which it may be taken over.
    pub expires_ms: u64,
    /// The same, readable.
    pub expires: String,
    /// The artifact keys a run's lease keeps from gc while it runs (its plan's outputs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub protects: Vec<String>,
}

impl LeaseBody {
    fn new(holder: &str, token: &str, ttl: Duration, protects: &[String]) -> Self {
        let expires_ms = now_ms() + ttl.as_millis() as u64;
        let expires =
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(expires_ms) * 1_000_000)
                .ok()
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .unwrap_or_default();
        Self {
            holder: holder.to_string(),
            token: token.to_string(),
            expires_ms,
            expires,
            protects: protects.to_vec(),
        }
    }

    fn bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("a lease serialises")
    }

    /// Whether its holder has stopped renewing it.
    pub fn expired(&self) -> bool {
        self.expires_ms <= now_ms()
    }

    /// For those who find it held.
    pub fn describe(&self) -> String {
        format!("{}, lease until {}", self.holder, self.expires)
    }
}

/// A held lease: renewed in the background, deleted on drop (if still this holder's).
pub(crate) struct RemoteLease {
    client: Arc<Client>,
    rel: String,
    token: String,
    renew: tokio::task::JoinHandle<()>,
}

impl RemoteLease {
    /// Takes the lease at `rel` (`what` says who, for those who find it held; `protects`,
    /// the keys it keeps from gc), taking over an expired one; or says who holds it.
    pub fn acquire(
        client: &Arc<Client>,
        rel: &str,
        what: &str,
        ttl: Duration,
        protects: &[String],
    ) -> Result<Result<RemoteLease, String>, StoreError> {
        let token = token();
        let holder = format!(
            "pid {} on {}, {what}, since {}",
            std::process::id(),
            host(),
            crate::store::now()
        );
        let mut seen = String::from("held by another run");
        // A few rounds: the lease may be released or taken over between our reads.
        for _ in 0..3 {
            let body = LeaseBody::new(&holder, &token, ttl, protects);
            if let Put::Done { version } = client.put(rel, body.bytes(), PutMode::Create)? {
                return Ok(Ok(Self::hold(client, rel, body, version, ttl)));
            }
            let Some(got) = client.get(rel)? else {
                continue;
            };
            let theirs = serde_json::from_slice::<LeaseBody>(&got.bytes).ok();
            if let Some(t) = theirs.as_ref().filter(|t| !t.expired()) {
                return Ok(Err(t.describe()));
            }
            if let Some(t) = &theirs {
                seen = t.describe();
            }
            // Expired (or unreadable): take it over unless it changed since we read it.
            let mode = PutMode::Update(got.version);
            if let Put::Done { version } = client.put(rel, body.bytes(), mode)? {
                info!("{}: took over the expired lease {rel} ({seen})", client.url);
                return Ok(Ok(Self::hold(client, rel, body, version, ttl)));
            }
        }
        Ok(Err(seen))
    }

    fn hold(
        client: &Arc<Client>,
        rel: &str,
        body: LeaseBody,
        version: UpdateVersion,
        ttl: Duration,
    ) -> Self {
        let token = body.token.clone();
        let renew = client.rt.spawn(renew(
            Arc::clone(&client.store),
            client.path(rel),
            client.url.clone(),
            client.service,
            body,
            version,
            ttl,
        ));
        Self {
            client: Arc::clone(client),
            rel: rel.to_string(),
            token,
            renew,
        }
    }
}

impl Drop for RemoteLease {
    fn drop(&mut self) {
        self.renew.abort();
        // Deleted only while it is still ours: a successor may have taken it over.
        if let Ok(Some(got)) = self.client.get(&self.rel) {
            let ours = serde_json::from_slice::<LeaseBody>(&got.bytes)
                .is_ok_and(|b| b.token == self.token);
            if ours {
                if let Err(e) = self.client.delete(&self.rel) {
                    warn!("cannot release lease {}: {e}", self.rel);
                }
            }
        }
    }
}

/// Renews a lease every ttl/3 until aborted; stops when another run has taken it over.
async fn renew(
    store: Arc<dyn object_store::ObjectStore>,
    path: object_store::path::Path,
    url: String,
    service: Service,
    mut body: LeaseBody,
    mut version: UpdateVersion,
    ttl: Duration,
) {
    loop {
        tokio::time::sleep(ttl / 3).await;
        body = LeaseBody::new(&body.holder, &body.token, ttl, &body.protects);
        let mode = if can_update(service, &version) {
            PutMode::Update(version.clone())
        } else {
            // A store that returned no version cannot update conditionally.
            PutMode::Overwrite
        };
        let r = store
            .put_opts(&path, PutPayload::from(body.bytes()), mode.into())
            .await;
        match r {
            Ok(p) => version = p.into(),
            Err(
                object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. },
            ) => {
                warn!("{url}: lease {path} was taken over by another run (not renewed in time)");
                return;
            }
            Err(e) => warn!(
                "{url}: cannot renew lease {path}: {}; trying again",
                super::client::chain(&e)
            ),
        }
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn token() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// This machine's name, for lease holders.
pub(crate) fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown host".into())
}
