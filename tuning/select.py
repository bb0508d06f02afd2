"""Pick each run's hyperparameters from a DVC experiment grid evaluated on validation data.

    dvc exp show --json > exps.json
    python -m tuning.select --exps exps.json baseline cms               # print the grid and the choice
    python -m tuning.select --exps exps.json baseline ewc --write       # also results/tuning/grid.csv + the settings
    python -m tuning.select --exps exps.json nested_ssm --write-grid    # only results/tuning/grid.csv

Not a pipeline stage: run it after a tuning grid (README, "Choosing hyperparameters"). A grid varies ONE
setting of runs.<run>: the lr, or one key of method_args / optimizer_args (found from the experiments).
--write sets that setting to the chosen value in place (`runs.<run>.lr`, `runs.ewc.method_args.ewc_lambda`)
with a `provenance` line (setting, grid, score, seeds, epochs), editing params.yaml with comments kept,
and writes every grid point to results/tuning/grid.csv (rows of other runs already there are kept), which
the report renders. --write-grid needs only the experiments' params: the run need not be in params.yaml.
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
from pmnist.selection import changes, experiments, failed, grid_csv, pooled, select, show

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
        run, setting = c["run"], c["setting"]
        if run not in doc["runs"]:
            raise SelectionError(f"run {run!r} is not in params.yaml's runs: --write cannot set runs.{run}.{setting} "
                                 f"(--write-grid writes only {GRID})")
        *parents, key = setting.split(".")
        cfg = doc["runs"][run]
        for p in parents:
            cfg = cfg.setdefault(p, {})
        cfg[key] = chosen["value"]  # the ONE setting the grid varies (select() checks)
        values = ", ".join(show(g["value"]) for g in sorted(c["grid"], key=lambda g: g["value"]))
        doc.setdefault("provenance", {})[run] = (
            f"{setting} {show(chosen['value'])} selected by tuning/select.py: best of the {setting} grid [{values}] "
            f"by final average accuracy on the validation split ({c['score']:.2f}%), tuning seeds "
            f"{chosen['tuning_seeds']}, {chosen['epochs']} epochs per task (results/tuning/grid.csv)")
        print(f"runs.{run}.{setting} <- {show(chosen['value'])} ({c['best']['name']})")
    with atomic_path("params.yaml") as tmp:
        with open(tmp, "w") as f:
            yaml.dump(doc, f)
        load_params(tmp)  # never write a params.yaml that does not validate


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exps", action="append", required=True, metavar="JSON",
                    help="output of `dvc exp show --json` (repeat to pool grids run in several places)")
    ap.add_argument("runs", nargs="+", help="runs to select for")
    ap.add_argument("--write", action="store_true",
                    help="set the grid's setting of runs.<run> in params.yaml to the chosen value and write the grid")
    ap.add_argument("--write-grid", action="store_true", help=f"only write the grid to {GRID}")
    args = ap.parse_args()

    p = load_params()["protocol"]
    reporting = range(p["seed"], p["seed"] + p["n_seeds"])
    rows = pooled([_read_table(path) for path in args.exps])
    choices = [select(rows, run, reporting) for run in args.runs]

    for c in choices:
        print(f"{c['run']}: validation final average accuracy per experiment, grid over runs.{c['run']}.{c['setting']}")
        for g in sorted(c["grid"], key=lambda g: g["value"]):
            print(f"  {g['experiment']:>24}  {c['setting']} {show(g['value']):<10} {g['validation_acc_pct']:6.2f}%  "
                  f"{g['epochs']} epochs, seeds {g['tuning_seeds']}{'  <- best' if g['chosen'] else ''}")
        for why, names in c["skipped"].items():
            print(f"  skipped {len(names)} ({why}): {', '.join(names[:4])}{', ...' if len(names) > 4 else ''}")
    orphans = [r["name"] for r in rows if failed(r) and not any(changes(r, run) for run in (r["params"].get("runs") or {}))]
    if orphans:
        print(f"skipped {len(orphans)} failed experiment(s) with no metrics and the parent's runs params "
              f"(no run to attribute them to): {', '.join(orphans)}")
    if not (args.write or args.write_grid):
        for c in choices:
            print(f"chosen for {c['run']}: {c['best']['name']} ({c['score']:.2f}% on validation); "
                  f"--write sets runs.{c['run']}.{c['setting']} and writes {GRID}")
        return
    old = []
    if GRID.is_file():
        with open(GRID, newline="") as f:
            old = [r if "setting" in r else {**r, "setting": "lr", "value": r["lr"]}  # a grid.csv of lr grids only
                   for r in csv.DictReader(f)]
    if args.write:
        _write_params(choices)
    write_text(GRID, grid_csv(old, choices))
    print(f"{GRID}: grids of {', '.join(c['run'] for c in choices)}")


if __name__ == "__main__":
    run_stage(main)
