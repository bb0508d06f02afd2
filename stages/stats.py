"""Stage `stats`: paired comparisons by seed from results/summary.csv -> results/stats.json.

Two families, Holm-corrected separately: the declared `stats.primary` hypotheses, and a secondary family
(the primary pairs' other metrics, every run vs `stats.reference`, `stats.comparisons`, `stats.interactions`).
"""
from pathlib import Path

from pmnist.cli import run_stage
from pmnist.config import load_params
from pmnist.io import require_file, write_json
from pmnist.stats import analyse, load_summary, title

SUMMARY = Path("results/summary.csv")


def main():
    s = load_params()["stats"]
    out = analyse(s, *load_summary(require_file(SUMMARY, "the aggregate stage writes it")))
    write_json("results/stats.json", out)
    for t in out["tests"]:
        if t["family"] == "primary" or (t["p_holm"] is not None and t["p_holm"] < s["alpha"]):
            diff = "n/a" if t["mean_diff"] is None else f"{t['mean_diff']:+.2f}"
            print(f"{t['family']}: {title(t)}, {t['metric']} {diff} (p_holm {t['p_holm']})")
    print("results/stats.json: " + ", ".join(f"{f} family {v['k']} tests" for f, v in out["families"].items()))


if __name__ == "__main__":
    run_stage(main)
