"""Stage `aggregate`: per-seed accuracy matrices -> metrics in percentage points.

Writes results/metrics.json ({run: {metric: {mean, std, ci95_low, ci95_high}}}), results/summary.csv
(run, seed, metric, value), results/curves/<run>.csv and results/forgetting/<run>.csv.
"""
import pandas as pd

from pmnist.cli import run_stage
from pmnist.config import load_params
from pmnist.io import write_json, write_text
from pmnist.metrics import aggregate, load_runs
from pmnist.stats import to_jsonable


def main():
    params = load_params()
    p = params["protocol"]
    # Only the runs named in params: directories of removed runs are stale and ignored.
    data = load_runs("results/runs", list(params["runs"]), p["n_seeds"], p["n_tasks"])
    metrics, rows, curves, forgetting = aggregate(data)
    write_json("results/metrics.json", to_jsonable(metrics))
    write_text("results/summary.csv", pd.DataFrame(rows).to_csv(index=False))
    for run in data:
        write_text(f"results/curves/{run}.csv", pd.DataFrame(curves[run]).to_csv(index=False))
        write_text(f"results/forgetting/{run}.csv",
                   pd.DataFrame(forgetting[run], columns=["task", "forgetting"]).to_csv(index=False))
    for run, m in metrics.items():
        print(f"{run}: " + ", ".join(f"{k} {v['mean']}" for k, v in m.items()) + f" (mean of {p['n_seeds']} seed(s))")


if __name__ == "__main__":
    run_stage(main)
