#!/usr/bin/env python3
"""Reference k-means timings for picie's `kmeans` module: faiss-cpu and scikit-learn (Lloyd).

Writes the shared data set (N unit vectors, seeded) and the initial centroids as .npy files,
runs both peers for the same number of iterations from the same centroids, and writes their
final centroids, wall times and objectives (sum of squared distances of every point to its
nearest final centroid, recomputed in f64) so the Rust bench can compare on the same footing.

    /work/main/.venv/bin/pip install faiss-cpu scikit-learn
    /work/main/.venv/bin/python benches/kmeans_ref.py --dir /tmp/picie-kmeans-bench
    # then the Rust side, which reads x.npy, init.npy, ref.txt and the peers' centroids:
    bench_kmeans /tmp/picie-kmeans-bench 65536 2    # (DIR CHUNK_ROWS THREADS)

On a shared machine, also compare "cpu_seconds": wall times swing with other load.
"""
import argparse
import json
import os
import time

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--dir", default="/tmp/picie-kmeans-bench")
ap.add_argument("--n", type=int, default=1_000_000)
ap.add_argument("--d", type=int, default=128)
ap.add_argument("--k", type=int, default=27)
ap.add_argument("--iters", type=int, default=20)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--only", choices=["faiss", "sklearn"], help="run one peer only")
ap.add_argument("--reuse", action="store_true", help="reuse x.npy / init.npy if present")
args = ap.parse_args()
# Thread pools read these when the libraries load, so set them before importing.
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(args.threads)

import numpy as np  # noqa: E402


def objective(x, c, rows=65536):
    """Sum over points of the squared distance to the nearest centroid, in f64."""
    c = c.astype(np.float64)
    c_sq = (c * c).sum(1)
    total = 0.0
    for s in range(0, len(x), rows):
        xb = x[s : s + rows].astype(np.float64)
        d = (xb * xb).sum(1)[:, None] - 2.0 * xb @ c.T + c_sq[None, :]
        total += np.maximum(d.min(1), 0.0).sum()
    return float(total)


os.makedirs(args.dir, exist_ok=True)
x_path, init_path = os.path.join(args.dir, "x.npy"), os.path.join(args.dir, "init.npy")
x = init = None
if args.reuse and os.path.exists(x_path) and os.path.exists(init_path):
    x, init = np.load(x_path), np.load(init_path)
    if x.shape != (args.n, args.d) or init.shape != (args.k, args.d):
        x = init = None
if x is None:
    rng = np.random.default_rng(args.seed)
    x = rng.standard_normal((args.n, args.d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    init = np.ascontiguousarray(x[rng.choice(args.n, args.k, replace=False)])
    np.save(x_path, x)
    np.save(init_path, init)

results = {}

if args.only in (None, "faiss"):
    import faiss

    faiss.omp_set_num_threads(args.threads)
    # max_points_per_centroid: otherwise faiss trains on a 256-per-centroid subsample.
    km = faiss.Kmeans(
        args.d, args.k, niter=args.iters, seed=args.seed, max_points_per_centroid=10**9
    )
    t0, cpu0 = time.perf_counter(), time.process_time()
    km.train(x, init_centroids=init)
    secs, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    c = np.ascontiguousarray(km.centroids, dtype=np.float32)
    np.save(os.path.join(args.dir, "faiss_centroids.npy"), c)
    results["faiss"] = {
        "seconds": secs,
        "cpu_seconds": cpu,
        "objective": objective(x, c),
        "version": faiss.__version__,
    }

if args.only in (None, "sklearn"):
    import sklearn
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=args.threads):
        km = KMeans(
            n_clusters=args.k,
            init=init,
            n_init=1,
            max_iter=args.iters,
            tol=0.0,
            algorithm="lloyd",
            random_state=args.seed,
        )
        t0, cpu0 = time.perf_counter(), time.process_time()
        km.fit(x)
        secs, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    c = np.ascontiguousarray(km.cluster_centers_, dtype=np.float32)
    np.save(os.path.join(args.dir, "sklearn_centroids.npy"), c)
    results["sklearn"] = {
        "seconds": secs,
        "cpu_seconds": cpu,
        "objective": objective(x, c),
        "n_iter": int(km.n_iter_),
        "version": sklearn.__version__,
    }

with open(os.path.join(args.dir, "ref.json"), "w") as f:
    json.dump(results, f, indent=1)
# One line per peer, "name seconds objective", for the Rust bench to read without JSON.
with open(os.path.join(args.dir, "ref.txt"), "w") as f:
    for name, r in results.items():
        f.write(f"{name} {r['seconds']:.6f} {r['objective']:.10e}\n")
print(json.dumps(results, indent=1))
