"""Stage `report` of sequence/dvc.yaml (`report_cifar` of sequence/cifar10/dvc.yaml): the runs' accuracy
matrices -> results/summary.json (per run: every metric's mean, std and 95% t-interval, the note's table)
and results/report.md (every run, the note's table, the paired comparisons, the verdict on each claim
of the design note); for cifar_runs under results/cifar10/. Torch-free.

Usage, in sequence/ with the repository on PYTHONPATH:  python -m stages.sequence_report <runs|cifar_runs>
The main study's per-seed table (../results/summary.csv) gives the Permuted-MNIST side of the
optimizer claims (note.claims.<claim>.pmnist_pairs).
"""
import csv
import sys
from pathlib import Path

from pmnist.cli import run_stage
from pmnist.errors import ConfigError
from pmnist.io import write_json, write_text
from pmnist.sequence import RUN_SECTIONS, load_sequence_params
from pmnist.sequence_report import claim_tests, load_section, markdown, per_seed, summaries
from pmnist.stats import to_jsonable

PMNIST_SUMMARY = Path("../results/summary.csv")


def main(section):
    if section not in RUN_SECTIONS:
        raise ConfigError(f"section must be one of {', '.join(RUN_SECTIONS)}, got {section!r}")
    params = load_sequence_params()
    root = RUN_SECTIONS[section]
    runs = params[section]
    data = load_section(runs, root)
    summary = summaries(runs, data)
    tidy = list(csv.DictReader(PMNIST_SUMMARY.open())) if PMNIST_SUMMARY.is_file() else []
    if section == "cifar_runs":   # the claims' cifar pairs are this section's runs
        params = {**params, "stats": {**params["stats"], "comparisons": params["stats"]["cifar_comparisons"]},
                  "note": {**params["note"], "claims": {k: {**c, "pairs": c.get("cifar_pairs") or [], "cifar_pairs": []}
                                                         for k, c in (params["note"].get("claims") or {}).items()}}}
    tests = claim_tests(params, per_seed(data), tidy)
    write_json(f"{root}/summary.json", to_jsonable({"runs": summary, "tests": tests}))
    write_text(f"{root}/report.md", markdown(params, section, summary, tests))
    for name, s in summary.items():
        print(f"{name}: " + ", ".join(f"{m} {s['metrics'][m]['mean']}" for m in ("acc_pct", "forgetting_pct", "retention_pct")))


if __name__ == "__main__":
    run_stage(main, sys.argv[1] if len(sys.argv) == 2 else "runs")
