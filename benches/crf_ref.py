"""pydensecrf's side of `picie-bench crf`: STEGO's dense_crf (src/crf.py) settings on the
inputs the Rust side wrote, timed per image (lattice construction and 10 iterations).

Usage: crf_ref.py DIR N W H K PROCESSES
DIR holds rgbI.bin (H x W x 3 uint8) and unaryI.bin (K x H W float32 energies); writes
labelsI.bin (uint8 argmax) and prints milliseconds per image. With PROCESSES > 1 the
images go to a multiprocessing pool, as STEGO's eval_segmentation.py does.
Exits 77 when pydensecrf cannot be imported.
"""

import os
import sys
import time

import numpy as np

try:
    import pydensecrf.densecrf as dcrf
except ImportError as e:
    print(f"pydensecrf is not importable: {e}", file=sys.stderr)
    sys.exit(77)


def one(args):
    d, i, w, h, k = args
    rgb = np.fromfile(os.path.join(d, f"rgb{i}.bin"), dtype=np.uint8).reshape(h, w, 3)
    unary = np.fromfile(os.path.join(d, f"unary{i}.bin"), dtype=np.float32).reshape(k, h * w)
    crf = dcrf.DenseCRF2D(w, h, k)
    crf.setUnaryEnergy(np.ascontiguousarray(unary))
    crf.addPairwiseGaussian(sxy=1, compat=3)
    crf.addPairwiseBilateral(sxy=67, srgb=3, rgbim=np.ascontiguousarray(rgb), compat=4)
    q = np.array(crf.inference(10)).reshape(k, h * w)
    return q.argmax(0).astype(np.uint8)


def main():
    d = sys.argv[1]
    n, w, h, k, procs = (int(v) for v in sys.argv[2:7])
    jobs = [(d, i, w, h, k) for i in range(n)]
    one(jobs[0])  # warm-up: imports, page faults
    t = time.perf_counter()
    if procs > 1:
        from multiprocessing import Pool

        with Pool(procs) as pool:
            labels = pool.map(one, jobs)
    else:
        labels = [one(j) for j in jobs]
    ms = (time.perf_counter() - t) * 1e3 / n
    for i, lab in enumerate(labels):
        lab.tofile(os.path.join(d, f"labels{i}.bin"))
    print(f"{ms:.1f}")


if __name__ == "__main__":
    main()
