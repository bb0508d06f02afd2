"""Stage `plots`: results/figures/*.png from the per-seed npz and results/stats.json.

The directory is written whole, so figures of removed runs vanish; PNGs are byte-identical across reruns.
A run of params.yaml that has no results yet (no results/runs/<run>/) is left out of the figures, not an error.
"""
import json
from pathlib import Path

from pmnist.cli import run_stage
from pmnist.config import load_params
from pmnist.errors import DataError
from pmnist.io import atomic_dir, require_file
from pmnist.metrics import load_study_runs
from pmnist.plots import make_figures

STATS = "results/stats.json"
RUNS_DIR = Path("results/runs")


def main():
    params = load_params()
    trained = {run: cfg for run, cfg in params["runs"].items() if (RUNS_DIR / run).is_dir()}
    data = load_study_runs({**params, "runs": trained})
    try:
        stats = json.loads(require_file(STATS, "the stats stage writes it").read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{STATS}: not valid JSON ({e}); rerun the stats stage") from None
    primary = [t for t in stats.get("tests", []) if t.get("family") == "primary"]
    stale = {name for t in primary for name in (t.get("run"), t.get("control"))} - set(trained)
    if "tests" not in stats or stale:
        raise DataError(f"{STATS}: from another version or other runs ({', '.join(map(str, stale)) or 'no tests'}); "
                        f"rerun the stats stage")
    with atomic_dir("results/figures") as out:
        written = make_figures(data, stats, out, trained, params["plots"]["tradeoff"], params["plots"]["dpi"])
    print(f"results/figures/: {len(written)} figures")


if __name__ == "__main__":
    run_stage(main)
