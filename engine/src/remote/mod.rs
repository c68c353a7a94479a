//! Artifact stores on object storage: `store: s3://bucket/prefix` (Amazon S3 or any
//! S3-compatible service), `gs://bucket/prefix` (Google Cloud Storage) or
//! `az://container/prefix` (Azure Blob Storage; `azure://` too).
//!
//! ```text
//! PREFIX/objects/ab/KEY/FILE            an artifact's files, uploaded first
//! PREFIX/objects/ab/KEY/manifest.json   published last, created only if absent
//! PREFIX/runs/NAME/latest.json          run records; sweeps' sweep.json, metrics.parquet
//! PREFIX/runs/NAME/RUNNING.json         the lease of run NAME while it runs
//! PREFIX/claims/KEY.json                the lease of the run computing node KEY
//! ```
//! Stages read artifacts as local files (Parquet, safetensors), so a remote store keeps a
//! local cache laid out as a local store ([`crate::store`]): an artifact is downloaded
//! once per machine, verified against its manifest's checksums, and renamed into the
//! cache's objects/. A manifest is the artifact: files without one are never read.
//!
//! Every service does the two conditional writes the protocol needs: create-if-absent
//! (S3 and Azure `If-None-Match: *`, GCS `x-goog-if-generation-match: 0`) and update-if-
//! unchanged (S3 and Azure `If-Match` on the ETag, GCS the generation).
//!
//! Endpoint and credentials come from each service's usual variables, or from
//! [`RemoteOptions`]:
//! - S3: `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
//!   `AWS_ALLOW_HTTP=true` for a plain-HTTP server such as SeaweedFS;
//! - GCS: `GOOGLE_SERVICE_ACCOUNT` (a key file's path), `GOOGLE_SERVICE_ACCOUNT_KEY` (its
//!   JSON), `GOOGLE_APPLICATION_CREDENTIALS`, else the metadata server of a GCP machine;
//! - Azure: `AZURE_STORAGE_ACCOUNT_NAME` with `AZURE_STORAGE_ACCOUNT_KEY` (or
//!   `AZURE_STORAGE_SAS_TOKEN`, a service principal's `AZURE_CLIENT_ID` /
//!   `AZURE_CLIENT_SECRET` / `AZURE_TENANT_ID`, else a managed identity),
//!   `AZURE_STORAGE_ENDPOINT`; `AZURE_STORAGE_USE_EMULATOR=true` for Azurite (its
//!   development account, at `AZURITE_BLOB_STORAGE_URL`, default `http://127.0.0.1:10000`).

mod artifacts;
mod check;
mod client;
mod gc;
mod lease;
mod records;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub(crate) use artifacts::{plain, Published};
pub(crate) use check::Inventory;
pub(crate) use client::Client;
pub use lease::LeaseBody;
pub(crate) use lease::RemoteLease;

use crate::store::StoreError;

/// Default lease time-to-live: a dead run's nodes are taken over this long after it died.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(60);

/// The object storage services a store may live on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    S3,
    Gcs,
    Azure,
}

impl Service {
    /// The service of a store URL's scheme (`s3`, `s3a`, `gs`, `az`, `azure`).
    pub fn of_scheme(scheme: &str) -> Option<Service> {
        match scheme {
            "s3" | "s3a" => Some(Service::S3),
            "gs" => Some(Service::Gcs),
            "az" | "azure" => Some(Service::Azure),
            _ => None,
        }
    }

    /// The service of a (normalised) store URL.
    pub fn of_url(url: &str) -> Option<Service> {
        url.split_once("://")
            .and_then(|(scheme, _)| Service::of_scheme(scheme))
    }

    /// The scheme of its normalised URLs.
    pub fn scheme(self) -> &'static str {
        match self {
            Service::S3 => "s3",
            Service::Gcs => "gs",
            Service::Azure => "az",
        }
    }

    /// Its name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Service::S3 => "S3",
            Service::Gcs => "GCS",
            Service::Azure => "Azure",
        }
    }

    /// What it calls the top-level namespace of a URL (`bucket`, `container`).
    pub fn bucket_word(self) -> &'static str {
        match self {
            Service::S3 | Service::Gcs => "bucket",
            Service::Azure => "container",
        }
    }

    /// Whether `name` may name a bucket (container) of the service: `Err` says what may.
    fn check_bucket(self, name: &str) -> Result<(), &'static str> {
        const GCS: &str = "3-63 of a-z, 0-9, `-`, `_`, `.`; up to 222 with dots";
        let (extra, max, rule) = match self {
            Service::S3 => ("-.", 63, "3-63 of a-z, 0-9, `-`, `.`"),
            // Names with dots may be longer (DNS names of verified domains).
            Service::Gcs if name.contains('.') => ("-._", 222, GCS),
            Service::Gcs => ("-_", 63, GCS),
            Service::Azure => ("-", 63, "3-63 of a-z, 0-9, `-`"),
        };
        let ok = (3..=max).contains(&name.len())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || extra.contains(c));
        if ok {
            Ok(())
        } else {
            Err(rule)
        }
    }
}

/// Where a store lives, parsed from what the user wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Local(PathBuf),
    /// A store on object storage, on any [`Service`] ([`Location::service`] tells which).
    /// `url` is normalised:
    /// `SCHEME://bucket` or `SCHEME://bucket/prefix`, SCHEME `s3`, `gs` or `az`, no trailing
    /// slash; `bucket` is an Azure store's container.
    Remote {
        url: String,
        bucket: String,
        prefix: String,
    },
}

impl Location {
    /// A folder, `file://PATH`, `s3://bucket/prefix`, `gs://bucket/prefix` or
    /// `az://container/prefix`; other schemes are refused with why.
    pub fn parse(text: &str) -> Result<Location, String> {
        let Some((scheme, rest)) = text.split_once("://") else {
            return Ok(Location::Local(PathBuf::from(text)));
        };
        let service = match scheme {
            "file" => return Ok(Location::Local(PathBuf::from(rest))),
            "abfs" | "abfss" => {
                return Err(format!(
                    "`{scheme}://` URLs are not read: write `az://container/prefix` (Azure Blob Storage), with the account in AZURE_STORAGE_ACCOUNT_NAME"
                ))
            }
            "gcs" => {
                return Err(format!(
                    "`{text}`: Google Cloud Storage URLs are written `gs://bucket/prefix`"
                ))
            }
            other => Service::of_scheme(other).ok_or_else(|| {
                format!(
                    "`{other}://` is not a known store scheme: use a folder, `file://`, `s3://bucket/prefix`, `gs://bucket/prefix` or `az://container/prefix`"
                )
            })?,
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = prefix.trim_matches('/');
        if let Err(rule) = service.check_bucket(bucket) {
            let a = if service == Service::Gcs { "a" } else { "an" };
            return Err(format!(
                "`{text}`: `{bucket}` is not {a} {} {} name ({rule})",
                service.name(),
                service.bucket_word()
            ));
        }
        if prefix
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..")
            && !prefix.is_empty()
        {
            return Err(format!(
                "`{text}`: the prefix has an empty, `.` or `..` part"
            ));
        }
        let scheme = service.scheme();
        let url = if prefix.is_empty() {
            format!("{scheme}://{bucket}")
        } else {
            format!("{scheme}://{bucket}/{prefix}")
        };
        Ok(Location::Remote {
            url,
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }

    /// The service of a store on object storage; `None` for a folder.
    pub fn service(&self) -> Option<Service> {
        match self {
            Location::Local(_) => None,
            Location::Remote { url, .. } => Service::of_url(url),
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
    /// object_store GCS settings applied over the `GOOGLE_*` variables, e.g.
    /// `("google_service_account_key", JSON)`, `("google_base_url", URL)`.
    pub gcs: Vec<(String, String)>,
    /// object_store Azure settings applied over the `AZURE_*` variables, e.g.
    /// `("azure_storage_account_name", NAME)`, `("azure_storage_endpoint", URL)`.
    pub azure: Vec<(String, String)>,
}

impl RemoteOptions {
    /// The settings for `service`.
    fn settings(&self, service: Service) -> &[(String, String)] {
        match service {
            Service::S3 => &self.s3,
            Service::Gcs => &self.gcs,
            Service::Azure => &self.azure,
        }
    }
}

/// An open remote store: its client and how long leases live.
pub(crate) struct Remote {
    pub client: Arc<Client>,
    pub ttl: Duration,
}

impl Remote {
    /// Connects and probes the bucket (container): a dead endpoint, a missing bucket or
    /// refused credentials fail here, within seconds, naming the URL.
    pub fn open(
        url: &str,
        bucket: &str,
        prefix: &str,
        opts: &RemoteOptions,
    ) -> Result<Remote, StoreError> {
        let service = Service::of_url(url).ok_or_else(|| StoreError::Remote {
            url: url.to_string(),
            message: "not an object store URL".into(),
        })?;
        let client = Client::connect(url, service, bucket, prefix, opts.settings(service))?;
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

/// `objects/ab/KEY/NAME` relative to the prefix (callers check the key first, see
/// [`crate::store::valid_key`]).
pub(crate) fn object_rel(key: &str, name: &str) -> String {
    format!("objects/{}/{key}/{name}", crate::store::shard_of(key))
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
            Location::Remote {
                url: "s3://my-bucket/runs/a".into(),
                bucket: "my-bucket".into(),
                prefix: "runs/a".into()
            }
        );
        let bare = Location::parse("s3://my-bucket").unwrap();
        assert!(matches!(bare, Location::Remote { ref prefix, .. } if prefix.is_empty()));
        assert_eq!(bare.service(), Some(Service::S3));
        let gs = Location::parse("gs://my_bucket/p/").unwrap();
        assert_eq!(
            gs,
            Location::Remote {
                url: "gs://my_bucket/p".into(),
                bucket: "my_bucket".into(),
                prefix: "p".into()
            }
        );
        assert_eq!(gs.service(), Some(Service::Gcs));
        // `azure://` is `az://`: one URL, one cache.
        for text in ["az://runs/x/y", "azure://runs/x/y/"] {
            let az = Location::parse(text).unwrap();
            assert_eq!(
                az,
                Location::Remote {
                    url: "az://runs/x/y".into(),
                    bucket: "runs".into(),
                    prefix: "x/y".into()
                }
            );
            assert_eq!(az.service(), Some(Service::Azure));
        }
        assert_eq!(Location::parse("file:///x").unwrap().service(), None);
        assert!(Location::parse("az://my.container/p")
            .unwrap_err()
            .contains("not an Azure container name"));
        assert!(Location::parse("gs://Bucket/p")
            .unwrap_err()
            .contains("not a GCS bucket name"));
        assert!(Location::parse("abfss://c@acct.dfs.core.windows.net/p")
            .unwrap_err()
            .contains("az://container/prefix"));
        assert!(Location::parse("gcs://b/p").unwrap_err().contains("gs://"));
        assert!(Location::parse("ftp://b/p")
            .unwrap_err()
            .contains("not a known"));
        assert!(Location::parse("s3://B_d/p")
            .unwrap_err()
            .contains("bucket name"));
        assert!(Location::parse("s3://bucket/a//b").is_err());
    }
}
