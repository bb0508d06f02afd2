"""Stage `table` of literature/dvc.yaml: the published values of literature/params.yaml beside our runs of
each published setting, and its paired comparisons (CMS against its update-matched control) ->
results/table.md and results/table.json (in literature/, the stage's folder).

Run from literature/ (the stage's wdir) with the repository on PYTHONPATH; each setting folder holds its
own params.yaml and the results of its own train and aggregate stages.
"""
import json
from pathlib import Path

from pmnist.cli import run_stage
from pmnist.config import load_params, read_yaml
from pmnist.errors import DataError
from pmnist.io import require_file, write_json, write_text
from pmnist.literature import markdown, paired_rows, table_rows, validate_literature
from pmnist.stats import load_summary


def main():
    # run in literature/ (the stage's wdir): errors name the file from the repository root
    lit = validate_literature(read_yaml("params.yaml", label="literature/params.yaml"))
    published, paired = lit["published"], lit["paired"]
    summaries, settings, per_seed = {}, {}, {}
    for setting in sorted({p["setting"] for p in published.values()} | {p["setting"] for p in paired.values()}):
        settings[setting] = load_params(Path(setting) / "params.yaml")
        path = require_file(Path(setting) / "results" / "summary.json", "run `dvc repro literature/dvc.yaml`")
        try:
            summaries[setting] = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON ({e}); rerun aggregate@{setting}") from None
        if any(p["setting"] == setting for p in paired.values()):
            per_seed[setting] = load_summary(require_file(Path(setting) / "results" / "summary.csv",
                                                          "run `dvc repro literature/dvc.yaml`"))
    rows = table_rows(published, summaries, settings)
    comparisons = paired_rows(paired, per_seed)
    write_json("results/table.json", {"rows": rows, "paired": comparisons})
    write_text("results/table.md", markdown(rows, comparisons))
    for r in rows:
        pub = "none (ours only)" if r["published"] is None else f"{r['published']:.2f}"
        diff = "" if r["difference"] is None else f", difference {r['difference']:+.2f}"
        print(f"{r['row']}: published {pub}, ours {r['ours_mean']:.2f} ± {r['ours_std']} SD ({r['n_seeds']} seeds){diff}")
    for p in comparisons:
        print(f"{p['name']}: {p['run']} - {p['against']} over {p['n_seeds']} seeds: accuracy {p['acc_pct']}, "
              f"forgetting {p['forgetting_pct']}")


if __name__ == "__main__":
    run_stage(main)
