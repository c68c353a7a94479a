//! k-means against planted clusters, hand-worked updates, the two accumulation paths and
//! the release's label rule.

use super::*;

/// Standard normal draws from the seeded RNG (Box-Muller), so tests need no global RNG.
fn normals(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
            let u2: f64 = rng.random();
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        })
        .collect()
}

fn mat(v: &[f32], d: i64) -> Tensor {
    Tensor::from_slice(v).reshape([-1, d])
}

fn host(t: &Tensor) -> Vec<f32> {
    to_host_f32(t).unwrap()
}

fn labels(t: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(t.to_device(Device::Cpu).reshape([-1])).unwrap()
}

/// `per` points around each of `centers` random centres in `d` dimensions, spread
/// `scale` apart with unit noise; returns data and true labels (interleaved order).
fn planted(centers: usize, per: usize, d: usize, scale: f32, seed: u64) -> (Tensor, Vec<i64>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mu: Vec<f32> = normals(&mut rng, centers * d)
        .into_iter()
        .map(|v| v * scale)
        .collect();
    let mut data = Vec::with_capacity(centers * per * d);
    let mut truth = Vec::with_capacity(centers * per);
    for i in 0..centers * per {
        let c = i % centers;
        let noise = normals(&mut rng, d);
        data.extend(
            noise
                .iter()
                .zip(&mu[c * d..(c + 1) * d])
                .map(|(e, m)| m + e),
        );
        truth.push(c as i64);
    }
    (mat(&data, d as i64), truth)
}

fn choose2(n: u64) -> f64 {
    (n * n.saturating_sub(1)) as f64 / 2.0
}

/// Adjusted Rand index (Hubert and Arabie).
fn ari(a: &[i64], b: &[i64]) -> f64 {
    use std::collections::HashMap;
    let mut table: HashMap<(i64, i64), u64> = HashMap::new();
    let mut ra: HashMap<i64, u64> = HashMap::new();
    let mut rb: HashMap<i64, u64> = HashMap::new();
    for (&x, &y) in a.iter().zip(b) {
        *table.entry((x, y)).or_default() += 1;
        *ra.entry(x).or_default() += 1;
        *rb.entry(y).or_default() += 1;
    }
    let index: f64 = table.values().map(|&v| choose2(v)).sum();
    let sa: f64 = ra.values().map(|&v| choose2(v)).sum();
    let sb: f64 = rb.values().map(|&v| choose2(v)).sum();
    let expected = sa * sb / choose2(a.len() as u64);
    let max = (sa + sb) / 2.0;
    if max == expected {
        return 1.0;
    }
    (index - expected) / (max - expected)
}

#[test]
fn ari_sanity() {
    assert_eq!(ari(&[0, 0, 1, 1], &[5, 5, 2, 2]), 1.0);
    assert!(ari(&[0, 0, 1, 1], &[0, 1, 0, 1]) < 0.0);
}

#[test]
fn planted_clusters_recovered() {
    // k-means++ seeding: a random sample puts two seeds into one of 5 clusters with
    // probability 1 - 5!/5^5 (96%), and Lloyd cannot undo that.
    let (x, truth) = planted(5, 400, 16, 10.0, 1);
    for seed in [0, 1, 7] {
        let cfg = KmeansConfig {
            k: 5,
            init: Init::KMeansPlusPlus,
            seed,
            chunk_rows: 300,
            ..Default::default()
        };
        let fit = Kmeans::init_from(&x, &cfg, Device::Cpu).unwrap();
        let got = labels(&fit.kmeans.assign(&x).unwrap());
        assert_eq!(ari(&got, &truth), 1.0, "seed {seed}");
        assert_eq!(fit.kmeans.counts(), &[400; 5]);
        assert_eq!(fit.rows, 2000);
        // Unit noise in 16-d: about 16 per point.
        let per_point = fit.objective / 2000.0;
        assert!((12.0..20.0).contains(&per_point), "{per_point}");
    }
}

#[test]
fn planted_directions_recovered_cosine() {
    let (x, truth) = planted(5, 400, 16, 3.0, 2);
    let x = &x / x.norm_scalaropt_dim(2.0, [1], true);
    let cfg = KmeansConfig {
        k: 5,
        metric: Metric::Cosine,
        init: Init::KMeansPlusPlus,
        seed: 4,
        ..Default::default()
    };
    let fit = Kmeans::init_from(&x, &cfg, Device::Cpu).unwrap();
    let got = labels(&fit.kmeans.assign(&x).unwrap());
    assert_eq!(ari(&got, &truth), 1.0);
}

fn assert_non_increasing(fit: &Fit) {
    let mut objs: Vec<f64> = fit.iters.iter().map(|s| s.objective).collect();
    objs.push(fit.objective);
    for w in objs.windows(2) {
        assert!(w[1] <= w[0], "objective increased: {objs:?}");
    }
}

#[test]
fn random_sample_init_is_uniform_over_rows() {
    // 10 distinct rows, k = 3, pool = all rows: over 300 seeds each row should be drawn
    // about 300 * 3 / 10 = 90 times, and the 3 seeds of one run are distinct rows.
    let x = mat(&(0..10).map(|i| i as f32).collect::<Vec<_>>(), 1);
    let mut hits = [0u32; 10];
    for seed in 0..300 {
        let cfg = KmeansConfig {
            k: 3,
            n_iter: 0,
            seed,
            chunk_rows: 4,
            ..Default::default()
        };
        let fit = Kmeans::init_from(&x, &cfg, Device::Cpu).unwrap();
        let mut rows: Vec<usize> = host(fit.kmeans.centroids())
            .iter()
            .map(|&v| v as usize)
            .collect();
        rows.sort();
        rows.dedup();
        assert_eq!(rows.len(), 3);
        rows.iter().for_each(|&r| hits[r] += 1);
    }
    assert!(hits.iter().all(|&h| (60..120).contains(&h)), "{hits:?}");
    // A pool of the first 4 rows draws from those only.
    let cfg = KmeansConfig {
        k: 3,
        n_iter: 0,
        init_pool_rows: Some(4),
        ..Default::default()
    };
    let fit = Kmeans::init_from(&x, &cfg, Device::Cpu).unwrap();
    assert!(host(fit.kmeans.centroids()).iter().all(|&v| v < 4.0));
}

#[test]
fn objective_never_increases() {
    // Unstructured data: many small reassignments, the hard case for monotonicity.
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let x = mat(&normals(&mut rng, 3000 * 8), 8);
    for (metric, seed) in [(Metric::L2, 0), (Metric::L2, 1), (Metric::Cosine, 2)] {
        for init in [Init::RandomSample, Init::KMeansPlusPlus] {
            let cfg = KmeansConfig {
                k: 12,
                metric,
                init,
                seed,
                n_iter: 40,
                chunk_rows: 1000,
                ..Default::default()
            };
            let fit = Kmeans::init_from(&x, &cfg, Device::Cpu).unwrap();
            assert_eq!(fit.iters.len(), 40);
            assert!(fit.iters[39].objective < fit.iters[0].objective);
            assert_non_increasing(&fit);
        }
    }
}

#[test]
fn minibatch_update_hand_worked() {
    // Centroids c0 = (0, 0), c1 = (10, 10), counts N = [2, 3].
    // Batch 1: (1, 0), (0, 1) -> c0 (squared distances 1, 1); (10, 12) -> c1 (4).
    //   k = 0: n = 2, N = 4, eta = 1/2, mean = (0.5, 0.5): c0 = (0.25, 0.25).
    //   k = 1: n = 1, N = 4, eta = 1/4, mean = (10, 12): c1 = (10, 10.5).
    //   objective = 1 + 1 + 4 = 6.
    // Batch 2: (9, 9) -> c1 (squared distance 1 + 2.25 = 3.25); c0 has n = 0, unchanged.
    //   k = 1: n = 1, N = 5, eta = 1/5: c1 = 0.8 (10, 10.5) + 0.2 (9, 9) = (9.8, 10.2).
    let mut km =
        Kmeans::from_centroids(&mat(&[0., 0., 10., 10.], 2), Metric::L2, Device::Cpu).unwrap();
    km.set_counts(vec![2, 3]).unwrap();
    let s = km
        .minibatch_update(&mat(&[1., 0., 0., 1., 10., 12.], 2))
        .unwrap();
    assert_eq!(
        s,
        BatchStat {
            rows: 3,
            objective: 6.0,
            clusters_updated: 2
        }
    );
    assert_eq!(km.counts(), &[4, 4]);
    assert_eq!(host(km.centroids()), vec![0.25, 0.25, 10.0, 10.5]);
    let s = km.minibatch_update(&mat(&[9., 9.], 2)).unwrap();
    assert_eq!(s.clusters_updated, 1);
    assert!((s.objective - 3.25).abs() < 1e-5);
    assert_eq!(km.counts(), &[4, 5]);
    let c = host(km.centroids());
    let want = [0.25, 0.25, 9.8, 10.2];
    assert!(
        c.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6),
        "{c:?}"
    );
}

#[test]
fn minibatch_cosine_stays_unit() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let x = mat(&normals(&mut rng, 500 * 6), 6);
    let cfg = KmeansConfig {
        k: 4,
        metric: Metric::Cosine,
        ..Default::default()
    };
    let fit = Kmeans::init_from(&x.narrow(0, 0, 200), &cfg, Device::Cpu).unwrap();
    let mut km = fit.kmeans;
    let before: u64 = km.counts().iter().sum();
    assert_eq!(before, 200);
    km.minibatch_update(&x.narrow(0, 200, 300)).unwrap();
    assert_eq!(km.counts().iter().sum::<u64>(), 500);
    assert_unit_rows(km.centroids());
}

fn assert_unit_rows(c: &Tensor) {
    let norms = host(&c.norm_scalaropt_dim(2.0, [1], false));
    assert!(norms.iter().all(|n| (n - 1.0).abs() < 1e-5), "{norms:?}");
}

#[test]
fn cosine_centroids_are_unit() {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    // Not normalised, and offset, so that means are far from unit length.
    let v: Vec<f32> = normals(&mut rng, 1000 * 10)
        .iter()
        .map(|v| 3.0 * v + 1.0)
        .collect();
    let x = mat(&v, 10);
    for init in [Init::RandomSample, Init::KMeansPlusPlus] {
        let cfg = KmeansConfig {
            k: 7,
            metric: Metric::Cosine,
            init,
            ..Default::default()
        };
        let fit = Kmeans::init_from(&x, &cfg, Device::Cpu).unwrap();
        assert_unit_rows(fit.kmeans.centroids());
        assert_non_increasing(&fit);
    }
    // n_iter = 0 returns the (normalised) initial centroids.
    let cfg = KmeansConfig {
        k: 7,
        metric: Metric::Cosine,
        n_iter: 0,
        ..Default::default()
    };
    assert_unit_rows(
        Kmeans::init_from(&x, &cfg, Device::Cpu)
            .unwrap()
            .kmeans
            .centroids(),
    );
}

#[test]
fn empty_cluster_is_repaired() {
    // Blob A: 20 points in two tight sub-blobs at (-1, 0) and (1, 0); blob B: 5 points
    // at (10, 0). The third initial centroid is far from everything, so iteration 0
    // leaves it empty; it must be moved next to A (the largest), which then splits.
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let mut v = Vec::new();
    for i in 0..25 {
        let (cx, cy) = match i {
            0..10 => (-1.0, 0.0),
            10..20 => (1.0, 0.0),
            _ => (10.0, 0.0),
        };
        let e = normals(&mut rng, 2);
        v.extend([cx + 0.01 * e[0], cy + 0.01 * e[1]]);
    }
    let x = mat(&v, 2);
    let init = mat(&[0., 0., 10., 0., 1000., 1000.], 2);
    let cfg = KmeansConfig {
        n_iter: 10,
        seed: 3,
        ..Default::default()
    };
    let run = || lloyd_from(&init, || tensor_chunks(&x, 7), &cfg, Device::Cpu).unwrap();
    let fit = run();
    assert_eq!(fit.iters[0].empty_repaired, 1);
    assert!(fit.iters[1..].iter().all(|s| s.empty_repaired == 0));
    let mut counts = fit.kmeans.counts().to_vec();
    counts.sort();
    assert_eq!(counts, vec![5, 10, 10]);
    assert_non_increasing(&fit);
    // Deterministic given the seed.
    assert_eq!(host(run().kmeans.centroids()), host(fit.kmeans.centroids()));
}

#[test]
fn duplicate_points_do_not_break_repair() {
    // Only 3 distinct points for k = 5: two clusters stay empty whatever happens.
    let x = mat(&[0., 0., 0., 0., 1., 1., 1., 1., 5., 5., 5., 5.], 2);
    let cfg = KmeansConfig {
        k: 5,
        n_iter: 5,
        ..Default::default()
    };
    let fit = Kmeans::init_from(&x, &cfg, Device::Cpu).unwrap();
    assert!(fit.iters.iter().all(|s| s.empty_repaired >= 2));
    assert!(fit.objective.abs() < 1e-6);
    assert_eq!(fit.kmeans.counts().iter().sum::<u64>(), 6);
}

#[test]
fn errors_on_bad_input() {
    let cpu = Device::Cpu;
    let x = mat(&[0., 1., 2., 3., 4., 5.], 2);
    let cfg = |k| KmeansConfig {
        k,
        ..Default::default()
    };
    assert!(matches!(
        Kmeans::init_from(&x, &cfg(0), cpu),
        Err(KmeansError::ZeroK)
    ));
    assert!(matches!(
        Kmeans::init_from(&x, &cfg(4), cpu),
        Err(KmeansError::TooFewPoints { k: 4, rows: 3 })
    ));
    let kpp = KmeansConfig {
        init: Init::KMeansPlusPlus,
        ..cfg(4)
    };
    assert!(matches!(
        Kmeans::init_from(&x, &kpp, cpu),
        Err(KmeansError::TooFewPoints { .. })
    ));
    assert!(matches!(
        Kmeans::init_from(&Tensor::zeros([0, 3], (Kind::Float, cpu)), &cfg(2), cpu),
        Err(KmeansError::Empty)
    ));
    assert!(matches!(
        Kmeans::init_from(&Tensor::zeros([5], (Kind::Float, cpu)), &cfg(2), cpu),
        Err(KmeansError::Shape(_))
    ));
    assert!(matches!(
        Kmeans::init_from(&Tensor::zeros([5, 0], (Kind::Float, cpu)), &cfg(2), cpu),
        Err(KmeansError::Shape(_))
    ));
    assert!(matches!(
        Kmeans::init_from(&Tensor::zeros([5, 2], (Kind::Int64, cpu)), &cfg(2), cpu),
        Err(KmeansError::Kind(Kind::Int64))
    ));
    let bad_cfg = KmeansConfig {
        chunk_rows: 0,
        ..cfg(2)
    };
    assert!(matches!(
        Kmeans::init_from(&x, &bad_cfg, cpu),
        Err(KmeansError::Config(_))
    ));
    let bad_cfg = KmeansConfig {
        init_pool_rows: Some(1),
        ..cfg(2)
    };
    assert!(matches!(
        Kmeans::init_from(&x, &bad_cfg, cpu),
        Err(KmeansError::Config(_))
    ));

    // Non-finite values, found by the init pass and by a Lloyd pass, in a later chunk.
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut v = vec![0.5f32; 40];
        v[33] = bad;
        let xb = mat(&v, 2);
        let small = KmeansConfig {
            chunk_rows: 4,
            ..cfg(2)
        };
        for init in [Init::RandomSample, Init::KMeansPlusPlus] {
            let c = KmeansConfig {
                init,
                ..small.clone()
            };
            assert!(matches!(
                Kmeans::init_from(&xb, &c, cpu),
                Err(KmeansError::NonFinite { start: 16, end: 20 })
            ));
        }
        let init = mat(&[0., 0., 1., 1.], 2);
        assert!(matches!(
            lloyd_from(&init, || tensor_chunks(&xb, 4), &small, cpu),
            Err(KmeansError::NonFinite { start: 16, end: 20 })
        ));
        let km = Kmeans::from_centroids(&init, Metric::L2, cpu).unwrap();
        assert!(matches!(km.assign(&xb), Err(KmeansError::NonFinite { .. })));
    }
    // Finite but too large to square in f32.
    let huge = mat(&[1e30, 0., 0., 1e30, 1., 1.], 2);
    assert!(matches!(
        Kmeans::init_from(&huge, &cfg(2), cpu),
        Err(KmeansError::Overflow { .. })
    ));

    // Dimension mismatches.
    let mut km = Kmeans::from_centroids(&mat(&[0., 0., 1., 1.], 2), Metric::L2, cpu).unwrap();
    let x3 = mat(&[0., 1., 2.], 3);
    assert!(matches!(
        km.assign(&x3),
        Err(KmeansError::DimMismatch {
            expected: 2,
            got: 3
        })
    ));
    assert!(matches!(
        km.minibatch_update(&x3),
        Err(KmeansError::DimMismatch { .. })
    ));
    assert!(matches!(
        km.minibatch_update(&Tensor::zeros([0, 2], (Kind::Float, cpu))),
        Err(KmeansError::Empty)
    ));
    assert!(matches!(
        label_release(&x3, &mat(&[0., 0., 1., 1.], 2)),
        Err(KmeansError::DimMismatch { .. })
    ));
    let init = mat(&[0., 0., 1., 1.], 2);
    assert!(matches!(
        lloyd_from(&init, || tensor_chunks(&x3, 4), &cfg(2), cpu),
        Err(KmeansError::DimMismatch { .. })
    ));
    assert!(matches!(
        km.set_counts(vec![1]),
        Err(KmeansError::Config(_))
    ));
    assert!(matches!(
        Kmeans::from_centroids(&mat(&[0., f32::NAN], 2), Metric::L2, cpu),
        Err(KmeansError::NonFiniteCentroids)
    ));
    assert!(matches!(
        Kmeans::from_centroids(&Tensor::zeros([0, 2], (Kind::Float, cpu)), Metric::L2, cpu),
        Err(KmeansError::ZeroK)
    ));

    // Source failures and a source that changes between passes.
    let failing = || {
        vec![
            Ok(x.shallow_clone()),
            Err(std::io::Error::other("disk on fire")),
        ]
    };
    match lloyd(failing, &cfg(2), cpu) {
        Err(KmeansError::Source(e)) => assert_eq!(e.to_string(), "disk on fire"),
        other => panic!("{other:?}"),
    }
    let mut pass = 0;
    let shrinking = || {
        pass += 1;
        tensor_chunks(&x, 1).take(if pass > 2 { 2 } else { 3 })
    };
    assert!(matches!(
        lloyd(shrinking, &cfg(2), cpu),
        Err(KmeansError::SourceChanged { first: 3, now: 2 })
    ));
}

#[test]
fn deterministic_given_seed() {
    let (x, _) = planted(6, 150, 12, 2.0, 9);
    for init in [Init::RandomSample, Init::KMeansPlusPlus] {
        let cfg = |seed| KmeansConfig {
            k: 6,
            init,
            seed,
            chunk_rows: 128,
            ..Default::default()
        };
        let a = Kmeans::init_from(&x, &cfg(5), Device::Cpu).unwrap();
        let b = Kmeans::init_from(&x, &cfg(5), Device::Cpu).unwrap();
        assert_eq!(host(a.kmeans.centroids()), host(b.kmeans.centroids()));
        assert_eq!(a.iters, b.iters);
        assert_eq!(a.kmeans.counts(), b.kmeans.counts());
        let c = Kmeans::init_from(&x, &cfg(6), Device::Cpu).unwrap();
        assert_ne!(host(a.kmeans.centroids()), host(c.kmeans.centroids()));
    }
}

#[test]
fn streaming_equals_in_memory() {
    let (x, _) = planted(8, 500, 10, 1.5, 12);
    let x64 = x.to_kind(Kind::Double);
    for init in [Init::RandomSample, Init::KMeansPlusPlus] {
        let cfg = KmeansConfig {
            k: 8,
            init,
            seed: 1,
            chunk_rows: 256,
            init_pool_rows: Some(3000),
            ..Default::default()
        };
        let mem = Kmeans::init_from(&x, &cfg, Device::Cpu).unwrap();
        // Chunks aligned with chunk_rows: the same arithmetic, bit for bit.
        let same = lloyd(|| tensor_chunks(&x, 512), &cfg, Device::Cpu).unwrap();
        assert_eq!(host(mem.kmeans.centroids()), host(same.kmeans.centroids()));
        assert_eq!(mem.iters, same.iters);
        // Ragged f64 chunks, as a reader of stored batches would give them.
        let sizes = [700i64, 1, 1299, 1000, 1000];
        let ragged = || {
            let mut start = 0;
            sizes
                .iter()
                .map(|&len| {
                    let c = x64.narrow(0, start, len);
                    start += len;
                    Ok::<_, std::convert::Infallible>(c)
                })
                .collect::<Vec<_>>()
        };
        let streamed = lloyd(ragged, &cfg, Device::Cpu).unwrap();
        assert_eq!(streamed.rows, 4000);
        assert_eq!(mem.kmeans.counts(), streamed.kmeans.counts());
        let (a, b) = (
            host(mem.kmeans.centroids()),
            host(streamed.kmeans.centroids()),
        );
        assert!(a.iter().zip(&b).all(|(p, q)| (p - q).abs() < 1e-5));
        for (s, t) in mem.iters.iter().zip(&streamed.iters) {
            assert!(
                (s.objective - t.objective).abs() <= 1e-7 * s.objective,
                "{s:?} {t:?}"
            );
        }
    }
}

#[test]
fn host_and_tensor_accumulation_agree() {
    let (x, _) = planted(4, 300, 9, 1.0, 13);
    let km = Kmeans::from_centroids(&x.narrow(0, 0, 4), Metric::L2, Device::Cpu).unwrap();
    let run = |path| {
        let prep = Prepared::new(km.centroids(), path).unwrap();
        let mut acc = Accum::new(4, 9);
        let mut labels = Vec::new();
        for b in blocks(&x, 9, 250, Device::Cpu).unwrap() {
            let b = b.unwrap();
            let out = prep.block(&b, 0, true, false).unwrap();
            labels.extend(super::tests::labels(&out.labels.unwrap()));
            acc.add_block(&prep, &b).unwrap();
        }
        (acc, labels)
    };
    let (a, la) = run(AccumPath::Auto);
    let (b, lb) = run(AccumPath::Tensor);
    assert_eq!(la, lb);
    assert_eq!(a.counts, b.counts);
    assert!((a.objective - b.objective).abs() < 1e-6 * a.objective);
    let close = |p: &f64, q: &f64| (p - q).abs() < 1e-9 * (1.0 + p.abs());
    assert!(a.sums.iter().zip(&b.sums).all(|(p, q)| close(p, q)));
}

#[test]
fn tensor_path_lloyd_matches_host_kernel() {
    // The tensor path is what runs on a GPU; on CPU it must agree with the host kernel.
    let (x, _) = planted(6, 300, 12, 1.0, 15);
    let init = x.narrow(0, 0, 6);
    for metric in [Metric::L2, Metric::Cosine] {
        let cfg = KmeansConfig {
            k: 6,
            metric,
            n_iter: 8,
            chunk_rows: 500,
            ..Default::default()
        };
        let src = || tensor_chunks(&x, 700);
        let a = lloyd_impl(&init, src, &cfg, Device::Cpu, AccumPath::Auto).unwrap();
        let b = lloyd_impl(&init, src, &cfg, Device::Cpu, AccumPath::Tensor).unwrap();
        assert_eq!(a.kmeans.counts(), b.kmeans.counts());
        let (ca, cb) = (host(a.kmeans.centroids()), host(b.kmeans.centroids()));
        assert!(ca.iter().zip(&cb).all(|(p, q)| (p - q).abs() < 1e-5));
        for (s, t) in a.iters.iter().zip(&b.iters) {
            assert!((s.objective - t.objective).abs() < 1e-5 * s.objective);
        }
    }
    // Non-finite rows are caught on the tensor path too.
    let prep = Prepared::new(&init, AccumPath::Tensor).unwrap();
    for bad in [f32::NAN, f32::INFINITY] {
        let mut v = vec![0.5f32; 12 * 5];
        v[7] = bad;
        assert!(matches!(
            prep.block(&mat(&v, 12), 10, true, true),
            Err(KmeansError::NonFinite { start: 10, end: 15 })
        ));
    }
}

#[test]
fn portable_kernel_matches_detected_one() {
    // 37 centroids: three panels, the last one mostly padding; 5001 rows: a ragged tail
    // for the 4-row register blocks and several tiles.
    let mut rng = ChaCha8Rng::seed_from_u64(16);
    let (k, d, n) = (37, 19, 5001);
    let c = normals(&mut rng, k * d);
    let x = normals(&mut rng, n * d);
    let fast = HostCentroids::new(&c, k, d);
    let portable = HostCentroids {
        isa: Isa::Portable,
        ..HostCentroids::new(&c, k, d)
    };
    let run = |hc: &HostCentroids, threads| {
        let mut labels = vec![-1i64; n];
        let out = host_block(hc, &x, Some(&mut labels), true, threads).unwrap();
        (labels, out)
    };
    let (la, a) = run(&fast, 2);
    let (lb, b) = run(&portable, 1);
    assert_eq!(la, lb);
    assert_eq!(a.counts, b.counts);
    assert!((a.objective - b.objective).abs() < 1e-6 * a.objective);
    // Brute force: the labels are the nearest centroids.
    for (i, row) in x.chunks_exact(d).enumerate().step_by(97) {
        let dist = |j: usize| -> f32 {
            row.iter()
                .zip(&c[j * d..(j + 1) * d])
                .map(|(p, q)| (p - q) * (p - q))
                .sum()
        };
        let best = (0..k).min_by(|&p, &q| dist(p).total_cmp(&dist(q))).unwrap();
        assert!(dist(la[i] as usize) <= dist(best) * (1.0 + 1e-5), "row {i}");
    }
    // The same result whatever the thread count (tiles are merged in order).
    let (_, a1) = run(&fast, 1);
    assert_eq!(a.sums, a1.sums);
    assert_eq!(a.objective, a1.objective);
}

#[test]
fn release_label_rule_matches_nearest_centroid() {
    let (x, _) = planted(5, 200, 8, 1.0, 14);
    let cfg = KmeansConfig {
        k: 5,
        ..Default::default()
    };
    let km = Kmeans::init_from(&x, &cfg, Device::Cpu).unwrap().kmeans;
    let a = labels(&km.assign(&x).unwrap());
    let b = labels(&label_release(&x, km.centroids()).unwrap());
    assert_eq!(a, b);
    // A B x D x H x W feature map gives B x H x W labels, pixel by pixel.
    let fmap = x
        .narrow(0, 0, 2 * 4 * 5)
        .reshape([2, 4, 5, 8])
        .permute([0, 3, 1, 2]);
    let l = label_release(&fmap, km.centroids()).unwrap();
    assert_eq!(l.size(), vec![2, 4, 5]);
    assert_eq!(labels(&l), a[..40].to_vec());
}

#[test]
fn config_serde() {
    let cfg: KmeansConfig = serde_json::from_str(r#"{"k": 11, "metric": "cosine"}"#).unwrap();
    assert_eq!(cfg.k, 11);
    assert_eq!(cfg.metric, Metric::Cosine);
    assert_eq!(cfg.n_iter, 20);
    assert_eq!(cfg.init, Init::RandomSample);
    let cfg: KmeansConfig = serde_json::from_str(r#"{"init": "k_means_plus_plus"}"#).unwrap();
    assert_eq!(cfg.init, Init::KMeansPlusPlus);
    assert!(serde_json::from_str::<KmeansConfig>(r#"{"kk": 3}"#).is_err());
}

/// A sharded run's Lloyd: each pass's blocks computed in several parts ([`pass_blocks`]),
/// the state stored and restored between passes ([`LloydState::saved`]), the blocks folded
/// in order ([`LloydState::step`]). Bit for bit one process's fit, repairs included.
#[test]
fn lloyd_in_parts_between_saved_states_is_one_process_bit_for_bit() {
    let (x, _) = planted(4, 60, 5, 6.0, 11);
    for metric in [Metric::L2, Metric::Cosine] {
        // Two initial centroids coincide, so the first pass leaves one empty: the repair's
        // RNG has to survive the saves.
        let init = x.narrow(0, 0, 5).copy();
        init.narrow(0, 4, 1).copy_(&x.narrow(0, 0, 1));
        let cfg = KmeansConfig {
            k: 5,
            n_iter: 6,
            metric,
            seed: 9,
            chunk_rows: 16,
            ..Default::default()
        };
        let chunks = || tensor_chunks(&x, 37);
        let whole = lloyd_from(&init, chunks, &cfg, Device::Cpu).unwrap();
        assert!(
            whole.iters.iter().any(|s| s.empty_repaired > 0),
            "{metric:?}"
        );
        for parts in [1usize, 2, 3] {
            let all: Vec<Tensor> = chunks().map(|c| c.unwrap()).collect();
            let cut = |q: usize| {
                all[q * all.len() / parts..(q + 1) * all.len() / parts]
                    .iter()
                    .map(|t| Ok::<_, tch::TchError>(t.shallow_clone()))
                    .collect::<Vec<_>>()
            };
            let mut saved = LloydState::new(&init, &cfg, Device::Cpu)
                .unwrap()
                .saved()
                .unwrap();
            let fit = loop {
                let mut state = LloydState::restore(&saved, &cfg, Device::Cpu).unwrap();
                let mut blocks = Vec::new();
                for q in 0..parts {
                    let src = cut(q);
                    blocks.extend(pass_blocks(state.centroids(), src, 16, Device::Cpu).unwrap());
                }
                match state.step(blocks).unwrap() {
                    Some(fit) => break fit,
                    None => saved = state.saved().unwrap(),
                }
            };
            assert_eq!(host(fit.kmeans.centroids()), host(whole.kmeans.centroids()));
            assert_eq!(fit.kmeans.counts(), whole.kmeans.counts());
            assert_eq!(fit.iters, whole.iters);
            assert_eq!(fit.objective.to_bits(), whole.objective.to_bits());
        }
    }
}
