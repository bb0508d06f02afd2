"""Two trainings of one run compared seed by seed (e.g. Newton-Schulz in bf16, the committed default, vs
float32): the paired difference of each headline metric with its t-interval, beside the seed-to-seed
std of either, so "moves by less than seed noise" is a number.

    python bench/paired_runs.py results/runs/muon path/to/fp32/muon
"""
import argparse
import sys
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]  # the repository, for pmnist

from pmnist.headline import average_forgetting, final_average_accuracy, learning_accuracy  # noqa: E402
from pmnist.io import read_npz  # noqa: E402
from pmnist.stats import paired_test  # noqa: E402

METRICS = {"final average accuracy": final_average_accuracy, "average forgetting": average_forgetting,
           "learning accuracy": learning_accuracy}


def per_seed(run_dir):
    """seed value -> accuracy matrix, from the run's seed_*.npz (paired by the seed each file holds)."""
    return {int(r["seed"]): r["accuracy"] for r in map(read_npz, Path(run_dir).glob("seed_*.npz"))}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a"), ap.add_argument("b")
    args = ap.parse_args()
    a, b = per_seed(args.a), per_seed(args.b)
    seeds = sorted(set(a) & set(b))
    print(f"{args.a} vs {args.b}: {len(seeds)} seeds paired")
    for label, fn in METRICS.items():
        x = np.array([100 * fn(a[s]) for s in seeds])
        y = np.array([100 * fn(b[s]) for s in seeds])
        r = paired_test(x, y)
        spread = f"seed std a {x.std(ddof=1):.2f}, b {y.std(ddof=1):.2f}"
        if r["p_value"] is None:   # no t-test: every seed's difference the same (all zero: identical runs)
            print(f"  {label:24s} a {x.mean():6.2f}  b {y.mean():6.2f}  a-b {r['mean_diff']:+.2f} on every seed | {spread}")
            continue
        print(f"  {label:24s} a {x.mean():6.2f}  b {y.mean():6.2f}  a-b {r['mean_diff']:+.2f} "
              f"[{r['ci95_low']:+.2f}, {r['ci95_high']:+.2f}] p {r['p_value']:.3f} | {spread}")


if __name__ == "__main__":
    main()
