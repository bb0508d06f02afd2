"""Stage `report`: results/report.md from results/summary.json, results/stats.json, results/tuning/grid.csv
(when present) and the params. Reads nothing else, so `dvc repro` knows when it is stale."""
import csv
import json
from pathlib import Path

from pmnist.cli import run_stage
from pmnist.config import load_params
from pmnist.errors import DataError
from pmnist.io import require_file, write_text
from pmnist.report import make_report, parse_grid

GRID = Path("results/tuning/grid.csv")


def _read_json(path, stage):
    try:
        return json.loads(require_file(path, f"the {stage} stage writes it").read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e}); rerun the {stage} stage") from None


def main():
    params = load_params()
    grid = None
    if GRID.is_file():
        with open(GRID, newline="") as f:
            grid = parse_grid(csv.DictReader(f), GRID)
    text = make_report(params, _read_json("results/summary.json", "aggregate"), _read_json("results/stats.json", "stats"), grid)
    write_text("results/report.md", text + "\n")
    print(f"results/report.md: {len(text.splitlines())} lines")


if __name__ == "__main__":
    run_stage(main)
