//! The `picie` binary end to end on a tiny real pipeline: run, plan, ls, show, gc, and the
//! errors a user sees.

use std::path::Path;
use std::process::{Command, Output};

fn tiny() -> String {
    crate::common::tiny_pipeline("tiny", 1)
}

pub(crate) fn picie(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_picie"))
        .args(args)
        .current_dir(dir)
        .env("PICIE_LOG", "picie=info,picie_engine=info")
        .output()
        .unwrap()
}

pub(crate) fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn a_tiny_pipeline_runs_then_is_cached_and_inspectable() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.yaml"), tiny()).unwrap();

    let plan = picie(dir.path(), &["plan", "p.yaml"]);
    assert!(plan.status.success(), "{}", text(&plan));
    let t = text(&plan);
    for node in ["init", "aug@1", "train@1", "evaluate@1"] {
        assert!(t.contains(node), "{t}");
    }

    let run = picie(dir.path(), &["run", "p.yaml"]);
    assert!(run.status.success(), "{}", text(&run));
    let t = text(&run);
    assert!(t.contains("mIoU"), "{t}");
    assert!(t.contains("stage(s) ran, 0 cached"), "{t}");
    // The metrics of every epoch (0 and 1) are printed at the end, within 100 columns.
    let header = t
        .lines()
        .position(|l| {
            l.split_whitespace()
                .take(4)
                .eq(["epoch", "mIoU", "accuracy", "k"])
        })
        .unwrap_or_else(|| panic!("no summary header in {t}"));
    let rows: Vec<&str> = t.lines().skip(header + 1).take(2).collect();
    for (e, row) in rows.iter().enumerate() {
        assert_eq!(
            row.split_whitespace().next(),
            Some(e.to_string().as_str()),
            "{t}"
        );
    }
    assert!(!t.contains("shape: ("), "{t}");
    let table = t.lines().skip(header).take(3);
    assert!(table.clone().all(|l| l.chars().count() <= 100), "{t}");
    // Per-class IoU only with -v.
    assert!(!t.contains("IoU per class"), "{t}");
    let verbose = picie(dir.path(), &["run", "p.yaml", "-v"]);
    assert_eq!(
        text(&verbose).matches("IoU per class:").count(),
        2,
        "{}",
        text(&verbose)
    );

    let again = picie(dir.path(), &["run", "p.yaml"]);
    assert!(again.status.success(), "{}", text(&again));
    assert!(text(&again).contains(" 0 stage(s) ran"), "{}", text(&again));

    let ls = picie(dir.path(), &["ls", "--store", "store"]);
    assert!(ls.status.success(), "{}", text(&ls));
    let line = text(&ls)
        .lines()
        .find(|l| l.contains("evaluate@1") && l.contains("metrics"))
        .unwrap_or_else(|| panic!("{}", text(&ls)))
        .to_string();
    let key = line.split_whitespace().next().unwrap();
    let show = picie(dir.path(), &["show", key, "--store", "store"]);
    assert!(show.status.success(), "{}", text(&show));
    let t = text(&show);
    // Two rows: epoch 0 from the history, epoch 1 from this node, in a Polars frame (10
    // columns, 3 more that a `crf:` evaluation fills, and 4 a `probe` input's linear probe
    // fills).
    assert!(t.contains("shape: (2, 17)"), "{t}");
    assert!(t.contains("miou"), "{t}");

    let gc = picie(dir.path(), &["gc", "--store", "store", "--dry-run"]);
    assert!(gc.status.success(), "{}", text(&gc));
    assert!(
        text(&gc).contains("would remove 0 artifact(s)"),
        "{}",
        text(&gc)
    );
}

#[test]
fn a_bad_file_exits_non_zero_with_every_error_located() {
    let dir = tempfile::tempdir().unwrap();
    let bad = tiny()
        .replace("kind: kmeans", "kind: kmean")
        .replace("mode: lloyd", "mode: lloyd, iters: 3")
        .replace("device: cpu", "device: cpu\ncolor: red");
    std::fs::write(dir.path().join("p.yaml"), bad).unwrap();
    let out = picie(dir.path(), &["run", "p.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    let t = text(&out);
    assert!(
        t.contains("p.yaml:4:1: unknown top-level field `color`"),
        "{t}"
    );
    assert!(t.contains("unknown stage kind `kmean`"), "{t}");
    assert!(t.contains("did you mean `kmeans`"), "{t}");
    assert!(!t.contains("panicked"), "{t}");
    // Nothing was written for a file that does not validate.
    assert!(!dir.path().join("store").exists());
}

#[test]
fn missing_files_and_stores_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = picie(dir.path(), &["run", "nope.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("cannot read pipeline file nope.yaml"),
        "{}",
        text(&out)
    );
    // Regression: the OS error was printed twice (once in the message, once as its source).
    assert_eq!(
        text(&out).matches("No such file").count(),
        1,
        "{}",
        text(&out)
    );
    let out = picie(dir.path(), &["ls", "--store", "nowhere"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("nowhere is not an artifact store"),
        "{}",
        text(&out)
    );
}

#[test]
fn artifacts_open_in_python_polars() {
    let py = picie::python();
    let probe = Command::new(&py).args(["-c", "import polars"]).output();
    if !probe.map(|o| o.status.success()).unwrap_or(false) {
        return picie_testkit::skip_setup(format!(
            "oracle venv: {} with polars is not available (run scripts/setup.sh)",
            py.display()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let tiny = tiny();
    std::fs::write(dir.path().join("p.yaml"), tiny).unwrap();
    let run = picie(dir.path(), &["run", "p.yaml", "-q"]);
    assert!(run.status.success(), "{}", text(&run));
    // Every table file of every artifact kind, read by Python Polars as it is.
    let script = r#"
import glob, json, sys, polars as pl
kinds = {}
for m in glob.glob(sys.argv[1] + "/objects/*/*/manifest.json"):
    man = json.load(open(m))
    for f in man["files"]:
        if f["format"] == "parquet":
            df = pl.read_parquet(m.rsplit("/", 1)[0] + "/" + f["name"])
            assert df.height == f["rows"], (m, df.height, f["rows"])
            kinds[man["type"]] = df.columns
print(json.dumps(kinds, sort_keys=True))
"#;
    let out = Command::new(&py)
        .args(["-c", script, dir.path().join("store").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let kinds: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for k in [
        "aug_params",
        "features",
        "centroids",
        "kmeans_stats",
        "labels",
        "cluster_weights",
        "train_metrics",
        "metrics",
        "confusion",
    ] {
        assert!(kinds.get(k).is_some(), "{k} missing from {kinds}");
    }
    assert_eq!(
        kinds["features"],
        serde_json::json!(["image", "view", "y", "x", "feature"])
    );
}

#[test]
fn the_binary_finds_libtorch_itself_and_keeps_cuda_linked() {
    // No LD_LIBRARY_PATH, no venv on PATH: the rpath must do.
    let out = Command::new(env!("CARGO_BIN_EXE_picie"))
        .arg("--version")
        .env_remove("LD_LIBRARY_PATH")
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let Ok(elf) = Command::new("readelf")
        .args(["-d", env!("CARGO_BIN_EXE_picie")])
        .output()
    else {
        return picie_testkit::skip("readelf: not installed, NEEDED entries not checked");
    };
    let t = String::from_utf8_lossy(&elf.stdout);
    // Without --no-as-needed the linker drops it and CUDA is silently unavailable.
    assert!(t.contains("[libtorch_cuda.so]"), "{t}");
    assert!(t.contains("RUNPATH") || t.contains("RPATH"), "{t}");
}

#[test]
fn kinds_say_where_each_kind_lives_and_what_it_reads() {
    let dir = tempfile::tempdir().unwrap();
    let o = picie(dir.path(), &["kinds"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    for kind in [
        "augment", "backbone", "evaluate", "extract", "init", "kmeans", "knn", "label", "probe",
        "stego", "train",
    ] {
        assert!(
            t.contains(&format!(
                "    code stages/{kind}.rs (picie_stages::{kind}::"
            )),
            "{kind}: {t}"
        );
    }
    // augment, backbone (evaluation crops), evaluate and probe (the training masks).
    assert_eq!(t.matches("    reads dataset").count(), 4, "{t}");
    assert!(t.contains("top-level sections: device:"), "{t}");
    assert!(
        t.contains("dataset: (the data set, keyed into kinds that read it)"),
        "{t}"
    );
}

#[test]
fn a_seed_sweep_reuses_single_runs_and_reports_mean_and_std() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.yaml"), tiny()).unwrap();
    let single = picie(dir.path(), &["run", "p.yaml"]);
    assert!(single.status.success(), "{}", text(&single));

    // `seed: 3` in the file: the sweep's seed 3 is that run, key for key.
    let sweep = picie(dir.path(), &["run", "p.yaml", "--seeds", "3,4"]);
    let t = text(&sweep);
    assert!(sweep.status.success(), "{t}");
    assert!(t.contains("seed 3: 0 stage(s) ran"), "{t}");
    assert!(!t.contains("seed 4: 0 stage(s) ran"), "{t}");
    let header = t
        .lines()
        .position(|l| {
            l.split_whitespace()
                .eq(["epoch", "mIoU", "accuracy", "seeds", "predictor"])
        })
        .unwrap_or_else(|| panic!("no sweep summary in {t}"));
    let row = t.lines().nth(header + 2).unwrap();
    assert!(
        row.trim_start().starts_with('1') && row.matches(" ± ").count() == 2,
        "{t}"
    );
    assert!(row.trim_end().ends_with("2  nearest_centroid"), "{t}");
    assert!(dir
        .path()
        .join("store/runs/tiny-seeds/metrics.parquet")
        .is_file());

    // Found by name, and by a pipeline file that lists the seeds.
    let by_name = picie(dir.path(), &["inspect", "tiny-seeds", "--store", "store"]);
    let t = text(&by_name);
    assert!(by_name.status.success(), "{t}");
    assert!(t.contains("sweep tiny-seeds: 2 seed(s) [3, 4]"), "{t}");
    assert!(t.contains("tiny-seed3") && t.contains("tiny-seed4"), "{t}");
    std::fs::write(
        dir.path().join("sweep.yaml"),
        tiny().replace("seed: 3\n", "seed: 3\nseeds: [3, 4]\n"),
    )
    .unwrap();
    let by_file = picie(dir.path(), &["inspect", "sweep.yaml"]);
    assert!(by_file.status.success(), "{}", text(&by_file));
    assert!(
        text(&by_file).contains("mean ± std over seeds"),
        "{}",
        text(&by_file)
    );
    // Without `seeds:`, the file means its single run.
    let single = picie(dir.path(), &["inspect", "p.yaml"]);
    assert!(
        text(&single).starts_with("run tiny: ok"),
        "{}",
        text(&single)
    );

    let report = picie(dir.path(), &["report", "sweep.yaml", "--images", "1"]);
    assert!(report.status.success(), "{}", text(&report));
    let index = dir.path().join("store/reports/tiny-seeds/index.html");
    let html = std::fs::read_to_string(&index).unwrap();
    assert!(
        html.contains("tiny-seeds") && html.contains("<svg"),
        "{html}"
    );
}

#[test]
fn inspect_says_what_exists_when_the_target_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let store = picie::Store::open(&dir.path().join("store")).unwrap();
    // A recorded run and sweep to list.
    let mut rec: picie::store::RunRecord = serde_json::from_value(serde_json::json!({
        "name": "done", "pipeline": "p.yaml", "started": "", "finished": "", "ok": true,
        "error": null, "device": "cpu", "nodes": []
    }))
    .unwrap();
    store.write_run_record(&rec).unwrap();
    rec.name = "done-seed0".into();
    store.write_run_record(&rec).unwrap();
    let sweep = picie_engine::seeds::SweepRecord::new("done", Path::new("p.yaml"), &[0]);
    store.write_sweep_record(&sweep).unwrap();

    let out = picie(dir.path(), &["inspect", "nope", "--store", "store"]);
    assert_eq!(out.status.code(), Some(1));
    let t = text(&out);
    assert!(t.contains("no run named `nope`"), "{t}");
    assert!(t.contains("done, done-seed0, done-seeds (sweep)"), "{t}");

    // A pipeline file whose store does not hold its run.
    std::fs::write(
        dir.path().join("other.yaml"),
        tiny().replace("name: tiny", "name: other"),
    )
    .unwrap();
    let out = picie(dir.path(), &["inspect", "other.yaml"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("other.yaml names run `other`"), "{t}");
    assert!(t.contains("run `picie run other.yaml` first"), "{t}");
    assert!(t.contains("Recorded there: done"), "{t}");
    let out = picie(
        dir.path(),
        &["report", "other.yaml", "--store", "elsewhere"],
    );
    assert!(
        text(&out).contains("holds no artifact store yet"),
        "{}",
        text(&out)
    );

    // A run in progress (it holds the store's lock) without a record yet.
    let _lock = store
        .enter_run("other", "run `other` of other.yaml")
        .unwrap();
    let out = picie(dir.path(), &["inspect", "other.yaml"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("run `other` is in progress (pid "), "{t}");
    drop(_lock);
    // A sweep whose members are running.
    let _lock = store
        .enter_run("other-seed2", "run `other-seed2` of other.yaml")
        .unwrap();
    let out = picie(dir.path(), &["inspect", "other-seeds", "--store", "store"]);
    let t = text(&out);
    assert!(t.contains("sweep `other-seeds` is in progress"), "{t}");
    // ... and one with an older record: shown, with a note.
    drop(_lock);
    let _lock = store.enter_run("done", "run `done` of p.yaml").unwrap();
    let out = picie(dir.path(), &["inspect", "done", "--store", "store"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("note: run `done` is being run now"), "{t}");
    assert!(!t.contains("panicked"), "{t}");
}

/// A store with a stray file and short folder, a short and a non-ASCII artifact name, a
/// truncated manifest and a record naming them: `ls`, `show`, `gc`, `verify` and `inspect`
/// report them (a typed error or a listed warning), and never panic (exit code 101).
#[test]
fn odd_store_contents_are_reported_never_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let key = crate::common::seed_odd_store(dir.path());
    let run = |args: &[&str]| {
        let out = picie(dir.path(), args);
        let t = text(&out);
        assert_ne!(out.status.code(), Some(101), "{args:?} panicked: {t}");
        assert!(!t.contains("panicked"), "{args:?}: {t}");
        (out.status.code(), t)
    };
    let (code, t) = run(&["ls", "--store", "store"]);
    assert_eq!(code, Some(0), "{t}");
    for what in ["objects/x", "objects/y", "abé", "ab/a ", "manifest.json: "] {
        assert!(t.contains(what), "ls does not show `{what}`: {t}");
    }
    let (code, t) = run(&["show", "a", "--store", "store"]);
    assert_eq!(code, Some(1), "{t}");
    assert!(
        t.contains("no artifact in store has a key starting with `a`"),
        "{t}"
    );
    let (code, t) = run(&["show", "aé", "--store", "store"]);
    assert_eq!(code, Some(1), "{t}");
    let (code, t) = run(&["show", "cd", "--store", "store"]);
    assert_eq!(code, Some(1), "{t}");
    assert!(t.contains(&key) && t.contains("corrupt artifact"), "{t}");
    let (code, t) = run(&["verify", "--store", "store"]);
    assert_eq!(code, Some(1), "{t}");
    assert!(
        t.contains("not an artifact key") && t.contains("4 problem(s)"),
        "{t}"
    );
    let (code, t) = run(&["gc", "--store", "store", "--check"]);
    assert_eq!(code, Some(1), "{t}");
    // inspect shows what it can, and says why each table is missing.
    let (code, t) = run(&["inspect", "odd", "--store", "store"]);
    assert_eq!(code, Some(0), "{t}");
    assert!(t.contains("names `a`, not an artifact key"), "{t}");
    let (code, t) = run(&["gc", "--store", "store", "--dry-run"]);
    assert_eq!(code, Some(0), "{t}");
    let (code, t) = run(&["gc", "--store", "store"]);
    assert_eq!(code, Some(0), "{t}");
    // Nothing odd is left.
    let (_, t) = run(&["ls", "--store", "store"]);
    assert!(!t.contains("objects/x") && !t.contains("abé"), "{t}");
}

/// An evaluation with a dense CRF stores its metrics before and after it, and the run's
/// summary shows both.
#[test]
fn a_crf_evaluation_shows_both_metrics_in_the_summary() {
    let dir = tempfile::tempdir().unwrap();
    let with_crf = tiny().replace(
        "params: {res: 32, batch: 4, n_iter: 5}",
        "params: {res: 32, batch: 4, n_iter: 5, crf: {iterations: 5}}",
    );
    assert_eq!(with_crf.matches("crf:").count(), 2, "{with_crf}");
    std::fs::write(dir.path().join("p.yaml"), &with_crf).unwrap();
    let run = picie(dir.path(), &["run", "p.yaml", "-q"]);
    assert!(run.status.success(), "{}", text(&run));
    let inspect = picie(dir.path(), &["inspect", "p.yaml"]);
    assert!(inspect.status.success(), "{}", text(&inspect));
    let t = text(&inspect);
    let header = t
        .lines()
        .find(|l| l.trim_start().starts_with("epoch") && l.contains("mIoU"))
        .unwrap_or_else(|| panic!("{t}"));
    assert!(header.ends_with("mIoU+CRF  acc.+CRF"), "{t}");
    // Every evaluated epoch has a number after the CRF, not a dash.
    let rows: Vec<&str> = t
        .lines()
        .skip_while(|l| *l != header)
        .skip(1)
        .take_while(|l| {
            l.split_whitespace()
                .next()
                .is_some_and(|w| w.parse::<u32>().is_ok())
        })
        .collect();
    assert_eq!(rows.len(), 2, "{t}");
    for row in rows {
        let crf_miou = row.split_whitespace().rev().nth(1).unwrap();
        assert!(crf_miou.parse::<f64>().is_ok(), "{row}");
    }
}
