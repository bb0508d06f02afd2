"""Stage `report`: results/report.md from results/metrics.json, results/stats.json and the params."""
import json

from pmnist.cli import run_stage
from pmnist.config import load_params
from pmnist.io import require_file, write_text
from pmnist.report import make_report


def _read_json(path):
    return json.loads(require_file(path).read_text())


def main():
    params = load_params()
    text = make_report(params, _read_json("results/metrics.json"), _read_json("results/stats.json"))
    write_text("results/report.md", text + "\n")
    print(f"results/report.md: {len(text.splitlines())} lines")


if __name__ == "__main__":
    run_stage(main)
