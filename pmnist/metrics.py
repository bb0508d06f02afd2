"""Continual-learning metrics from accuracy matrices, and their summary over seeds.

R[..., i, j] is the test accuracy on task j after training task i (fractions in [0, 1]). Every metric
function accepts leading batch dims (e.g. seeds) and returns an array over them. Definitions follow GEM
(Lopez-Paz & Ranzato 2017) and Chaudhry et al. 2018. Outputs of `aggregate` are in percentage points
(accuracy x 100), which the `_pct` suffix of every metric name says.
"""
from pathlib import Path

import numpy as np
from scipy import stats as st

from pmnist.io import read_npz, require_file

# name -> (plain-language label, higher is better). The stats and report stages use the same names.
METRICS = {
    "acc_pct": ("final average accuracy", True),
    "forgetting_pct": ("average forgetting", False),
    "bwt_pct": ("backward transfer", True),
    "fwt_pct": ("forward transfer", True),
    "learning_acc_pct": ("learning accuracy", True),
}


def _check(R):
    R = np.asarray(R, dtype=np.float64)
    if R.ndim < 2 or R.shape[-1] != R.shape[-2]:
        raise ValueError(f"accuracy matrix must have shape [..., T, T], got {R.shape}")
    return R


def _nan(R):
    return np.full(R.shape[:-2], np.nan)


def average_accuracy(R):
    """A_i = mean_{j <= i} R[i, j]: mean accuracy over the tasks seen so far, after each task i. [..., T]"""
    R = _check(R)
    T = R.shape[-1]
    seen = np.tril(np.ones((T, T), dtype=bool))
    return np.where(seen, R, 0.0).sum(-1) / np.arange(1, T + 1)  # where(): unseen entries may be NaN


def final_average_accuracy(R):
    """ACC = A_{T-1} = mean_j R[T-1, j]: mean accuracy over all tasks after training the last one."""
    return average_accuracy(R)[..., -1]


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


def forgetting_per_task(R):
    """f_j = max_{j <= l < T-1} R[l, j] - R[T-1, j] for each task j < T-1 (Chaudhry et al. 2018): the
    drop from the best accuracy ever reached on task j to its final accuracy. [..., T-1]"""
    R = _check(R)
    past = R[..., :-1, :-1]  # rows l < T-1, columns j < T-1
    T1 = past.shape[-1]
    trained = np.tril(np.ones((T1, T1), dtype=bool))  # l >= j: task j has been trained by then
    best = np.where(trained, past, -np.inf).max(-2, initial=-np.inf)
    return best - R[..., -1, :-1]


def average_forgetting(R):
    """F = mean_{j < T-1} f_j (Chaudhry et al. 2018). NaN for T = 1 (no earlier task to forget)."""
    R = _check(R)
    if R.shape[-1] == 1:
        return _nan(R)
    return forgetting_per_task(R).mean(-1)


def learning_accuracy(R):
    """LA = mean_j R[j, j]: accuracy on each task right after training it (plasticity)."""
    return np.diagonal(_check(R), axis1=-2, axis2=-1).mean(-1)


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
def load_runs(runs_dir, run_names, n_seeds, n_tasks):
    """Read runs_dir/<run>/seed_<k>.npz for the named runs only (stale run directories are ignored).
    Returns run -> {accuracy [S, T, T], untrained_accuracy [S, T], seed [S]}."""
    out = {}
    for run in run_names:
        seeds = []
        for k in range(n_seeds):
            path = require_file(Path(runs_dir) / run / f"seed_{k}.npz",
                                f"the train stage writes it for run '{run}', seed {k}")
            z = read_npz(path)
            expect = {"accuracy": (n_tasks, n_tasks), "untrained_accuracy": (n_tasks,), "seed": ()}
            for key, shape in expect.items():
                if key not in z:
                    raise ValueError(f"{path}: no array '{key}' (has {', '.join(z)})")
                if z[key].shape != shape:
                    raise ValueError(f"{path}: '{key}' has shape {z[key].shape}, expected {shape} "
                                     f"(protocol.n_tasks = {n_tasks})")
            seeds.append(z)
        out[run] = {key: np.stack([z[key] for z in seeds]) for key in expect}
    return out


def aggregate(data):
    """From load_runs' output: metrics.json content, tidy summary rows, per-run curve and forgetting rows.
    Tasks are numbered from 1 in the curves ("after training task k") and forgetting tables."""
    metrics, rows, curves, forgetting = {}, [], {}, {}
    for run, d in data.items():
        R, seeds = d["accuracy"], d["seed"]
        values = headline(R, d["untrained_accuracy"])
        metrics[run] = {name: summarize(v) for name, v in values.items()}
        rows += [{"run": run, "seed": int(s), "metric": name, "value": float(v[i])}
                 for name, v in values.items() for i, s in enumerate(seeds)]
        mean, _, low, high = mean_ci(100 * average_accuracy(R))
        curves[run] = [{"task": t + 1, "average_accuracy": mean[t], "ci95_low": low[t], "ci95_high": high[t]}
                       for t in range(len(mean))]
        f = 100 * forgetting_per_task(R).mean(0)
        forgetting[run] = [{"task": j + 1, "forgetting": f[j]} for j in range(len(f))]
    return metrics, rows, curves, forgetting
