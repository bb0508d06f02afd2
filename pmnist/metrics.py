"""Continual-learning metrics from accuracy matrices, and their summary over seeds.

R[..., i, j] is the accuracy on task j after training task i (fractions in [0, 1]). Every metric
function accepts leading batch dims (e.g. seeds) and returns an array over them. Definitions follow GEM
(Lopez-Paz & Ranzato 2017) and Chaudhry et al. 2018. Outputs of `aggregate` are in percentage points
(accuracy x 100), which the `_pct` suffix of every metric name says.
"""
from pathlib import Path

import numpy as np
from scipy import stats as st

from pmnist.config import TESTED_METRICS
from pmnist.errors import DataError
# The headline metrics live in their own small module, which the train stages depend on (they write
# results/metrics/<run>.json); re-exported here so the analysis has one place to import metrics from.
# Its shape check too (private there: headline.py is a train-stage dependency, so it stays untouched).
from pmnist.headline import _check
from pmnist.headline import (CHANCE, MARGIN, average_accuracy, average_forgetting,  # noqa: F401
                             final_average_accuracy, forgetting_per_task, learned_nothing, learning_accuracy)
from pmnist.io import read_npz, require_file

# name -> (plain-language label, higher is better). The stats and report stages use the same names.
METRICS = {
    "acc_pct": ("final average accuracy", True),
    "forgetting_pct": ("average forgetting", False),
    "bwt_pct": ("backward transfer", True),
    "fwt_pct": ("forward transfer", True),
    "learning_acc_pct": ("learning accuracy", True),
}
# The metrics that are tested (and that the train stage writes as DVC metrics, pmnist/headline.py);
# declared once, with the params schema that checks stats.primary against them.
HEADLINE = TESTED_METRICS


def _nan(R):
    return np.full(R.shape[:-2], np.nan)


def backward_transfer(R):
    """BWT = mean_{j < T-1} (R[T-1, j] - R[j, j]) (GEM). Negative = forgetting. NaN for T = 1."""
    R = _check(R)
    if R.shape[-1] == 1:
        return _nan(R)
    diag = np.diagonal(R, axis1=-2, axis2=-1)
    return (R[..., -1, :-1] - diag[..., :-1]).mean(-1)


def forward_transfer(R, b):
    """FWT = mean_{j >= 1} (R[j-1, j] - b_j) (GEM), b_j = a randomly initialised model's accuracy on
    task j: how much training on earlier tasks helps a task before it is trained. NaN for T = 1."""
    R = _check(R)
    b = np.asarray(b, dtype=np.float64)
    if b.shape != R.shape[:-1]:
        raise ValueError(f"untrained accuracy must have shape {R.shape[:-1]}, got {b.shape}")
    if R.shape[-1] == 1:
        return _nan(R)
    before = np.diagonal(R, offset=1, axis1=-2, axis2=-1)  # R[j-1, j] for j = 1..T-1
    return (before - b[..., 1:]).mean(-1)


def headline(R, b):
    """The METRICS of each matrix in R [..., T, T], in percentage points: name -> array [...]."""
    return {
        "acc_pct": 100 * final_average_accuracy(R),
        "forgetting_pct": 100 * average_forgetting(R),
        "bwt_pct": 100 * backward_transfer(R),
        "fwt_pct": 100 * forward_transfer(R, b),
        "learning_acc_pct": 100 * learning_accuracy(R),
    }


def mean_ci(x, axis=0, confidence=0.95):
    """Mean, sample std (ddof=1) and the t-interval mean +- t_{n-1} * std / sqrt(n) over `axis`.
    Any NaN gives a NaN summary. Returns (mean, std, low, high); std and the interval are NaN for n = 1."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[axis]
    mean = x.mean(axis)
    if n < 2:
        nan = np.full_like(mean, np.nan)
        return mean, nan, nan, nan
    std = x.std(axis, ddof=1)
    half = st.t.ppf(0.5 + confidence / 2, n - 1) * std / np.sqrt(n)
    return mean, std, mean - half, mean + half


def summarize(x):
    """{mean, std, ci95_low, ci95_high} of per-seed values, JSON-ready (None for undefined, with a note)."""
    x = np.asarray(x, dtype=np.float64)
    out = dict(zip(("mean", "std", "ci95_low", "ci95_high"), (float(v) for v in mean_ci(x))))
    out = {k: (round(v, 4) if np.isfinite(v) else None) for k, v in out.items()}
    if len(x) < 2:
        out["note"] = "std and CI undefined: 1 seed"
    elif np.isnan(x).any():
        out["note"] = "undefined: NaN for some seeds (BWT, FWT, forgetting need >= 2 tasks)"
    return out


# ---- inputs from the train stage -------------------------------------------------------------------
def load_study_runs(params, runs_dir="results/runs"):
    """load_runs for every run of params (runs.<run>.seeds as config.py resolves them), at protocol.n_tasks:
    the analysis stages' one way to read the study."""
    return load_runs(runs_dir, {run: cfg["seeds"] for run, cfg in params["runs"].items()},
                     params["protocol"]["n_tasks"])


def load_runs(runs_dir, seeds_by_run, n_tasks):
    """Read runs_dir/<run>/seed_<k>.npz for the named runs only (stale run directories are ignored);
    seeds_by_run: run -> its seed values (params' runs.<run>.seeds); file k must hold seeds[k], so runs
    pair by seed value. Returns run -> {accuracy [S, T, T], untrained_accuracy [S, T], seed [S]}."""
    expect = {"accuracy": (n_tasks, n_tasks), "untrained_accuracy": (n_tasks,), "seed": ()}
    out = {}
    for run, seeds in seeds_by_run.items():
        files = []
        for k, seed in enumerate(seeds):
            path = require_file(Path(runs_dir) / run / f"seed_{k}.npz",
                                f"the train stage writes it for run '{run}', seed {seed}")
            z = read_npz(path)
            for key, shape in expect.items():
                if key not in z:
                    raise DataError(f"{path}: no array '{key}' (has {', '.join(z)}); rerun train@{run}")
                if z[key].shape != shape:
                    raise DataError(f"{path}: '{key}' has shape {z[key].shape}, expected {shape} "
                                    f"(protocol.n_tasks = {n_tasks}); rerun train@{run}")
            if int(z["seed"]) != seed:  # paired tests match seeds by value: a stale file would mispair
                raise DataError(f"{path}: holds seed {int(z['seed'])}, expected {seed} (protocol.seed + {k}); "
                                f"rerun train@{run}")
            files.append(z)
        out[run] = {key: np.stack([z[key] for z in files]) for key in expect}
    return out


def aggregate(data):
    """From load_runs' output: (summary, rows, curves, forgetting). summary: results/summary.json's content,
    its "runs": run -> {n_seeds, seeds, learned_nothing_seeds, metrics: {metric: summarize()}};
    rows: tidy (run, seed, metric, value); curves / forgetting: run -> rows, tasks numbered from 1."""
    runs, rows, curves, forgetting = {}, [], {}, {}
    for run, d in data.items():
        R, seeds = d["accuracy"], [int(s) for s in d["seed"]]
        values = headline(R, d["untrained_accuracy"])
        stats = {name: summarize(v) for name, v in values.items()}
        runs[run] = {"n_seeds": len(seeds), "seeds": seeds,
                        "learned_nothing_seeds": [s for s, bad in zip(seeds, learned_nothing(R)) if bad],
                        "metrics": stats}
        rows += [{"run": run, "seed": s, "metric": name, "value": float(v[i])}
                 for name, v in values.items() for i, s in enumerate(seeds)]
        mean, _, low, high = mean_ci(100 * average_accuracy(R))
        curves[run] = [{"task": t + 1, "average_accuracy": mean[t], "ci95_low": low[t], "ci95_high": high[t]}
                       for t in range(len(mean))]
        f = 100 * forgetting_per_task(R).mean(0)
        forgetting[run] = [{"task": j + 1, "forgetting": f[j]} for j in range(len(f))]
    summary = {
        "units": "percentage points; ci95 = t-interval over seeds",
        "learned_nothing": f"seeds where no task's accuracy ever exceeded {100 * (CHANCE + MARGIN):g}% "
                           f"(chance {100 * CHANCE:g}% + {100 * MARGIN:g} points) after it was trained",
        "metric_labels": {m: label for m, (label, _) in METRICS.items()},
        "runs": runs,
    }
    return summary, rows, curves, forgetting
