//! A multi-seed sweep read back: its member runs' evaluation metrics as mean ± std per epoch.
//!
//! `picie run pipeline.yaml --seeds 0,1,2` runs `NAME-seed0`, `NAME-seed1`, ... (see
//! `picie_engine::seeds`) and then [`write_summary`] stores the aggregate next to the sweep
//! record, as `runs/NAME-seeds/metrics.parquet`; `inspect` and `report` read it with
//! [`Sweep::metrics`], which recomputes it from the members (it is small) so that it is never
//! stale.

use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};

use polars::prelude::*;

use crate::analysis::{AnalysisError, Run};
use crate::store::Store;
use picie_engine::seeds::SweepRecord;

/// A sweep and its member runs, opened.
pub struct Sweep {
    pub record: SweepRecord,
    pub runs: Vec<Run>,
}

impl Sweep {
    /// Opens the sweep recorded as `name` (`NAME-seeds`) and every member run.
    pub fn open(store_dir: &Path, name: &str) -> Result<Sweep, AnalysisError> {
        let store = Store::open(store_dir)?;
        let record = store
            .sweep_record(name)?
            .ok_or_else(|| AnalysisError::Other(format!("no sweep named `{name}`")))?;
        let runs = record
            .runs
            .iter()
            .map(|r| Run::open(store_dir, r))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Sweep { record, runs })
    }

    /// Mean ± std over the members of every epoch that all of them evaluated.
    pub fn metrics(&self) -> Result<DataFrame, AnalysisError> {
        let frames = self
            .runs
            .iter()
            .map(Run::metrics)
            .collect::<Result<Vec<_>, _>>()?;
        aggregate(&frames)
    }
}

/// One epoch's numbers from one seed.
struct Row {
    miou: f64,
    accuracy: f64,
    per_class: Vec<f64>,
}

/// Rows by (epoch, predictor): a final evaluation after the loop shares its epoch with
/// that epoch's in-loop one, and the two protocols are not averaged together.
type Rows = std::collections::BTreeMap<(u32, String), Row>;

fn rows(df: &DataFrame) -> Result<Rows, AnalysisError> {
    let epoch = df.column("epoch")?.u32()?;
    let predictor = df.column("predictor")?.str()?;
    let miou = df.column("miou")?.f64()?;
    let acc = df.column("pixel_accuracy")?.f64()?;
    let ious = df.column("per_class_iou")?.list()?;
    let mut out = std::collections::BTreeMap::new();
    for i in 0..df.height() {
        let (Some(e), Some(m), Some(a)) = (epoch.get(i), miou.get(i), acc.get(i)) else {
            continue;
        };
        let per_class = ious
            .get_as_series(i)
            .and_then(|s| {
                s.f64()
                    .ok()
                    .map(|v| v.iter().map(|x| x.unwrap_or(f64::NAN)).collect())
            })
            .unwrap_or_default();
        out.insert(
            (e, predictor.get(i).unwrap_or("").to_string()),
            Row {
                miou: m,
                accuracy: a,
                per_class,
            },
        );
    }
    Ok(out)
}

/// Mean and sample standard deviation (n - 1); no std for a single value.
pub fn mean_std(v: &[f64]) -> (f64, Option<f64>) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    if v.len() < 2 {
        return (mean, None);
    }
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, Some(var.sqrt()))
}

/// Per epoch and predictor that every seed evaluated: `epoch`, `predictor`, `seeds`,
/// `miou_mean`, `miou_std`,
/// `pixel_accuracy_mean`, `pixel_accuracy_std`, `per_class_iou_mean`, `per_class_iou_std`
/// (lists, one value per class). Stds are null with a single seed.
pub fn aggregate(per_seed: &[DataFrame]) -> Result<DataFrame, AnalysisError> {
    if per_seed.is_empty() {
        return Err(AnalysisError::Other("a sweep with no runs".into()));
    }
    let tables = per_seed.iter().map(rows).collect::<Result<Vec<_>, _>>()?;
    // In the first seed's row order: by epoch, then predictor.
    let keys: Vec<(u32, String)> = tables[0]
        .keys()
        .filter(|k| tables.iter().all(|t| t.contains_key(*k)))
        .cloned()
        .collect();
    let (mut miou_m, mut miou_s, mut acc_m, mut acc_s) = (vec![], vec![], vec![], vec![]);
    let (mut pc_m, mut pc_s) = (Vec::<Series>::new(), Vec::<Series>::new());
    for key in &keys {
        let at: Vec<&Row> = tables.iter().map(|t| &t[key]).collect();
        let (m, s) = mean_std(&at.iter().map(|r| r.miou).collect::<Vec<_>>());
        miou_m.push(m);
        miou_s.push(s);
        let (m, s) = mean_std(&at.iter().map(|r| r.accuracy).collect::<Vec<_>>());
        acc_m.push(m);
        acc_s.push(s);
        let classes = at.iter().map(|r| r.per_class.len()).min().unwrap_or(0);
        let (cm, cs): (Vec<f64>, Vec<Option<f64>>) = (0..classes)
            .map(|c| mean_std(&at.iter().map(|r| r.per_class[c]).collect::<Vec<_>>()))
            .unzip();
        pc_m.push(Series::new("".into(), cm));
        pc_s.push(Series::new("".into(), cs));
    }
    let n = vec![per_seed.len() as u32; keys.len()];
    let (epochs, predictors): (Vec<u32>, Vec<String>) = keys.into_iter().unzip();
    Ok(df!(
        "epoch" => epochs,
        "predictor" => predictors,
        "seeds" => n,
        "miou_mean" => miou_m,
        "miou_std" => miou_s,
        "pixel_accuracy_mean" => acc_m,
        "pixel_accuracy_std" => acc_s,
        "per_class_iou_mean" => pc_m,
        "per_class_iou_std" => pc_s,
    )?)
}

/// Stores the aggregate beside the sweep record: `runs/NAME-seeds/metrics.parquet`.
pub fn write_summary(store: &Store, sweep: &str, df: &DataFrame) -> Result<PathBuf, AnalysisError> {
    let path = store.sweep_dir(sweep).join("metrics.parquet");
    let mut bytes = Vec::new();
    ParquetWriter::new(&mut bytes).finish(&mut df.clone())?;
    store.write_atomic(&path, &bytes)?;
    Ok(path)
}

/// Reads a stored aggregate back (tools and tests; `inspect` recomputes it).
pub fn read_summary(path: &Path) -> Result<DataFrame, AnalysisError> {
    let file = File::open(path).map_err(|e| AnalysisError::io(path, e))?;
    Ok(ParquetReader::new(file).finish()?)
}

fn pm(mean: Option<f64>, std: Option<f64>) -> String {
    match (mean, std) {
        (Some(m), Some(s)) => format!("{m:.2} ± {s:.2}"),
        (Some(m), None) => format!("{m:.2}"),
        _ => "-".into(),
    }
}

/// The sweep summary `picie run --seeds` and `picie inspect` print: one row per epoch, mean
/// ± std over the seeds, within [`crate::analysis::SUMMARY_WIDTH`] columns; `per_class` adds each epoch's
/// per-class IoU means, wrapped.
pub fn summary_table(agg: &DataFrame, per_class: bool) -> Result<String, AnalysisError> {
    let epoch = agg.column("epoch")?.u32()?;
    let predictor = agg.column("predictor")?.str()?;
    let seeds = agg.column("seeds")?.u32()?;
    let (mm, ms) = (
        agg.column("miou_mean")?.f64()?,
        agg.column("miou_std")?.f64()?,
    );
    let (am, as_) = (
        agg.column("pixel_accuracy_mean")?.f64()?,
        agg.column("pixel_accuracy_std")?.f64()?,
    );
    let pc = agg.column("per_class_iou_mean")?.list()?;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>5}  {:>15}  {:>15}  {:>5}  {:<20}",
        "epoch", "mIoU", "accuracy", "seeds", "predictor"
    );
    for i in 0..agg.height() {
        let _ = writeln!(
            s,
            "{:>5}  {:>15}  {:>15}  {:>5}  {:<20}",
            epoch.get(i).map_or_else(|| "-".into(), |e| e.to_string()),
            pm(mm.get(i), ms.get(i)),
            pm(am.get(i), as_.get(i)),
            seeds.get(i).map_or_else(|| "-".into(), |n| n.to_string()),
            predictor.get(i).unwrap_or("-"),
        );
        if !per_class {
            continue;
        }
        crate::analysis::per_class_line(&mut s, "       mean IoU per class:", pc.get_as_series(i));
    }
    Ok(s)
}

/// The text `picie inspect` prints for a sweep: its members, then mean ± std per epoch.
pub fn inspect(store_dir: &Path, name: &str, per_class: bool) -> Result<String, AnalysisError> {
    let sweep = Sweep::open(store_dir, name)?;
    let mut s = String::new();
    let rec = &sweep.record;
    let _ = writeln!(
        s,
        "sweep {}: {} seed(s) {:?} of {}, finished {}",
        rec.name,
        rec.seeds.len(),
        rec.seeds,
        rec.pipeline.display(),
        rec.finished
    );
    for r in &sweep.runs {
        let miou = r
            .metrics()
            .ok()
            .and_then(|df| crate::analysis::metric_rows(&df).ok())
            .and_then(|rows| {
                rows.last()
                    .map(|&(e, _, m)| format!("epoch {e} mIoU {m:.2}"))
            })
            .unwrap_or_else(|| "no evaluation".into());
        let _ = writeln!(
            s,
            "  {:<28} {:<6} {miou}",
            r.record.name,
            if r.record.ok { "ok" } else { "FAILED" }
        );
    }
    let _ = writeln!(s, "\nevaluation metrics, mean ± std over seeds:");
    let _ = write!(s, "{}", summary_table(&sweep.metrics()?, per_class)?);
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::SUMMARY_WIDTH;

    fn metrics(rows: &[(u32, f64, f64, [f64; 2])]) -> DataFrame {
        let pc: Vec<Series> = rows
            .iter()
            .map(|r| Series::new("".into(), r.3.to_vec()))
            .collect();
        df!(
            "epoch" => rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            "predictor" => vec!["nearest_centroid"; rows.len()],
            "pixel_accuracy" => rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            "miou" => rows.iter().map(|r| r.2).collect::<Vec<_>>(),
            "per_class_iou" => pc,
        )
        .unwrap()
    }

    #[test]
    fn mean_and_sample_std_per_epoch_over_common_epochs() {
        let a = metrics(&[(0, 50.0, 10.0, [1.0, 3.0]), (1, 60.0, 20.0, [2.0, 4.0])]);
        let b = metrics(&[(0, 70.0, 14.0, [3.0, 5.0]), (1, 80.0, 30.0, [4.0, 6.0])]);
        // A seed that stopped after epoch 0: epoch 1 is not averaged over two seeds only.
        let c = metrics(&[(0, 60.0, 12.0, [2.0, 4.0])]);
        let agg = aggregate(&[a.clone(), b.clone(), c]).unwrap();
        assert_eq!(agg.height(), 1);
        assert_eq!(
            agg.column("miou_mean").unwrap().f64().unwrap().get(0),
            Some(12.0)
        );
        let std = agg
            .column("miou_std")
            .unwrap()
            .f64()
            .unwrap()
            .get(0)
            .unwrap();
        assert!((std - 2.0).abs() < 1e-12, "{std}");
        let agg = aggregate(&[a, b]).unwrap();
        assert_eq!(agg.height(), 2);
        let acc = agg.column("pixel_accuracy_mean").unwrap().f64().unwrap();
        assert_eq!(acc.get(1), Some(70.0));
        let pc = agg.column("per_class_iou_mean").unwrap().list().unwrap();
        let pc1: Vec<f64> = pc
            .get_as_series(1)
            .unwrap()
            .f64()
            .unwrap()
            .into_no_null_iter()
            .collect();
        assert_eq!(pc1, [3.0, 5.0]);
        let s = summary_table(&agg, true).unwrap();
        assert!(s.contains("25.00 ± 7.07"), "{s}");
        assert!(s.lines().all(|l| l.chars().count() <= SUMMARY_WIDTH), "{s}");
    }

    /// A final evaluation after the loop shares the last epoch with the in-loop one: the two
    /// protocols stay apart (regression: the later row replaced the earlier).
    #[test]
    fn protocols_of_one_epoch_are_not_mixed() {
        let seed = |dot: f64, fin: f64| {
            let mut df = metrics(&[
                (0, 50.0, 10.0, [1.0, 3.0]),
                (1, 50.0, dot, [1.0, 3.0]),
                (1, 50.0, fin, [1.0, 3.0]),
            ]);
            let p = Column::new(
                "predictor".into(),
                ["nearest_centroid", "dot_product_view1", "nearest_centroid"],
            );
            df.with_column(p).unwrap();
            df
        };
        let agg = aggregate(&[seed(20.0, 30.0), seed(22.0, 34.0)]).unwrap();
        assert_eq!(agg.height(), 3);
        let miou: Vec<Option<f64>> = agg
            .column("miou_mean")
            .unwrap()
            .f64()
            .unwrap()
            .iter()
            .collect();
        assert_eq!(miou, [Some(10.0), Some(21.0), Some(32.0)]);
        let s = summary_table(&agg, false).unwrap();
        assert!(
            s.contains("dot_product_view1") && s.contains("32.00 ± 2.83"),
            "{s}"
        );
    }

    #[test]
    fn one_seed_has_no_std_and_the_summary_round_trips() {
        let a = metrics(&[(0, 50.0, 10.0, [1.0, 3.0])]);
        let agg = aggregate(std::slice::from_ref(&a)).unwrap();
        assert_eq!(agg.column("miou_std").unwrap().f64().unwrap().get(0), None);
        assert!(summary_table(&agg, false).unwrap().contains(" 10.00 "));
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let path = write_summary(&store, "x-seeds", &agg).unwrap();
        assert!(read_summary(&path).unwrap().equals_missing(&agg));
        assert!(aggregate(&[]).is_err());
    }
}
