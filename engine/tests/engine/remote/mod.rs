//! Stores on object storage (`s3://`, `az://`): the helpers and the scenarios that the
//! tests of each service run against a real server of their own (SeaweedFS, Azurite).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutPayload, UpdateVersion};
use picie_engine::artifact::Manifest;
use picie_engine::remote::{LeaseBody, RemoteOptions};
use picie_engine::store::{Lookup, Store};
use picie_engine::testing::ran;
use picie_engine::{Plan, RunOptions};

use crate::common::{assert_computed_once, manifest, registry, u64_batch, values_of};

mod integrity;
pub use integrity::*;

/// A server of an object store started for one test, its bucket (container) there.
pub trait Server: Sync {
    /// The store URL of `prefix` in its bucket.
    fn url(&self, prefix: &str) -> String;
    /// Its endpoint and credentials, as options.
    fn settings(&self) -> RemoteOptions;
    /// Options for one "machine": its own cache, a short lease ttl.
    fn options(&self, cache: &Path) -> RemoteOptions {
        RemoteOptions {
            cache: Some(cache.to_path_buf()),
            lease_ttl: Some(Duration::from_secs(2)),
            ..self.settings()
        }
    }
    /// The same settings as environment variables, for child processes.
    fn env(&self) -> Vec<(String, String)>;
    /// A raw client on its bucket.
    fn raw(&self) -> Raw;
    /// Stops it; its data stays.
    fn stop(&mut self);
    /// Starts it (again, on the same data and port) and waits until its store opens.
    fn launch(&mut self);
}

/// Runs `scenario` on `server`, or nothing when it did not start (it said why).
pub fn on<S: Server>(server: Option<S>, scenario: impl FnOnce(&mut S)) {
    if let Some(mut server) = server {
        scenario(&mut server);
    }
}

/// Settings as [`RemoteOptions`] holds them.
pub fn pairs(settings: &[(&str, &str)]) -> Vec<(String, String)> {
    settings
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Opens the store at `url`, which must fail within seconds: the error.
pub fn fails_fast(url: &str, opts: &RemoteOptions) -> String {
    let t = Instant::now();
    let err = Store::open_with(Path::new(url), opts)
        .err()
        .unwrap_or_else(|| panic!("{url} opened"))
        .to_string();
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "{:?}: {err}",
        t.elapsed()
    );
    err
}

/// `name` on PATH, else at `in_project` (a path in the project's git-ignored .venv).
pub fn program(name: &str, in_project: &str) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|w| w.is_file())
    });
    on_path.or_else(|| {
        let local = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(in_project);
        local.is_file().then_some(local)
    })
}

/// Waits until `server`'s store opens (its probe passes); panics after 90 s, pointing
/// at `dir` (where its log is).
pub fn wait_until_up(server: &impl Server, what: &str, dir: &Path) {
    let t = Instant::now();
    loop {
        let cache = dir.join("probe-cache");
        match Store::open_with(Path::new(&server.url("probe")), &server.options(&cache)) {
            Ok(_) => return,
            Err(e) if t.elapsed() > Duration::from_secs(90) => {
                panic!("{what} did not come up: {e}; see {}", dir.display())
            }
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// `n` ports free now (held together so that they differ).
pub fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// A raw client on a server's bucket (container), to look at and forge objects as another
/// writer would.
pub struct Raw {
    store: Arc<dyn ObjectStore>,
    rt: tokio::runtime::Runtime,
}

impl Raw {
    pub fn new(store: impl ObjectStore) -> Raw {
        Raw {
            store: Arc::new(store),
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        }
    }
    pub fn list(&self, prefix: &str) -> Vec<String> {
        use futures_util::StreamExt;
        let p = ObjectPath::from(prefix);
        let mut v: Vec<String> = self.rt.block_on(async {
            self.store
                .list(Some(&p))
                .map(|m| m.unwrap().location.to_string())
                .collect()
                .await
        });
        v.sort();
        v
    }
    pub fn get(&self, path: &str) -> Option<Vec<u8>> {
        let p = ObjectPath::from(path);
        self.rt.block_on(async {
            match self.store.get(&p).await {
                Ok(g) => Some(g.bytes().await.unwrap().to_vec()),
                Err(object_store::Error::NotFound { .. }) => None,
                Err(e) => panic!("{e}"),
            }
        })
    }
    /// Deletes one object (a missing one is fine).
    pub fn delete(&self, path: &str) {
        let p = ObjectPath::from(path);
        match self.rt.block_on(self.store.delete(&p)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    /// Deletes every object under `prefix`: the store as a new, empty bucket would be.
    pub fn delete_all(&self, prefix: &str) {
        for p in self.list(prefix) {
            self.delete(&p);
        }
    }
    pub fn put(
        &self,
        path: &str,
        bytes: Vec<u8>,
        mode: PutMode,
    ) -> Result<(), object_store::Error> {
        let p = ObjectPath::from(path);
        self.rt
            .block_on(
                self.store
                    .put_opts(&p, PutPayload::from(bytes), mode.into()),
            )
            .map(|_| ())
    }
}

/// A pipeline file in `dir` whose store is `store`: `numbers -> scale -> sum`, `acc`, and
/// a slow writer read by `after` (the shared node of concurrent runs).
pub fn pipeline(dir: &Path, name: &str, store: &str, slow_ms: u64, add: u64) -> PathBuf {
    let text = format!(
        "name: {name}
seed: 1
device: cpu
store: {store}
stages:
  - name: src
    kind: numbers
    params: {{count: 10}}
  - name: x
    kind: scale
    params: {{factor: 2}}
    inputs: {{numbers: src.numbers}}
  - name: s
    kind: sum
    inputs: {{numbers: x.numbers}}
  - name: a
    kind: acc
    inputs: {{base: src.table}}
  - name: slow
    kind: slow
    params: {{batches: 20, rows: 2000, delay_ms: {slow_ms}}}
  - name: after
    kind: acc
    inputs: {{base: slow.table}}
    params: {{add: {add}}}
"
    );
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn values(store: &Store, plan: &Plan, node: &str, output: &str) -> Vec<u64> {
    let i = plan.index_of(node).unwrap();
    match store.lookup(&plan.nodes[i].output_keys[output]) {
        Lookup::Valid(a) => values_of(&a.read_all().unwrap()),
        other => panic!("{node}.{output}: {other:?}"),
    }
}

const OUTPUTS: [(&str, &str); 5] = [
    ("src", "table"),
    ("s", "total"),
    ("a", "total"),
    ("slow", "table"),
    ("after", "total"),
];

/// A pipeline run on the store matches a local run, and is cached for every machine (a
/// fresh cache computes nothing); records are shared, a corrupt remote file is caught.
pub fn a_pipeline_is_cached_for_every_machine_and_matches_a_local_run(server: &impl Server) {
    let tmp = tempfile::tempdir().unwrap();
    let url = server.url("demo");
    let plan = Plan::load(&pipeline(tmp.path(), "t", &url, 0, 1), &registry()).unwrap();
    assert_eq!(plan.spec.store, PathBuf::from(&url));

    let machine_a =
        Store::open_with(&plan.spec.store, &server.options(&tmp.path().join("a"))).unwrap();
    assert!(machine_a.is_remote());
    let r1 = picie_engine::run(&plan, &machine_a, &RunOptions::default()).unwrap();
    assert_eq!(ran(&r1), ["a", "after", "s", "slow", "src", "x"]);

    // Published under the prefix, manifests last; no lease is left behind.
    let raw = server.raw();
    let objects = raw.list("demo/objects");
    let key = &plan.nodes[plan.index_of("s").unwrap()].output_keys["total"];
    assert!(
        objects.contains(&format!("demo/objects/{}/{key}/manifest.json", &key[..2])),
        "{objects:?}"
    );
    assert!(raw.list("demo/claims").is_empty());
    assert!(raw.get("demo/runs/t/RUNNING.json").is_none());
    assert!(raw.get("demo/runs/t/latest.json").is_some());

    // The same machine again, and a fresh machine (empty cache): nothing is computed.
    let again = picie_engine::run(&plan, &machine_a, &RunOptions::default()).unwrap();
    assert!(ran(&again).is_empty(), "{:?}", again.nodes);
    let machine_b =
        Store::open_with(&plan.spec.store, &server.options(&tmp.path().join("b"))).unwrap();
    let fresh = picie_engine::run(&plan, &machine_b, &RunOptions::default()).unwrap();
    assert!(ran(&fresh).is_empty(), "{:?}", fresh.nodes);
    assert!(tmp
        .path()
        .join("b/objects")
        .read_dir()
        .unwrap()
        .next()
        .is_some());

    // The same results as a run on a local store.
    let local_dir = tempfile::tempdir().unwrap();
    let local_plan =
        Plan::load(&pipeline(local_dir.path(), "t", "store", 0, 1), &registry()).unwrap();
    let local = Store::open(&local_plan.spec.store).unwrap();
    picie_engine::run(&local_plan, &local, &RunOptions::default()).unwrap();
    for (node, out) in OUTPUTS {
        assert_eq!(
            values(&machine_b, &plan, node, out),
            values(&local, &local_plan, node, out),
            "{node}.{out}"
        );
    }

    // Records are read back through the store on any machine (inspect and report do so).
    let records = machine_b.run_records().unwrap();
    assert_eq!(records.len(), 1);
    assert!(records[0].ok);
    let sweep = picie_engine::seeds::SweepRecord::new("t", &plan.spec.file, &[1]);
    machine_a.write_sweep_record(&sweep).unwrap();
    let machine_c =
        Store::open_with(&plan.spec.store, &server.options(&tmp.path().join("c"))).unwrap();
    assert_eq!(machine_c.sweep_record("t-seeds").unwrap(), Some(sweep));
    assert_eq!(machine_c.list().unwrap().len(), OUTPUTS.len());

    // A corrupt remote artifact is reported as such to a machine without it.
    let slow = &plan.nodes[plan.index_of("slow").unwrap()].output_keys["table"];
    let part = raw
        .list(&format!("demo/objects/{}/{slow}", &slow[..2]))
        .into_iter()
        .find(|p| p.ends_with(".parquet"))
        .unwrap();
    let mut bytes = raw.get(&part).unwrap();
    let last = bytes.len() - 20;
    bytes[last] ^= 0xff;
    raw.put(&part, bytes, PutMode::Overwrite).unwrap();
    let machine_d =
        Store::open_with(&plan.spec.store, &server.options(&tmp.path().join("d"))).unwrap();
    match machine_d.lookup(slow) {
        Lookup::Corrupt(why) => assert!(why.contains("checksum"), "{why}"),
        other => panic!("{other:?}"),
    }
    // What every machine's record names is checked in the store: the corrupt file is found.
    let found = machine_d.verify_records().unwrap().findings;
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].problem.contains("checksum"), "{found:?}");
}

/// Two runs on two "machines" sharing a node compute it once.
pub fn concurrent_runs_compute_a_shared_node_once(server: &impl Server) {
    let tmp = tempfile::tempdir().unwrap();
    let url = server.url("shared");
    let plans: Vec<Plan> = [("a", 1), ("b", 2)]
        .iter()
        .map(|(name, add)| {
            Plan::load(&pipeline(tmp.path(), name, &url, 100, *add), &registry()).unwrap()
        })
        .collect();
    let key = |p: &Plan, n: &str| p.nodes[p.index_of(n).unwrap()].key.clone();
    assert_eq!(key(&plans[0], "slow"), key(&plans[1], "slow"));
    assert_ne!(key(&plans[0], "after"), key(&plans[1], "after"));
    // Two "machines": each its own cache; both start together, and `slow` takes 2 s.
    let barrier = Barrier::new(plans.len());
    let reports: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = plans
            .iter()
            .map(|p| {
                let opts = server.options(&tmp.path().join(format!("cache-{}", p.spec.name)));
                let barrier = &barrier;
                s.spawn(move || {
                    let store = Store::open_with(&p.spec.store, &opts).unwrap();
                    barrier.wait();
                    picie_engine::run(p, &store, &RunOptions::default())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap().unwrap())
            .collect()
    });
    for node in ["slow", "src", "a"] {
        let computed = reports
            .iter()
            .filter(|r| ran(r).contains(&node.to_string()))
            .count();
        assert_eq!(
            computed,
            1,
            "{node}: {:?}",
            reports.iter().map(|r| &r.nodes).collect::<Vec<_>>()
        );
    }
    let store =
        Store::open_with(Path::new(&url), &server.options(&tmp.path().join("reader"))).unwrap();
    for (p, add) in plans.iter().zip([1, 2]) {
        let slow = values(&store, p, "slow", "table");
        assert_eq!(
            values(&store, p, "after", "total"),
            vec![slow.iter().sum::<u64>() + add]
        );
    }
    assert_records_complete(server, &url);
}

/// Writers of one key racing to publish: one conditional create of the manifest wins,
/// every other writer gets the winner's artifact, and the winner's manifest stays.
pub fn the_first_manifest_published_wins_and_stays(server: &impl Server) {
    let tmp = tempfile::tempdir().unwrap();
    let url = server.url("race");
    let key = "ab".to_string() + &"0".repeat(62);
    let writers = 6;
    let barrier = Barrier::new(writers);
    let results: Vec<Manifest> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                let opts = server.options(&tmp.path().join(format!("w{w}")));
                let (key, url, barrier) = (&key, &url, &barrier);
                s.spawn(move || {
                    let store = Store::open_with(Path::new(url), &opts).unwrap();
                    let mut writer = store.begin(key).unwrap();
                    // The same content (the key promises it), a manifest that tells writers apart.
                    writer.write(&u64_batch(&[1, 2, 3])).unwrap();
                    writer.set_meta("writer", w);
                    barrier.wait();
                    let a = store.commit(writer, manifest(key), false).unwrap();
                    a.manifest.clone()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let raw = server.raw();
    let published: Manifest = serde_json::from_slice(
        &raw.get(&format!("race/objects/ab/{key}/manifest.json"))
            .unwrap(),
    )
    .unwrap();
    for m in &results {
        assert_eq!(m.meta["writer"], published.meta["writer"], "{results:?}");
    }
    // A second conditional create loses and leaves the first in place.
    let path = format!("race/objects/ab/{key}/manifest.json");
    let err = raw.put(&path, b"{}".to_vec(), PutMode::Create).unwrap_err();
    assert!(
        matches!(err, object_store::Error::AlreadyExists { .. }),
        "{err}"
    );
    let now: Manifest = serde_json::from_slice(&raw.get(&path).unwrap()).unwrap();
    assert_eq!(now.meta["writer"], published.meta["writer"]);
    // It verifies on a machine that never saw it.
    let fresh =
        Store::open_with(Path::new(&url), &server.options(&tmp.path().join("fresh"))).unwrap();
    assert!(matches!(fresh.lookup(&key), Lookup::Valid(_)));

    // Files without a manifest (an interrupted upload) are no artifact.
    let half = "cd".to_string() + &"1".repeat(62);
    raw.put(
        &format!("race/objects/cd/{half}/part-0.parquet"),
        b"x".to_vec(),
        PutMode::Overwrite,
    )
    .unwrap();
    assert!(matches!(fresh.lookup(&half), Lookup::Missing));
    assert!(fresh
        .list()
        .unwrap()
        .iter()
        .all(|a| a.as_ref().map_or(true, |a| a.manifest.key != half)));
}

/// Leases: a live one (renewed past its ttl) is refused with its holder, a dead worker's
/// (no longer renewed, expired) is taken over, and a released one is free at once.
pub fn leases_are_renewed_and_expired_ones_taken_over(server: &impl Server) {
    let tmp = tempfile::tempdir().unwrap();
    let url = server.url("leases");
    let a = Store::open_with(Path::new(&url), &server.options(&tmp.path().join("a"))).unwrap();
    let b = Store::open_with(Path::new(&url), &server.options(&tmp.path().join("b"))).unwrap();
    let held = a.claim("k1", "run `a`").unwrap().unwrap();
    // Three times the ttl: only renewal keeps it.
    std::thread::sleep(Duration::from_secs(6));
    let who = b.claim("k1", "run `b`").unwrap().err().unwrap();
    assert!(
        who.contains("run `a`") && who.contains("lease until"),
        "{who}"
    );
    drop(held);
    let mine = b.claim("k1", "run `b`").unwrap();
    assert!(mine.is_ok(), "released, yet refused");

    // A dead worker: its lease object stays, unrenewed, past its expiry.
    let raw = server.raw();
    let dead = |expires_ms: u64| {
        serde_json::to_vec(&LeaseBody {
            holder: "pid 1 on elsewhere, run `dead`".into(),
            token: "dead".into(),
            expires_ms,
            expires: String::new(),
            protects: Vec::new(),
        })
        .unwrap()
    };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    raw.put(
        "leases/claims/k2.json",
        dead(now_ms + 60_000),
        PutMode::Overwrite,
    )
    .unwrap();
    assert!(
        a.claim("k2", "run `a`").unwrap().is_err(),
        "a live lease was taken"
    );
    raw.put(
        "leases/claims/k2.json",
        dead(now_ms - 1),
        PutMode::Overwrite,
    )
    .unwrap();
    let took = a.claim("k2", "run `a`").unwrap();
    assert!(took.is_ok(), "{:?}", took.err());
    let body: LeaseBody =
        serde_json::from_slice(&raw.get("leases/claims/k2.json").unwrap()).unwrap();
    assert!(
        body.holder.contains("run `a`") && !body.expired(),
        "{body:?}"
    );
    // What renewals and takeovers rest on: an update naming a version (ETag, GCS
    // generation) that is no longer there is refused.
    let stale = UpdateVersion {
        e_tag: Some("\"0123456789abcdef\"".into()),
        version: Some("1".into()),
    };
    let err = raw
        .put(
            "leases/claims/k2.json",
            dead(now_ms - 1),
            PutMode::Update(stale),
        )
        .unwrap_err();
    assert!(
        matches!(err, object_store::Error::Precondition { .. }),
        "{err}"
    );

    // The run-name lease: a second run of one name is refused while the first holds it.
    let lease = a.enter_run("t", "run `t` on a").unwrap();
    let err = b.enter_run("t", "run `t` on b").err().unwrap().to_string();
    assert!(
        err.contains("run `t` is already running") && err.contains("on a"),
        "{err}"
    );
    assert_eq!(b.running().len(), 1);
    drop(lease);
    assert!(b.running().is_empty());
}

/// A file larger than a part (16 MiB) goes up as a multipart upload and comes back
/// whole on another machine.
pub fn a_large_file_goes_up_in_parts_and_comes_back_whole(server: &impl Server) {
    let tmp = tempfile::tempdir().unwrap();
    let url = server.url("large");
    let key = "cd".to_string() + &"2".repeat(62);
    let a = Store::open_with(Path::new(&url), &server.options(&tmp.path().join("a"))).unwrap();
    let mut writer = a.begin(&key).unwrap();
    // 20 MiB that do not repeat.
    let bytes: Vec<u8> = (0..20u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(writer.file_path("big.bin").unwrap(), &bytes).unwrap();
    a.commit(writer, manifest(&key), false).unwrap();
    let b = Store::open_with(Path::new(&url), &server.options(&tmp.path().join("b"))).unwrap();
    match b.lookup(&key) {
        Lookup::Valid(art) => {
            let back = std::fs::read(art.file("big.bin").unwrap()).unwrap();
            assert!(back == bytes, "{} bytes came back", back.len());
        }
        other => panic!("{other:?}"),
    }
}

/// Not a test on its own: the body the dead-worker scenario runs in a child process,
/// configured by the environment alone ([`Server::env`]); ignored, so that it never counts
/// as a passing test (the parent runs it with `--ignored --exact`).
#[test]
#[ignore = "child process: run by a_node_whose_*_worker_dies_is_taken_over"]
fn child_entry() {
    let file = std::env::var("PICIE_TEST_REMOTE_CHILD")
        .expect("PICIE_TEST_REMOTE_CHILD: run by its parent test, not alone");
    let plan = Plan::load(Path::new(&file), &registry()).unwrap();
    let store = Store::open(&plan.spec.store).unwrap();
    picie_engine::run(&plan, &store, &RunOptions::default()).unwrap();
}

/// A run waiting for a node that a process on another "machine" computes takes it over
/// once that process is killed and its claim expires, and computes it right.
pub fn a_node_whose_worker_dies_is_taken_over(server: &impl Server) {
    let tmp = tempfile::tempdir().unwrap();
    let url = server.url("dead");
    let child_file = pipeline(tmp.path(), "child", &url, 200, 1);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "remote::child_entry",
            "--test-threads=1",
        ])
        .env("PICIE_TEST_REMOTE_CHILD", &child_file)
        .env("PICIE_CACHE", tmp.path().join("child-cache"))
        .envs(server.env())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let plan = Plan::load(&pipeline(tmp.path(), "other", &url, 200, 2), &registry()).unwrap();
    let slow_claim = format!(
        "dead/claims/{}.json",
        plan.nodes[plan.index_of("slow").unwrap()].key
    );
    let raw = server.raw();
    let t = Instant::now();
    while raw.get(&slow_claim).is_none() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the child never claimed `slow`"
        );
        assert!(child.try_wait().unwrap().is_none(), "the child ended first");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // Its claim is still there, unexpired: this run must wait, then take the node over.
    assert!(raw.get(&slow_claim).is_some());
    let store =
        Store::open_with(&plan.spec.store, &server.options(&tmp.path().join("cache"))).unwrap();
    let report = picie_engine::run(&plan, &store, &RunOptions::default()).unwrap();
    assert!(
        ran(&report).contains(&"slow".to_string()),
        "{:?}",
        report.nodes
    );
    // This run released its claims; what is left is the killed child's, expired.
    for claim in raw.list("dead/claims") {
        let body: LeaseBody = serde_json::from_slice(&raw.get(&claim).unwrap()).unwrap();
        assert!(
            body.holder.contains("run `child`") && body.expired(),
            "{body:?}"
        );
    }
    let local_dir = tempfile::tempdir().unwrap();
    let local_plan = Plan::load(
        &pipeline(local_dir.path(), "other", "store", 0, 2),
        &registry(),
    )
    .unwrap();
    let local = Store::open(&local_plan.spec.store).unwrap();
    picie_engine::run(&local_plan, &local, &RunOptions::default()).unwrap();
    assert_eq!(
        values(&store, &plan, "after", "total"),
        values(&local, &local_plan, "after", "total")
    );
    assert_records_complete(server, &url);
}

/// The server stops while a run computes: the run fails naming the store; once the server
/// is back, the same run resumes from what was committed.
pub fn a_store_stopped_mid_run_fails_clearly_and_the_rerun_resumes(server: &mut impl Server) {
    let tmp = tempfile::tempdir().unwrap();
    let url = server.url("stop");
    let plan = Plan::load(&pipeline(tmp.path(), "t", &url, 150, 1), &registry()).unwrap();
    let opts = server.options(&tmp.path().join("cache"));
    let store = Store::open_with(&plan.spec.store, &opts).unwrap();
    let quick: Vec<String> = [("src", "table"), ("s", "total"), ("a", "total")]
        .iter()
        .map(|(n, o)| {
            let key = &plan.nodes[plan.index_of(n).unwrap()].output_keys[*o];
            format!("stop/objects/{}/{key}/manifest.json", &key[..2])
        })
        .collect();
    let raw = server.raw();
    let err = std::thread::scope(|s| {
        let run = s.spawn(|| picie_engine::run(&plan, &store, &RunOptions::default()));
        // `src`, `s` and `a` commit at once; `slow` takes 3 s.
        let t = Instant::now();
        while quick.iter().any(|m| raw.get(m).is_none()) {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "src, s, a never committed"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server.stop();
        run.join().unwrap().expect_err("the run failed")
    });
    let msg = err.to_string();
    assert!(msg.contains(&format!("artifact store {url}")), "{msg}");

    server.launch();
    // The dead run's lease expires (ttl 2 s) before the same name may run again; and a
    // restarted server may answer 500 for a moment after it accepts connections.
    let t = Instant::now();
    let report = loop {
        match picie_engine::run(&plan, &store, &RunOptions::default()) {
            Err(picie_engine::Error::Store(
                picie_engine::store::StoreError::RunInProgress { .. }
                | picie_engine::store::StoreError::Remote { .. },
            )) if t.elapsed() < Duration::from_secs(20) => {
                std::thread::sleep(Duration::from_millis(500))
            }
            other => break other.unwrap(),
        }
    };
    let done = ran(&report);
    assert!(!done.contains(&"src".to_string()), "{:?}", report.nodes);
    assert!(done.contains(&"slow".to_string()), "{:?}", report.nodes);
    let rerun = picie_engine::run(&plan, &store, &RunOptions::default()).unwrap();
    assert!(ran(&rerun).is_empty(), "{:?}", rerun.nodes);
    assert_records_complete(server, &url);
}

/// Workers of a sharded run, each its own machine (cache): every part computed once,
/// and the joined table byte for byte the one a single process stores locally.
pub fn sharded_workers_join_their_parts_into_the_whole(server: &impl Server) {
    let tmp = tempfile::tempdir().unwrap();
    let url = server.url("sharded");
    let yaml = |store: &str| {
        let p = tmp.path().join(format!("p-{}.yaml", store.len()));
        std::fs::write(
            &p,
            format!(
                "name: w\nseed: 1\ndevice: cpu\nstore: {store}\nstages:
  - name: n
    kind: numbers
    params: {{count: 300000, batch: 3331, delay_ms: 20}}
  - name: a
    kind: acc
    inputs: {{base: n.table}}
"
            ),
        )
        .unwrap();
        p
    };
    let local = Plan::load(
        &yaml(&tmp.path().join("local").display().to_string()),
        &registry(),
    )
    .unwrap();
    let local_store = Store::open(&local.spec.store).unwrap();
    picie_engine::run(&local, &local_store, &RunOptions::default()).unwrap();
    let remote = yaml(&url);
    let barrier = Barrier::new(2);
    let reports: Vec<Vec<String>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|i| {
                let (remote, barrier, tmp) = (&remote, &barrier, &tmp);
                s.spawn(move || {
                    let shard = picie_engine::Shard::new(i, 2).unwrap();
                    let plan = Plan::load(remote, &registry())
                        .unwrap()
                        .into_sharded(shard)
                        .0;
                    let opts = server.options(&tmp.path().join(format!("cache-{i}")));
                    let store = Store::open_with(&plan.spec.store, &opts).unwrap();
                    barrier.wait();
                    ran(&picie_engine::run(&plan, &store, &RunOptions::default()).unwrap())
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_computed_once(&reports, &["n", "a", "n[part 0/2]", "n[part 1/2]"]);
    let plan = Plan::load(&remote, &registry()).unwrap();
    let store =
        Store::open_with(Path::new(&url), &server.options(&tmp.path().join("reader"))).unwrap();
    let files = |store: &Store, plan: &Plan| {
        let i = plan.index_of("n").unwrap();
        match store.lookup(&plan.nodes[i].output_keys["table"]) {
            Lookup::Valid(a) => a
                .manifest
                .files
                .iter()
                .map(|f| f.blake3.clone())
                .collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(files(&store, &plan), files(&local_store, &local));
    assert_records_complete(server, &url);
}
