"""Stage `report`: results/report.md from results/metrics.json, results/stats.json and the params."""
import json
from pathlib import Path

from pmnist.cli import run_stage
from pmnist.config import load_params
from pmnist.io import write_text
from pmnist.report import make_report


def _read_json(path):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; run the stage that writes it first (dvc repro)")
    return json.loads(path.read_text())


def main():
    params = load_params()
    text = make_report(params, _read_json("results/metrics.json"), _read_json("results/stats.json"))
    write_text("results/report.md", text + "\n")
    print(f"results/report.md: {len(text.splitlines())} lines")


if __name__ == "__main__":
    run_stage(main)
