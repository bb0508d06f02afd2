"""Stage `report`: results/report.md and results/answer.md (the report's opening answer, for the README) from
results/summary.json, results/stats.json, results/tuning/grid.csv and results/timescale/timescale.json (when
present) and the params. Reads
nothing else, so `dvc repro` knows when it is stale.

`python -m stages.report --readme` (not a DVC stage: README.md is no output) copies results/answer.md into
README.md's block between `<!-- answer:begin -->` and `<!-- answer:end -->`."""
import csv
import json
import sys
from pathlib import Path

from pmnist.cli import run_stage
from pmnist.config import load_params
from pmnist.errors import DataError
from pmnist.io import require_file, write_text
from pmnist.report import ANSWER_BEGIN, make_answer, make_report, parse_grid, readme_with_answer

GRID = Path("results/tuning/grid.csv")
ANSWER = Path("results/answer.md")
TIMESCALE = Path("results/timescale/timescale.json")


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
    summary, stats = _read_json("results/summary.json", "aggregate"), _read_json("results/stats.json", "stats")
    timescale = _read_json(TIMESCALE, "timescale") if TIMESCALE.is_file() else None
    text = make_report(params, summary, stats, grid, timescale)
    write_text("results/report.md", text + "\n")
    write_text(ANSWER, make_answer(params, summary, stats, grid) + "\n")
    print(f"results/report.md: {len(text.splitlines())} lines; {ANSWER}")


def update_readme(readme=Path("README.md")):
    text = readme.read_text()
    if ANSWER_BEGIN not in text:
        raise DataError(f"{readme}: no {ANSWER_BEGIN} ... block to fill")
    new = readme_with_answer(text, require_file(ANSWER, "the report stage writes it").read_text().rstrip("\n"))
    if new != text:
        write_text(readme, new)
    print(f"{readme}: answer block {'updated' if new != text else 'already up to date'}")


if __name__ == "__main__":
    run_stage(update_readme if sys.argv[1:] == ["--readme"] else main)
