//! Evaluation of unsupervised segmentation: confusion histogram, cluster -> class
//! matching (Hungarian or majority vote) and the metrics of the PiCIE release
//! (pixel accuracy and NaN-skipping mIoU, in percent).
//!
//! Deliberate departures from the release: per-class IoU is reported in class
//! order (the release prints it in cluster order), and the thing/stuff split is
//! taken by class (the release slices by cluster index, which is meaningless
//! before matching).

use pathfinding::prelude::{kuhn_munkres, Matrix};
use thiserror::Error;

/// Everything that can go wrong while accumulating or evaluating.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MetricsError {
    #[error("confusion shape must be non-empty and fit in memory, got {classes} classes x {clusters} clusters")]
    BadShape { classes: usize, clusters: usize },
    #[error("counts length {got} does not match {classes} classes x {clusters} clusters")]
    CountsLength {
        classes: usize,
        clusters: usize,
        got: usize,
    },
    #[error("label length {gt} does not match prediction length {pred}")]
    LengthMismatch { gt: usize, pred: usize },
    #[error("ground-truth label {value} at pixel {index} is out of range (classes = {classes}) and is not the ignore index")]
    GtOutOfRange {
        value: u16,
        index: usize,
        classes: usize,
    },
    #[error("predicted cluster {value} at pixel {index} is out of range (clusters = {clusters})")]
    PredOutOfRange {
        value: u32,
        index: usize,
        clusters: usize,
    },
    /// Shapes are (classes, clusters).
    #[error("cannot merge a {got:?} confusion into a {expected:?} one")]
    ShapeMismatch {
        expected: (usize, usize),
        got: (usize, usize),
    },
    #[error("pixel count overflow")]
    Overflow,
    #[error(
        "Hungarian matching needs clusters == classes, got {clusters} clusters < {classes} classes"
    )]
    TooFewClusters { clusters: usize, classes: usize },
    #[error("Hungarian matching needs clusters == classes, got {clusters} clusters > {classes} classes; use Matching::Majority for over-clustering")]
    TooManyClusters { clusters: usize, classes: usize },
    #[error("is_thing has {got} entries, expected one per class ({classes})")]
    IsThingLength { got: usize, classes: usize },
    #[error("no valid pixels: the confusion histogram is empty")]
    NoValidPixels,
}

/// Histogram `hist[gt][cluster]` of pixel counts over pixels with a valid label.
///
/// Invariant: the sum of all counts fits in a `u64` (checked on every update), so
/// `total()` and every partial sum below are overflow-free.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confusion {
    classes: usize,
    clusters: usize,
    counts: Vec<u64>,
    total: u64,
}

impl Confusion {
    /// Empty histogram. Zero-sized shapes are rejected because nothing can be
    /// evaluated on them.
    pub fn new(classes: usize, clusters: usize) -> Result<Self, MetricsError> {
        Self::from_counts(classes, clusters, vec![0; checked_len(classes, clusters)?])
    }

    /// Histogram from row-major counts (`counts[gt * clusters + cluster]`).
    pub fn from_counts(
        classes: usize,
        clusters: usize,
        counts: Vec<u64>,
    ) -> Result<Self, MetricsError> {
        let len = checked_len(classes, clusters)?;
        if counts.len() != len {
            return Err(MetricsError::CountsLength {
                classes,
                clusters,
                got: counts.len(),
            });
        }
        let total = counts
            .iter()
            .try_fold(0u64, |acc, &c| acc.checked_add(c))
            .ok_or(MetricsError::Overflow)?;
        Ok(Self {
            classes,
            clusters,
            counts,
            total,
        })
    }

    /// Histogram from (class, cluster, pixels) rows, as a stored `confusion` table holds
    /// them: the shape is the largest ids plus one, and repeated cells add up.
    pub fn from_rows(rows: &[(usize, usize, u64)]) -> Result<Self, MetricsError> {
        let classes = rows.iter().map(|r| r.0 + 1).max().unwrap_or(0);
        let clusters = rows.iter().map(|r| r.1 + 1).max().unwrap_or(0);
        let mut counts = vec![0u64; classes * clusters];
        for &(g, c, n) in rows {
            counts[g * clusters + c] += n;
        }
        Self::from_counts(classes, clusters, counts)
    }

    /// Accumulate one image (or batch) of labels and predictions.
    ///
    /// Pixels whose label equals `ignore_index` are skipped. Predictions are checked
    /// on every pixel, ignored or not, because an out-of-range cluster id is a bug
    /// upstream wherever it occurs. On error nothing is added.
    pub fn add(
        &mut self,
        gt: &[u16],
        pred: &[u32],
        ignore_index: Option<u16>,
    ) -> Result<(), MetricsError> {
        if gt.len() != pred.len() {
            return Err(MetricsError::LengthMismatch {
                gt: gt.len(),
                pred: pred.len(),
            });
        }
        // Validate first so a bad pixel leaves the histogram untouched.
        let mut added = 0u64;
        for (index, (&g, &p)) in gt.iter().zip(pred).enumerate() {
            if p as usize >= self.clusters {
                return Err(MetricsError::PredOutOfRange {
                    value: p,
                    index,
                    clusters: self.clusters,
                });
            }
            if Some(g) == ignore_index {
                continue;
            }
            if g as usize >= self.classes {
                return Err(MetricsError::GtOutOfRange {
                    value: g,
                    index,
                    classes: self.classes,
                });
            }
            added += 1;
        }
        self.total = self
            .total
            .checked_add(added)
            .ok_or(MetricsError::Overflow)?;
        for (&g, &p) in gt.iter().zip(pred) {
            if Some(g) != ignore_index {
                // Cannot overflow: bounded by `total`, which was checked above.
                self.counts[g as usize * self.clusters + p as usize] += 1;
            }
        }
        Ok(())
    }

    /// Add another histogram of the same shape (e.g. from another worker).
    pub fn merge(&mut self, other: &Confusion) -> Result<(), MetricsError> {
        if other.classes != self.classes || other.clusters != self.clusters {
            return Err(MetricsError::ShapeMismatch {
                expected: (self.classes, self.clusters),
                got: (other.classes, other.clusters),
            });
        }
        self.total = self
            .total
            .checked_add(other.total)
            .ok_or(MetricsError::Overflow)?;
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        Ok(())
    }

    pub fn classes(&self) -> usize {
        self.classes
    }

    pub fn clusters(&self) -> usize {
        self.clusters
    }

    /// Count for (gt, cluster); `None` when out of range.
    pub fn get(&self, gt: usize, cluster: usize) -> Option<u64> {
        (gt < self.classes && cluster < self.clusters).then(|| self.at(gt, cluster))
    }

    /// Row-major counts, `hist[gt * clusters + cluster]`.
    pub fn as_slice(&self) -> &[u64] {
        &self.counts
    }

    /// Number of valid (non-ignored) pixels accumulated.
    pub fn total(&self) -> u64 {
        self.total
    }

    fn at(&self, gt: usize, cluster: usize) -> u64 {
        self.counts[gt * self.clusters + cluster]
    }
}

fn checked_len(classes: usize, clusters: usize) -> Result<usize, MetricsError> {
    match classes.checked_mul(clusters) {
        Some(len) if len > 0 && len <= isize::MAX as usize / 8 => Ok(len),
        _ => Err(MetricsError::BadShape { classes, clusters }),
    }
}

/// How clusters are mapped to classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matching {
    /// One-to-one, maximising matched pixels (the release; needs K == classes).
    Hungarian,
    /// Many-to-one: each cluster goes to the class holding most of its pixels
    /// (over-clustering, K >= classes). Empty clusters map to `None`.
    Majority,
}

/// Map every cluster to a class (indexed by cluster).
pub fn match_clusters(
    conf: &Confusion,
    matching: Matching,
) -> Result<Vec<Option<usize>>, MetricsError> {
    match matching {
        Matching::Hungarian => Ok(hungarian(conf)?.into_iter().map(Some).collect()),
        Matching::Majority => Ok(majority(conf)),
    }
}

/// One-to-one assignment cluster -> class maximising the matched pixel count.
pub fn hungarian(conf: &Confusion) -> Result<Vec<usize>, MetricsError> {
    let (clusters, classes) = (conf.clusters, conf.classes);
    if clusters < classes {
        return Err(MetricsError::TooFewClusters { clusters, classes });
    }
    if clusters > classes {
        // A rectangular assignment would leave clusters unmatched and their pixels
        // counted as wrong; over-clustering is what Majority is for.
        return Err(MetricsError::TooManyClusters { clusters, classes });
    }
    // kuhn_munkres works on i64 and panics on overflow. With non-negative weights
    // and a square matrix its dual labels stay small: row labels lie in [0, max
    // weight] (some column label is always still 0), column labels are >= 0 and the
    // labels' sum only decreases from the sum of row maxima (<= total). So every
    // intermediate value is below 2 * total; require total <= i64::MAX / 4.
    if conf.total > i64::MAX as u64 / 4 {
        return Err(MetricsError::Overflow);
    }
    // Rows = clusters, columns = classes (square), so the result is indexed by
    // cluster. The weight is hist[class][cluster]: pixels of that class the
    // cluster would get right.
    let mut weights = Matrix::new(clusters, classes, 0i64);
    for class in 0..classes {
        for cluster in 0..clusters {
            weights[(cluster, class)] = conf.at(class, cluster) as i64;
        }
    }
    let (_, assignment) = kuhn_munkres(&weights);
    Ok(assignment)
}

/// Many-to-one majority vote; ties go to the lowest class index so the result is
/// deterministic.
pub fn majority(conf: &Confusion) -> Vec<Option<usize>> {
    (0..conf.clusters)
        .map(|cluster| {
            let mut best: Option<(usize, u64)> = None;
            for class in 0..conf.classes {
                let n = conf.at(class, cluster);
                if n > 0 && best.is_none_or(|(_, b)| n > b) {
                    best = Some((class, n));
                }
            }
            best.map(|(class, _)| class)
        })
        .collect()
}

/// Scores after matching, all in percent.
#[derive(Debug, Clone, PartialEq)]
pub struct Metrics {
    /// Matched pixels / valid pixels.
    pub pixel_accuracy: f64,
    /// Mean IoU over classes whose IoU is defined (NaN entries skipped).
    pub miou: f64,
    /// IoU per class, in class order; NaN for a class absent from both the labels
    /// and the (matched) predictions.
    pub per_class_iou: Vec<f64>,
    /// Mean IoU over thing classes; `None` without `is_thing` or when no thing
    /// class has a defined IoU.
    pub thing_miou: Option<f64>,
    /// Same over stuff classes.
    pub stuff_miou: Option<f64>,
    /// Pixels whose label was not ignored.
    pub valid_pixels: u64,
    /// Pixels whose matched cluster equals their label.
    pub matched_pixels: u64,
}

/// Match clusters to classes and score. Returns the metrics and the matching
/// (indexed by cluster).
pub fn evaluate(
    conf: &Confusion,
    matching: Matching,
    is_thing: Option<&[bool]>,
) -> Result<(Metrics, Vec<Option<usize>>), MetricsError> {
    let c = conf.classes;
    if let Some(t) = is_thing {
        if t.len() != c {
            return Err(MetricsError::IsThingLength {
                got: t.len(),
                classes: c,
            });
        }
    }
    if conf.total == 0 {
        // Every IoU would be NaN; an error is more useful than NaN metrics.
        return Err(MetricsError::NoValidPixels);
    }
    let assignment = match_clusters(conf, matching)?;
    Ok((score_matched(conf, &assignment, is_thing), assignment))
}

/// The metrics of `conf` under a given cluster -> class `assignment` (indexed by cluster;
/// `None`: unmatched): [`evaluate`] after its matching, and a supervised classifier's scores
/// with the identity. `is_thing`, when given, has one entry per class (checked by callers).
pub fn score_matched(
    conf: &Confusion,
    assignment: &[Option<usize>],
    is_thing: Option<&[bool]>,
) -> Metrics {
    let c = conf.classes;
    // Class x class confusion: sum each cluster's column into its matched class.
    // Unmatched clusters are empty (Majority maps only empty clusters to None),
    // so no pixel is lost.
    let mut cc = vec![0u64; c * c];
    for (cluster, class) in assignment.iter().enumerate() {
        if let Some(p) = *class {
            for gt in 0..c {
                cc[gt * c + p] += conf.at(gt, cluster);
            }
        }
    }

    let mut per_class_iou = Vec::with_capacity(c);
    let mut matched = 0u64;
    for k in 0..c {
        let tp = cc[k * c + k];
        let row: u64 = cc[k * c..(k + 1) * c].iter().sum(); // tp + fn
        let col: u64 = (0..c).map(|g| cc[g * c + k]).sum(); // tp + fp
        matched += tp;
        let union = row + col - tp;
        per_class_iou.push(if union == 0 {
            f64::NAN
        } else {
            100.0 * tp as f64 / union as f64
        });
    }

    let all = nan_mean(per_class_iou.iter().copied());
    let group = |want: bool| {
        is_thing.and_then(|t| {
            let m = nan_mean(
                per_class_iou
                    .iter()
                    .zip(t)
                    .filter(|&(_, &th)| th == want)
                    .map(|(&v, _)| v),
            );
            (!m.is_nan()).then_some(m)
        })
    };
    Metrics {
        pixel_accuracy: 100.0 * matched as f64 / conf.total as f64,
        miou: all,
        thing_miou: group(true),
        stuff_miou: group(false),
        per_class_iou,
        valid_pixels: conf.total,
        matched_pixels: matched,
    }
}

/// Mean of the non-NaN values (numpy's nanmean); NaN when there are none.
fn nan_mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values
        .filter(|v| !v.is_nan())
        .fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 {
        f64::NAN
    } else {
        sum / n as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// hist[gt][cluster] from rows.
    fn conf(rows: &[&[u64]]) -> Confusion {
        let counts = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Confusion::from_counts(rows.len(), rows[0].len(), counts).unwrap()
    }

    /// Tiny deterministic LCG (Knuth's MMIX constants), high bits.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self, bound: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % bound
        }
    }

    fn random_conf(rng: &mut Lcg, classes: usize, clusters: usize, max: u64) -> Confusion {
        let counts = (0..classes * clusters).map(|_| rng.next(max)).collect();
        Confusion::from_counts(classes, clusters, counts).unwrap()
    }

    /// Best total over all permutations (cluster -> class), by recursion.
    fn brute_force(c: &Confusion) -> u64 {
        fn go(c: &Confusion, cluster: usize, used: &mut [bool]) -> u64 {
            if cluster == c.clusters() {
                return 0;
            }
            let mut best = 0;
            for class in 0..c.classes() {
                if !used[class] {
                    used[class] = true;
                    best = best.max(c.at(class, cluster) + go(c, cluster + 1, used));
                    used[class] = false;
                }
            }
            best
        }
        go(c, 0, &mut vec![false; c.classes()])
    }

    fn assert_metrics_close(a: &Metrics, b: &Metrics) {
        // Every field as one vector; absent thing/stuff scores as -1.
        let flat = |m: &Metrics| {
            let mut v = vec![m.pixel_accuracy, m.miou, m.valid_pixels as f64];
            v.extend([m.matched_pixels as f64, m.thing_miou.unwrap_or(-1.0)]);
            v.push(m.stuff_miou.unwrap_or(-1.0));
            v.extend(&m.per_class_iou);
            v
        };
        for (x, y) in flat(a).into_iter().zip(flat(b)) {
            assert!(
                (x.is_nan() && y.is_nan()) || (x - y).abs() < 1e-9,
                "{x} vs {y}"
            );
        }
    }

    #[test]
    fn hungarian_beats_greedy() {
        // Weights w[cluster][class] = [[10,9,1],[9,1,1],[1,1,5]]; greedy on the
        // largest entry takes c0->0 (10) and ends at 16, the optimum is
        // c0->1, c1->0, c2->2 = 23. hist is indexed [gt][cluster], i.e. w transposed.
        let c = conf(&[&[10, 9, 1], &[9, 1, 1], &[1, 1, 5]]);
        let (m, a) = evaluate(&c, Matching::Hungarian, None).unwrap();
        assert_eq!(a, vec![Some(1), Some(0), Some(2)]);
        assert_eq!(m.matched_pixels, 23);
        assert_eq!(m.valid_pixels, 38);
        assert!((m.pixel_accuracy - 100.0 * 23.0 / 38.0).abs() < 1e-12);
        // Class 0: TP = hist[0][c1] = 9, row sum 20, column (c1) sum 11 -> 9/22.
        assert!((m.per_class_iou[0] - 100.0 * 9.0 / 22.0).abs() < 1e-12);
        // Class 2: TP 5, row 7, column (c2) 7 -> 5/9.
        assert!((m.per_class_iou[2] - 100.0 * 5.0 / 9.0).abs() < 1e-12);
    }

    #[test]
    fn hungarian_matches_brute_force() {
        let mut rng = Lcg(12345);
        for n in 2..=6 {
            for _ in 0..50 {
                let c = random_conf(&mut rng, n, n, 100);
                let a = hungarian(&c).unwrap();
                let mut seen = a.clone();
                seen.sort_unstable();
                assert_eq!(seen, (0..n).collect::<Vec<_>>(), "not a permutation");
                let total: u64 = (0..n).map(|k| c.at(a[k], k)).sum();
                assert_eq!(total, brute_force(&c));
            }
        }
    }

    #[test]
    fn relabelling_clusters_changes_nothing() {
        let mut rng = Lcg(7);
        let n = 6;
        let c = random_conf(&mut rng, n, n, 1_000_000);
        let perm = [3usize, 5, 0, 1, 4, 2]; // new cluster j holds old cluster perm[j]
        let mut counts = vec![0; n * n];
        for gt in 0..n {
            for j in 0..n {
                counts[gt * n + j] = c.at(gt, perm[j]);
            }
        }
        let p = Confusion::from_counts(n, n, counts).unwrap();
        let thing = [true, false, true, false, false, true];
        for matching in [Matching::Hungarian, Matching::Majority] {
            let (m1, a1) = evaluate(&c, matching, Some(&thing)).unwrap();
            let (m2, a2) = evaluate(&p, matching, Some(&thing)).unwrap();
            assert_metrics_close(&m1, &m2);
            for j in 0..n {
                assert_eq!(a2[j], a1[perm[j]]);
            }
        }
    }

    #[test]
    fn perfect_prediction() {
        let mut c = Confusion::new(4, 4).unwrap();
        // Clusters are a permutation of the classes.
        let gt: Vec<u16> = (0..400).map(|i| (i % 4) as u16).collect();
        let pred: Vec<u32> = gt.iter().map(|&g| (3 - g) as u32).collect();
        c.add(&gt, &pred, None).unwrap();
        let (m, a) = evaluate(&c, Matching::Hungarian, Some(&[true, true, false, false])).unwrap();
        assert_eq!(a, vec![Some(3), Some(2), Some(1), Some(0)]);
        assert_eq!(m.pixel_accuracy, 100.0);
        assert_eq!(m.miou, 100.0);
        assert_eq!(m.per_class_iou, vec![100.0; 4]);
        assert_eq!(m.thing_miou, Some(100.0));
        assert_eq!(m.stuff_miou, Some(100.0));
    }

    #[test]
    fn ignore_index_is_skipped() {
        let mut c = Confusion::new(2, 2).unwrap();
        c.add(&[0, 255, 1, 255], &[0, 1, 1, 0], Some(255)).unwrap();
        assert_eq!(c.total(), 2);
        assert_eq!(c.as_slice(), &[1, 0, 0, 1]);
        // Without the ignore index 255 is an out-of-range label.
        let err = c.add(&[255], &[0], None).unwrap_err();
        assert!(matches!(err, MetricsError::GtOutOfRange { value: 255, .. }));
        // An ignore index inside the class range also drops those pixels.
        c.add(&[0, 1], &[0, 0], Some(1)).unwrap();
        assert_eq!(c.get(0, 0), Some(2));
        assert_eq!(c.get(1, 0), Some(0));
        assert_eq!(c.get(2, 0), None);
    }

    #[test]
    fn absent_classes_are_nan_and_skipped() {
        // Class 2 never occurs and no cluster matched to it gets pixels.
        let c = conf(&[&[5, 0, 0], &[1, 4, 0], &[0, 0, 0]]);
        let (m, a) = evaluate(&c, Matching::Hungarian, Some(&[false, false, true])).unwrap();
        assert_eq!(a, vec![Some(0), Some(1), Some(2)]);
        assert!(m.per_class_iou[2].is_nan());
        let iou0 = 100.0 * 5.0 / 6.0;
        let iou1 = 100.0 * 4.0 / 5.0;
        assert!((m.miou - (iou0 + iou1) / 2.0).abs() < 1e-12);
        assert_eq!(m.thing_miou, None); // the only thing class has no IoU
        assert!((m.stuff_miou.unwrap() - m.miou).abs() < 1e-12);
        // Without is_thing there is no split.
        let (m, _) = evaluate(&c, Matching::Hungarian, None).unwrap();
        assert_eq!((m.thing_miou, m.stuff_miou), (None, None));
    }

    #[test]
    fn predicted_but_absent_class_scores_zero() {
        // Class 1 has no labelled pixel but cluster 1 (matched to it) has pixels:
        // IoU 0, not NaN, and it counts in the mean.
        let c = conf(&[&[6, 2], &[0, 0]]);
        let (m, _) = evaluate(&c, Matching::Hungarian, None).unwrap();
        assert_eq!(m.per_class_iou, vec![75.0, 0.0]);
        assert_eq!(m.miou, 37.5);
    }

    #[test]
    fn majority_over_clustering() {
        // 2 classes, 5 clusters: clusters 0,1 -> class 0, 2,3 -> class 1, 4 empty.
        let c = conf(&[&[8, 3, 1, 0, 0], &[2, 1, 5, 6, 0]]);
        let (m, a) = evaluate(&c, Matching::Majority, Some(&[true, false])).unwrap();
        assert_eq!(a, vec![Some(0), Some(0), Some(1), Some(1), None]);
        // Class x class: [[11, 1], [3, 11]].
        assert_eq!(m.matched_pixels, 22);
        assert!((m.pixel_accuracy - 100.0 * 22.0 / 26.0).abs() < 1e-12);
        assert!((m.per_class_iou[0] - 100.0 * 11.0 / 15.0).abs() < 1e-12);
        assert!((m.per_class_iou[1] - 100.0 * 11.0 / 15.0).abs() < 1e-12);
        assert_eq!(m.thing_miou, Some(m.per_class_iou[0]));
        // Ties go to the lowest class.
        assert_eq!(majority(&conf(&[&[2], &[2]])), vec![Some(0)]);
        // Hungarian refuses over-clustering and points at Majority.
        let err = evaluate(&c, Matching::Hungarian, None).unwrap_err();
        assert!(matches!(
            err,
            MetricsError::TooManyClusters {
                clusters: 5,
                classes: 2
            }
        ));
        assert!(err.to_string().contains("Majority"));
    }

    #[test]
    fn merge_adds_and_checks_shape() {
        let mut a = conf(&[&[1, 2], &[3, 4]]);
        let b = conf(&[&[1, 0], &[0, 1]]);
        a.merge(&b).unwrap();
        assert_eq!(a.as_slice(), &[2, 2, 3, 5]);
        assert_eq!(a.total(), 12);
        let err = a.merge(&Confusion::new(2, 3).unwrap()).unwrap_err();
        assert!(err
            .to_string()
            .contains("merge a (2, 3) confusion into a (2, 2)"));
        let mut big = conf(&[&[u64::MAX]]);
        assert_eq!(big.merge(&conf(&[&[1]])), Err(MetricsError::Overflow));
        assert_eq!(big.get(0, 0), Some(u64::MAX));
    }

    #[test]
    fn errors() {
        fn msg<T: std::fmt::Debug>(r: Result<T, MetricsError>) -> String {
            r.unwrap_err().to_string()
        }
        let mut c = Confusion::new(3, 3).unwrap();
        assert!(
            msg(c.add(&[0, 1], &[0], None)).contains("length 2 does not match prediction length 1")
        );
        assert!(msg(c.add(&[0, 3], &[0, 0], Some(255))).contains("label 3 at pixel 1"));
        // Predictions are checked even on ignored pixels.
        assert!(msg(c.add(&[0, 255], &[0, 7], Some(255))).contains("cluster 7 at pixel 1"));
        assert_eq!(c.total(), 0, "failed adds must not leave partial counts");
        assert!(Confusion::new(0, 3).is_err());
        assert!(Confusion::new(usize::MAX, 2).is_err());
        assert!(msg(Confusion::from_counts(2, 2, vec![1, 2, 3])).contains("length 3"));
        let r = Confusion::from_counts(1, 2, vec![u64::MAX, 1]);
        assert_eq!(r.unwrap_err(), MetricsError::Overflow);
        // Table rows: the shape from the largest ids, repeated cells added, none is empty.
        let t = Confusion::from_rows(&[(0, 0, 2), (1, 2, 5), (0, 0, 1)]).unwrap();
        assert_eq!((t.classes(), t.clusters()), (2, 3));
        assert_eq!(t.as_slice(), [3, 0, 0, 0, 0, 5]);
        assert!(Confusion::from_rows(&[]).is_err());
        // Hungarian with fewer clusters than classes.
        let few = conf(&[&[1, 0], &[0, 1], &[1, 1]]);
        let r = evaluate(&few, Matching::Hungarian, None);
        assert!(matches!(r, Err(MetricsError::TooFewClusters { .. })));
        assert!(msg(r).contains("2 clusters < 3 classes"));
        // Empty histogram, bad is_thing length, counts too large for i64 weights.
        let r = evaluate(&c, Matching::Majority, None);
        assert_eq!(r.unwrap_err(), MetricsError::NoValidPixels);
        let ok = conf(&[&[1, 0], &[0, 1]]);
        let r = evaluate(&ok, Matching::Hungarian, Some(&[true]));
        assert!(msg(r).contains("is_thing has 1 entries"));
        let huge = conf(&[&[u64::MAX / 2, 0], &[0, 1]]);
        assert_eq!(hungarian(&huge), Err(MetricsError::Overflow));
    }
}
