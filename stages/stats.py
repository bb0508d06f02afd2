"""Stage `stats`: paired comparisons by seed from results/summary.csv -> results/stats.json.

Every run against `stats.reference`, plus the optional `stats.comparisons` [run, control] pairs.
"""
from pathlib import Path

from pmnist.cli import run_stage
from pmnist.config import load_params
from pmnist.io import require_file, write_json
from pmnist.stats import TESTED, compare, comparison_pairs, load_summary, to_jsonable

SUMMARY = Path("results/summary.csv")


def main():
    s = load_params()["stats"]
    values, seeds = load_summary(require_file(SUMMARY, "the aggregate stage writes it"))
    pairs = comparison_pairs(values, s["reference"], s["comparisons"])
    comparisons = compare(values, pairs, TESTED, s["bootstrap_resamples"], s["seed"])
    write_json("results/stats.json", to_jsonable({
        "reference": s["reference"], "alpha": s["alpha"], "bootstrap_resamples": s["bootstrap_resamples"],
        "seed": s["seed"], "seeds": seeds, "metrics": list(TESTED),
        "holm": "p_holm adjusts all t-test p-values of this file together; wilcoxon_p_holm all Wilcoxon p-values",
        "comparisons": comparisons,
    }))
    for c in comparisons:
        print(f"{c['run']} vs {c['control']}: " + ", ".join(
            f"{m} {r['mean_diff'] if r['mean_diff'] is None else round(r['mean_diff'], 2)} (p_holm {r['p_holm']})"
            for m, r in c["metrics"].items()))


if __name__ == "__main__":
    run_stage(main)
