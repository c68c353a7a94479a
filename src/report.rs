//! `picie report`: PNG figures and an index.html for one run, drawn with the `image` crate
//! alone (axes, ticks, a 3x5 digit font; no plotting crate).
//!
//! Written files:
//! - `sample_NN.png`: image | ground truth | prediction | overlay (image blended 50% with the
//!   prediction colours), for the first N validation images.
//! - `confusion.png`: the last evaluation's class x cluster counts, row-normalised; columns
//!   ordered by matched class. Left strip: class colours; top strip: the matched class's colour.
//! - `loss.png`: train loss per step (all epochs in order; grey lines mark epoch boundaries).
//! - `metrics.png`: mIoU (red) and pixel accuracy (blue) per epoch, 0..100.
//! - `index.html`: all of them, with the metrics table.
//!
//! Predictions of the samples are the last evaluation's: its network (the `checkpoint` it
//! wrote after a train-mode k-means pass, else its recorded `checkpoint` input), its
//! preprocessing at its `res`, network in eval mode, the centroids it stored (fresh
//! k-means, or the training centroids for `dot_product`) with its predictor's score,
//! upsampled bilinearly, argmax; clusters are coloured through the matching of the
//! evaluation's own confusion over the whole validation split (Hungarian when K == classes,
//! majority otherwise). The heat map uses the same confusion.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};
use polars::prelude::*;
use tch::Tensor;

use crate::analysis::{confusion_of, metric_rows, AnalysisError, Run};
use crate::data::{preprocess, ClassInfo, Split};
use crate::metrics::{self, Confusion, Matching};
use crate::predict::{self, Predictor};
use crate::transforms::geometric::to_tensor_normalised;

const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
const BLACK: Rgb<u8> = Rgb([0, 0, 0]);
const GREY: Rgb<u8> = Rgb([200, 200, 200]);
const RED: [u8; 3] = [214, 39, 40];
const BLUE: [u8; 3] = [31, 119, 180];

/// Writes the report of `run` into `out_dir` (created); returns the files written.
pub fn write_report(
    store_dir: &Path,
    run: &str,
    out_dir: &Path,
    n_images: usize,
) -> Result<Vec<PathBuf>, AnalysisError> {
    let r = Run::open(store_dir, run)?;
    std::fs::create_dir_all(out_dir).map_err(|e| AnalysisError::io(out_dir, e))?;
    let mut files = Vec::new();
    let mut html = Html::new(&r);

    let metrics = r.metrics().ok();
    if let Some(m) = &metrics {
        html.table(m);
    }
    let eval_node = r.last_node("evaluate", "confusion").ok();
    let last_epoch = eval_node.map(|n| n.epoch.unwrap_or(0));

    // Samples need the pipeline file (for the data set); without it the rest still comes.
    if n_images > 0 {
        match samples(&r, n_images) {
            Ok((imgs, classes)) => {
                html.legend(&classes);
                for (i, img) in imgs.iter().enumerate() {
                    let name = format!("sample_{i:02}.png");
                    save(img, &out_dir.join(&name), &mut files)?;
                    html.figure(
                        &format!(
                            "validation image {i}: image | ground truth | prediction | overlay"
                        ),
                        &name,
                    );
                }
            }
            Err(e) => html.note(&format!("no sample predictions: {e}")),
        }
    }

    let conf = last_epoch.map(|e| (e, r.confusion(e)));
    if let Some((epoch, Err(e))) = &conf {
        html.note(&format!("no confusion for epoch {epoch}: {e}"));
    }
    if let Some((epoch, Ok(conf))) = conf {
        let classes = dataset_classes(&r).unwrap_or_default();
        let img = heat_map(&conf, &classes)?;
        save(&img, &out_dir.join("confusion.png"), &mut files)?;
        html.figure(
            &format!(
                "confusion, epoch {epoch}: rows = classes, columns = clusters ordered by matched class (row-normalised)"
            ),
            "confusion.png",
        );
    } else if last_epoch.is_none() {
        html.note("no evaluation confusion in this run");
    }

    match r.train_metrics() {
        Ok(t) => {
            let epoch: Vec<u32> = t.column("epoch")?.u32()?.iter().flatten().collect();
            let loss: Vec<f64> = t.column("loss")?.f64()?.iter().flatten().collect();
            let pts: Vec<(f64, f64)> = loss
                .iter()
                .enumerate()
                .map(|(i, &l)| (i as f64, l))
                .collect();
            let bounds: Vec<f64> = epoch
                .windows(2)
                .enumerate()
                .filter(|(_, w)| w[0] != w[1])
                .map(|(i, _)| i as f64 + 0.5)
                .collect();
            let img = line_plot(&[(&pts, RED)], &bounds, None);
            save(&img, &out_dir.join("loss.png"), &mut files)?;
            html.figure("train loss per step (grey: epoch boundaries)", "loss.png");
        }
        Err(e) => html.note(&format!("no train metrics: {e}")),
    }

    if let Some(m) = &metrics {
        let rows = metric_rows(m)?;
        let miou: Vec<(f64, f64)> = rows.iter().map(|r| (r.0 as f64, r.2)).collect();
        let acc: Vec<(f64, f64)> = rows.iter().map(|r| (r.0 as f64, r.1)).collect();
        let img = line_plot(&[(&miou, RED), (&acc, BLUE)], &[], Some((0.0, 100.0)));
        save(&img, &out_dir.join("metrics.png"), &mut files)?;
        html.figure(
            "per epoch: mIoU (red) and pixel accuracy (blue), percent",
            "metrics.png",
        );
    }

    let index = out_dir.join("index.html");
    std::fs::write(&index, html.finish()).map_err(|e| AnalysisError::io(&index, e))?;
    files.push(index);
    Ok(files)
}

fn save(img: &RgbImage, path: &Path, files: &mut Vec<PathBuf>) -> Result<(), AnalysisError> {
    img.save(path)
        .map_err(|e| AnalysisError::Other(format!("writing {}: {e}", path.display())))?;
    files.push(path.to_path_buf());
    Ok(())
}

/// The evaluation data set of the run's pipeline file.
fn dataset(r: &Run) -> Result<std::sync::Arc<crate::data::DatasetConfig>, AnalysisError> {
    let path = &r.record.pipeline;
    let plan = crate::plan::Plan::load(path, &crate::stages::builtin()).map_err(|e| {
        AnalysisError::Other(format!(
            "loading the run's pipeline {} (needed for its data set): {e}",
            path.display()
        ))
    })?;
    crate::sections::dataset_of(&plan)
        .cloned()
        .map(std::sync::Arc::new)
        .ok_or_else(|| AnalysisError::Other(format!("{} names no data set", path.display())))
}

fn dataset_classes(r: &Run) -> Result<Vec<ClassInfo>, AnalysisError> {
    Ok(open_val(r)?.classes().to_vec())
}

fn class_colour(classes: &[ClassInfo], c: Option<usize>) -> Rgb<u8> {
    match c.and_then(|c| classes.get(c)) {
        Some(ci) => Rgb(ci.colour),
        None => GREY,
    }
}

/// One validation image as the last evaluation saw it: the preprocessed image, its mask,
/// and the cluster of every pixel (row-major, `res` x `res`).
pub struct Predicted {
    pub image: RgbImage,
    pub mask: Option<crate::data::Mask>,
    pub clusters: Vec<u32>,
}

/// The last evaluation's predictions for the first `n` validation images, with its network,
/// preprocessing, centroids and predictor, and its k.
pub fn predictions(r: &Run, n: usize) -> Result<(Vec<Predicted>, usize), AnalysisError> {
    predict(r, open_val(r)?.as_ref(), n)
}

fn open_val(r: &Run) -> Result<Box<dyn crate::data::Dataset>, AnalysisError> {
    dataset(r)?
        .open(Split::Val)
        .map_err(|e| AnalysisError::Other(e.to_string()))
}

fn predict(
    r: &Run,
    val: &dyn crate::data::Dataset,
    n: usize,
) -> Result<(Vec<Predicted>, usize), AnalysisError> {
    let n = n.min(val.len());

    let eval = r.last_node("evaluate", "metrics")?;
    let eval_art = r.artifact(eval, "metrics")?;
    let prov = &eval_art.manifest.provenance;
    let res = prov["params"]["res"].as_u64().unwrap_or(320) as u32;
    // With a train-mode fresh k-means pass the evaluation predicted with the network that
    // pass updated (its `checkpoint` output); otherwise with its input checkpoint.
    let ckpt = if eval.outputs.contains_key("checkpoint") {
        r.artifact(eval, "checkpoint")?
    } else {
        let key = prov["inputs"]["checkpoint"]
            .as_str()
            .ok_or_else(|| AnalysisError::BadArtifact {
                key: eval_art.key().into(),
                message: "its provenance names no checkpoint input".into(),
            })?
            .to_string();
        r.artifact_by_key(&key, &eval.name, "checkpoint (input)")?
    };
    let (centroids, _) = crate::tables::read_centroids(&r.artifact(eval, "centroids")?, 1)?;
    let dot_product = prov["params"]["predictor"].as_str() == Some("dot_product");

    let device = tch::Device::Cpu;
    let m = crate::checkpoint::load(&ckpt, device)?;
    m.channels_last();
    let k = m
        .net
        .check_centroids(&centroids)
        .map_err(|e| AnalysisError::Other(format!("`{}`: {e}", eval.name)))?;
    let predictor = if dot_product {
        Predictor::DotProduct
    } else {
        Predictor::NearestCentroid
    };

    let mut items = Vec::new();
    for i in 0..n {
        let (img, mask) =
            preprocess::load_eval(val, i, res).map_err(|e| AnalysisError::Other(e.to_string()))?;
        if img.dimensions() != (res, res) {
            return Err(AnalysisError::Other(format!(
                "evaluation preprocessing of {} gave {:?}, not {res}x{res}",
                val.id(i),
                img.dimensions()
            )));
        }
        let x = to_tensor_normalised(&img).unsqueeze(0);
        let pred = tch::no_grad(|| -> Result<Tensor, AnalysisError> {
            let z = m
                .net
                .forward_t(&x, false)
                .map_err(|e| AnalysisError::Other(e.to_string()))?;
            // As the evaluate stage predicts.
            Ok(predict::predict(&z, &centroids, predictor, res as i64))
        })?;
        let pred: Vec<u32> = Vec::<i64>::try_from(pred.flatten(0, -1))
            .map_err(|e| AnalysisError::Other(e.to_string()))?
            .into_iter()
            .map(|v| v as u32)
            .collect();
        items.push(Predicted {
            image: img,
            mask,
            clusters: pred,
        });
    }
    Ok((items, k))
}

/// The sample panels of the first `n` validation images, and the classes.
fn samples(r: &Run, n: usize) -> Result<(Vec<RgbImage>, Vec<ClassInfo>), AnalysisError> {
    let val = open_val(r)?;
    let (items, k) = predict(r, val.as_ref(), n)?;
    let eval = r.last_node("evaluate", "metrics")?;
    let classes = val.classes().to_vec();
    let ignore = val.ignore_index();
    let res = items.first().map_or(0, |p| p.image.width());
    // The evaluation's matching, over its whole validation confusion.
    let conf = r
        .confusion(eval.epoch.unwrap_or(0))
        .ok()
        .filter(|c| c.total() > 0);
    let matching = match conf {
        None => vec![None; k],
        Some(c) if c.clusters() != k => {
            return Err(AnalysisError::Other(format!(
                "the confusion of `{}` has {} clusters, its centroids {k}",
                eval.name,
                c.clusters()
            )))
        }
        Some(c) if k == c.classes() => metrics::match_clusters(&c, Matching::Hungarian)?,
        Some(c) => metrics::match_clusters(&c, Matching::Majority)?,
    };

    // Small evaluation crops are scaled up (nearest) so the panels stay visible.
    let scale = (128 / res.max(1)).max(1);
    let side = res * scale;
    let gap = 4;
    let mut out = Vec::new();
    for Predicted {
        image: img,
        mask,
        clusters: pred,
    } in items
    {
        let mut panel = RgbImage::from_pixel(4 * side + 3 * gap, side, WHITE);
        for y in 0..side {
            for x in 0..side {
                let (sx, sy) = (x / scale, y / scale);
                let p = *img.get_pixel(sx, sy);
                let idx = (sy * res + sx) as usize;
                let gt = match mask.as_ref().and_then(|m| m.get(sx, sy)) {
                    Some(g) if g != ignore => class_colour(&classes, Some(g as usize)),
                    _ => BLACK,
                };
                let pc = class_colour(
                    &classes,
                    matching.get(pred[idx] as usize).copied().flatten(),
                );
                let blend = Rgb(std::array::from_fn(|c| {
                    ((p.0[c] as u16 + pc.0[c] as u16) / 2) as u8
                }));
                panel.put_pixel(x, y, p);
                panel.put_pixel(side + gap + x, y, gt);
                panel.put_pixel(2 * (side + gap) + x, y, pc);
                panel.put_pixel(3 * (side + gap) + x, y, blend);
            }
        }
        out.push(panel);
    }
    Ok((out, classes))
}

/// A colour ramp for 0..1 (white -> blue -> dark navy): readable for mostly-empty matrices.
fn ramp(t: f64) -> Rgb<u8> {
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let stops = [
        (0.0, [255.0, 255.0, 255.0]),
        (0.5, [66.0, 146.0, 198.0]),
        (1.0, [8.0, 29.0, 88.0]),
    ];
    let (a, b) = if t <= 0.5 {
        (stops[0], stops[1])
    } else {
        (stops[1], stops[2])
    };
    let u = (t - a.0) / (b.0 - a.0);
    Rgb(std::array::from_fn(|c| {
        (a.1[c] + (b.1[c] - a.1[c]) * u).round() as u8
    }))
}

/// Row-normalised class x cluster heat map; columns ordered by matched class.
pub fn heat_map(conf: &Confusion, classes: &[ClassInfo]) -> Result<RgbImage, AnalysisError> {
    let (nc, nk) = (conf.classes(), conf.clusters());
    let matching = if nc == nk {
        metrics::match_clusters(conf, Matching::Hungarian)?
    } else {
        metrics::match_clusters(conf, Matching::Majority)?
    };
    let mut order: Vec<usize> = (0..nk).collect();
    order.sort_by_key(|&c| (matching[c].unwrap_or(usize::MAX), c));
    let cell = (480 / nc.max(nk).max(1) as u32).clamp(6, 40);
    let strip = (cell / 2).max(4);
    let (w, h) = (strip + 2 + nk as u32 * cell, strip + 2 + nc as u32 * cell);
    let mut img = RgbImage::from_pixel(w, h, WHITE);
    let fill = |img: &mut RgbImage, x0: u32, y0: u32, ww: u32, hh: u32, c: Rgb<u8>| {
        for y in y0..(y0 + hh).min(img.height()) {
            for x in x0..(x0 + ww).min(img.width()) {
                img.put_pixel(x, y, c);
            }
        }
    };
    let x0 = strip + 2;
    let y0 = strip + 2;
    for g in 0..nc {
        let row: u64 = (0..nk).map(|c| conf.get(g, c).unwrap_or(0)).sum();
        fill(
            &mut img,
            0,
            y0 + g as u32 * cell,
            strip,
            cell,
            class_colour(classes, Some(g)),
        );
        for (j, &c) in order.iter().enumerate() {
            let v = conf.get(g, c).unwrap_or(0);
            let t = if row == 0 { 0.0 } else { v as f64 / row as f64 };
            fill(
                &mut img,
                x0 + j as u32 * cell,
                y0 + g as u32 * cell,
                cell,
                cell,
                ramp(t),
            );
        }
    }
    for (j, &c) in order.iter().enumerate() {
        fill(
            &mut img,
            x0 + j as u32 * cell,
            0,
            cell,
            strip,
            class_colour(classes, matching[c]),
        );
    }
    // Thin grid lines between cells.
    for i in 0..=nk as u32 {
        fill(&mut img, x0 + i * cell, y0, 1, nc as u32 * cell, GREY);
    }
    for i in 0..=nc as u32 {
        fill(&mut img, x0, y0 + i * cell, nk as u32 * cell, 1, GREY);
    }
    Ok(img)
}

/// 3x5 glyphs for tick labels: digits, '.', '-', 'e'.
fn glyph(ch: char) -> Option<[u8; 5]> {
    Some(match ch {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 2, 2],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        '-' => [0, 0, 7, 0, 0],
        'e' => [0, 7, 7, 4, 7],
        _ => return None,
    })
}

/// Draws `text` with its top-left corner at (x, y), 2 px per font pixel.
fn draw_text(img: &mut RgbImage, x: i64, y: i64, text: &str, colour: Rgb<u8>) {
    let s = 2;
    for (i, ch) in text.chars().enumerate() {
        let Some(g) = glyph(ch) else { continue };
        for (row, bits) in g.iter().enumerate() {
            for col in 0..3 {
                if bits & (4 >> col) != 0 {
                    for dy in 0..s {
                        for dx in 0..s {
                            put(
                                img,
                                x + (i as i64 * 4 + col) * s + dx,
                                y + row as i64 * s + dy,
                                colour,
                            );
                        }
                    }
                }
            }
        }
    }
}

fn text_width(text: &str) -> i64 {
    text.chars().count() as i64 * 8
}

fn put(img: &mut RgbImage, x: i64, y: i64, c: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, c);
    }
}

/// A 2 px wide line (Bresenham).
fn line(img: &mut RgbImage, (mut x0, mut y0): (i64, i64), (x1, y1): (i64, i64), c: Rgb<u8>) {
    let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
    let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
    let mut err = dx + dy;
    loop {
        put(img, x0, y0, c);
        put(img, x0 + 1, y0, c);
        put(img, x0, y0 + 1, c);
        if x0 == x1 && y0 == y1 {
            break;
        }
        let e2 = 2 * err;
        if e2 >= dy {
            err += dy;
            x0 += sx;
        }
        if e2 <= dx {
            err += dx;
            y0 += sy;
        }
    }
}

/// A tick label with as many decimals as the tick spacing `step` needs to tell ticks apart.
fn tick_label(v: f64, step: f64) -> String {
    let a = v.abs();
    if a >= 1e6 || (a > 0.0 && a < 1e-4) {
        return format!("{v:.2e}");
    }
    // The fewest decimals that write the step exactly (0.25 needs 2, 0.2 needs 1).
    let decimals = if step > 0.0 && step.is_finite() {
        (0..=6)
            .find(|&d| {
                let scaled = step * 10f64.powi(d);
                (scaled - scaled.round()).abs() < 1e-6 * scaled.max(1.0)
            })
            .unwrap_or(6) as usize
    } else {
        2
    };
    format!("{v:.decimals$}")
}

/// A round tick spacing (1, 2, 2.5 or 5 times a power of ten) giving about four intervals.
fn nice_step(span: f64) -> f64 {
    let raw = span / 4.0;
    if raw <= 0.0 || !raw.is_finite() {
        return 1.0;
    }
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw * (1.0 - 1e-9))
        .unwrap_or(10.0 * mag)
}

/// Tick positions: five even ones, or whole numbers when the x values are counts (steps,
/// epochs), so that no tick sits between two epochs.
fn ticks(min: f64, max: f64, whole: bool) -> Vec<f64> {
    if whole {
        let step = ((max - min) / 4.0).ceil().max(1.0);
        let mut t = Vec::new();
        let mut v = min.ceil();
        while v <= max + 1e-9 {
            t.push(v);
            v += step;
        }
        t
    } else {
        // Round values, so that labels are exact (2.4, 2.2, 2.0 rather than 2.25 shown as 2.2).
        let step = nice_step(max - min);
        let mut t = Vec::new();
        let mut i = (min / step - 1e-9).ceil();
        while i * step <= max + 1e-9 * step {
            // `+ 0.0` turns -0.0 (from ceil of a tiny negative) into 0.0.
            t.push(i * step + 0.0);
            i += 1.0;
        }
        if t.is_empty() {
            t.push(min);
        }
        t
    }
}

/// Points of one curve and its colour.
pub type Series<'a> = (&'a [(f64, f64)], [u8; 3]);

/// A line plot of (x, y) series with axes, 5 ticks per axis and their values; `vlines` are
/// grey vertical markers; `y_range` fixes the y axis (else the data's range).
pub fn line_plot(series: &[Series<'_>], vlines: &[f64], y_range: Option<(f64, f64)>) -> RgbImage {
    let (w, h) = (640i64, 360i64);
    let (left, right, top, bottom) = (70i64, 20i64, 15i64, 35i64);
    let mut img = RgbImage::from_pixel(w as u32, h as u32, WHITE);
    let pts = series
        .iter()
        .flat_map(|s| s.0.iter())
        .filter(|p| p.0.is_finite() && p.1.is_finite());
    let (mut xmin, mut xmax, mut ymin, mut ymax) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for p in pts {
        xmin = xmin.min(p.0);
        xmax = xmax.max(p.0);
        ymin = ymin.min(p.1);
        ymax = ymax.max(p.1);
    }
    if xmin > xmax {
        (xmin, xmax, ymin, ymax) = (0.0, 1.0, 0.0, 1.0);
    }
    if let Some((a, b)) = y_range {
        (ymin, ymax) = (a, b);
    }
    // Degenerate ranges (one point, flat curve) get a unit span around them.
    if xmax - xmin < 1e-12 {
        (xmin, xmax) = (xmin - 0.5, xmax + 0.5);
    }
    if ymax - ymin < 1e-12 {
        (ymin, ymax) = (ymin - 0.5, ymax + 0.5);
    }
    let (pw, ph) = (w - left - right, h - top - bottom);
    let px = |x: f64| left + ((x - xmin) / (xmax - xmin) * pw as f64).round() as i64;
    let py = |y: f64| top + ph - ((y - ymin) / (ymax - ymin) * ph as f64).round() as i64;
    for &v in vlines {
        let x = px(v);
        for y in top..top + ph {
            put(&mut img, x, y, GREY);
        }
    }
    // Axes and ticks.
    line(&mut img, (left, top), (left, top + ph), BLACK);
    line(&mut img, (left, top + ph), (left + pw, top + ph), BLACK);
    let whole = series
        .iter()
        .flat_map(|s| s.0.iter())
        .all(|p| p.0.fract() == 0.0);
    let xt = ticks(xmin, xmax, whole);
    let xstep = if whole { 1.0 } else { nice_step(xmax - xmin) };
    for xv in xt {
        let x = px(xv);
        line(&mut img, (x, top + ph), (x, top + ph + 5), BLACK);
        let lx = tick_label(xv, xstep);
        draw_text(&mut img, x - text_width(&lx) / 2, top + ph + 10, &lx, BLACK);
    }
    for yv in ticks(ymin, ymax, false) {
        let y = py(yv);
        line(&mut img, (left - 5, y), (left, y), BLACK);
        let ly = tick_label(yv, nice_step(ymax - ymin));
        draw_text(&mut img, left - 9 - text_width(&ly), y - 5, &ly, BLACK);
    }
    for (pts, colour) in series {
        let c = Rgb(*colour);
        let pts: Vec<(i64, i64)> = pts
            .iter()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .map(|p| (px(p.0), py(p.1)))
            .collect();
        for w in pts.windows(2) {
            line(&mut img, w[0], w[1], c);
        }
        // Markers where there are few points (per-epoch curves).
        if pts.len() <= 50 {
            for &(x, y) in &pts {
                for dy in -2..=2 {
                    for dx in -2..=2 {
                        put(&mut img, x + dx, y + dy, c);
                    }
                }
            }
        }
    }
    img
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// index.html, built section by section.
struct Html {
    body: String,
}

impl Html {
    fn new(r: &Run) -> Self {
        let rec = &r.record;
        let mut body = String::new();
        let _ = write!(
            body,
            "<h1>picie run {}</h1>\n<p>{} on {}; pipeline {}; started {}, finished {}; {} nodes</p>\n",
            esc(&rec.name),
            if rec.ok { "ok" } else { "FAILED" },
            esc(&rec.device),
            esc(&rec.pipeline.display().to_string()),
            esc(&rec.started),
            esc(&rec.finished),
            rec.nodes.len()
        );
        if let Some(e) = &rec.error {
            let _ = writeln!(body, "<p><b>error:</b> {}</p>", esc(e));
        }
        Self { body }
    }

    fn note(&mut self, text: &str) {
        let _ = writeln!(self.body, "<p><i>{}</i></p>", esc(text));
    }

    fn figure(&mut self, title: &str, src: &str) {
        let _ = writeln!(
            self.body,
            "<figure><figcaption>{}</figcaption><img src=\"{}\" alt=\"{}\"></figure>",
            esc(title),
            esc(src),
            esc(title)
        );
    }

    fn legend(&mut self, classes: &[ClassInfo]) {
        let _ = write!(self.body, "<p>classes: ");
        for c in classes {
            let [r, g, b] = c.colour;
            let _ = write!(
                self.body,
                "<span style=\"background: rgb({r},{g},{b}); padding: 0 1em; margin-right: 0.3em\"></span>{} ",
                esc(&c.name)
            );
        }
        let _ = writeln!(
            self.body,
            "(black: ignored / no label; grey: unmatched cluster)</p>"
        );
    }

    fn table(&mut self, df: &DataFrame) {
        let _ = writeln!(
            self.body,
            "<h2>metrics</h2>\n<table border=\"1\" cellpadding=\"4\"><tr>"
        );
        for name in df.get_column_names() {
            let _ = write!(self.body, "<th>{}</th>", esc(name));
        }
        let _ = writeln!(self.body, "</tr>");
        for i in 0..df.height() {
            let _ = write!(self.body, "<tr>");
            for col in df.columns() {
                let cell = match col.get(i) {
                    Ok(AnyValue::Float64(v)) => format!("{v:.2}"),
                    Ok(AnyValue::Null) => String::new(),
                    Ok(AnyValue::String(s)) => s.to_string(),
                    Ok(AnyValue::List(s)) => s
                        .f64()
                        .map(|ca| {
                            ca.iter()
                                .map(|v| v.map_or("-".into(), |v| format!("{v:.1}")))
                                .collect::<Vec<_>>()
                                .join(", ")
                        })
                        .unwrap_or_default(),
                    Ok(v) => v.to_string(),
                    Err(_) => String::new(),
                };
                let _ = write!(self.body, "<td>{}</td>", esc(&cell));
            }
            let _ = writeln!(self.body, "</tr>");
        }
        let _ = writeln!(self.body, "</table>");
    }

    fn finish(self) -> String {
        format!(
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>picie report</title>\
             <style>body {{ font-family: sans-serif; margin: 2em; }} \
             img {{ image-rendering: pixelated; border: 1px solid #ccc; }} \
             figure {{ margin: 1em 0; }}</style></head>\n<body>\n{}</body></html>\n",
            self.body
        )
    }
}

/// The confusion of a contingency DataFrame (re-exported for tests and notebooks).
pub fn confusion_from_frame(df: &DataFrame) -> Result<Confusion, AnalysisError> {
    confusion_of(df)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: a loss axis from 1.8 to 2.4 got ticks every 0.15 labelled to one decimal,
    /// so 2.25 read "2.2" and 1.95 read "1.9", unevenly spaced to the eye.
    #[test]
    fn ticks_are_round_and_labelled_exactly() {
        let t = ticks(1.8, 2.4, false);
        let step = nice_step(2.4 - 1.8);
        let labels: Vec<String> = t.iter().map(|&v| tick_label(v, step)).collect();
        assert_eq!(labels, ["1.8", "2.0", "2.2", "2.4"]);
        let labels: Vec<String> = ticks(0.0, 100.0, false)
            .iter()
            .map(|&v| tick_label(v, nice_step(100.0)))
            .collect();
        assert_eq!(labels, ["0", "25", "50", "75", "100"]);
        assert_eq!(tick_label(2.25, 0.25), "2.25");
        assert_eq!(ticks(0.0, 9.0, true), [0.0, 3.0, 6.0, 9.0]);
        assert!(!ticks(5.0, 5.0, false).is_empty());
    }
}
