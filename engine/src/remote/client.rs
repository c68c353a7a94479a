//! A blocking face on object_store's async clients (S3, GCS, Azure): the engine stays
//! synchronous, and a small tokio runtime of its own drives the requests (`block_on`).
//! Each service is behind the Cargo feature of its name (`s3`, `gcs`, `azure`).
#![cfg_attr(
    not(all(feature = "s3", feature = "gcs", feature = "azure")),
    allow(dead_code, unused_imports)
)]

use std::io::{Read, Write};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
#[cfg(feature = "s3")]
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
#[cfg(feature = "azure")]
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
#[cfg(feature = "gcs")]
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, ClientConfigKey, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    RetryConfig, UpdateVersion, WriteMultipart,
};

use super::Service;
use crate::store::StoreError;

/// Files up to this size go up in one PUT; larger ones as multipart uploads of such parts.
const PART: usize = 16 << 20;
/// The probe at open: long enough for a slow but live endpoint, short enough for a person.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Listings in flight at once when many folders are listed (one request each): enough to
/// hide a round trip per artifact, few enough not to flood a small server.
const CONCURRENT_LISTS: usize = 32;

/// One listed object: its path relative to the store's prefix, size, and last change.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub rel: String,
    pub size: u64,
    /// Milliseconds since the Unix epoch.
    pub modified_ms: i64,
}

/// An object as read, with the version (ETag, GCS generation) a conditional update names.
pub(crate) struct Got {
    pub bytes: Vec<u8>,
    pub version: UpdateVersion,
}

/// How a conditional PUT ended.
#[derive(Debug)]
pub(crate) enum Put {
    Done {
        version: UpdateVersion,
    },
    /// `PutMode::Create` found an object there.
    Exists,
    /// `PutMode::Update` found another version there, or none.
    Changed,
}

pub(crate) struct Client {
    pub url: String,
    pub service: Service,
    /// The endpoint as configured, for messages (`None`: the service's own).
    endpoint: Option<String>,
    bucket: String,
    prefix: String,
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) rt: tokio::runtime::Runtime,
}

impl Client {
    /// Builds the client of `service` from its variables (`AWS_*`, `GOOGLE_*`, `AZURE_*`),
    /// then `overrides`, with timeouts and retries that let a dead endpoint fail within
    /// seconds.
    pub fn connect(
        url: &str,
        service: Service,
        bucket: &str,
        prefix: &str,
        overrides: &[(String, String)],
    ) -> Result<Client, StoreError> {
        let fail = |message: String| StoreError::Remote {
            url: url.to_string(),
            message,
        };
        let (store, endpoint) = match service {
            Service::S3 => s3(bucket, overrides),
            Service::Gcs => gcs(bucket, overrides),
            Service::Azure => azure(bucket, overrides),
        }
        .map_err(&fail)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(format!("picie-{}", service.scheme()))
            .enable_all()
            .build()
            .map_err(|e| fail(format!("cannot start the I/O runtime: {e}")))?;
        Ok(Client {
            url: url.to_string(),
            service,
            endpoint,
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            store,
            rt,
        })
    }

    /// One listing under the prefix, bounded in time: the store is reachable, the bucket
    /// exists and the credentials are accepted.
    pub fn probe(&self) -> Result<(), StoreError> {
        let prefix = self.path("");
        let store = Arc::clone(&self.store);
        let r = self.rt.block_on(async move {
            tokio::time::timeout(PROBE_TIMEOUT, store.list_with_delimiter(Some(&prefix))).await
        });
        let why = match r {
            Ok(Ok(_)) => return Ok(()),
            Err(_) => format!("no answer within {}s", PROBE_TIMEOUT.as_secs()),
            Ok(Err(e)) if no_bucket(&e) => format!(
                "{} `{}` does not exist",
                self.service.bucket_word(),
                self.bucket
            ),
            // Without credentials, object_store asks the cloud's metadata service for some.
            Ok(Err(e)) if metadata_service(&chain(&e)) => format!(
                "no credentials ({}: {})",
                no_credentials(self.service),
                chain(&e)
            ),
            Ok(Err(e)) => chain(&e),
        };
        let endpoint = self
            .endpoint
            .as_ref()
            .map(|e| format!(" at {e}"))
            .unwrap_or_default();
        Err(StoreError::Remote {
            url: self.url.clone(),
            message: format!("cannot open it{endpoint}: {why} ({})", check(self.service)),
        })
    }

    /// The object path of `rel` under the prefix.
    pub fn path(&self, rel: &str) -> ObjectPath {
        match (self.prefix.is_empty(), rel.is_empty()) {
            (true, _) => ObjectPath::from(rel),
            (false, true) => ObjectPath::from(self.prefix.as_str()),
            (false, false) => ObjectPath::from(format!("{}/{rel}", self.prefix)),
        }
    }

    fn err(&self, what: &str, rel: &str, e: &object_store::Error) -> StoreError {
        StoreError::Remote {
            url: self.url.clone(),
            message: format!("{what} {rel}: {}", chain(e)),
        }
    }

    /// The object `rel`, or `None` when there is none.
    pub fn get(&self, rel: &str) -> Result<Option<Got>, StoreError> {
        let path = self.path(rel);
        let r = self.rt.block_on(async {
            let got = self.store.get(&path).await?;
            let version = UpdateVersion {
                e_tag: got.meta.e_tag.clone(),
                version: got.meta.version.clone(),
            };
            let bytes = got.bytes().await?;
            Ok::<_, object_store::Error>(Got {
                bytes: bytes.to_vec(),
                version,
            })
        });
        match r {
            Ok(g) => Ok(Some(g)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err("cannot read", rel, &e)),
        }
    }

    /// Whether `rel` exists.
    pub fn exists(&self, rel: &str) -> Result<bool, StoreError> {
        let path = self.path(rel);
        match self.rt.block_on(self.store.head(&path)) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.err("cannot look up", rel, &e)),
        }
    }

    /// Writes `bytes` to `rel` as `mode` says (create only, update a version, overwrite).
    pub fn put(&self, rel: &str, bytes: Vec<u8>, mode: PutMode) -> Result<Put, StoreError> {
        let path = self.path(rel);
        let update = matches!(mode, PutMode::Update(_));
        let r = self.rt.block_on(self.store.put_opts(
            &path,
            PutPayload::from(bytes),
            PutOptions::from(mode),
        ));
        match r {
            Ok(p) => Ok(Put::Done { version: p.into() }),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(Put::Exists),
            Err(object_store::Error::Precondition { .. }) => Ok(Put::Changed),
            // The version to update was deleted since it was read (S3 answers 404, not 412).
            Err(object_store::Error::NotFound { .. }) if update => Ok(Put::Changed),
            Err(e) => Err(self.err("cannot write", rel, &e)),
        }
    }

    /// Uploads a local file to `rel` (overwriting): one PUT, or a multipart upload.
    pub fn upload(&self, file: &Path, rel: &str) -> Result<(), StoreError> {
        let io = |e: std::io::Error| StoreError::Remote {
            url: self.url.clone(),
            message: format!("cannot upload {}: {e}", file.display()),
        };
        let mut f = std::fs::File::open(file).map_err(io)?;
        let len = f.metadata().map_err(io)?.len();
        let path = self.path(rel);
        if len <= PART as u64 {
            let mut bytes = Vec::with_capacity(len as usize);
            f.read_to_end(&mut bytes).map_err(io)?;
            return self.put(rel, bytes, PutMode::Overwrite).map(|_| ());
        }
        let r = self.rt.block_on(async {
            let upload = self.store.put_multipart(&path).await?;
            let mut w = WriteMultipart::new_with_chunk_size(upload, PART);
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = match f.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) => {
                        w.abort().await.ok();
                        return Err(object_store::Error::Generic {
                            store: "local file",
                            source: Box::new(e),
                        });
                    }
                };
                w.wait_for_capacity(2).await?;
                w.write(&buf[..n]);
            }
            w.finish().await
        });
        r.map(|_| ())
            .map_err(|e| self.err("cannot upload", rel, &e))
    }

    /// Streams `rel` into the local file `to`: its size and BLAKE3 checksum, or `None`
    /// when there is no such object.
    pub fn download(&self, rel: &str, to: &Path) -> Result<Option<(u64, String)>, StoreError> {
        let io = |e: std::io::Error| StoreError::Remote {
            url: self.url.clone(),
            message: format!("cannot download {rel} into {}: {e}", to.display()),
        };
        let mut out = std::fs::File::create(to).map_err(io)?;
        let got = self.stream_hashed(rel, "cannot download", |chunk| out.write_all(chunk))?;
        if got.is_some() {
            out.sync_all().map_err(io)?;
        }
        Ok(got)
    }

    /// Every object under `rel_prefix` (a folder: `objects/`, `runs/`): its path relative
    /// to the store's prefix.
    pub fn list(&self, rel_prefix: &str) -> Result<Vec<String>, StoreError> {
        Ok(self
            .list_entries(rel_prefix)?
            .into_iter()
            .map(|e| e.rel)
            .collect())
    }

    /// Every object under `rel_prefix`, with its size and age, sorted by path.
    pub fn list_entries(&self, rel_prefix: &str) -> Result<Vec<Entry>, StoreError> {
        let mut all = self.list_many(&[rel_prefix.to_string()])?;
        Ok(all.pop().unwrap_or_default())
    }

    /// The objects under each folder of `rel_prefixes`, in their order: the listings run
    /// concurrently (S3 has no batch HEAD; a listing per folder is one request).
    pub fn list_many(&self, rel_prefixes: &[String]) -> Result<Vec<Vec<Entry>>, StoreError> {
        let skip = if self.prefix.is_empty() {
            0
        } else {
            self.prefix.len() + 1
        };
        let r = self.rt.block_on(async {
            futures_util::stream::iter(rel_prefixes.iter().enumerate().map(|(i, rel)| {
                let path = self.path(rel.trim_end_matches('/'));
                let store = Arc::clone(&self.store);
                async move {
                    let metas: Vec<object_store::ObjectMeta> = store
                        .list(Some(&path))
                        .try_collect()
                        .await
                        .map_err(|e| (i, e))?;
                    let mut v: Vec<Entry> = metas
                        .into_iter()
                        .map(|m| Entry {
                            rel: m.location.as_ref().get(skip..).unwrap_or("").to_string(),
                            size: m.size,
                            modified_ms: m.last_modified.timestamp_millis(),
                        })
                        .collect();
                    v.sort_by(|a, b| a.rel.cmp(&b.rel));
                    Ok::<_, (usize, object_store::Error)>((i, v))
                }
            }))
            .buffer_unordered(CONCURRENT_LISTS)
            .try_collect::<Vec<_>>()
            .await
        });
        let mut got = r.map_err(|(i, e): (usize, object_store::Error)| {
            self.err("cannot list", &rel_prefixes[i], &e)
        })?;
        got.sort_by_key(|(i, _)| *i);
        Ok(got.into_iter().map(|(_, v)| v).collect())
    }

    /// The size and BLAKE3 checksum of `rel`, streamed and never stored; `None` when there
    /// is no such object.
    pub fn checksum(&self, rel: &str) -> Result<Option<(u64, String)>, StoreError> {
        self.stream_hashed(rel, "cannot read", |_| Ok(()))
    }

    /// Streams `rel` through `sink` chunk by chunk: its size and BLAKE3 checksum, or `None`
    /// when there is no such object; an error says `what` failed.
    fn stream_hashed(
        &self,
        rel: &str,
        what: &str,
        mut sink: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<Option<(u64, String)>, StoreError> {
        let path = self.path(rel);
        let mut hasher = blake3::Hasher::new();
        let mut len = 0u64;
        let r = self.rt.block_on(async {
            let mut stream = self.store.get(&path).await?.into_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                hasher.update(&chunk);
                len += chunk.len() as u64;
                sink(&chunk).map_err(|e| object_store::Error::Generic {
                    store: "local file",
                    source: Box::new(e),
                })?;
            }
            Ok::<_, object_store::Error>(())
        });
        match r {
            Ok(()) => Ok(Some((len, hasher.finalize().to_hex().to_string()))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(what, rel, &e)),
        }
    }

    /// Deletes an object as [`Client::list_entries`] named it (its parts already encoded,
    /// where [`Client::delete`] would encode them again); a missing object is fine.
    pub fn delete_listed(&self, rel: &str) -> Result<(), StoreError> {
        let full = if self.prefix.is_empty() {
            rel.to_string()
        } else {
            format!("{}/{rel}", self.prefix)
        };
        let path = ObjectPath::parse(&full).unwrap_or_else(|_| self.path(rel));
        match self.rt.block_on(self.store.delete(&path)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err("cannot delete", rel, &e)),
        }
    }

    /// Deletes `rel`; a missing object is fine.
    pub fn delete(&self, rel: &str) -> Result<(), StoreError> {
        let path = self.path(rel);
        match self.rt.block_on(self.store.delete(&path)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err("cannot delete", rel, &e)),
        }
    }
}

/// Whether `v` holds what `service` compares in a `PutMode::Update`: the ETag on S3 and
/// Azure (`If-Match`), the generation on GCS (`x-goog-if-generation-match`; object_store
/// refuses an update without one).
pub(crate) fn can_update(service: Service, v: &UpdateVersion) -> bool {
    match service {
        Service::S3 | Service::Azure => v.e_tag.is_some(),
        Service::Gcs => v.version.is_some(),
    }
}

/// What to check when a store does not open.
fn check(service: Service) -> &'static str {
    match service {
        Service::S3 => "check AWS_ENDPOINT_URL, the bucket and AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY",
        Service::Gcs => "check the bucket and GOOGLE_SERVICE_ACCOUNT / GOOGLE_SERVICE_ACCOUNT_KEY / GOOGLE_APPLICATION_CREDENTIALS",
        Service::Azure => "check AZURE_STORAGE_ACCOUNT_NAME, the container and AZURE_STORAGE_ACCOUNT_KEY or AZURE_STORAGE_SAS_TOKEN, or AZURE_STORAGE_USE_EMULATOR=true for Azurite",
    }
}

/// Why a store fell back to the cloud's metadata service for credentials.
fn no_credentials(service: Service) -> &'static str {
    match service {
        Service::S3 => "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY unset, and no instance metadata service",
        Service::Gcs => "GOOGLE_SERVICE_ACCOUNT / GOOGLE_SERVICE_ACCOUNT_KEY / GOOGLE_APPLICATION_CREDENTIALS unset, and no GCP metadata server",
        Service::Azure => "AZURE_STORAGE_ACCOUNT_KEY / AZURE_STORAGE_SAS_TOKEN / AZURE_CLIENT_SECRET unset, and no managed identity endpoint",
    }
}

/// Whether an error is a failed request to a cloud metadata service (EC2, GCE, Azure IMDS).
fn metadata_service(chain: &str) -> bool {
    chain.contains("169.254.169.254") || chain.contains("metadata.google.internal")
}

/// The settings every client gets before the user's: connections that fail fast, whole
/// requests (bodies included) that may take minutes for large artifacts on slow links,
/// and a few quick retries.
const CLIENT: [(ClientConfigKey, &str); 2] = [
    (ClientConfigKey::ConnectTimeout, "3s"),
    (ClientConfigKey::Timeout, "300s"),
];

fn retry() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            base: 2.0,
        },
        max_retries: 3,
        retry_timeout: Duration::from_secs(20),
    }
}

/// Applies [`CLIENT`], then `overrides` (keys of `K`, the service's config keys), with
/// `set`, the builder's `with_config`.
fn configure<B, K>(
    mut b: B,
    set: fn(B, K, &str) -> B,
    client: fn(ClientConfigKey) -> K,
    service: Service,
    overrides: &[(String, String)],
) -> Result<B, String>
where
    K: FromStr<Err = object_store::Error>,
{
    for (k, v) in CLIENT {
        b = set(b, client(k), v);
    }
    for (k, v) in overrides {
        let key: K = k
            .parse()
            .map_err(|e| format!("unknown {} setting `{k}`: {e}", service.name()))?;
        b = set(b, key, v);
    }
    Ok(b)
}

/// A built client, and its endpoint as configured (for messages).
type Built = (Arc<dyn ObjectStore>, Option<String>);

fn built<S: ObjectStore>(
    service: Service,
    store: object_store::Result<S>,
    endpoint: Option<String>,
) -> Result<Built, String> {
    match store {
        Ok(s) => Ok((Arc::new(s), endpoint.filter(|e| !e.is_empty()))),
        Err(e) => Err(format!(
            "cannot configure the {} client: {} ({})",
            service.name(),
            chain(&e),
            check(service)
        )),
    }
}

/// A service this build left out (its Cargo feature off): refused by name.
#[allow(dead_code)]
fn left_out(service: Service, feature: &str) -> Result<Built, String> {
    Err(format!(
        "this picie was built without {} support (build with `--features {feature}`)",
        service.name()
    ))
}

#[cfg(not(feature = "s3"))]
fn s3(_: &str, _: &[(String, String)]) -> Result<Built, String> {
    left_out(Service::S3, "s3")
}

#[cfg(not(feature = "gcs"))]
fn gcs(_: &str, _: &[(String, String)]) -> Result<Built, String> {
    left_out(Service::Gcs, "gcs")
}

#[cfg(not(feature = "azure"))]
fn azure(_: &str, _: &[(String, String)]) -> Result<Built, String> {
    left_out(Service::Azure, "azure")
}

#[cfg(feature = "s3")]
fn s3(bucket: &str, overrides: &[(String, String)]) -> Result<Built, String> {
    let mut b = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_retry(retry());
    if std::env::var_os("AWS_REGION").is_none() && std::env::var_os("AWS_DEFAULT_REGION").is_none()
    {
        b = b.with_region("us-east-1");
    }
    let b = configure(
        b,
        |b, k, v| b.with_config(k, v),
        AmazonS3ConfigKey::Client,
        Service::S3,
        overrides,
    )?;
    let endpoint = b.get_config_value(&AmazonS3ConfigKey::Endpoint);
    built(Service::S3, b.build(), endpoint)
}

#[cfg(feature = "gcs")]
fn gcs(bucket: &str, overrides: &[(String, String)]) -> Result<Built, String> {
    let b = GoogleCloudStorageBuilder::from_env()
        .with_bucket_name(bucket)
        .with_retry(retry());
    let b = configure(
        b,
        |b, k, v| b.with_config(k, v),
        GoogleConfigKey::Client,
        Service::Gcs,
        overrides,
    )?;
    let endpoint = b.get_config_value(&GoogleConfigKey::BaseUrl);
    built(Service::Gcs, b.build(), endpoint)
}

#[cfg(feature = "azure")]
fn azure(container: &str, overrides: &[(String, String)]) -> Result<Built, String> {
    let b = MicrosoftAzureBuilder::from_env()
        .with_container_name(container)
        .with_retry(retry());
    let b = configure(
        b,
        |b, k, v| b.with_config(k, v),
        AzureConfigKey::Client,
        Service::Azure,
        overrides,
    )?;
    // The emulator's address comes from the environment only (object_store's rule).
    let emulator = b
        .get_config_value(&AzureConfigKey::UseEmulator)
        .is_some_and(|v| {
            matches!(
                v.to_ascii_lowercase().as_str(),
                "1" | "true" | "on" | "yes" | "y"
            )
        });
    let endpoint = if emulator {
        Some(
            std::env::var("AZURITE_BLOB_STORAGE_URL")
                .unwrap_or_else(|_| "http://127.0.0.1:10000".into()),
        )
    } else {
        b.get_config_value(&AzureConfigKey::Endpoint)
    };
    built(Service::Azure, b.build(), endpoint)
}

/// Whether a listing failed because the bucket (container) does not exist.
fn no_bucket(e: &object_store::Error) -> bool {
    let s = chain(e);
    matches!(e, object_store::Error::NotFound { .. })
        || s.contains("NoSuchBucket")
        || s.contains("ContainerNotFound")
}

/// An error and its causes on one line, without repeats (object_store's messages already
/// include some of their sources), and an XML error document (S3, GCS, Azure) as
/// `Code: Message`.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let s = crate::error::chain(e);
    match (s.find("<?xml"), between(&s, "<Code>", "</Code>")) {
        (Some(at), Some(code)) => {
            // Azure's message goes on with lines of request id and time.
            let message = between(&s, "<Message>", "</Message>")
                .and_then(|m| m.lines().next())
                .unwrap_or_default();
            format!("{}{code}: {message}", &s[..at])
        }
        _ => s,
    }
}

fn between<'a>(s: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = s.find(open)? + open.len();
    let len = s[start..].find(close)?;
    Some(&s[start..start + len])
}
