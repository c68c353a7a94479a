//! What the store holds, against what a machine caches (issue #29): a cached artifact counts
//! only once the store lists it, run records name only stored artifacts, gc on object
//! storage keeps what records name and running runs protect, verify finds what was lost,
//! and odd objects are reported. Shared by the S3 and Azure tests like the scenarios of
//! [`super`].

use super::*;

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
