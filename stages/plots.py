"""Stage `plots`: results/figures/*.png from the per-seed npz, results/summary.csv and results/stats.json."""
import json
from pathlib import Path

from pmnist.cli import run_stage
from pmnist.config import load_params
from pmnist.metrics import load_runs
from pmnist.plots import make_figures
from pmnist.stats import load_summary


def _need(path):
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: missing; run the stage that writes it first (dvc repro)")
    return Path(path)


def main():
    params = load_params()
    p, runs = params["protocol"], list(params["runs"])
    data = load_runs("results/runs", runs, p["n_seeds"], p["n_tasks"])
    values, _ = load_summary(_need("results/summary.csv"))
    stats = json.loads(_need("results/stats.json").read_text())
    acc = {run: data[run]["accuracy"] for run in runs}
    written = make_figures(acc, values, stats, "results", runs, params["plots"]["dpi"])
    print(f"results/: wrote {len(written)} figures: {', '.join(written)}")


if __name__ == "__main__":
    run_stage(main)
