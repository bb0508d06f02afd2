"""Stage `plots`: results/figures/*.png from the per-seed npz, results/summary.csv and results/stats.json."""
import json

from pmnist.cli import run_stage
from pmnist.config import load_params
from pmnist.io import require_file
from pmnist.metrics import load_runs
from pmnist.plots import make_figures
from pmnist.stats import load_summary


def main():
    params = load_params()
    p, runs = params["protocol"], list(params["runs"])
    data = load_runs("results/runs", runs, p["n_seeds"], p["n_tasks"])
    values, _ = load_summary(require_file("results/summary.csv"))
    stats = json.loads(require_file("results/stats.json").read_text())
    acc = {run: data[run]["accuracy"] for run in runs}
    written = make_figures(acc, values, stats, "results", runs, params["plots"]["dpi"])
    print(f"results/: wrote {len(written)} figures: {', '.join(written)}")


if __name__ == "__main__":
    run_stage(main)
