//! `picie::analysis` and `picie::report` on a tiny real two-epoch run (its report also in
//! headless Chromium), their errors on bad input, and our Hungarian matching against SciPy's
//! `linear_sum_assignment`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use picie::analysis::{inspect, AnalysisError, Run};
use picie::metrics::{hungarian, Confusion};
use picie::report::write_report;
use polars::prelude::*;

const TRAIN_IMAGES: usize = 8;
const VAL_IMAGES: usize = 4;
const CLASSES: usize = 3;
const K: usize = 3;
const AUG_RES: usize = 32;
const EVAL_RES: usize = 32;
/// The network's output stride: labels are at a quarter of the crop's side.
const STRIDE: usize = 4;

fn tiny2() -> String {
    crate::common::tiny_pipeline("tiny2", 2)
}

fn names(df: &DataFrame) -> Vec<String> {
    df.get_column_names()
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn strs(df: &DataFrame, col: &str) -> Vec<String> {
    df.column(col)
        .unwrap()
        .str()
        .unwrap()
        .iter()
        .flatten()
        .map(String::from)
        .collect()
}

fn u32s(df: &DataFrame, col: &str) -> Vec<u32> {
    df.column(col)
        .unwrap()
        .u32()
        .unwrap()
        .iter()
        .flatten()
        .collect()
}

fn u64s(df: &DataFrame, col: &str) -> Vec<u64> {
    df.column(col)
        .unwrap()
        .u64()
        .unwrap()
        .iter()
        .flatten()
        .collect()
}

fn f64s(df: &DataFrame, col: &str) -> Vec<f64> {
    df.column(col)
        .unwrap()
        .f64()
        .unwrap()
        .iter()
        .flatten()
        .collect()
}

/// The file names of paths, in order.
fn file_names(files: &[PathBuf]) -> Vec<String> {
    files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// Removes a node's output from the store (as gc would); returns its key.
fn remove_output(run: &Run, kind: &str, epoch: u32, output: &str) -> String {
    let node = run
        .record
        .nodes
        .iter()
        .find(|n| n.kind == kind && n.epoch == Some(epoch))
        .unwrap();
    let key = node.outputs[output].clone();
    std::fs::remove_dir_all(run.store.object_dir(&key)).unwrap();
    key
}

fn run_tiny(dir: &Path) -> PathBuf {
    run_yaml(dir, &tiny2())
}

/// Runs `yaml` as `dir`/p.yaml on a store in `dir`/store, which it returns.
fn run_yaml(dir: &Path, yaml: &str) -> PathBuf {
    let path = dir.join("p.yaml");
    std::fs::write(&path, yaml).unwrap();
    let plan = picie::Plan::load(&path, &picie::stages::builtin()).unwrap();
    let store_dir = dir.join("store");
    let store = picie::Store::open(&store_dir).unwrap();
    picie::run(&plan, &store, &Default::default()).unwrap();
    store_dir
}

#[test]
fn a_two_epoch_run_reads_back_as_frames_text_and_a_report() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = run_tiny(dir.path());
    let run = Run::open(&store_dir, "tiny2").unwrap();
    assert!(run.record.ok);

    // metrics: eval0 (epoch 0) + two epochs, all in the last evaluate's table.
    let m = run.metrics().unwrap();
    assert_eq!(
        names(&m),
        [
            "epoch",
            "predictor",
            "k",
            "pixel_accuracy",
            "miou",
            "thing_miou",
            "stuff_miou",
            "valid_pixels",
            "kmeans_bn",
            "per_class_iou",
            "pixel_accuracy_crf",
            "miou_crf",
            "per_class_iou_crf",
            "linear_miou_supervised",
            "linear_accuracy_supervised",
            "linear_miou_supervised_crf",
            "linear_accuracy_supervised_crf"
        ]
    );
    assert_eq!(strs(&m, "kmeans_bn"), ["train"; 3]);
    assert_eq!(u32s(&m, "epoch"), [0, 1, 2]);
    let valid = u64s(&m, "valid_pixels");
    for v in &valid {
        assert!(*v > 0 && *v <= (VAL_IMAGES * EVAL_RES * EVAL_RES) as u64);
    }
    for a in f64s(&m, "pixel_accuracy") {
        assert!((0.0..=100.0).contains(&a), "{a}");
    }

    // train metrics: both epochs, steps counted from 1 within each.
    let t = run.train_metrics().unwrap();
    for c in ["epoch", "step", "loss", "loss_within", "loss_cross", "lr"] {
        assert!(names(&t).iter().any(|n| n == c), "{c} in {:?}", names(&t));
    }
    let te = u32s(&t, "epoch");
    assert!(te.contains(&1) && te.contains(&2), "{te:?}");
    assert!(te.windows(2).all(|w| w[0] <= w[1]), "epoch order {te:?}");
    assert!(f64s(&t, "loss").iter().all(|l| l.is_finite() && *l >= 0.0));

    // cluster sizes: 2 epochs x 2 views x K clusters; counts sum to every labelled pixel.
    let label_px = (TRAIN_IMAGES * (AUG_RES / STRIDE) * (AUG_RES / STRIDE)) as u64;
    let cs = run.cluster_sizes().unwrap();
    assert_eq!(names(&cs), ["epoch", "view", "cluster", "count", "weight"]);
    assert_eq!(cs.height(), 2 * 2 * K);
    let (ep, counts) = (u32s(&cs, "epoch"), u64s(&cs, "count"));
    let views: Vec<u8> = cs
        .column("view")
        .unwrap()
        .u8()
        .unwrap()
        .iter()
        .flatten()
        .collect();
    let mut per: BTreeMap<(u32, u8), u64> = BTreeMap::new();
    for ((e, v), n) in ep.iter().zip(&views).zip(&counts) {
        *per.entry((*e, *v)).or_default() += n;
    }
    assert_eq!(per.len(), 4);
    assert!(per.values().all(|&n| n == label_px), "{per:?}");

    // assignments: one row per labelled pixel, coordinates inside the label map.
    for (epoch, view) in [(1, 1), (2, 2)] {
        let a = run.assignments(epoch, view).unwrap();
        assert_eq!(names(&a), ["epoch", "view", "image", "y", "x", "cluster"]);
        assert_eq!(a.height() as u64, label_px);
        let cl = u32s(&a, "cluster");
        assert!(cl.iter().all(|&c| (c as usize) < K));
        let ys: Vec<u16> = a
            .column("y")
            .unwrap()
            .u16()
            .unwrap()
            .iter()
            .flatten()
            .collect();
        assert!(ys.iter().all(|&y| (y as usize) < AUG_RES / STRIDE));
        let images: std::collections::BTreeSet<u32> = u32s(&a, "image").into_iter().collect();
        assert_eq!(images.len(), TRAIN_IMAGES);
    }
    assert!(matches!(
        run.assignments(7, 1),
        Err(AnalysisError::NoNode { .. })
    ));

    // contingency: classes x clusters, totals = the valid pixels of that epoch's metrics.
    for (i, epoch) in [0u32, 1, 2].into_iter().enumerate() {
        let c = run.contingency(epoch).unwrap();
        assert_eq!(names(&c), ["class", "cluster", "pixels"]);
        assert_eq!(c.height(), CLASSES * K);
        assert_eq!(
            u64s(&c, "pixels").iter().sum::<u64>(),
            valid[i],
            "epoch {epoch}"
        );
    }

    // stability: one epoch pair, both views, fractions in [0, 1].
    let s = run.stability().unwrap();
    assert_eq!(
        names(&s),
        [
            "epoch_from",
            "epoch_to",
            "view",
            "pixels",
            "changed_fraction"
        ]
    );
    assert_eq!(s.height(), 2);
    assert_eq!(u32s(&s, "epoch_from"), [1, 1]);
    assert_eq!(u32s(&s, "epoch_to"), [2, 2]);
    assert_eq!(u64s(&s, "pixels"), [label_px, label_px]);
    for f in f64s(&s, "changed_fraction") {
        assert!((0.0..=1.0).contains(&f), "{f}");
    }

    // inspect: the summary and every epoch's scores as printed numbers.
    let text = inspect(&store_dir, "tiny2", false).unwrap();
    assert!(text.contains("run tiny2: ok"), "{text}");
    assert!(text.contains("ran"), "{text}");
    let miou = f64s(&m, "miou");
    let acc = f64s(&m, "pixel_accuracy");
    for (e, v) in miou.iter().enumerate() {
        // The summary row of epoch e: epoch, mIoU, pixel accuracy, k, predictor, BN mode.
        let want = [
            e.to_string(),
            format!("{v:.2}"),
            format!("{:.2}", acc[e]),
            K.to_string(),
            "nearest_centroid".into(),
            "train".into(),
        ];
        assert!(
            text.lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == want),
            "{want:?} in\n{text}"
        );
    }
    assert!(!text.contains("IoU per class"), "{text}");
    let verbose = inspect(&store_dir, "tiny2", true).unwrap();
    assert_eq!(
        verbose.matches("IoU per class:").count(),
        miou.len(),
        "{verbose}"
    );
    for l in text.lines().chain(verbose.lines()) {
        assert!(
            l.chars().count() <= picie::analysis::SUMMARY_WIDTH,
            "{} columns: {l}",
            l.chars().count()
        );
    }
    for section in [
        "train loss per epoch",
        "cluster sizes, epoch 2",
        "stability",
    ] {
        assert!(text.contains(section), "{section} in\n{text}");
    }

    // The report's predictions are the evaluation's: over every val image they give its
    // confusion exactly (regression: with a train-mode k-means pass the report used the
    // network before that pass updated its BatchNorm statistics).
    let (preds, k) = picie::report::predictions(&run, usize::MAX).unwrap();
    assert_eq!((preds.len(), k), (VAL_IMAGES, K));
    let mut redrawn = Confusion::new(CLASSES, K).unwrap();
    for p in &preds {
        let mask = p.mask.as_ref().unwrap();
        redrawn.add(&mask.data, &p.clusters, Some(255)).unwrap();
    }
    let evaluated = run.confusion(2).unwrap();
    for g in 0..CLASSES {
        for c in 0..K {
            assert_eq!(
                redrawn.get(g, c),
                evaluated.get(g, c),
                "class {g}, cluster {c}"
            );
        }
    }

    // report: every figure in its own file (SVG charts, PNG samples at the size the layout
    // implies), and one index.html that holds them all (inline SVG, PNG data: URIs).
    let out = dir.path().join("report");
    let rel = file_names(&write_report(&store_dir, "tiny2", &out, 2).unwrap());
    let charts = [
        "metrics.svg",
        "per_class_iou.svg",
        "confusion.svg",
        "loss.svg",
        "cluster_sizes.svg",
    ];
    let samples = ["sample_00.png", "sample_01.png"];
    for f in charts.iter().chain(&samples).chain(&["index.html"]) {
        assert!(rel.iter().any(|r| r == f), "{f} in {rel:?}");
        assert!(out.join(f).is_file());
    }
    let side = (EVAL_RES * (128 / EVAL_RES).max(1)) as u32;
    let sample = image::open(out.join("sample_00.png")).unwrap();
    assert_eq!((sample.width(), sample.height()), (4 * side + 12, side));
    let svg = |f: &str| std::fs::read_to_string(out.join(f)).unwrap();
    // Titles, axis labels with units, legends: as SVG text (each on a line of its own).
    let text = |s: &str, t: &str| s.contains(&format!(">\n{t}\n</text>"));
    for (f, want) in [
        (
            "metrics.svg",
            &[
                "mIoU and pixel accuracy per epoch",
                "score (%)",
                "mIoU",
                "pixel accuracy",
            ][..],
        ),
        ("per_class_iou.svg", &["IoU (%)", "sky", "ground", "wall"]),
        (
            "loss.svg",
            &["step (all epochs in order)", "epoch boundary"],
        ),
        (
            "cluster_sizes.svg",
            &["share of labelled pixels (%)", "largest cluster"],
        ),
        (
            "confusion.svg",
            &["ground-truth class", "% of class pixels"],
        ),
    ] {
        let s = svg(f);
        assert!(s.starts_with("<svg"), "{f}");
        for t in want {
            assert!(text(&s, t), "{t} in {f}:\n{s}");
        }
    }
    // The metrics chart's x ticks are the epochs.
    for e in ["0", "1", "2"] {
        assert!(text(&svg("metrics.svg"), e), "tick {e}");
    }
    // Every cell of the confusion prints its row-normalised share.
    let conf = svg("confusion.svg");
    for g in 0..CLASSES {
        let row: u64 = (0..K).map(|c| evaluated.get(g, c).unwrap()).sum();
        for c in 0..K {
            let pct = 100.0 * evaluated.get(g, c).unwrap() as f64 / row.max(1) as f64;
            assert!(
                text(&conf, &format!("{pct:.1}")),
                "{pct:.1} (class {g}, cluster {c})"
            );
        }
    }
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    assert_eq!(html.matches("<svg").count(), charts.len());
    assert_eq!(
        html.matches("src=\"data:image/png;base64,").count(),
        samples.len()
    );
    // Self-contained: nothing but data: URIs loads (links to the separate files remain).
    assert_eq!(html.matches("src=\"").count(), samples.len());
    assert!(html.contains("<table") && html.contains("miou"));
    // Links to the separate files are relative: nothing of the temp folder leaks into them.
    for attr in ["src", "href"] {
        assert!(!html.contains(&format!("{attr}=\"{}", dir.path().display())));
    }
    // Moved alone, the page still renders every figure.
    let alone = dir.path().join("moved");
    std::fs::create_dir(&alone).unwrap();
    std::fs::copy(out.join("index.html"), alone.join("index.html")).unwrap();
    crate::report::check_in_chromium(&alone.join("index.html"), charts.len() + samples.len());

    // A gc'd artifact: the frame that needs it says which, the summary says why it is short.
    let key = remove_output(&run, "label", 2, "weights");
    let e = run.cluster_sizes().unwrap_err();
    assert!(matches!(e, AnalysisError::Missing { .. }), "{e}");
    assert!(e.to_string().contains(&key), "{e}");
    let text = inspect(&store_dir, "tiny2", false).unwrap();
    assert!(text.contains("cluster sizes: (none:"), "{text}");

    // Without its evaluation metrics, the report draws what it can and says why the rest
    // is missing.
    remove_output(&run, "evaluate", 2, "metrics");
    let out = dir.path().join("partial");
    let files = write_report(&store_dir, "tiny2", &out, 2).unwrap();
    assert_eq!(
        file_names(&files),
        ["confusion.svg", "loss.svg", "index.html"]
    );
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    for note in [
        "no evaluation metrics",
        "no sample predictions",
        "no pseudo-label cluster sizes",
    ] {
        assert!(html.contains(note), "{note} in {html}");
    }
}

#[test]
fn bad_store_and_unknown_run_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let e = Run::open(dir.path(), "x").err().unwrap();
    assert!(matches!(e, AnalysisError::NotAStore { .. }), "{e}");
    assert!(e.to_string().contains("not a picie artifact store"), "{e}");
    // Opening must not have turned the folder into a store.
    assert!(!dir.path().join("objects").exists());
    assert!(inspect(&dir.path().join("missing"), "x", false).is_err());

    let store_dir = dir.path().join("store");
    picie::Store::open(&store_dir).unwrap();
    let e = Run::open(&store_dir, "nope").err().unwrap();
    assert!(e.to_string().contains("runs there: none"), "{e}");
    std::fs::create_dir_all(store_dir.join("runs/other")).unwrap();
    std::fs::write(store_dir.join("runs/other/latest.json"), "{").unwrap();
    let e = Run::open(&store_dir, "nope").err().unwrap();
    assert!(e.to_string().contains("runs there: other"), "{e}");
    let e = Run::open(&store_dir, "../store").err().unwrap();
    assert!(matches!(e, AnalysisError::NoSuchRun { .. }), "{e}");
    // A broken record is reported as such, not as a panic.
    let e = Run::open(&store_dir, "other").err().unwrap();
    assert!(matches!(e, AnalysisError::BadRecord { .. }), "{e}");
    let e = write_report(&store_dir, "nope", &dir.path().join("r"), 1)
        .err()
        .unwrap();
    assert!(matches!(e, AnalysisError::NoSuchRun { .. }), "{e}");
}

/// A deterministic generator for the random matrices (no test dependency on `rand`).
struct Lcg(u64);
impl Lcg {
    fn draw(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

#[test]
fn hungarian_totals_match_scipy() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = picie::python();
    let script = root.join("tests/python/hungarian_check.py");
    if !python.is_file() {
        return picie_testkit::skip_setup(format!(
            "oracle venv: {} not found (run scripts/setup.sh)",
            python.display()
        ));
    }
    let probe = Command::new(&python)
        .args(["-c", "import scipy.optimize, numpy"])
        .output()
        .unwrap();
    if !probe.status.success() {
        return picie_testkit::skip_setup(format!(
            "oracle venv: scipy/numpy not importable by {}",
            python.display()
        ));
    }

    // Sizes 2..=40, three matrices each: dense wide-range, small values (many ties), sparse.
    let mut rng = Lcg(20210617);
    let mut mats: Vec<Vec<Vec<u64>>> = Vec::new();
    for n in 2..=40usize {
        for style in 0..3 {
            let m = (0..n)
                .map(|_| {
                    (0..n)
                        .map(|_| match style {
                            0 => rng.draw() % 1_000_000,
                            1 => rng.draw() % 4,
                            _ => {
                                if rng.draw().is_multiple_of(5) {
                                    rng.draw() % 10_000
                                } else {
                                    0
                                }
                            }
                        })
                        .collect()
                })
                .collect();
            mats.push(m);
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("matrices.json");
    std::fs::write(&input, serde_json::to_string(&mats).unwrap()).unwrap();
    let out = Command::new(&python)
        .arg(&script)
        .arg(&input)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs: Vec<u64> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(theirs.len(), mats.len());

    for (m, want) in mats.iter().zip(theirs) {
        let n = m.len();
        // Rows = classes, columns = clusters, as in an evaluation confusion.
        let conf = Confusion::from_counts(n, n, m.iter().flatten().copied().collect()).unwrap();
        let assign = hungarian(&conf).unwrap();
        let mut seen = vec![false; n];
        for &class in &assign {
            assert!(!seen[class], "one-to-one");
            seen[class] = true;
        }
        let ours: u64 = assign
            .iter()
            .enumerate()
            .map(|(cluster, &class)| m[class][cluster])
            .sum();
        assert_eq!(ours, want, "{n}x{n} matrix");
    }
}

/// A final evaluation after the loop (outside it, reading the last epoch's network and
/// metrics) counts for the last epoch, and its table, which holds every row, is the run's
/// metrics, although it sorts first by epoch (regression: the last in-loop table was read).
#[test]
fn a_final_evaluation_after_the_loop_is_the_runs_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = tiny2()
        .replace(
            "      params: {res: 32, batch: 4, n_iter: 5}\n      inputs:\n        checkpoint: train.checkpoint",
            "      params: {res: 32, batch: 4, predictor: dot_product, view: 1}\n      inputs:\n        centroids: kmeans.centroids\n        checkpoint: train.checkpoint",
        )
        .replace(
            "loop:\n",
            "  - name: final\n    kind: evaluate\n    params: {res: 32, batch: 4, n_iter: 5}\n    inputs: {checkpoint: train.checkpoint, history: evaluate.metrics}\nloop:\n",
        );
    assert!(yaml.contains("name: final") && yaml.contains("dot_product"));
    let store_dir = run_yaml(dir.path(), &yaml);
    let m = Run::open(&store_dir, "tiny2").unwrap().metrics().unwrap();
    assert_eq!(u32s(&m, "epoch"), [0, 1, 2, 2]);
    assert_eq!(
        strs(&m, "predictor"),
        [
            "nearest_centroid",
            "dot_product_view1",
            "dot_product_view1",
            "nearest_centroid"
        ]
    );
}

/// With `crf:` on the last evaluation, the report's sample panels gain the refined
/// segmentation, and the refined labels `predictions` returns are the evaluation's: their
/// confusion over the val split scores its `miou_crf`.
#[test]
fn the_report_draws_the_crf_refined_segmentation_the_evaluation_scored() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = crate::common::tiny_pipeline("tinycrf", 1).replace(
        "      params: {res: 32, batch: 4, n_iter: 5}\n      inputs:\n        checkpoint: train.checkpoint",
        "      params: {res: 32, batch: 4, n_iter: 5, crf: {}}\n      inputs:\n        checkpoint: train.checkpoint",
    );
    assert!(yaml.contains("crf: {}"));
    let store_dir = run_yaml(dir.path(), &yaml);
    let run = Run::open(&store_dir, "tinycrf").unwrap();

    let (preds, k) = picie::report::predictions(&run, usize::MAX).unwrap();
    let mut refined = Confusion::new(CLASSES, k).unwrap();
    for p in &preds {
        let r = p.refined.as_ref().expect("a refined segmentation with crf");
        assert_eq!(r.len(), p.clusters.len());
        refined
            .add(&p.mask.as_ref().unwrap().data, r, Some(255))
            .unwrap();
    }
    let (scored, _) =
        picie::metrics::evaluate(&refined, picie::metrics::Matching::Hungarian, None).unwrap();
    let m = run.metrics().unwrap();
    let want = *f64s(&m, "miou_crf").last().unwrap();
    assert!(
        (scored.miou * 100.0 - want).abs() < 1e-6 || (scored.miou - want).abs() < 1e-6,
        "redrawn CRF mIoU {} vs evaluated {want}",
        scored.miou
    );

    let out = dir.path().join("report");
    write_report(&store_dir, "tinycrf", &out, 1).unwrap();
    let side = (EVAL_RES * (128 / EVAL_RES).max(1)) as u32;
    let sample = image::open(out.join("sample_00.png")).unwrap();
    assert_eq!((sample.width(), sample.height()), (5 * side + 16, side));
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    assert!(
        html.contains("after the dense CRF"),
        "caption names the CRF panel"
    );
}
