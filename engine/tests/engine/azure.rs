//! Stores on Azure Blob Storage, against a real Azurite (`azurite-blob`) on 127.0.0.1: each
//! test starts its own server on a free port, with container `picie`, and stops it at its
//! end. Without `azurite-blob` on PATH or in the project's .venv (`make setup` installs it
//! there with npm), each test records a skip (`picie_testkit::skip_setup`; a failure under
//! CI) and returns. The scenarios are those of the S3 tests
//! ([`crate::remote`]).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use object_store::azure::{
    AzureAccessKey, AzureAuthorizer, AzureCredential, MicrosoftAzureBuilder,
};
use object_store::client::{HttpRequest, HttpRequestBody};
use picie_engine::remote::RemoteOptions;
use picie_engine::store::Store;

use crate::remote::{self, fails_fast, free_ports, pairs, program, Raw, Server};

const CONTAINER: &str = "picie";
/// Azurite's development account and its key, both published with Azurite.
const ACCOUNT: &str = "devstoreaccount1";
const DEV_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// An Azurite of its own for one test: stopped (and its data removed) on drop.
struct Azurite {
    child: Option<Child>,
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl Azurite {
    /// A running server with container `picie`, or `None` (after saying so) without
    /// `azurite-blob`.
    fn start() -> Option<Azurite> {
        let Some(bin) = program(
            "azurite-blob",
            ".venv/azurite/node_modules/.bin/azurite-blob",
        ) else {
            picie_testkit::skip_setup(
                "azure: azurite-blob (Azurite) not found (npm install azurite, or make setup)",
            );
            return None;
        };
        let mut a = Azurite {
            child: None,
            dir: tempfile::tempdir().unwrap(),
            bin,
            port: free_ports(1)[0],
        };
        a.spawn();
        let status = a.create_container();
        assert_eq!(
            status,
            201,
            "creating the container; see {}",
            a.dir.path().display()
        );
        remote::wait_until_up(&a, "Azurite", a.dir.path());
        Some(a)
    }

    /// Starts the server on its folder and port, and waits until it accepts connections.
    fn spawn(&mut self) {
        let data = self.dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("azurite.log"))
            .unwrap();
        let child = Command::new(&self.bin)
            .args(["--blobHost", "127.0.0.1", "--blobPort"])
            .arg(self.port.to_string())
            .arg("--location")
            .arg(&data)
            .args(["--silent", "--skipApiVersionCheck", "--disableTelemetry"])
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.child = Some(child);
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "Azurite did not listen; see {}",
                self.dir.path().display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Creates the container (object_store has no call for it): Azure's REST request, signed
    /// with the development key by object_store's own signer. Its HTTP status.
    fn create_container(&self) -> u16 {
        let mut req = HttpRequest::new(HttpRequestBody::empty());
        *req.method_mut() = "PUT".parse().unwrap();
        *req.uri_mut() = format!("{}/{CONTAINER}?restype=container", self.endpoint())
            .parse()
            .unwrap();
        let key = AzureCredential::AccessKey(AzureAccessKey::try_new(DEV_KEY).unwrap());
        AzureAuthorizer::new(&key, ACCOUNT).authorize(&mut req);
        let mut head = format!(
            "PUT {} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n",
            req.uri().path_and_query().unwrap(),
            self.port
        );
        for (k, v) in req.headers() {
            head += &format!("{k}: {}\r\n", v.to_str().unwrap());
        }
        head += "\r\n";
        let mut tcp = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        tcp.write_all(head.as_bytes()).unwrap();
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).unwrap();
        answer
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP answer: {answer}"))
    }

    /// The account's URL (path-style, as Azurite serves it).
    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{ACCOUNT}", self.port)
    }

    /// Settings naming the account, its key and its URL (the dead-endpoint test points
    /// them at a port without a server).
    fn settings_at(endpoint: &str) -> RemoteOptions {
        RemoteOptions {
            azure: pairs(&[
                ("azure_storage_account_name", ACCOUNT),
                ("azure_storage_account_key", DEV_KEY),
                ("azure_storage_endpoint", endpoint),
                ("azure_allow_http", "true"),
            ]),
            ..Default::default()
        }
    }
}

impl Server for Azurite {
    fn url(&self, prefix: &str) -> String {
        format!("az://{CONTAINER}/{prefix}")
    }

    fn settings(&self) -> RemoteOptions {
        Azurite::settings_at(&self.endpoint())
    }

    /// The emulator switch, as a user of Azurite would set it (the options above name the
    /// account and endpoint instead).
    fn env(&self) -> Vec<(String, String)> {
        pairs(&[
            ("AZURE_STORAGE_USE_EMULATOR", "true"),
            (
                "AZURITE_BLOB_STORAGE_URL",
                &format!("http://127.0.0.1:{}", self.port),
            ),
            ("PICIE_LEASE_TTL_S", "2"),
        ])
    }

    fn raw(&self) -> Raw {
        Raw::new(
            MicrosoftAzureBuilder::new()
                .with_account(ACCOUNT)
                .with_access_key(DEV_KEY)
                .with_endpoint(self.endpoint())
                .with_allow_http(true)
                .with_container_name(CONTAINER)
                .build()
                .unwrap(),
        )
    }

    /// Stops the server as a signal would, letting it save its metadata (it saves every
    /// 5 s otherwise, and a SIGKILL would lose the last writes); killed if it lingers.
    fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        unsafe {
            libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
        }
        let t = Instant::now();
        while c.try_wait().unwrap().is_none() && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
    }

    fn launch(&mut self) {
        self.spawn();
        remote::wait_until_up(self, "Azurite", self.dir.path());
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn a_pipeline_on_azure_is_cached_for_every_machine_and_matches_a_local_run() {
    remote::on(Azurite::start(), |azurite| {
        remote::a_pipeline_is_cached_for_every_machine_and_matches_a_local_run(azurite)
    });
}

#[test]
fn an_emptied_container_gets_its_artifacts_back_from_the_cache() {
    remote::on(Azurite::start(), |azurite| {
        remote::an_emptied_store_gets_its_artifacts_back_from_the_cache(azurite)
    });
}

#[test]
fn gc_on_azure_beside_a_running_run_loses_nothing_it_needs() {
    remote::on(Azurite::start(), |azurite| {
        remote::gc_beside_a_running_run_loses_nothing_it_needs(azurite)
    });
}

#[test]
fn concurrent_runs_on_azure_compute_a_shared_node_once() {
    remote::on(Azurite::start(), |azurite| {
        remote::concurrent_runs_compute_a_shared_node_once(azurite)
    });
}

#[test]
fn the_first_manifest_published_on_azure_wins_and_stays() {
    remote::on(Azurite::start(), |azurite| {
        remote::the_first_manifest_published_wins_and_stays(azurite)
    });
}

#[test]
fn leases_on_azure_are_renewed_and_expired_ones_taken_over() {
    remote::on(Azurite::start(), |azurite| {
        remote::leases_are_renewed_and_expired_ones_taken_over(azurite)
    });
}

#[test]
fn a_large_file_goes_up_to_azure_in_blocks_and_comes_back_whole() {
    remote::on(Azurite::start(), |azurite| {
        remote::a_large_file_goes_up_in_parts_and_comes_back_whole(azurite)
    });
}

/// The dead worker is configured by the environment alone: the emulator switch.
#[test]
fn a_node_whose_azure_worker_dies_is_taken_over() {
    remote::on(Azurite::start(), |azurite| {
        remote::a_node_whose_worker_dies_is_taken_over(azurite)
    });
}

#[test]
fn an_azure_store_stopped_mid_run_fails_clearly_and_the_rerun_resumes() {
    remote::on(Azurite::start(), |azurite| {
        remote::a_store_stopped_mid_run_fails_clearly_and_the_rerun_resumes(azurite)
    });
}

#[test]
fn sharded_workers_on_azure_join_their_parts_into_the_whole() {
    remote::on(Azurite::start(), |azurite| {
        remote::sharded_workers_join_their_parts_into_the_whole(azurite)
    });
}

/// Fails within seconds, naming the URL and what to check: a dead endpoint, no account, a
/// missing container, a key the server refuses; `azure://` is `az://`.
#[test]
fn a_dead_endpoint_a_missing_container_and_a_wrong_key_fail_clearly_and_fast() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_ports(1)[0];
    let endpoint = format!("http://127.0.0.1:{port}/{ACCOUNT}");
    let dead = Azurite::settings_at(&endpoint);
    let err = fails_fast("az://nowhere/p", &dead);
    assert!(
        err.starts_with(&format!(
            "artifact store az://nowhere/p: cannot open it at {endpoint}: "
        )) && err.contains("check AZURE_STORAGE_ACCOUNT_NAME"),
        "{err}"
    );
    // No account at all: said before any request.
    if std::env::var_os("AZURE_STORAGE_ACCOUNT_NAME").is_none() {
        let none = RemoteOptions {
            azure: pairs(&[("azure_storage_use_emulator", "false")]),
            ..Default::default()
        };
        let err = fails_fast("az://c-1/p", &none);
        assert!(
            err.starts_with("artifact store az://c-1/p: cannot configure the Azure client: ")
                && err.contains("AZURE_STORAGE_ACCOUNT_NAME"),
            "{err}"
        );
    }

    let Some(azurite) = Azurite::start() else {
        return;
    };
    let err = fails_fast(
        "azure://no-such-container/p",
        &azurite.options(&tmp.path().join("c2")),
    );
    assert!(
        err.starts_with("artifact store az://no-such-container/p: cannot open it at http://")
            && err.contains("container `no-such-container` does not exist"),
        "{err}"
    );
    // A key the server does not know (well-formed: another account's).
    let mut bad = azurite.options(&tmp.path().join("c3"));
    bad.azure.retain(|(k, _)| k != "azure_storage_account_key");
    bad.azure.push((
        "azure_storage_account_key".into(),
        "d3JvbmcgYnV0IHdlbGwtZm9ybWVkIGJhc2U2NCBrZXkgZm9yIHRlc3Rpbmc=".into(),
    ));
    let err = fails_fast(&azurite.url("p"), &bad);
    assert!(
        err.starts_with("artifact store az://picie/p: cannot open it at http://")
            && err.contains("AuthorizationFailure"),
        "{err}"
    );
    // `azure://` names the same store as `az://`.
    let store = Store::open_with(
        Path::new("azure://picie/p/"),
        &azurite.options(&tmp.path().join("c4")),
    )
    .unwrap();
    assert_eq!(store.location(), Path::new("az://picie/p"));
}
