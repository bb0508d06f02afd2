"""Stage `timescale`: forgetting against the parameter-weighted update fraction of every schedule trained
at `timescale.lr` (pmnist/timescale.py), and each multi-timescale schedule tested against the uniform
schedules' curve at its own update count -> results/timescale/timescale.json and update_fraction.png.
A run of params.yaml without results yet is left out, not an error."""
from pathlib import Path

from pmnist.cli import run_stage
from pmnist.config import load_params
from pmnist.data import image_pixels
from pmnist.io import atomic_dir, write_json
from pmnist.metrics import load_study_runs
from pmnist.plots import update_fraction_figure
from pmnist.timescale import analyse, schedule_runs

RUNS_DIR = Path("results/runs")


def main():
    params = load_params()
    lr = params["timescale"]["lr"]
    runs = {r: cfg for r, cfg in schedule_runs(params["runs"], lr).items() if (RUNS_DIR / r).is_dir()}
    data = load_study_runs({**params, "runs": {r: params["runs"][r] for r in runs}})
    result = analyse(params["runs"], {r: d["accuracy"] for r, d in data.items()}, lr,
                     params["models"]["mlp"]["hidden_dims"], image_pixels(params["protocol"]["pad_to"]))
    with atomic_dir("results/timescale") as out:
        write_json(out / "timescale.json", result)
        update_fraction_figure(result, out / "update_fraction.png", dpi=params["plots"]["dpi"])
    for t in result["tests"]:
        print(f"[timescale] {t['run']} (u {t['u']}): " + (t.get("note") or
              f"{t['difference_pct']:+.2f} points [{t['ci95'][0]:+.2f}, {t['ci95'][1]:+.2f}] against the uniform curve"))


if __name__ == "__main__":
    run_stage(main)
