//! The report's charts, drawn with plotters into SVG strings. SVG leaves the text to the
//! browser, so no font files are read; plotters only estimates text widths for its layout.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::analysis::AnalysisError;
use crate::data::ClassInfo;
use crate::metrics::{self, Confusion, Matching};

/// One point of a curve: x, the mean, and the standard deviation around it (drawn as a
/// shaded band mean ± std where present, e.g. a mean over seeds).
pub type Point = (f64, f64, Option<f64>);

/// One named curve.
pub struct Series {
    pub name: String,
    pub colour: [u8; 3],
    pub points: Vec<Point>,
}

/// A line chart: title, axis labels (with their units), curves and vertical markers.
pub struct LineChart<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub series: &'a [Series],
    /// A fixed y range (percentages: 0..100); else the data's, bands included.
    pub y_range: Option<(f64, f64)>,
    /// Dashed vertical lines (epoch boundaries), named in the legend by `vlines_name`.
    pub vlines: &'a [f64],
    pub vlines_name: &'a str,
    /// x values are counts (epochs, steps): ticks only at whole numbers.
    pub whole_x: bool,
}

type DrawError = DrawingAreaErrorKind<std::io::Error>;
type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

const FONT: &str = "sans-serif";
/// Epoch boundaries: dashed, darker than the grid.
const RULE: RGBColor = RGBColor(90, 90, 90);
const GRID: RGBColor = RGBColor(225, 225, 225);
/// Font sizes as plotters takes them (its SVG text is 1/1.24 of these, in px).
const TITLE_SIZE: u32 = 22;
const DESC_SIZE: u32 = 17;
const TICK_SIZE: u32 = 15;
/// At most this many y ticks.
const Y_LABELS: usize = 11;
/// Curves with at most this many points get a marker on each (per-epoch curves).
const MARKERS_UP_TO: usize = 50;

/// Draws into a fresh white SVG of `size` pixels and returns its text.
fn render(
    size: (u32, u32),
    what: &str,
    draw: impl FnOnce(&Area<'_>) -> Result<(), DrawError>,
) -> Result<String, AnalysisError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        let fail = |e: DrawError| AnalysisError::Other(format!("drawing {what}: {e}"));
        root.fill(&WHITE).map_err(fail)?;
        draw(&root).map_err(fail)?;
        root.present().map_err(fail)?;
    }
    Ok(svg)
}

fn rgb(c: [u8; 3]) -> RGBColor {
    RGBColor(c[0], c[1], c[2])
}

/// Maximal runs of consecutive finite points: a NaN (a class absent from an epoch) breaks
/// the curve instead of being drawn as zero.
fn finite_runs(points: &[Point]) -> Vec<&[Point]> {
    points
        .split(|p| !(p.0.is_finite() && p.1.is_finite()))
        .filter(|r| !r.is_empty())
        .collect()
}

/// The polygons of the band mean ± std: one per run of points that all have a finite std.
fn band_polygons(points: &[Point]) -> Vec<Vec<(f64, f64)>> {
    let has_std = |p: &Point| {
        p.0.is_finite() && p.1.is_finite() && p.2.is_some_and(|s| s.is_finite() && s >= 0.0)
    };
    points
        .split(|p| !has_std(p))
        .filter(|r| !r.is_empty())
        .map(|run| {
            let std = |p: &Point| p.2.unwrap_or(0.0);
            let upper = run.iter().map(|p| (p.0, p.1 + std(p)));
            let lower = run.iter().rev().map(|p| (p.0, p.1 - std(p)));
            upper.chain(lower).collect()
        })
        .collect()
}

/// The data's range, widened by `pad` of its span each side (a unit span around a single
/// value).
fn padded(values: impl Iterator<Item = f64>, pad: f64) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        return (lo - 0.5, hi + 0.5);
    }
    let d = (hi - lo) * pad;
    (lo - d, hi + d)
}

/// How many x labels to ask plotters for on a whole-number axis: its tick steps are 1, 2 or 5
/// times a power of ten at multiples of the step, so with no more labels than whole numbers in
/// the range it never picks a step below 1, and every tick is a whole number.
fn whole_labels(lo: f64, hi: f64) -> usize {
    let whole = (hi.floor() - lo.ceil()) as i64 + 1;
    whole.clamp(1, 10) as usize
}

/// The tick step plotters takes for `span` with at most `labels` ticks: the smallest of
/// 1, 2, 5 x 10^n that gives no more (near enough: its count also depends on where the
/// range starts, and a finer step still reads right through `tick_label`).
fn tick_step(span: f64, labels: usize) -> f64 {
    if !(span.is_finite() && span > 0.0) {
        return 1.0;
    }
    let e0 = (span / labels.max(1) as f64).log10().floor() as i32 - 1;
    [1.0, 2.0, 5.0]
        .iter()
        .flat_map(|m| (e0..e0 + 4).map(move |e| m * 10f64.powi(e)))
        // Ticks at 0, s, 2s, ...: floor(span / s) + 1 of them.
        .filter(|s| ((span / s).floor() as usize) < labels)
        .fold(f64::MAX, f64::min)
}

/// The fewest decimals (at most 6) that write `v` exactly.
fn decimals(v: f64) -> usize {
    (0..=6)
        .find(|&d| {
            let s = v.abs() * 10f64.powi(d as i32);
            (s - s.round()).abs() < 1e-6 * s.max(1.0)
        })
        .unwrap_or(6)
}

/// A tick label with the decimals of the tick step (1.8, 2.0, 2.2, not 1.8, 2, 2.2), more
/// where the value needs them.
fn tick_label(v: f64, step_decimals: usize) -> String {
    let d = step_decimals.max(decimals(v));
    format!("{:.d$}", v + 0.0)
}

enum Mark {
    /// A curve (with a band swatch when it has one).
    Line(RGBColor, bool),
    /// A dashed vertical marker.
    Rule,
}

/// The legend, drawn beside the plot so that it never covers a curve: one entry per row.
fn legend(area: &Area<'_>, entries: &[(String, Mark)]) -> Result<(), DrawError> {
    let style = (FONT, TICK_SIZE).into_font().color(&BLACK);
    for (i, (name, mark)) in entries.iter().enumerate() {
        let y = 48 + 20 * i as i32;
        match mark {
            Mark::Line(c, band) => {
                if *band {
                    area.draw(&Rectangle::new(
                        [(8, y - 6), (36, y + 6)],
                        c.mix(0.2).filled(),
                    ))?;
                }
                area.draw(&PathElement::new(vec![(8, y), (36, y)], c.stroke_width(2)))?;
            }
            Mark::Rule => {
                area.draw(&PathElement::new(vec![(22, y - 8), (22, y - 3)], RULE))?;
                area.draw(&PathElement::new(vec![(22, y + 3), (22, y + 8)], RULE))?;
            }
        }
        area.draw(&Text::new(
            name.clone(),
            (44, y),
            style.pos(Pos::new(HPos::Left, VPos::Center)),
        ))?;
    }
    Ok(())
}

/// Width of the legend column for names of these lengths (about 8 px per character of its
/// 12 px text, a little generous).
fn legend_width(names: impl Iterator<Item = usize>) -> u32 {
    let chars = names.max().unwrap_or(0) as u32;
    (52 + chars * 8).clamp(120, 300)
}

/// A line chart as SVG: each series a coloured line (markers where it has few points) over
/// its shaded band mean ± std, dashed vertical lines at `vlines`, a legend where there is more
/// than one entry.
pub fn line_chart(c: &LineChart<'_>) -> Result<String, AnalysisError> {
    let mut entries: Vec<(String, Mark)> = c
        .series
        .iter()
        .map(|s| {
            let band = s.points.iter().any(|p| p.2.is_some());
            (s.name.clone(), Mark::Line(rgb(s.colour), band))
        })
        .collect();
    if !c.vlines.is_empty() {
        entries.push((c.vlines_name.to_string(), Mark::Rule));
    }
    let with_legend = entries.len() > 1;
    let legend_w = if with_legend {
        legend_width(entries.iter().map(|e| e.0.chars().count()))
    } else {
        0
    };
    let plot_w = 720;
    let height = (420).max(70 + 20 * entries.len() as u32);

    let points = || c.series.iter().flat_map(|s| s.points.iter());
    let (x0, x1) = padded(points().map(|p| p.0), 0.02);
    // Room for the markers of the first and last epochs (whole numbers keep their ticks).
    let (x0, x1) = if c.whole_x {
        (x0.min(x0.ceil() - 0.25), x1.max(x1.floor() + 0.25))
    } else {
        (x0, x1)
    };
    let (y0, y1) = c.y_range.unwrap_or_else(|| {
        padded(
            points().flat_map(|p| {
                let s = p.2.filter(|s| s.is_finite()).unwrap_or(0.0);
                [p.1 - s, p.1 + s]
            }),
            0.05,
        )
    });

    render((plot_w + legend_w, height), c.title, |root| {
        let (plot, side) = root.split_horizontally(plot_w);
        let mut chart = ChartBuilder::on(&plot)
            .caption(c.title, (FONT, TITLE_SIZE))
            .margin(12)
            .x_label_area_size(55)
            .y_label_area_size(75)
            .build_cartesian_2d(x0..x1, y0..y1)?;
        let x_labels = if c.whole_x { whole_labels(x0, x1) } else { 8 };
        let x_dec = if c.whole_x {
            0
        } else {
            decimals(tick_step(x1 - x0, x_labels))
        };
        let y_dec = decimals(tick_step(y1 - y0, Y_LABELS));
        let x_fmt = |v: &f64| tick_label(*v, x_dec);
        let y_fmt = |v: &f64| tick_label(*v, y_dec);
        chart
            .configure_mesh()
            .x_desc(c.x_label)
            .y_desc(c.y_label)
            .x_labels(x_labels)
            .y_labels(Y_LABELS)
            .x_label_formatter(&x_fmt)
            .y_label_formatter(&y_fmt)
            .axis_desc_style((FONT, DESC_SIZE))
            .label_style((FONT, TICK_SIZE))
            .bold_line_style(GRID)
            .light_line_style(WHITE)
            .draw()?;

        for &v in c.vlines {
            chart.draw_series(DashedLineSeries::new(
                [(v, y0), (v, y1)],
                6,
                4,
                RULE.stroke_width(1),
            ))?;
        }
        for s in c.series {
            let colour = rgb(s.colour);
            for poly in band_polygons(&s.points) {
                chart.draw_series(std::iter::once(Polygon::new(poly, colour.mix(0.2))))?;
            }
        }
        for s in c.series {
            let colour = rgb(s.colour);
            for run in finite_runs(&s.points) {
                chart.draw_series(LineSeries::new(
                    run.iter().map(|p| (p.0, p.1)),
                    colour.stroke_width(2),
                ))?;
                if s.points.len() <= MARKERS_UP_TO {
                    chart.draw_series(
                        run.iter()
                            .map(|p| Circle::new((p.0, p.1), 3, colour.filled())),
                    )?;
                }
            }
        }
        if with_legend {
            legend(&side, &entries)?;
        }
        Ok(())
    })
}

/// White -> blue -> dark navy for 0..1: readable for mostly-empty matrices.
fn ramp(t: f64) -> RGBColor {
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
    let ch = |c: usize| (a.1[c] + (b.1[c] - a.1[c]) * u).round() as u8;
    RGBColor(ch(0), ch(1), ch(2))
}

/// The name of class `g`, or its index where the data set is unknown.
fn class_name(classes: &[ClassInfo], g: usize) -> String {
    classes
        .get(g)
        .map_or_else(|| format!("class {g}"), |c| c.name.clone())
}

/// The heat map's caption size (its colour scale reserves the same).
const CAPTION: u32 = 20;

/// A confusion cell's percentage: one decimal where the cells are wide enough.
fn cell_text(pct: f64, wide: bool) -> String {
    if wide {
        format!("{pct:.1}")
    } else {
        format!("{pct:.0}")
    }
}

/// The confusion heat map as SVG: rows = classes, columns = clusters ordered by their matched
/// class (Hungarian when K equals the class count, majority otherwise), each labelled
/// `cN→class`; every cell prints its row-normalised percentage; a colour scale at the right.
pub fn confusion_chart(
    conf: &Confusion,
    classes: &[ClassInfo],
    title: &str,
) -> Result<String, AnalysisError> {
    // A `Confusion` has at least one class and one cluster.
    let (nc, nk) = (conf.classes(), conf.clusters());
    let matching = if nc == nk {
        metrics::match_clusters(conf, Matching::Hungarian)?
    } else {
        metrics::match_clusters(conf, Matching::Majority)?
    };
    let mut order: Vec<usize> = (0..nk).collect();
    order.sort_by_key(|&c| (matching[c].unwrap_or(usize::MAX), c));
    let col_names: Vec<String> = order
        .iter()
        .map(|&c| match matching[c] {
            Some(g) => format!("c{c}→{}", class_name(classes, g)),
            None => format!("c{c} (unmatched)"),
        })
        .collect();
    let row_names: Vec<String> = (0..nc).map(|g| class_name(classes, g)).collect();
    let pct: Vec<Vec<f64>> = (0..nc)
        .map(|g| {
            let row: u64 = (0..nk).map(|c| conf.get(g, c).unwrap_or(0)).sum();
            order
                .iter()
                .map(|&c| {
                    let v = conf.get(g, c).unwrap_or(0);
                    if row == 0 {
                        0.0
                    } else {
                        100.0 * v as f64 / row as f64
                    }
                })
                .collect()
        })
        .collect();

    let cell = (640 / nc.max(nk) as u32).clamp(24, 64);
    let wide = cell >= 40;
    let longest = |names: &[String]| names.iter().map(|n| n.chars().count()).max().unwrap_or(1);
    // Column names stand upright when they are wider than a cell.
    // About 0.6 em per character, at the tick font's 12 px.
    let text_w = |names: &[String]| longest(names) as u32 * 15 / 2;
    let rotate = text_w(&col_names) + 6 > cell;
    let x_area = if rotate { 40 + text_w(&col_names) } else { 55 };
    let y_area = 45 + text_w(&row_names);
    let scale_w = 130;
    let plot_w = y_area + nk as u32 * cell + 30;
    let height = 50 + nc as u32 * cell + x_area + 20;
    // Cell (g, j) is centred on whole coordinates, where plotters puts the ticks (as
    // many labels as cells keep its step at 1): column j at x = j, row g at y = nc - 1 - g
    // so that the first class is the top row.
    let index = |v: f64| (v.round() >= 0.0).then_some(v.round() as usize);
    let row_of = |y: f64| index(y).and_then(|y| nc.checked_sub(1 + y));

    render((plot_w + scale_w, height), title, |root| {
        let (plot, side) = root.split_horizontally(plot_w);
        let mut chart = ChartBuilder::on(&plot)
            .caption(title, (FONT, CAPTION))
            .margin(10)
            .x_label_area_size(x_area)
            .y_label_area_size(y_area)
            .build_cartesian_2d(-0.5..nk as f64 - 0.5, -0.5..nc as f64 - 0.5)?;
        // Upright column names are drawn below, not by the mesh: plotters centres a rotated
        // label on its tick, which would put half of it inside the matrix.
        let x_fmt = |x: &f64| match index(*x) {
            Some(j) if !rotate => col_names.get(j).cloned().unwrap_or_default(),
            _ => String::new(),
        };
        let y_fmt = |y: &f64| {
            row_of(*y)
                .and_then(|g| row_names.get(g).cloned())
                .unwrap_or_default()
        };
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("cluster → matched class")
            .y_desc("ground-truth class")
            .x_label_formatter(&x_fmt)
            .y_label_formatter(&y_fmt)
            .y_labels(nc)
            .x_labels(nk)
            .label_style((FONT, TICK_SIZE))
            .axis_desc_style((FONT, DESC_SIZE))
            .draw()?;
        if rotate {
            let style = (FONT, TICK_SIZE)
                .into_font()
                .transform(FontTransform::Rotate90)
                .color(&BLACK)
                .pos(Pos::new(HPos::Left, VPos::Center));
            for (j, name) in col_names.iter().enumerate() {
                let (x, y) = chart.backend_coord(&(j as f64, -0.5));
                root.draw(&Text::new(name.clone(), (x, y + 10), style.clone()))?;
            }
        }

        let text_size = (cell as f64 * 0.36).clamp(9.0, 14.0);
        for (g, row) in pct.iter().enumerate() {
            let y = (nc - 1 - g) as f64;
            for (j, &p) in row.iter().enumerate() {
                let x = j as f64;
                let fill = ramp(p / 100.0);
                let corners = [(x - 0.5, y - 0.5), (x + 0.5, y + 0.5)];
                chart.draw_series(std::iter::once(Rectangle::new(corners, fill.filled())))?;
                chart.draw_series(std::iter::once(Rectangle::new(
                    corners,
                    RGBColor(220, 220, 220),
                )))?;
                let ink = if p > 50.0 { WHITE } else { BLACK };
                chart.draw_series(std::iter::once(Text::new(
                    cell_text(p, wide),
                    (x, y),
                    (FONT, text_size)
                        .into_font()
                        .color(&ink)
                        .pos(Pos::new(HPos::Center, VPos::Center)),
                )))?;
            }
        }
        colour_scale(&side, CAPTION, x_area)
    })
}

/// The colour scale of the heat map, 0..100 % upwards. Built with the matrix's caption
/// size, margin and x label area, so that it spans exactly the matrix's rows.
fn colour_scale(area: &Area<'_>, caption: u32, x_area: u32) -> Result<(), DrawError> {
    let (w, _) = area.dim_in_pixel();
    let bar = 22;
    let mut chart = ChartBuilder::on(area)
        .caption(" ", (FONT, caption))
        .margin(10)
        .margin_right(w.saturating_sub(10 + bar + 70))
        .x_label_area_size(x_area)
        .right_y_label_area_size(70)
        .build_cartesian_2d(0.0..1.0, 0.0..100.0)?;
    chart.draw_series((0..100).map(|i| {
        let v = i as f64;
        Rectangle::new([(0.0, v), (1.0, v + 1.0)], ramp(v / 100.0).filled())
    }))?;
    chart
        .configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .y_labels(6)
        .y_label_formatter(&|v: &f64| format!("{v:.0}"))
        .y_desc("% of class pixels")
        .label_style((FONT, TICK_SIZE))
        .axis_desc_style((FONT, DESC_SIZE))
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart(series: &[Series], vlines: &[f64]) -> String {
        line_chart(&LineChart {
            title: "a title",
            x_label: "epoch",
            y_label: "score (%)",
            series,
            y_range: None,
            vlines,
            vlines_name: "epoch boundary",
            whole_x: true,
        })
        .unwrap()
    }

    fn series(name: &str, std: Option<f64>) -> Series {
        Series {
            name: name.into(),
            colour: [214, 39, 40],
            points: (0..4).map(|e| (e as f64, 20.0 + e as f64, std)).collect(),
        }
    }

    #[test]
    fn a_band_is_drawn_where_a_std_is_given_and_only_there() {
        let plain = chart(&[series("mIoU", None)], &[]);
        assert!(!plain.contains("<polygon"), "{plain}");
        let banded = chart(&[series("mIoU", Some(2.0))], &[]);
        assert_eq!(banded.matches("<polygon").count(), 1, "{banded}");

        // The band spans mean - std .. mean + std at every point, in order round the shape.
        let poly = band_polygons(&series("m", Some(2.0)).points);
        assert_eq!(poly.len(), 1);
        assert_eq!(poly[0].len(), 8);
        assert_eq!(poly[0][0], (0.0, 22.0));
        assert_eq!(poly[0][3], (3.0, 25.0));
        assert_eq!(poly[0][4], (3.0, 21.0));
        assert_eq!(poly[0][7], (0.0, 18.0));

        // A point without std (or a NaN mean) splits the band in two.
        let mut s = series("m", Some(1.0));
        s.points[1].2 = None;
        assert_eq!(band_polygons(&s.points).len(), 2);
        s.points[1] = (1.0, f64::NAN, Some(1.0));
        assert_eq!(band_polygons(&s.points).len(), 2);
        assert_eq!(finite_runs(&s.points).len(), 2);
    }

    #[test]
    fn a_chart_has_its_title_axis_labels_and_a_legend_for_several_series() {
        let one = chart(&[series("mIoU", None)], &[]);
        for text in ["a title", "epoch", "score (%)"] {
            assert!(one.contains(text), "{text} in {one}");
        }
        // One series: no legend (its name appears nowhere).
        assert!(
            !one.contains(">\nmIoU\n<") && !one.contains("mIoU"),
            "{one}"
        );
        let two = chart(
            &[series("mIoU", None), series("pixel accuracy", None)],
            &[1.5],
        );
        for text in ["mIoU", "pixel accuracy", "epoch boundary"] {
            assert!(two.contains(text), "{text} in {two}");
        }
        // Whole-number x ticks only: 0, 1, 2, 3 and no 0.5.
        assert!(
            two.contains(">\n2\n</text>") && !two.contains(">\n0.5\n</text>"),
            "{two}"
        );
    }

    #[test]
    fn tick_labels_are_whole_where_the_axis_counts() {
        assert_eq!(whole_labels(-0.3, 2.3), 3);
        assert_eq!(whole_labels(1.0, 95.0), 10);
        assert_eq!(whole_labels(0.2, 0.8), 1);
        assert_eq!(tick_label(2.0, 0), "2");
        assert_eq!(tick_label(-0.0, 0), "0");
        // Regression (the hand-drawn axes): ticks 0.2 apart all get one decimal.
        let step = tick_step(2.4 - 1.75, 5);
        assert!((step - 0.2).abs() < 1e-12, "{step}");
        let labels: Vec<String> = [1.8, 2.0, 2.2, 2.4]
            .iter()
            .map(|&v| tick_label(v, decimals(step)))
            .collect();
        assert_eq!(labels, ["1.8", "2.0", "2.2", "2.4"]);
        assert_eq!(tick_label(2.25, decimals(step)), "2.25");
        assert_eq!(tick_step(100.0, 11), 10.0);
        assert_eq!(padded([5.0].into_iter(), 0.1), (4.5, 5.5));
    }

    #[test]
    fn the_confusion_prints_every_cell_and_names_columns_by_matched_class() {
        // 2 classes x 2 clusters: cluster 1 is mostly class 0.
        let conf = Confusion::from_counts(2, 2, vec![1, 3, 4, 0]).unwrap();
        let classes = vec![
            ClassInfo {
                name: "road".into(),
                colour: [128, 64, 128],
                is_thing: None,
            },
            ClassInfo {
                name: "sky".into(),
                colour: [70, 130, 180],
                is_thing: None,
            },
        ];
        let svg = confusion_chart(&conf, &classes, "confusion").unwrap();
        for text in [
            "c1→road",
            "c0→sky",
            ">\n75.0\n<",
            ">\n25.0\n<",
            ">\n100.0\n<",
            ">\n0.0\n<",
        ] {
            assert!(svg.contains(text), "{text} in {svg}");
        }
        assert!(svg.contains("% of class pixels"), "{svg}");
        // Columns in the order of their matched class: road's cluster first.
        assert!(svg.find("c1→road") < svg.find("c0→sky"), "{svg}");
    }
}
