"""Pick each run's hyperparameters from a DVC experiment grid evaluated on validation data.

    dvc exp show --json > exps.json
    python -m stages.select --exps exps.json baseline cms            # print the table and the choice
    python -m stages.select --exps exps.json baseline cms --write    # also add runs.<run>_tuned

Not a pipeline stage: run it after a tuning grid (README, "Choosing hyperparameters"). --write copies
the chosen experiment's settings of each run into `runs.<run>_tuned` and a `provenance` line (grid,
scores, seeds), editing params.yaml in place with comments kept.
"""
import argparse
import json

from ruamel.yaml import YAML

from pmnist.cli import run_stage
from pmnist.config import load_params
from pmnist.io import atomic_path
from pmnist.selection import select, experiments


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exps", action="append", required=True, metavar="JSON",
                    help="output of `dvc exp show --json` (repeat to pool grids run in several places)")
    ap.add_argument("runs", nargs="+", help="runs to select for")
    ap.add_argument("--write", action="store_true", help="add runs.<run>_tuned and its provenance to params.yaml")
    args = ap.parse_args()

    params = load_params()
    p = params["protocol"]
    reporting = range(p["seed"], p["seed"] + p["n_seeds"])
    rows = []
    for path in args.exps:
        with open(path) as f:
            rows += experiments(json.load(f))
    choices = [select(rows, run, reporting) for run in args.runs]

    for c in choices:
        print(f"{c['run']}: validation final average accuracy per experiment")
        for name, settings, score in sorted(c["grid"], key=lambda g: g[1].get("lr", 0)):
            print(f"  {name:>24}  lr {settings.get('lr', '?'):<12g} {score:6.2f}%{'  <- best' if name == c['best']['name'] else ''}")
        if c["skipped_on_test"]:
            print(f"  skipped (evaluated on test): {', '.join(c['skipped_on_test'])}")
    if not args.write:
        for c in choices:
            print(f"chosen for {c['run']}: {c['best']['name']} ({c['score']:.2f}% on validation); --write adds runs.{c['run']}_tuned")
        return

    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.indent(mapping=2, sequence=4, offset=2)  # the layout params.yaml is written in
    yaml.width = 4096
    with open("params.yaml") as f:
        doc = yaml.load(f)
    for c in choices:
        best = c["best"]["params"]
        settings = best["runs"][c["run"]]
        lrs = sorted(g[1]["lr"] for g in c["grid"])
        seed, n_seeds = best["protocol"]["seed"], best["protocol"]["n_seeds"]
        doc["runs"][f"{c['run']}_tuned"] = settings
        doc.setdefault("provenance", {})[f"{c['run']}_tuned"] = (
            f"selected by stages/select.py: best of lr grid {lrs} by final average accuracy on the validation split "
            f"({c['score']:.2f}%), tuning seeds {seed}..{seed + n_seeds - 1}, {best['train']['epochs']} epochs per task")
        print(f"runs.{c['run']}_tuned <- {c['best']['name']}: {dict(settings)}")
    with atomic_path("params.yaml") as tmp:
        with open(tmp, "w") as f:
            yaml.dump(doc, f)
        load_params(tmp)  # never write a params.yaml that does not validate


if __name__ == "__main__":
    run_stage(main)
