//! `picie report`: one run's figures in a self-contained `index.html`.
//!
//! Charts are drawn with plotters as SVG (titles, axis labels with units, legends); the
//! page inlines them, and embeds the sample panels (PNG) as data: URIs, so that index.html
//! alone can be moved and opened offline. Every figure is also written as its own file:
//! - `metrics.svg`: mIoU and pixel accuracy (%) per epoch (bands mean ± std where given).
//! - `per_class_iou.svg`: IoU (%) of each class per epoch, class names in the legend.
//! - `sample_NN.png`: image | ground truth | prediction | overlay (| after the CRF, when
//!   the evaluation ran one) for the first N validation images, with the class colours
//!   listed in the page (`samples`).
//! - `confusion.svg`: the last evaluation's class x cluster pixels, row-normalised (%),
//!   columns = clusters ordered and labelled by their matched class.
//! - `loss.svg`: train loss per step, with its within- and cross-view terms and the epoch
//!   boundaries.
//! - `cluster_sizes.svg`: the largest, median and smallest pseudo-label cluster's share of
//!   the labelled pixels per epoch, against the uniform share 100/K.
//!
//! What a run cannot give yet (no evaluation, no training) is replaced by a note saying why.

mod figures;
mod html;
mod samples;

use std::path::{Path, PathBuf};

use polars::prelude::*;

use crate::analysis::{confusion_of, metric_rows, AnalysisError, Run};
use crate::data::ClassInfo;
use crate::metrics::Confusion;
use crate::sweep::Sweep;

pub use figures::{confusion_chart, line_chart, LineChart, Point, Series};
pub use html::FIGCHECK_SCRIPT;
pub use samples::{predictions, Predicted};

const RED: [u8; 3] = [214, 39, 40];
const BLUE: [u8; 3] = [31, 119, 180];
const GREEN: [u8; 3] = [44, 160, 44];
const ORANGE: [u8; 3] = [255, 127, 14];
const GREY: [u8; 3] = [127, 127, 127];
/// Line colours where the data set's class colours are unknown (tab10).
const PALETTE: [[u8; 3]; 10] = [
    BLUE,
    ORANGE,
    GREEN,
    RED,
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    GREY,
    [188, 189, 34],
    [23, 190, 207],
];

/// Writes the report of `run` into `out_dir` (created); returns the files written.
pub fn write_report(
    store_dir: &Path,
    run: &str,
    out_dir: &Path,
    n_images: usize,
) -> Result<Vec<PathBuf>, AnalysisError> {
    let r = Run::open(store_dir, run)?;
    let mut out = Output::new(out_dir, html::Page::new(&r))?;
    let classes = out.classes(&r);

    out.page.heading("evaluation");
    match r.metrics() {
        Ok(m) => {
            let rows = metric_rows(&m)?;
            let miou = rows.iter().map(|r| (r.0 as f64, r.2, None)).collect();
            let acc = rows.iter().map(|r| (r.0 as f64, r.1, None)).collect();
            out.svg(
                "metrics.svg",
                "mIoU and pixel accuracy per epoch",
                metrics_figure(miou, acc, "mIoU and pixel accuracy per epoch"),
            )?;
            out.page.table(&m);
            out.svg(
                "per_class_iou.svg",
                "IoU of each class per epoch",
                per_class_figure(&per_class_points(&m, "per_class_iou", None)?, &classes),
            )?;
        }
        Err(e) => out.page.note(&format!(
            "no evaluation metrics ({e}): the metrics, per-class IoU and confusion figures and \
             the sample predictions need an `evaluate` stage that has finished"
        )),
    }
    details(&r, &mut out, &classes, n_images)?;
    out.finish()
}

/// Writes the report of a multi-seed sweep (`NAME-seeds`): mIoU, pixel accuracy and
/// per-class IoU as mean ± std bands over the seeds, the table of means and stds, then the
/// first seed's confusion, samples and training figures.
pub fn write_sweep_report(
    store_dir: &Path,
    sweep: &str,
    out_dir: &Path,
    n_images: usize,
) -> Result<Vec<PathBuf>, AnalysisError> {
    let sw = Sweep::open(store_dir, sweep)?;
    let first = sw
        .runs
        .first()
        .ok_or_else(|| AnalysisError::Other(format!("sweep `{sweep}` has no runs")))?;
    let mut out = Output::new(out_dir, html::Page::for_sweep(&sw))?;
    let classes = out.classes(first);
    let n = sw.runs.len();

    out.page
        .heading(&format!("evaluation: mean ± std over {n} seed(s)"));
    match sw.metrics() {
        Ok(agg) => {
            let col = |name: &str| -> Result<Vec<Option<f64>>, AnalysisError> {
                Ok(agg.column(name)?.f64()?.iter().collect())
            };
            let epochs: Vec<f64> = agg
                .column("epoch")?
                .u32()?
                .iter()
                .map(|e| e.map_or(f64::NAN, f64::from))
                .collect();
            let points = |mean: Vec<Option<f64>>, std: Vec<Option<f64>>| -> Vec<Point> {
                epochs
                    .iter()
                    .zip(mean.iter().zip(std))
                    .map(|(&e, (m, s))| (e, m.unwrap_or(f64::NAN), s))
                    .collect()
            };
            let miou = points(col("miou_mean")?, col("miou_std")?);
            let acc = points(col("pixel_accuracy_mean")?, col("pixel_accuracy_std")?);
            let title = format!("mIoU and pixel accuracy per epoch, mean ± std over {n} seeds");
            out.svg(
                "metrics.svg",
                &format!("mIoU and pixel accuracy per epoch (bands: ± one std over {n} seeds)"),
                metrics_figure(miou, acc, &title),
            )?;
            out.page.table(&agg);
            out.svg(
                "per_class_iou.svg",
                &format!("IoU of each class per epoch (bands: ± one std over {n} seeds)"),
                per_class_figure(
                    &per_class_points(&agg, "per_class_iou_mean", Some("per_class_iou_std"))?,
                    &classes,
                ),
            )?;
        }
        Err(e) => out.page.note(&format!(
            "no mean over the seeds ({e}): every seed's run needs a finished `evaluate` stage"
        )),
    }
    out.page.note(&format!(
        "the figures below are those of the first seed's run, `{}`",
        first.record.name
    ));
    details(first, &mut out, &classes, n_images)?;
    out.finish()
}

/// What a run's report shows below its metrics: the last evaluation's confusion, sample
/// predictions, and training.
fn details(
    r: &Run,
    out: &mut Output<'_>,
    classes: &[ClassInfo],
    n_images: usize,
) -> Result<(), AnalysisError> {
    match r
        .last_node("evaluate", "confusion")
        .ok()
        .map(|n| n.epoch.unwrap_or(0))
    {
        Some(epoch) => match r.confusion(epoch) {
            Ok(conf) => {
                let title = format!("confusion, epoch {epoch} (row-normalised %)");
                out.svg(
                    "confusion.svg",
                    &format!(
                        "pixels of each ground-truth class (rows) per cluster (columns, ordered by \
                         matched class), epoch {epoch}"
                    ),
                    confusion_chart(&conf, classes, &title),
                )?;
            }
            Err(e) => out
                .page
                .note(&format!("no confusion for epoch {epoch}: {e}")),
        },
        None => out.page.note("no evaluation confusion in this run"),
    }

    if n_images > 0 {
        out.page.heading("sample predictions");
        // Samples need the pipeline file (for the data set); without it the rest still comes.
        match samples::samples(r, n_images) {
            Ok((imgs, classes)) => {
                out.page.legend(&classes);
                for (i, img) in imgs.iter().enumerate() {
                    // A fifth panel when the evaluation ran a dense CRF.
                    let crf = if img.width() > img.height() * 9 / 2 {
                        " | after the dense CRF"
                    } else {
                        ""
                    };
                    out.png(
                        &format!("sample_{i:02}.png"),
                        &format!(
                            "validation image {i}: image | ground truth | prediction | overlay{crf}"
                        ),
                        img,
                    )?;
                }
            }
            Err(e) => out.page.note(&format!("no sample predictions: {e}")),
        }
    }

    out.page.heading("training");
    // Where the run has no such frame, `svg` notes why in place of the figure.
    match r.stego_metrics() {
        // A STEGO run: its loss and each term, in place of PiCIE's.
        Ok(t) => out.svg(
            "stego_loss.svg",
            "STEGO's loss per step and its three terms, unweighted (dashed: epoch boundaries)",
            stego_loss_figure(&t),
        )?,
        Err(_) => out.svg(
            "loss.svg",
            "train loss per step (dashed: epoch boundaries)",
            r.train_metrics().and_then(|t| loss_figure(&t)),
        )?,
    }
    out.svg(
        "cluster_sizes.svg",
        "pseudo-label cluster sizes per epoch (both views)",
        r.cluster_sizes().and_then(|s| cluster_size_figure(&s)),
    )?;

    Ok(())
}

/// Where the figures go: their files, and the page that embeds them.
struct Output<'a> {
    dir: &'a Path,
    files: Vec<PathBuf>,
    page: html::Page,
}

impl<'a> Output<'a> {
    fn new(dir: &'a Path, page: html::Page) -> Result<Self, AnalysisError> {
        std::fs::create_dir_all(dir).map_err(|e| AnalysisError::io(dir, e))?;
        Ok(Self {
            dir,
            files: Vec::new(),
            page,
        })
    }

    /// Class names and colours from the run's pipeline file; without it, numbered classes
    /// (and a note saying why).
    fn classes(&mut self, r: &Run) -> Vec<ClassInfo> {
        samples::dataset_classes(r).unwrap_or_else(|e| {
            self.page
                .note(&format!("class names unknown, classes are numbered: {e}"));
            Vec::new()
        })
    }

    /// Writes index.html; returns every file written.
    fn finish(self) -> Result<Vec<PathBuf>, AnalysisError> {
        let Output {
            dir,
            mut files,
            page,
        } = self;
        let index = dir.join("index.html");
        std::fs::write(&index, page.finish()).map_err(|e| AnalysisError::io(&index, e))?;
        files.push(index);
        Ok(files)
    }

    /// Writes a chart and inlines it; a chart that cannot be drawn from the run's data
    /// becomes a note (the rest of the report still comes), a failed write an error.
    fn svg(
        &mut self,
        name: &str,
        caption: &str,
        svg: Result<String, AnalysisError>,
    ) -> Result<(), AnalysisError> {
        let svg = match svg {
            Ok(svg) => svg,
            Err(e) => {
                self.page.note(&format!("no {caption}: {e}"));
                return Ok(());
            }
        };
        let path = self.dir.join(name);
        std::fs::write(&path, &svg).map_err(|e| AnalysisError::io(&path, e))?;
        self.files.push(path);
        self.page.svg_figure(caption, &svg, name);
        Ok(())
    }

    fn png(
        &mut self,
        name: &str,
        caption: &str,
        img: &image::RgbImage,
    ) -> Result<(), AnalysisError> {
        let path = self.dir.join(name);
        let mut png = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .map_err(|e| AnalysisError::Other(format!("encoding {}: {e}", path.display())))?;
        std::fs::write(&path, &png).map_err(|e| AnalysisError::io(&path, e))?;
        self.files.push(path);
        self.page.png_figure(caption, &png);
        Ok(())
    }
}

/// mIoU and pixel accuracy (%) per epoch; points carry a std where they are means.
fn metrics_figure(miou: Vec<Point>, acc: Vec<Point>, title: &str) -> Result<String, AnalysisError> {
    let series = [
        Series {
            name: "mIoU".into(),
            colour: RED,
            points: miou,
        },
        Series {
            name: "pixel accuracy".into(),
            colour: BLUE,
            points: acc,
        },
    ];
    line_chart(&LineChart {
        title,
        x_label: "epoch (0 = untrained network + k-means)",
        y_label: "score (%)",
        series: &series,
        y_range: Some((0.0, 100.0)),
        vlines: &[],
        vlines_name: "",
        whole_x: true,
    })
}

/// A readable line colour: the class's own (as in the sample panels), darkened where it is
/// too light to see on white; a palette colour where the class is unknown.
fn line_colour(classes: &[ClassInfo], c: usize) -> [u8; 3] {
    let Some(ci) = classes.get(c) else {
        return PALETTE[c % PALETTE.len()];
    };
    let [r, g, b] = ci.colour;
    let luma = 0.299 * r as f64 + 0.587 * g as f64 + 0.114 * b as f64;
    if luma > 190.0 {
        ci.colour.map(|v| (v as f64 * 0.65) as u8)
    } else {
        ci.colour
    }
}

/// Per class, its IoU per epoch from a list column (and a std list column for bands).
fn per_class_points(
    m: &DataFrame,
    values: &str,
    std: Option<&str>,
) -> Result<Vec<Vec<Point>>, AnalysisError> {
    let epoch = m.column("epoch")?.u32()?;
    let ious = m.column(values)?.list()?;
    let stds = std
        .map(|s| m.column(s).and_then(|c| c.list().cloned()))
        .transpose()?;
    let mut per_class: Vec<Vec<Point>> = Vec::new();
    for i in 0..m.height() {
        let (Some(e), Some(values)) = (epoch.get(i), ious.get_as_series(i)) else {
            continue;
        };
        let sd: Vec<Option<f64>> = stds
            .as_ref()
            .and_then(|s| s.get_as_series(i))
            .and_then(|s| s.f64().ok().map(|v| v.iter().collect()))
            .unwrap_or_default();
        for (c, v) in values.f64()?.iter().enumerate() {
            if per_class.len() <= c {
                per_class.push(Vec::new());
            }
            // Null or NaN (a class absent from labels and predictions): a gap in the line.
            per_class[c].push((
                e as f64,
                v.unwrap_or(f64::NAN),
                sd.get(c).copied().flatten(),
            ));
        }
    }
    Ok(per_class)
}

fn per_class_figure(
    per_class: &[Vec<Point>],
    classes: &[ClassInfo],
) -> Result<String, AnalysisError> {
    let series: Vec<Series> = per_class
        .iter()
        .enumerate()
        .map(|(c, points)| Series {
            name: classes
                .get(c)
                .map_or_else(|| format!("class {c}"), |ci| ci.name.clone()),
            colour: line_colour(classes, c),
            points: points.clone(),
        })
        .collect();
    if series.is_empty() {
        return Err(AnalysisError::Other(
            "the metrics hold no per-class IoU".into(),
        ));
    }
    line_chart(&LineChart {
        title: "IoU of each class per epoch",
        x_label: "epoch",
        y_label: "IoU (%)",
        series: &series,
        y_range: Some((0.0, 100.0)),
        vlines: &[],
        vlines_name: "",
        whole_x: true,
    })
}

fn f64s(df: &DataFrame, name: &str) -> Result<Vec<f64>, AnalysisError> {
    Ok(df
        .column(name)?
        .f64()?
        .iter()
        .map(|v| v.unwrap_or(f64::NAN))
        .collect())
}

/// Steps counted over all epochs in order, from 1.
fn steps(values: Vec<f64>) -> Vec<Point> {
    values
        .into_iter()
        .enumerate()
        .map(|(i, v)| ((i + 1) as f64, v, None))
        .collect()
}

/// Between the last step of one epoch and the first of the next.
fn epoch_bounds(t: &DataFrame) -> Result<Vec<f64>, AnalysisError> {
    let epoch: Vec<Option<u32>> = t.column("epoch")?.u32()?.iter().collect();
    Ok(epoch
        .windows(2)
        .enumerate()
        .filter(|(_, w)| w[0] != w[1])
        .map(|(i, _)| i as f64 + 1.5)
        .collect())
}

fn stego_loss_figure(t: &DataFrame) -> Result<String, AnalysisError> {
    let series = [
        Series {
            name: "loss (weighted sum)".into(),
            colour: [30, 30, 30],
            points: steps(f64s(t, "loss")?),
        },
        Series {
            name: "intra (image with itself)".into(),
            colour: BLUE,
            points: steps(f64s(t, "loss_intra")?),
        },
        Series {
            name: "inter (KNN partner)".into(),
            colour: ORANGE,
            points: steps(f64s(t, "loss_inter")?),
        },
        Series {
            name: "neg (random images)".into(),
            colour: [44, 160, 44],
            points: steps(f64s(t, "loss_neg")?),
        },
    ];
    per_step_chart(t, "STEGO loss per step", "correlation loss", &series)
}

/// A chart of per-step series over all epochs in order, with the epoch boundaries.
fn per_step_chart(
    t: &DataFrame,
    title: &str,
    y_label: &str,
    series: &[Series],
) -> Result<String, AnalysisError> {
    line_chart(&LineChart {
        title,
        x_label: "step (all epochs in order)",
        y_label,
        series,
        y_range: None,
        vlines: &epoch_bounds(t)?,
        vlines_name: "epoch boundary",
        whole_x: true,
    })
}

fn loss_figure(t: &DataFrame) -> Result<String, AnalysisError> {
    let series = [
        Series {
            name: "loss = (within + cross) / 2".into(),
            colour: [30, 30, 30],
            points: steps(f64s(t, "loss")?),
        },
        Series {
            name: "within-view term".into(),
            colour: BLUE,
            points: steps(f64s(t, "loss_within")?),
        },
        Series {
            name: "cross-view term".into(),
            colour: ORANGE,
            points: steps(f64s(t, "loss_cross")?),
        },
    ];
    per_step_chart(
        t,
        "train loss per step",
        "weighted cross-entropy (nats)",
        &series,
    )
}

/// Cluster ids are arbitrary per k-means run, so sizes are compared by rank, not by id.
fn cluster_size_figure(s: &DataFrame) -> Result<String, AnalysisError> {
    let epoch = s.column("epoch")?.u32()?;
    let cluster = s.column("cluster")?.u32()?;
    let count = s.column("count")?.u64()?;
    let mut per: std::collections::BTreeMap<u32, std::collections::BTreeMap<u32, u64>> =
        Default::default();
    for ((e, c), n) in epoch.iter().zip(cluster.iter()).zip(count.iter()) {
        if let (Some(e), Some(c), Some(n)) = (e, c, n) {
            *per.entry(e).or_default().entry(c).or_default() += n;
        }
    }
    let (mut largest, mut median, mut smallest, mut uniform) = (vec![], vec![], vec![], vec![]);
    for (e, sizes) in &per {
        let total: u64 = sizes.values().sum();
        if total == 0 {
            continue;
        }
        let mut share: Vec<f64> = sizes
            .values()
            .map(|&n| 100.0 * n as f64 / total as f64)
            .collect();
        share.sort_by(f64::total_cmp);
        let x = *e as f64;
        largest.push((x, share[share.len() - 1], None));
        median.push((x, share[share.len() / 2], None));
        smallest.push((x, share[0], None));
        uniform.push((x, 100.0 / share.len() as f64, None));
    }
    let series = [
        Series {
            name: "largest cluster".into(),
            colour: RED,
            points: largest,
        },
        Series {
            name: "median cluster".into(),
            colour: GREEN,
            points: median,
        },
        Series {
            name: "smallest cluster".into(),
            colour: BLUE,
            points: smallest,
        },
        Series {
            name: "uniform (100 / K)".into(),
            colour: GREY,
            points: uniform,
        },
    ];
    line_chart(&LineChart {
        title: "pseudo-label cluster sizes per epoch",
        x_label: "epoch",
        y_label: "share of labelled pixels (%)",
        series: &series,
        y_range: None,
        vlines: &[],
        vlines_name: "",
        whole_x: true,
    })
}

/// The confusion of a contingency DataFrame (re-exported for tests and notebooks).
pub fn confusion_from_frame(df: &DataFrame) -> Result<Confusion, AnalysisError> {
    confusion_of(df)
}
