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

/// Every artifact that every run record of the store at `url` names is there, whole, as a
/// machine that never saw it reads it (a fresh cache): `picie verify`'s check.
pub fn assert_records_complete(server: &impl Server, url: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open_with(Path::new(url), &server.options(&tmp.path().join("v"))).unwrap();
    let report = store.verify_records().unwrap();
    assert!(report.records > 0, "{url}: no run record");
    assert!(report.findings.is_empty(), "{url}: {:?}", report.findings);
}

/// The key of a node's output.
fn key_of(plan: &Plan, node: &str, output: &str) -> String {
    plan.nodes[plan.index_of(node).unwrap()].output_keys[output].clone()
}

/// `PREFIX/objects/ab/KEY/` of a key.
fn folder(prefix: &str, key: &str) -> String {
    format!("{prefix}/objects/{}/{key}/", &key[..2])
}

fn all_values(store: &Store, plan: &Plan) -> Vec<Vec<u64>> {
    OUTPUTS
        .iter()
        .map(|(n, o)| values(store, plan, n, o))
        .collect()
}

/// The bucket is emptied (a new bucket at the same URL) while this machine's cache keeps
/// every artifact: the next run computes nothing and publishes everything back, and a
/// machine with a fresh cache then reads every artifact, with the first run's values.
pub fn an_emptied_store_gets_its_artifacts_back_from_the_cache(server: &impl Server) {
    let tmp = tempfile::tempdir().unwrap();
    let url = server.url("empty");
    let plan = Plan::load(&pipeline(tmp.path(), "t", &url, 0, 1), &registry()).unwrap();
    let opts = server.options(&tmp.path().join("a"));
    let a = Store::open_with(&plan.spec.store, &opts).unwrap();
    picie_engine::run(&plan, &a, &RunOptions::default()).unwrap();
    let before = all_values(&a, &plan);
    drop(a);

    let raw = server.raw();
    raw.delete_all("empty");
    assert!(raw.list("empty").is_empty());
    let a = Store::open_with(&plan.spec.store, &opts).unwrap();
    // A plan writes nothing: what only the cache holds shows as not cached.
    let decided = picie_engine::exec::decide(&plan, &a, &RunOptions::default(), false).unwrap();
    assert!(
        decided.iter().all(|d| d.why != picie_engine::Why::Cached),
        "{decided:?}"
    );
    assert!(raw.list("empty/objects").is_empty());
    let again = picie_engine::run(&plan, &a, &RunOptions::default()).unwrap();
    assert!(ran(&again).is_empty(), "{:?}", again.nodes);
    for (n, o) in OUTPUTS {
        let key = key_of(&plan, n, o);
        assert!(
            raw.get(&format!("{}manifest.json", folder("empty", &key)))
                .is_some(),
            "{n}.{o} was not published back"
        );
    }
    assert_records_complete(server, &url);

    let b = Store::open_with(&plan.spec.store, &server.options(&tmp.path().join("b"))).unwrap();
    let fresh = picie_engine::run(&plan, &b, &RunOptions::default()).unwrap();
    assert!(ran(&fresh).is_empty(), "{:?}", fresh.nodes);
    assert_eq!(all_values(&b, &plan), before);
}

/// Objects deleted from the bucket between two runs: a whole artifact, a manifest alone
/// and one file of an artifact. The machine that cached them puts each back; a machine
/// without them recomputes what is gone.
pub fn objects_deleted_between_runs_are_put_back_or_recomputed(server: &impl Server) {
    let tmp = tempfile::tempdir().unwrap();
    let url = server.url("deleted");
    let plan = Plan::load(&pipeline(tmp.path(), "t", &url, 0, 1), &registry()).unwrap();
    let opts = server.options(&tmp.path().join("a"));
    let a = Store::open_with(&plan.spec.store, &opts).unwrap();
    picie_engine::run(&plan, &a, &RunOptions::default()).unwrap();
    let before = all_values(&a, &plan);
    let raw = server.raw();
    // `s`: everything; `a`: its manifest; `slow`: one of its files.
    raw.delete_all(&folder("deleted", &key_of(&plan, "s", "total")));
    raw.delete(&format!(
        "{}manifest.json",
        folder("deleted", &key_of(&plan, "a", "total"))
    ));
    let slow = folder("deleted", &key_of(&plan, "slow", "table"));
    let parts: Vec<String> = raw
        .list(&slow)
        .into_iter()
        .filter(|p| p.ends_with(".parquet"))
        .collect();
    assert!(parts.len() > 1, "{parts:?}");
    raw.delete(&parts[1]);

    let again = picie_engine::run(&plan, &a, &RunOptions::default()).unwrap();
    assert!(ran(&again).is_empty(), "{:?}", again.nodes);
    assert!(raw.get(&parts[1]).is_some(), "the lost file is back");
    assert_records_complete(server, &url);
    let c = Store::open_with(&plan.spec.store, &server.options(&tmp.path().join("c"))).unwrap();
    let fresh = picie_engine::run(&plan, &c, &RunOptions::default()).unwrap();
    assert!(ran(&fresh).is_empty(), "{:?}", fresh.nodes);
    assert_eq!(all_values(&c, &plan), before);

    // A machine without the artifact (a fresh cache) recomputes it.
    raw.delete_all(&folder("deleted", &key_of(&plan, "after", "total")));
    let d = Store::open_with(&plan.spec.store, &server.options(&tmp.path().join("d"))).unwrap();
    let r = picie_engine::run(&plan, &d, &RunOptions::default()).unwrap();
    assert_eq!(ran(&r), ["after"], "{:?}", r.nodes);
    assert_eq!(all_values(&d, &plan), before);
    assert_records_complete(server, &url);
}

/// A cached copy that no longer matches its manifest while the store's copy is sound: the
/// store's copy wins (nothing recomputed, nothing written to the store) and the cache is
/// repaired.
pub fn a_corrupt_cached_copy_gives_way_to_the_store(server: &impl Server) {
    let tmp = tempfile::tempdir().unwrap();
    let url = server.url("corrupt-cache");
    let plan = Plan::load(&pipeline(tmp.path(), "t", &url, 0, 1), &registry()).unwrap();
    let opts = server.options(&tmp.path().join("a"));
    let a = Store::open_with(&plan.spec.store, &opts).unwrap();
    picie_engine::run(&plan, &a, &RunOptions::default()).unwrap();
    let key = key_of(&plan, "slow", "table");
    let raw = server.raw();
    let stored: Vec<(String, Vec<u8>)> = raw
        .list(&folder("corrupt-cache", &key))
        .into_iter()
        .map(|p| {
            let b = raw.get(&p).unwrap();
            (p, b)
        })
        .collect();
    let cached = a.object_dir(&key);
    let part = std::fs::read_dir(&cached)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "parquet"))
        .unwrap();
    let mut bytes = std::fs::read(&part).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0xff;
    std::fs::write(&part, &bytes).unwrap();

    let again = picie_engine::run(&plan, &a, &RunOptions::default()).unwrap();
    assert!(ran(&again).is_empty(), "{:?}", again.nodes);
    // The cache holds the store's bytes again; the store is as it was.
    let name = part.file_name().unwrap().to_str().unwrap();
    let (_, good) = stored.iter().find(|(p, _)| p.ends_with(name)).unwrap();
    assert!(
        std::fs::read(&part).unwrap() == *good,
        "the cache was not repaired"
    );
    for (p, b) in &stored {
        assert!(raw.get(p).as_ref() == Some(b), "{p} changed in the store");
    }
    assert_records_complete(server, &url);
}

/// A run that fails part-way records what it did, and its record names only artifacts the
/// store holds (a node that never ran names nothing).
pub fn a_failed_runs_record_names_only_what_the_store_holds(server: &impl Server) {
    let tmp = tempfile::tempdir().unwrap();
    let url = server.url("failed");
    let file = tmp.path().join("f.yaml");
    std::fs::write(
        &file,
        format!(
            "name: f\nseed: 1\ndevice: cpu\nstore: {url}\nstages:
  - name: ok
    kind: numbers
  - name: sum
    kind: sum
    inputs: {{numbers: ok.numbers}}
  - name: bad
    kind: numbers
    params: {{count: 10, start: 100, fail_at: 105, delay_ms: 50}}
  - name: after
    kind: acc
    inputs: {{base: bad.table}}
"
        ),
    )
    .unwrap();
    let plan = Plan::load(&file, &registry()).unwrap();
    let store = Store::open_with(&plan.spec.store, &server.options(&tmp.path().join("a"))).unwrap();
    picie_engine::run(&plan, &store, &RunOptions::default()).unwrap_err();
    let record = store
        .run_records()
        .unwrap()
        .into_iter()
        .find(|r| r.name == "f")
        .unwrap();
    assert!(!record.ok);
    let named: Vec<&String> = record
        .nodes
        .iter()
        .flat_map(|n| n.outputs.values())
        .collect();
    assert!(named.contains(&&key_of(&plan, "ok", "table")), "{record:?}");
    for n in ["bad", "after"] {
        let node = record.nodes.iter().find(|r| r.name == n).unwrap();
        assert!(node.outputs.is_empty(), "{node:?}");
    }
    assert_records_complete(server, &url);
}

/// gc on object storage: dry run first; it keeps what records name and what a running
/// run's lease protects, deletes the rest (manifest first), and one gc at a time.
pub fn gc_keeps_what_records_name_and_running_runs_protect(server: &impl Server) {
    let tmp = tempfile::tempdir().unwrap();
    let url = server.url("gc");
    let plan = Plan::load(&pipeline(tmp.path(), "t", &url, 0, 1), &registry()).unwrap();
    let a = Store::open_with(&plan.spec.store, &server.options(&tmp.path().join("a"))).unwrap();
    picie_engine::run(&plan, &a, &RunOptions::default()).unwrap();
    // Two artifacts no record names.
    let loose: Vec<String> = ["ab", "cd"]
        .iter()
        .map(|p| {
            let key = p.to_string() + &"7".repeat(62);
            let mut w = a.begin(&key).unwrap();
            w.write(&u64_batch(&[1, 2])).unwrap();
            a.commit(w, manifest(&key), false).unwrap();
            key
        })
        .collect();
    let raw = server.raw();
    let g = Store::open_with(Path::new(&url), &server.options(&tmp.path().join("g"))).unwrap();
    let lock = g.lock("gc").unwrap();
    let err = a.lock("gc").err().unwrap().to_string();
    assert!(err.contains("in use") && err.contains("gc"), "{err}");
    let dry = g.gc(&lock, true).unwrap();
    assert_eq!((dry.removed, dry.kept), (2, OUTPUTS.len()), "{dry:?}");
    for k in &loose {
        assert!(raw
            .get(&format!("{}manifest.json", folder("gc", k)))
            .is_some());
    }
    drop(lock);

    // A running run's lease protects the first.
    let lease = a
        .enter_run_protecting("live", "run `live`", &loose[..1])
        .unwrap();
    let lock = g.lock("gc").unwrap();
    let r = g.gc(&lock, false).unwrap();
    assert_eq!((r.removed, r.kept), (1, OUTPUTS.len() + 1), "{r:?}");
    assert!(raw.list(&folder("gc", &loose[1])).is_empty());
    assert!(raw
        .get(&format!("{}manifest.json", folder("gc", &loose[0])))
        .is_some());
    drop(lock);
    drop(lease);
    let lock = g.lock("gc").unwrap();
    let r = g.gc(&lock, false).unwrap();
    assert_eq!((r.removed, r.kept), (1, OUTPUTS.len()), "{r:?}");
    assert!(raw.list(&folder("gc", &loose[0])).is_empty());
    drop(lock);
    assert_records_complete(server, &url);
    // The records' run still computes nothing, from a fresh cache too.
    let b = Store::open_with(&plan.spec.store, &server.options(&tmp.path().join("b"))).unwrap();
    assert!(ran(&picie_engine::run(&plan, &b, &RunOptions::default()).unwrap()).is_empty());
}

/// gc and a run at once, on two machines, in both orders: the run's artifacts that no
/// record names (its previous record was deleted) are garbage to gc unless the run
/// protects them; whichever starts first, the run's record ends naming only artifacts the
/// store holds, and garbage no run needs is gone.
pub fn gc_beside_a_running_run_loses_nothing_it_needs(server: &impl Server) {
    let tmp = tempfile::tempdir().unwrap();
    let raw = server.raw();
    for round in 0..3 {
        let prefix = format!("gcrun{round}");
        let url = server.url(&prefix);
        let earlier = Plan::load(&pipeline(tmp.path(), "t", &url, 0, 1), &registry()).unwrap();
        let first = Store::open_with(
            &earlier.spec.store,
            &server.options(&tmp.path().join(format!("first{round}"))),
        )
        .unwrap();
        picie_engine::run(&earlier, &first, &RunOptions::default()).unwrap();
        // The next run shares `src`, `x`, `s` and `a`, and computes `slow` (0.6 s) and `after`.
        let plan = Plan::load(&pipeline(tmp.path(), "t", &url, 30, 2), &registry()).unwrap();
        let junk = "ef".to_string() + &round.to_string().repeat(62);
        let mut w = first.begin(&junk).unwrap();
        w.write(&u64_batch(&[3])).unwrap();
        first.commit(w, manifest(&junk), false).unwrap();
        // Nothing names the run's artifacts now: all garbage, unless the run protects them.
        raw.delete(&format!("{prefix}/runs/t/latest.json"));
        drop(first);

        let runner = Store::open_with(
            &plan.spec.store,
            &server.options(&tmp.path().join(format!("run{round}"))),
        )
        .unwrap();
        let gcer = Store::open_with(
            Path::new(&url),
            &server.options(&tmp.path().join(format!("gc{round}"))),
        )
        .unwrap();
        let barrier = Barrier::new(2);
        let (report, gc) = std::thread::scope(|s| {
            let run = s.spawn(|| {
                barrier.wait();
                // Round 0: the run first; round 1: gc first; round 2: together.
                if round == 1 {
                    std::thread::sleep(Duration::from_millis(300));
                }
                picie_engine::run(&plan, &runner, &RunOptions::default())
            });
            let gc = s.spawn(|| {
                barrier.wait();
                if round == 0 {
                    std::thread::sleep(Duration::from_millis(300));
                }
                let lock = gcer.lock("gc").unwrap();
                let r = gcer.gc(&lock, false).unwrap();
                // Held a while, as a gc of a large store is.
                std::thread::sleep(Duration::from_millis(500));
                r
            });
            (run.join().unwrap(), gc.join().unwrap())
        });
        let report = report.unwrap();
        assert!(gc.removed >= 1, "round {round}: {gc:?}");
        assert!(
            raw.list(&folder(&prefix, &junk)).is_empty(),
            "round {round}"
        );
        assert_records_complete(server, &url);
        let fresh = Store::open_with(
            &plan.spec.store,
            &server.options(&tmp.path().join(format!("fresh{round}"))),
        )
        .unwrap();
        let again = picie_engine::run(&plan, &fresh, &RunOptions::default()).unwrap();
        assert!(
            ran(&again).is_empty(),
            "round {round}: {:?} after {:?}",
            again.nodes,
            report.nodes
        );
    }
}

/// `verify` reads the store, not a cache: a file corrupted or deleted in the store is a
/// finding that names the run, the node and the file.
pub fn verify_finds_what_the_store_lost(server: &impl Server) {
    let tmp = tempfile::tempdir().unwrap();
    let url = server.url("verify");
    let plan = Plan::load(&pipeline(tmp.path(), "t", &url, 0, 1), &registry()).unwrap();
    let a = Store::open_with(&plan.spec.store, &server.options(&tmp.path().join("a"))).unwrap();
    picie_engine::run(&plan, &a, &RunOptions::default()).unwrap();
    let clean = a.verify_records().unwrap();
    assert_eq!((clean.records, clean.artifacts), (1, OUTPUTS.len()));
    assert!(clean.findings.is_empty(), "{:?}", clean.findings);
    let raw = server.raw();
    let slow = folder("verify", &key_of(&plan, "slow", "table"));
    let part = raw
        .list(&slow)
        .into_iter()
        .find(|p| p.ends_with(".parquet"))
        .unwrap();
    let mut bytes = raw.get(&part).unwrap();
    bytes[10] ^= 0xff;
    raw.put(&part, bytes, PutMode::Overwrite).unwrap();
    raw.delete_all(&folder("verify", &key_of(&plan, "s", "total")));
    // The same machine: its cache holds both whole, the store does not.
    let found = a.verify_records().unwrap().findings;
    let text: Vec<String> = found.iter().map(|f| f.to_string()).collect();
    assert_eq!(found.len(), 2, "{text:?}");
    assert!(
        text.iter()
            .any(|t| t.contains("run `t`: slow.table") && t.contains("does not match its checksum")),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|t| t.contains("run `t`: s.total") && t.contains("missing")),
        "{text:?}"
    );
}

/// A store whose cache folder cannot be written still runs, reading from the store (with
/// a warning); a missing bucket is an error naming it, even with a full cache for its URL.
pub fn an_unwritable_cache_reads_from_the_store_and_a_missing_bucket_fails(
    server: &impl Server,
    missing_url: &str,
    bucket: &str,
) {
    let tmp = tempfile::tempdir().unwrap();
    let url = server.url("cachefail");
    let plan = Plan::load(&pipeline(tmp.path(), "t", &url, 0, 1), &registry()).unwrap();
    let good = server.options(&tmp.path().join("a"));
    let a = Store::open_with(&plan.spec.store, &good).unwrap();
    picie_engine::run(&plan, &a, &RunOptions::default()).unwrap();
    let before = all_values(&a, &plan);

    // A folder under a plain file cannot be created, whoever runs the test (root too).
    std::fs::write(tmp.path().join("file"), b"").unwrap();
    let bad = server.options(&tmp.path().join("file").join("cache"));
    let b = Store::open_with(&plan.spec.store, &bad).unwrap();
    assert!(!b.root().starts_with(tmp.path()), "{}", b.root().display());
    let r = picie_engine::run(&plan, &b, &RunOptions::default()).unwrap();
    assert!(ran(&r).is_empty(), "{:?}", r.nodes);
    assert_eq!(all_values(&b, &plan), before);
    let temp = b.root().to_path_buf();
    drop(b);
    assert!(
        !temp.exists(),
        "the stand-in cache {} was left",
        temp.display()
    );

    // The same cache folder for a URL whose bucket does not exist: refused, never served.
    let err = fails_fast(missing_url, &good);
    assert!(
        err.contains(missing_url) && err.contains(&format!("`{bucket}` does not exist")),
        "{err}"
    );
}

/// The existence checks of a fully cached run, at `n` nodes: (cached run seconds, seconds
/// of one batch listing alone (a run does two: deciding, and confirming before the
/// record), seconds of the same cached run on a folder store, which checks nothing remote).
pub fn time_cached_run(server: &impl Server, n: usize) -> (f64, f64, f64) {
    let tmp = tempfile::tempdir().unwrap();
    let url = server.url(&format!("bench{n}"));
    let mut yaml = format!("name: b\nseed: 1\ndevice: cpu\nstore: {url}\nstages:\n");
    for i in 0..n {
        yaml +=
            &format!("  - name: n{i}\n    kind: numbers\n    params: {{count: 100, start: {i}}}\n");
    }
    let file = tmp.path().join("b.yaml");
    std::fs::write(&file, yaml).unwrap();
    let plan = Plan::load(&file, &registry()).unwrap();
    let store = Store::open_with(&plan.spec.store, &server.options(&tmp.path().join("a"))).unwrap();
    picie_engine::run(&plan, &store, &RunOptions::default()).unwrap();
    let t = Instant::now();
    let r = picie_engine::run(&plan, &store, &RunOptions::default()).unwrap();
    let run_s = t.elapsed().as_secs_f64();
    assert!(ran(&r).is_empty());
    let keys: Vec<(String, bool)> = plan
        .nodes
        .iter()
        .map(|nd| (nd.output_keys["table"].clone(), true))
        .collect();
    let t = Instant::now();
    let present = store.confirm(&keys).unwrap();
    let check_s = t.elapsed().as_secs_f64();
    assert_eq!(present.len(), n);
    let mut local_plan = Plan::load(&file, &registry()).unwrap();
    local_plan.spec.store = tmp.path().join("local");
    let local = Store::open(&local_plan.spec.store).unwrap();
    picie_engine::run(&local_plan, &local, &RunOptions::default()).unwrap();
    let t = Instant::now();
    let r = picie_engine::run(&local_plan, &local, &RunOptions::default()).unwrap();
    let local_s = t.elapsed().as_secs_f64();
    assert!(ran(&r).is_empty());
    (run_s, check_s, local_s)
}

/// Odd objects under objects/ (a manifest outside any key folder, folders too short for a
/// key or not ASCII, a truncated manifest): listed with their paths, typed errors on
/// lookup, and gc passes them by or deletes them, never a panic.
pub fn odd_objects_are_reported_never_sliced(server: &impl Server) {
    let tmp = tempfile::tempdir().unwrap();
    let url = server.url("odd");
    let raw = server.raw();
    let cut = "cd".to_string() + &"3".repeat(62);
    for (path, body) in [
        ("odd/objects/x/manifest.json", "{}".to_string()),
        (
            "odd/objects/ab/a/manifest.json",
            r#"{"key": "a"}"#.to_string(),
        ),
        (
            "odd/objects/ab/abé/manifest.json",
            r#"{"key": "abé"}"#.to_string(),
        ),
        (
            &*format!("odd/objects/cd/{cut}/manifest.json"),
            format!(r#"{{"key": "{cut}", "no"#),
        ),
    ] {
        raw.put(path, body.into_bytes(), PutMode::Overwrite)
            .unwrap();
    }
    let store = Store::open_with(Path::new(&url), &server.options(&tmp.path().join("a"))).unwrap();
    let listed = store.list().unwrap();
    assert_eq!(listed.len(), 4, "{listed:?}");
    let why: Vec<String> = listed
        .iter()
        .map(|l| match l {
            Err((p, w)) => format!("{}: {w}", p.display()),
            Ok(a) => panic!("listed as an artifact: {}", a.dir.display()),
        })
        .collect();
    for tail in [
        "objects/x/manifest.json",
        "objects/ab/a/manifest.json",
        // Listed names come back percent-encoded.
        "objects/ab/ab%C3%A9/manifest.json",
    ] {
        assert!(
            why.iter()
                .any(|w| w.contains(tail) && w.contains("not an artifact")),
            "{tail}: {why:?}"
        );
    }
    assert!(
        why.iter()
            .any(|w| w.contains(&cut) && w.contains("manifest.json: ")),
        "{why:?}"
    );
    for key in ["a", "aé", "x"] {
        assert!(
            matches!(
                store.try_lookup(key),
                Err(picie_engine::store::StoreError::BadKey { .. })
            ),
            "{key}"
        );
        assert!(store.find(key).is_err(), "{key}");
    }
    assert!(matches!(store.lookup(&cut), Lookup::Corrupt(_)));
    let lock = store.lock("gc").unwrap();
    let dry = store.gc(&lock, true).unwrap();
    // The truncated manifest names no record's artifact: it goes; the rest is too young
    // to be judged (an upload may be in progress) and stays.
    assert_eq!(
        (dry.removed, dry.kept, dry.tmp_removed),
        (1, 0, 0),
        "{dry:?}"
    );
    store.gc(&lock, false).unwrap();
    assert!(raw.list(&format!("odd/objects/cd/{cut}")).is_empty());
    assert_eq!(raw.list("odd/objects").len(), 3);
}
