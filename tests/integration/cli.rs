//! The `picie` binary end to end on a tiny real pipeline: run, plan, ls, show, gc, and the
//! errors a user sees.

use std::path::Path;
use std::process::{Command, Output};

fn tiny() -> String {
    crate::common::tiny_pipeline("tiny", 1)
}

fn picie(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_picie"))
        .args(args)
        .current_dir(dir)
        .env("PICIE_LOG", "picie=info,picie_engine=info")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
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
    // Two rows: epoch 0 from the history, epoch 1 from this node, in a Polars frame.
    assert!(t.contains("shape: (2, 10)"), "{t}");
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
        eprintln!(
            "skipped: {} with polars is not available (run scripts/setup.sh)",
            py.display()
        );
        return;
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
        eprintln!("skipped the NEEDED check: readelf is not installed");
        return;
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
        "augment", "evaluate", "extract", "init", "kmeans", "label", "train",
    ] {
        assert!(
            t.contains(&format!(
                "    code stages/{kind}.rs (picie_stages::{kind}::"
            )),
            "{kind}: {t}"
        );
    }
    assert_eq!(t.matches("    reads dataset").count(), 2, "{t}");
    assert!(t.contains("top-level sections: device:"), "{t}");
    assert!(
        t.contains("dataset: (the data set, keyed into kinds that read it)"),
        "{t}"
    );
}
