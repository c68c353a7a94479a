//! Stores on Google Cloud Storage. No GCS server runs in these tests: the emulator at hand
//! (gcp-storage-emulator) ignores the generation preconditions that publishing and leases
//! rest on, so a run against it would prove nothing. What is tested is what fails before
//! or at the first request: settings and a dead endpoint, named clearly and fast.

use std::path::Path;

use picie_engine::remote::RemoteOptions;

use crate::remote::{fails_fast, free_ports, pairs};

/// A service account key that makes object_store skip OAuth (as for an emulator).
const NO_OAUTH_KEY: &str =
    r#"{"private_key": "", "private_key_id": "", "client_email": "", "disable_oauth": true}"#;

fn options(cache: &Path, settings: &[(&str, &str)]) -> RemoteOptions {
    RemoteOptions {
        cache: Some(cache.to_path_buf()),
        gcs: pairs(settings),
        ..Default::default()
    }
}

#[test]
fn a_gcs_store_with_a_dead_endpoint_or_bad_settings_fails_clearly_and_fast() {
    let tmp = tempfile::tempdir().unwrap();
    let base = format!("http://127.0.0.1:{}", free_ports(1)[0]);
    let no_server = options(
        tmp.path(),
        &[
            ("google_service_account_key", NO_OAUTH_KEY),
            ("google_base_url", &base),
        ],
    );
    let err = fails_fast("gs://nowhere/p", &no_server);
    assert!(
        err.starts_with(&format!(
            "artifact store gs://nowhere/p: cannot open it at {base}: "
        )) && err.contains("check the bucket and GOOGLE_SERVICE_ACCOUNT"),
        "{err}"
    );

    let bad_key = options(tmp.path(), &[("google_service_account_key", "not json")]);
    let err = fails_fast("gs://b-1/p", &bad_key);
    assert!(
        err.starts_with("artifact store gs://b-1/p: cannot configure the GCS client: ")
            && err.contains("GOOGLE_SERVICE_ACCOUNT_KEY"),
        "{err}"
    );

    let err = fails_fast("gs://b-1/p", &options(tmp.path(), &[("aws_region", "x")]));
    assert!(err.contains("unknown GCS setting `aws_region`"), "{err}");
}
