"""Pick each run's hyperparameters from a DVC experiment grid evaluated on validation data.

    dvc exp show --json > exps.json
    python -m stages.select --exps exps.json baseline cms               # print the grid and the choice
    python -m stages.select --exps exps.json baseline cms --write       # also results/tuning/grid.csv + runs.<run>.lr
    python -m stages.select --exps exps.json nested_ssm --write-grid    # only results/tuning/grid.csv

Not a pipeline stage: run it after a tuning grid (README, "Choosing hyperparameters"). --write sets
each run's lr to the chosen one (`runs.<run>.lr`) with a `provenance` line (grid, score,
seeds, epochs), editing params.yaml in place with comments kept, and writes every grid point to
results/tuning/grid.csv (rows of other runs already there are kept), which the report renders.
"""
import argparse
import csv
import json
from pathlib import Path

from ruamel.yaml import YAML

from pmnist.cli import run_stage
from pmnist.config import load_params
from pmnist.errors import SelectionError
from pmnist.io import atomic_path, write_text
from pmnist.selection import experiments, grid_csv, select

GRID = Path("results/tuning/grid.csv")


def _read_table(path):
    try:
        with open(path) as f:
            return experiments(json.load(f))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise SelectionError(f"{path}: not a `dvc exp show --json` table ({e!r})") from None


def _write_params(choices):
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.indent(mapping=2, sequence=4, offset=2)  # the layout params.yaml is written in
    yaml.width = 4096
    with open("params.yaml") as f:
        doc = yaml.load(f)
    for c in choices:
        chosen = next(g for g in c["grid"] if g["chosen"])
        doc["runs"][c["run"]]["lr"] = chosen["lr"]  # the grid varies the lr only (select() checks)
        doc.setdefault("provenance", {})[c["run"]] = (
            f"selected by stages/select.py: best of lr grid {sorted(g['lr'] for g in c['grid'])} by final average "
            f"accuracy on the validation split ({c['score']:.2f}%), tuning seeds {chosen['tuning_seeds']}, "
            f"{chosen['epochs']} epochs per task (results/tuning/grid.csv)")
        print(f"runs.{c['run']}.lr <- {chosen['lr']:g} ({c['best']['name']})")
    with atomic_path("params.yaml") as tmp:
        with open(tmp, "w") as f:
            yaml.dump(doc, f)
        load_params(tmp)  # never write a params.yaml that does not validate


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exps", action="append", required=True, metavar="JSON",
                    help="output of `dvc exp show --json` (repeat to pool grids run in several places)")
    ap.add_argument("runs", nargs="+", help="runs to select for")
    ap.add_argument("--write", action="store_true", help="set runs.<run>.lr in params.yaml to the chosen lr and write the grid")
    ap.add_argument("--write-grid", action="store_true", help=f"only write the grid to {GRID}")
    args = ap.parse_args()

    p = load_params()["protocol"]
    reporting = range(p["seed"], p["seed"] + p["n_seeds"])
    rows = [row for path in args.exps for row in _read_table(path)]
    choices = [select(rows, run, reporting) for run in args.runs]

    for c in choices:
        print(f"{c['run']}: validation final average accuracy per experiment")
        for g in sorted(c["grid"], key=lambda g: g["lr"]):
            print(f"  {g['experiment']:>24}  lr {g['lr']:<10g} {g['validation_acc_pct']:6.2f}%  "
                  f"{g['epochs']} epochs, seeds {g['tuning_seeds']}{'  <- best' if g['chosen'] else ''}")
        for why, names in c["skipped"].items():
            print(f"  skipped {len(names)} ({why}): {', '.join(names[:4])}{', ...' if len(names) > 4 else ''}")
    if not (args.write or args.write_grid):
        for c in choices:
            print(f"chosen for {c['run']}: {c['best']['name']} ({c['score']:.2f}% on validation); "
                  f"--write sets runs.{c['run']}.lr and writes {GRID}")
        return
    old = []
    if GRID.is_file():
        with open(GRID, newline="") as f:
            old = list(csv.DictReader(f))
    if args.write:
        _write_params(choices)
    write_text(GRID, grid_csv(old, choices))
    print(f"{GRID}: grids of {', '.join(c['run'] for c in choices)}")


if __name__ == "__main__":
    run_stage(main)
