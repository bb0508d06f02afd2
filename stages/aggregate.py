"""Stage `aggregate`: per-seed accuracy matrices -> metrics in percentage points.

Writes results/summary.json (per run: n seeds, mean, std, 95% t-CI of all five metrics, seeds that learned
nothing), results/summary.csv (run, seed, metric, value), results/curves/<run>.csv and
results/forgetting/<run>.csv. Directories are written whole, so files of removed runs vanish. (The DVC
metrics, results/metrics/<run>.json, are the train stage's.)
"""
import pandas as pd

from pmnist.cli import run_stage
from pmnist.config import load_params
from pmnist.io import atomic_dir, write_json, write_text
from pmnist.metrics import HEADLINE, aggregate, load_study_runs
from pmnist.stats import to_jsonable


def main():
    params = load_params()
    # Only the runs named in params: directories of removed runs are stale and ignored.
    data = load_study_runs(params)
    summary, rows, curves, forgetting = aggregate(data)
    write_json("results/summary.json", to_jsonable(summary))
    write_text("results/summary.csv", pd.DataFrame(rows).to_csv(index=False))
    for name, table, columns in (("curves", curves, ["task", "average_accuracy", "ci95_low", "ci95_high"]),
                                 ("forgetting", forgetting, ["task", "forgetting"])):
        with atomic_dir(f"results/{name}") as d:
            for run, run_rows in table.items():
                write_text(d / f"{run}.csv", pd.DataFrame(run_rows, columns=columns).to_csv(index=False))

    for run, s in summary["runs"].items():
        bad = s["learned_nothing_seeds"]
        print(f"{run}: " + ", ".join(f"{m} {s['metrics'][m]['mean']}" for m in HEADLINE) + f" (mean of {s['n_seeds']} seed(s))"
              + (f"; LEARNED NOTHING on seed(s) {', '.join(map(str, bad))}" if bad else ""))


if __name__ == "__main__":
    run_stage(main)
