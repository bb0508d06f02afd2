"""Does the timescale matter, or only how often each layer updates?

Under Adam a period-p level takes 1/p as many steps, each on the sum of p batches' gradients: a bigger
effective batch. So every schedule (periods, batch size) has a parameter-weighted update fraction

    u = sum_l n_l * updates_l / (sum_l n_l * steps of the batch-128 baseline)

(n_l: parameters of level l; updates_l: optimizer steps of level l per epoch, a partial chunk at the end
of a task flushed as one update, as pmnist/cms.py does). cms [3,2,1] has u = 0.38: the first layer holds
83 % of the MLP's parameters and updates every third step.

The runs compared here differ ONLY in their schedule: same model, optimizer, method, lr, accumulation
rule and per-level lr (the runs at `lr` that train the plain MLP with Adam and no method). A schedule is
*uniform* when every level has the same period (the batch size may differ: batch 384 is u = 1/3), and
*multi-timescale* otherwise. Uniform schedules trace forgetting as a function of u; each multi-timescale
schedule is then tested against that curve at its own u, per seed: for seed s, the uniform runs' forgetting
is interpolated linearly in log u at the schedule's u, and the schedule's own forgetting minus that value
is one paired difference. Their mean and 95 % t-interval say whether the schedule forgets less than a
uniform schedule with the same number of parameter updates would. A schedule outside the uniform runs'
range of u is not extrapolated (reported as such).
"""
import math

import numpy as np

from pmnist.headline import average_forgetting, final_average_accuracy
from pmnist.metrics import mean_ci
from pmnist.optim import OPTIMIZERS

N_TRAIN = 60000          # images per epoch of the reference protocol
REFERENCE_BATCH = 128


def level_sizes(hidden_dims, in_dim=784, n_classes=10):
    """Parameters per CMS level of the MLP, slow -> fast: each hidden layer, the last holding the head too."""
    dims = [in_dim, *hidden_dims]
    sizes = [dims[i] * dims[i + 1] + dims[i + 1] for i in range(len(hidden_dims))]
    sizes[-1] += hidden_dims[-1] * n_classes + n_classes
    return sizes


def update_fraction(sizes, periods, batch_size, n_images=N_TRAIN, reference_batch=REFERENCE_BATCH):
    """u of a schedule: parameter-weighted optimizer steps per epoch over the batch-128 baseline's."""
    steps = math.ceil(n_images / batch_size)
    reference = math.ceil(n_images / reference_batch)
    return sum(n * math.ceil(steps / p) for n, p in zip(sizes, periods)) / (sum(sizes) * reference)


def schedule_runs(runs, lr, model="mlp", optimizer="adam"):
    """The runs that differ from each other only in their schedule, at `lr`: run -> (periods, batch_size)."""
    out = {}
    for name, cfg in runs.items():
        if (cfg["model"] == model and cfg["optimizer"] == optimizer and cfg["method"] == "none"
                and math.isclose(cfg["lr"], lr, rel_tol=1e-9) and cfg["accumulate"] == "sum"
                and cfg["lr_scale"] == "none" and all(m == 1 for m in cfg["lr_multipliers"])
                and cfg["optimizer_args"] == OPTIMIZERS[optimizer].defaults):
            out[name] = (list(cfg["periods"]), cfg["batch_size"])
    return out


def analyse(runs, accuracy, lr, hidden_dims, in_dim=784):
    """runs: params' runs (resolved); accuracy: run -> [S, T, T] accuracy matrices (shared seeds first).
    Returns {"lr", "runs": [{run, periods, batch_size, u, kind, forgetting_pct, acc_pct, n_seeds}],
    "tests": [{run, u, n_seeds, difference_pct, ci95, expected_pct, ...}]} (forgetting in points)."""
    sizes = level_sizes(hidden_dims, in_dim)
    schedules = {r: s for r, s in schedule_runs(runs, lr).items() if r in accuracy}
    rows = []
    for run, (periods, batch) in schedules.items():
        R = accuracy[run]
        forgetting = average_forgetting(R) * 100
        rows.append({"run": run, "periods": periods, "batch_size": batch,
                     "u": round(update_fraction(sizes, periods, batch), 4),
                     "kind": "uniform" if len(set(periods)) == 1 else "multi-timescale",
                     "forgetting_pct": round(float(forgetting.mean()), 2),
                     "acc_pct": round(float((final_average_accuracy(R) * 100).mean()), 2),
                     "n_seeds": int(R.shape[0])})
    rows.sort(key=lambda r: (r["kind"], -r["u"], r["run"]))
    uniform = sorted((r for r in rows if r["kind"] == "uniform"), key=lambda r: r["u"])
    tests = []
    for row in (r for r in rows if r["kind"] == "multi-timescale"):
        tests.append(_against_uniform(row, uniform, accuracy))
    return {"lr": lr, "runs": rows, "tests": tests}


def _against_uniform(row, uniform, accuracy):
    """The schedule's forgetting minus the uniform curve's at its u, per shared seed."""
    # Uniform runs at one u (a period p and batch 128p) are averaged: they are one point of the curve.
    points = {}
    for r in uniform:
        points.setdefault(r["u"], []).append(r["run"])
    us = sorted(points)
    out = {"run": row["run"], "u": row["u"]}
    if len(us) < 2 or not us[0] <= row["u"] <= us[-1]:
        return {**out, "note": f"u {row['u']} outside the uniform runs' range "
                               f"[{us[0] if us else None}, {us[-1] if us else None}]: not extrapolated"}
    n = min([accuracy[row["run"]].shape[0]] + [accuracy[run].shape[0] for runs in points.values() for run in runs])
    curve = np.stack([np.mean([average_forgetting(accuracy[run][:n]) for run in points[u]], axis=0) for u in us]) * 100
    log_u = np.log(us)
    expected = np.array([np.interp(np.log(row["u"]), log_u, curve[:, s]) for s in range(n)])
    diff = average_forgetting(accuracy[row["run"]][:n]) * 100 - expected
    mean, _, low, high = mean_ci(diff)
    return {**out, "n_seeds": n, "expected_pct": round(float(expected.mean()), 2),
            "difference_pct": round(float(mean), 2), "ci95": [round(float(low), 2), round(float(high), 2)],
            "between": [[u, points[u]] for u in us]}
