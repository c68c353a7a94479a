"""pydensecrf's mean field, the oracle of core/src/crf/parity.rs.

Usage: densecrf_ref.py RGB UNARY OUT W H K ITERATIONS GAUSS_SXY GAUSS_COMPAT BI_SXY BI_SRGB BI_COMPAT
RGB: H x W x 3 uint8; UNARY: K x (H W) float32 energies (-log p); OUT: K x (H W) float32
marginals after ITERATIONS mean-field steps, as STEGO's src/crf.py runs them.
Exits 77 when pydensecrf cannot be imported.
"""

import sys

import numpy as np

try:
    import pydensecrf.densecrf as dcrf
except ImportError as e:
    print(f"pydensecrf is not importable: {e}", file=sys.stderr)
    sys.exit(77)


def main():
    rgb_path, unary_path, out_path = sys.argv[1:4]
    w, h, k, iters = (int(v) for v in sys.argv[4:8])
    g_sxy, g_compat, b_sxy, b_srgb, b_compat = (float(v) for v in sys.argv[8:13])
    rgb = np.fromfile(rgb_path, dtype=np.uint8).reshape(h, w, 3)
    unary = np.fromfile(unary_path, dtype=np.float32).reshape(k, h * w)
    d = dcrf.DenseCRF2D(w, h, k)
    d.setUnaryEnergy(np.ascontiguousarray(unary))
    d.addPairwiseGaussian(sxy=g_sxy, compat=g_compat)
    d.addPairwiseBilateral(sxy=b_sxy, srgb=b_srgb, rgbim=np.ascontiguousarray(rgb), compat=b_compat)
    q = np.array(d.inference(iters), dtype=np.float32)
    q.tofile(out_path)


if __name__ == "__main__":
    main()
