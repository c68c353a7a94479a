"""Oracle for picie's Hungarian matching: reads a JSON list of square matrices (rows =
classes, columns = clusters, pixel counts) and prints, as a JSON list, the maximum total of
a one-to-one assignment of each, from scipy.optimize.linear_sum_assignment(maximize=True).

Usage: python hungarian_check.py matrices.json
"""

import json
import sys

import numpy as np
from scipy.optimize import linear_sum_assignment


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    with open(sys.argv[1]) as f:
        matrices = json.load(f)
    totals = []
    for m in matrices:
        # int64 keeps the sums exact (the values stay far below 2**63).
        a = np.asarray(m, dtype=np.int64)
        rows, cols = linear_sum_assignment(a, maximize=True)
        totals.append(int(a[rows, cols].sum()))
    json.dump(totals, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
