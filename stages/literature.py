"""Stage `table` of literature/dvc.yaml: the published values of literature/params.yaml beside our runs of
each published setting -> results/table.md and results/table.json (in literature/, the stage's folder).

Run from literature/ (the stage's wdir) with the repository on PYTHONPATH; each setting folder holds its
own params.yaml and the results of its own train and aggregate stages.
"""
import json
from pathlib import Path

from pmnist.cli import run_stage
from pmnist.config import load_params, read_yaml
from pmnist.errors import DataError
from pmnist.io import require_file, write_json, write_text
from pmnist.literature import markdown, table_rows, validate_literature


def main():
    # run in literature/ (the stage's wdir): errors name the file from the repository root
    published = validate_literature(read_yaml("params.yaml", label="literature/params.yaml"))
    summaries, settings = {}, {}
    for setting in sorted({p["setting"] for p in published.values()}):
        settings[setting] = load_params(Path(setting) / "params.yaml")
        path = require_file(Path(setting) / "results" / "summary.json", f"run `dvc repro literature/dvc.yaml`")
        try:
            summaries[setting] = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON ({e}); rerun aggregate@{setting}") from None
    rows = table_rows(published, summaries, settings)
    write_json("results/table.json", rows)
    write_text("results/table.md", markdown(rows))
    for r in rows:
        print(f"{r['row']}: published {r['published']:.2f}, ours {r['ours_mean']:.2f} ± {r['ours_std']:.2f} "
              f"({r['n_seeds']} seeds), difference {r['difference']:+.2f}")


if __name__ == "__main__":
    run_stage(main)
