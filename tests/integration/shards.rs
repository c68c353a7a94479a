//! Sharded runs as worker processes on one machine: `picie run --shard I/N`, or the shard
//! taken from a Slurm array's or a Kubernetes Indexed Job's variables, store byte for byte
//! what one process stores; bad shard specs are refused. (tests/integration/slurm.rs runs
//! the same through a real Slurm cluster.)

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use picie::store::{RunRecord, Store};

use crate::cli::text;

/// pipelines/shard-demo.yaml made smaller (24 images, 6 batches), in `dir`.
fn demo(dir: &Path) -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = fs::read_to_string(repo.join("pipelines/shard-demo.yaml"))
        .unwrap()
        .replace("train_images: 64", "train_images: 24")
        .replace("batch: 8", "batch: 4")
        .replace("store: ../artifacts", "store: store");
    let path = dir.join("shard-demo.yaml");
    fs::write(&path, text).unwrap();
    path
}

fn picie(dir: &Path, args: &[&str], env: &[(&str, String)]) -> std::process::Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_picie"));
    c.args(args)
        .current_dir(dir)
        .env("PICIE_LOG", "picie=info,picie_engine=info")
        // One thread each: what is compared is sharding, not libtorch's threading.
        .env("OMP_NUM_THREADS", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for v in [
        "SLURM_ARRAY_TASK_ID",
        "SLURM_ARRAY_TASK_COUNT",
        "SLURM_ARRAY_TASK_MIN",
    ] {
        c.env_remove(v);
    }
    c.env_remove("JOB_COMPLETION_INDEX")
        .env_remove("PICIE_SHARDS");
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().unwrap()
}

fn finish(c: std::process::Child) -> Output {
    c.wait_with_output().unwrap()
}

/// The run record of `name` in the store at `root`.
pub(crate) fn record(root: &Path, name: &str) -> RunRecord {
    let store = Store::open(root).unwrap();
    store
        .run_records()
        .unwrap()
        .into_iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no run record `{name}` in {}", root.display()))
}

/// An artifact's files but its manifest (which holds times), name -> bytes.
pub(crate) fn artifact_files(root: &Path, key: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Store::open(root).unwrap().object_dir(key);
    let mut files: Vec<(String, Vec<u8>)> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap())
        .filter(|e| e.file_name() != "manifest.json")
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name, fs::read(e.path()).unwrap())
        })
        .collect();
    files.sort();
    files
}

/// Every stored output of run `name` in store `one` has the same key in the run record of
/// store `many` and the same bytes there; the outputs compared, `features.features` among
/// them.
pub(crate) fn assert_same_artifacts(one: &Path, many: &Path, name: &str) -> Vec<String> {
    let (solo, sharded) = (record(one, name), record(many, name));
    let names = |f: &[(String, Vec<u8>)]| f.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    let mut compared = Vec::new();
    for node in &solo.nodes {
        for (output, key) in &node.outputs {
            let what = format!("{}.{output}", node.name);
            let other = sharded
                .nodes
                .iter()
                .find(|n| n.name == node.name)
                .and_then(|n| n.outputs.get(output))
                .unwrap_or_else(|| panic!("{what} not in the sharded run's record"));
            assert_eq!(key, other, "{what}: keys differ");
            let (a, b) = (artifact_files(one, key), artifact_files(many, key));
            assert!(!a.is_empty(), "{what} has no files");
            assert_eq!(names(&a), names(&b), "{what}: files differ");
            for ((file, x), (_, y)) in a.iter().zip(&b) {
                assert!(x == y, "{what}: {file} differs");
            }
            compared.push(what);
        }
    }
    for what in [
        "features.features",
        "kmeans.centroids",
        "kmeans.stats",
        "evaluate.confusion",
        "evaluate.metrics",
        "final.centroids",
        "final.metrics",
    ] {
        assert!(
            compared.iter().any(|c| c == what),
            "{what} not compared: {compared:?}"
        );
    }
    compared
}

#[test]
fn worker_processes_store_the_bytes_of_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let pipeline = demo(dir);
    let p = pipeline.to_str().unwrap();
    let solo = finish(picie(
        dir,
        &["run", p, "--store", "solo", "--shard", "off"],
        &[],
    ));
    assert!(solo.status.success(), "{}", text(&solo));

    // Two workers as a Slurm array's tasks, three as a Kubernetes Indexed Job's pods.
    let slurm = |i: u32| {
        vec![
            ("SLURM_ARRAY_TASK_ID", (i + 1).to_string()),
            ("SLURM_ARRAY_TASK_MIN", "1".to_string()),
            ("SLURM_ARRAY_TASK_COUNT", "2".to_string()),
        ]
    };
    let k8s = |i: u32| {
        vec![
            ("JOB_COMPLETION_INDEX", i.to_string()),
            ("PICIE_SHARDS", "3".to_string()),
        ]
    };
    for (store, n, env) in [
        (
            "two",
            2u32,
            &slurm as &dyn Fn(u32) -> Vec<(&'static str, String)>,
        ),
        ("three", 3, &k8s),
    ] {
        let workers: Vec<_> = (0..n)
            .map(|i| picie(dir, &["run", p, "--store", store], &env(i)))
            .collect();
        let logs: Vec<String> = workers
            .into_iter()
            .map(|w| {
                let out = finish(w);
                assert!(out.status.success(), "{}", text(&out));
                text(&out)
            })
            .collect();
        for i in 0..n {
            assert!(
                logs[i as usize].contains(&format!("shard {i}/{n}: ")),
                "worker {i}: {}",
                logs[i as usize]
            );
        }
        let all = logs.concat();
        assert!(
            all.contains(&format!("features[part {}/{n}] finished", n - 1)),
            "{all}"
        );
        assert!(all.contains("label finished"), "{all}");
        assert!(all.contains("evaluate finished"), "{all}");
        // The run that reads the result finds every node joined.
        let reader = finish(picie(
            dir,
            &["run", p, "--store", store, "--shard", "off"],
            &[],
        ));
        assert!(
            text(&reader).contains(" 0 stage(s) ran"),
            "{}",
            text(&reader)
        );
        assert_same_artifacts(&dir.join("solo"), &dir.join(store), "shard-demo");
    }
}

#[test]
fn bad_shard_specs_are_refused_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let p = demo(dir);
    let p = p.to_str().unwrap();
    for (args, env, says) in [
        (vec!["--shard", "3/2"], vec![], "shard 3/2 does not exist"),
        (vec!["--shard", "1-2"], vec![], "write I/N"),
        (
            vec![],
            vec![("JOB_COMPLETION_INDEX", "1".to_string())],
            "PICIE_SHARDS",
        ),
        (
            vec!["--shard", "0/2", "--seeds", "0,1"],
            vec![],
            "a sweep does not run sharded",
        ),
    ] {
        let mut a = vec!["run", p, "--store", "s"];
        a.extend(args.iter().copied());
        let out = finish(picie(dir, &a, &env));
        assert!(!out.status.success(), "{args:?} {env:?}: {}", text(&out));
        assert!(text(&out).contains(says), "{args:?}: {}", text(&out));
    }
    assert!(!dir.join("s").join("objects").exists(), "nothing computed");
}

#[test]
fn a_workers_plan_shows_its_parts_and_what_runs_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let p = demo(tmp.path());
    let out = finish(picie(
        tmp.path(),
        &["plan", p.to_str().unwrap(), "--shard", "1/3"],
        &[],
    ));
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("shard 1/3: 7 node(s) computed in 3 parts"),
        "{t}"
    );
    assert!(t.contains("`kmeans` runs in 11 rounds of parts"), "{t}");
    assert!(t.contains("`final` runs in 2 rounds of parts"), "{t}");
    for part in [
        "aug[part 0/3]",
        "features[part 2/3]",
        "label[part 1/3]",
        "evaluate[part 0/3]",
        // Lloyd: 10 updates and the counting pass, each a round of parts and a join.
        "kmeans[round 1/11 part 0/3]",
        "kmeans[round 11/11 part 2/3]",
        "kmeans[round 10/11]",
        "final[round 1/2 part 1/3]",
        "final[round 1/2]",
        "final[round 2/2 part 0/3]",
    ] {
        assert!(t.contains(part), "{part}: {t}");
    }
    // The last round's join is the node itself, under its own name.
    assert_eq!(
        t.lines().filter(|l| l.starts_with("kmeans ")).count(),
        1,
        "{t}"
    );
}
