//! Artifact stores on S3-compatible object storage: `store: s3://bucket/prefix`.
//!
//! ```text
//! PREFIX/objects/ab/KEY/FILE            an artifact's files, uploaded first
//! PREFIX/objects/ab/KEY/manifest.json   published last, with `If-None-Match: *`
//! PREFIX/runs/NAME/latest.json          run records; sweeps' sweep.json, metrics.parquet
//! PREFIX/runs/NAME/RUNNING.json         the lease of run NAME while it runs
//! PREFIX/claims/KEY.json                the lease of the run computing node KEY
//! ```
//! Stages read artifacts as local files (Parquet, safetensors), so a remote store keeps a
//! local cache laid out as a local store ([`crate::store`]): an artifact is downloaded
//! once per machine, verified against its manifest's checksums, and renamed into the
//! cache's objects/. A manifest is the artifact: files without one are never read.
//!
//! Endpoint and credentials come from the usual variables (`AWS_ENDPOINT_URL`,
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ALLOW_HTTP=true` for a
//! plain-HTTP server such as SeaweedFS), or from [`RemoteOptions::s3`].

mod artifacts;
mod client;
mod lease;
mod records;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub(crate) use artifacts::Published;
pub(crate) use client::Client;
pub use lease::LeaseBody;
pub(crate) use lease::RemoteLease;

use crate::store::StoreError;

/// Default lease time-to-live: a dead run's nodes are taken over this long after it died.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(60);

/// Where a store lives, parsed from what the user wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Local(PathBuf),
    /// `url` is normalised: `s3://bucket` or `s3://bucket/prefix` (no trailing slash).
    S3 {
        url: String,
        bucket: String,
        prefix: String,
    },
}

impl Location {
    /// A folder, `file://PATH`, or `s3://bucket/prefix`; other schemes are refused with why.
    pub fn parse(text: &str) -> Result<Location, String> {
        let Some((scheme, rest)) = text.split_once("://") else {
            return Ok(Location::Local(PathBuf::from(text)));
        };
        match scheme {
            "file" => Ok(Location::Local(PathBuf::from(rest))),
            "s3" | "s3a" => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                let prefix = prefix.trim_matches('/');
                if bucket.len() < 3
                    || !bucket
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-.".contains(c))
                {
                    return Err(format!(
                        "`{text}`: `{bucket}` is not an S3 bucket name (3-63 of a-z, 0-9, `-`, `.`)"
                    ));
                }
                if prefix.split('/').any(|p| p.is_empty() || p == "." || p == "..") && !prefix.is_empty() {
                    return Err(format!("`{text}`: the prefix has an empty, `.` or `..` part"));
                }
                let url = if prefix.is_empty() {
                    format!("s3://{bucket}")
                } else {
                    format!("s3://{bucket}/{prefix}")
                };
                Ok(Location::S3 {
                    url,
                    bucket: bucket.to_string(),
                    prefix: prefix.to_string(),
                })
            }
            "gs" | "gcs" | "az" | "azure" | "abfs" | "abfss" => Err(format!(
                "`{scheme}://` stores are not built into this picie: only `s3://` (any S3-compatible service) and local folders"
            )),
            other => Err(format!(
                "`{other}://` is not a known store scheme: use a folder, `file://`, or `s3://bucket/prefix`"
            )),
        }
    }

    /// Parses a store path as the CLI and the spec carry it (a URL travels as a path).
    pub fn of_path(root: &Path) -> Result<Location, String> {
        match root.to_str() {
            Some(text) => Location::parse(text),
            None => Ok(Location::Local(root.to_path_buf())),
        }
    }
}

/// How to open a remote store; the defaults read the environment.
#[derive(Clone, Debug, Default)]
pub struct RemoteOptions {
    /// The local cache folder (default `$PICIE_CACHE/HASH`, else
    /// `~/.cache/picie/stores/HASH`, HASH a short hash of the URL).
    pub cache: Option<PathBuf>,
    /// Lease time-to-live (default `PICIE_LEASE_TTL_S` seconds, else 60 s).
    pub lease_ttl: Option<Duration>,
    /// object_store S3 settings applied over the `AWS_*` variables, e.g.
    /// `("aws_endpoint", "http://127.0.0.1:8333")`, `("aws_allow_http", "true")`.
    pub s3: Vec<(String, String)>,
}

/// An open remote store: its client and how long leases live.
pub(crate) struct Remote {
    pub client: Arc<Client>,
    pub ttl: Duration,
}

impl Remote {
    /// Connects and probes the bucket: a dead endpoint, a missing bucket or refused
    /// credentials fail here, within seconds, naming the URL.
    pub fn open(
        url: &str,
        bucket: &str,
        prefix: &str,
        opts: &RemoteOptions,
    ) -> Result<Remote, StoreError> {
        let client = Client::connect(url, bucket, prefix, &opts.s3)?;
        client.probe()?;
        let ttl = opts.lease_ttl.unwrap_or_else(|| {
            std::env::var("PICIE_LEASE_TTL_S")
                .ok()
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|s| *s > 0.0)
                .map_or(DEFAULT_LEASE_TTL, Duration::from_secs_f64)
        });
        Ok(Remote {
            client: Arc::new(client),
            ttl,
        })
    }
}

/// The default cache folder of a store URL.
pub fn cache_dir(url: &str) -> PathBuf {
    let base = std::env::var_os("PICIE_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/picie/stores")))
        .unwrap_or_else(|| std::env::temp_dir().join("picie-stores"));
    let hash = blake3::hash(url.as_bytes()).to_hex();
    base.join(&hash[..16])
}

/// `objects/ab/KEY/NAME` relative to the prefix.
pub(crate) fn object_rel(key: &str, name: &str) -> String {
    format!("objects/{}/{key}/{name}", &key[..2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse() {
        assert_eq!(
            Location::parse("artifacts").unwrap(),
            Location::Local("artifacts".into())
        );
        assert_eq!(
            Location::parse("file:///tmp/x").unwrap(),
            Location::Local("/tmp/x".into())
        );
        assert_eq!(
            Location::parse("s3://my-bucket/runs/a/").unwrap(),
            Location::S3 {
                url: "s3://my-bucket/runs/a".into(),
                bucket: "my-bucket".into(),
                prefix: "runs/a".into()
            }
        );
        let bare = Location::parse("s3://my-bucket").unwrap();
        assert!(matches!(bare, Location::S3 { ref prefix, .. } if prefix.is_empty()));
        assert!(Location::parse("gs://b/p")
            .unwrap_err()
            .contains("not built into"));
        assert!(Location::parse("ftp://b/p")
            .unwrap_err()
            .contains("not a known"));
        assert!(Location::parse("s3://B_d/p")
            .unwrap_err()
            .contains("bucket name"));
        assert!(Location::parse("s3://bucket/a//b").is_err());
    }
}
