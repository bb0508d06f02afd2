"""Hyperparameter selection from a `dvc exp show --json` table, on validation data and tuning seeds.

A grid is a set of DVC experiments run with `train.eval_split=validation` and a `protocol.seed` whose
seeds do not overlap the reporting seeds. For a run R, each experiment's score is R's final average
accuracy on the seen tasks (`average_accuracy_seen_pct` of results/live/R/metrics.json, written by
the train stage together with `on_validation` and `first_seed`). Selection = argmax of that score.
It refuses a table where R's metric is missing, computed on test, or on reporting seeds.
"""
LIVE_METRICS = "results/live/{run}/metrics.json"
SCORE = "average_accuracy_seen_pct"


class SelectionError(ValueError):
    pass


def experiments(exp_show: list) -> list:
    """[{name, params, metrics}] for every experiment (not the workspace or commit rows)."""
    rows = []
    for commit in exp_show:
        for exp in commit.get("experiments") or []:
            for rev in exp["revs"]:
                data = rev.get("data") or {}
                rows.append({
                    "name": rev.get("name") or exp.get("name") or rev["rev"][:7],
                    "params": (data.get("params") or {}).get("params.yaml", {}).get("data", {}),
                    "metrics": {path: m.get("data") for path, m in (data.get("metrics") or {}).items()},
                })
    return rows


def select(rows: list, run: str, reporting_seeds: range) -> dict:
    """The best experiment for `run`: {"run", "best": row, "score", "grid": [(name, settings, score)]}."""
    path = LIVE_METRICS.format(run=run)
    scored, on_test = [], []
    for row in rows:
        m = row["metrics"].get(path)
        if not m or SCORE not in m:
            continue
        if m.get("on_validation") != 1:
            on_test.append(row["name"])
            continue
        seeds = range(int(m["first_seed"]), int(m["first_seed"]) + int(m["n_seeds"]))
        if set(seeds) & set(reporting_seeds):
            raise SelectionError(f"experiment {row['name']}: run {run!r} was tuned on seeds {seeds.start}..{seeds.stop - 1}, "
                                 f"which overlap the reporting seeds {reporting_seeds.start}..{reporting_seeds.stop - 1}; "
                                 f"tune with -S protocol.seed=1000")
        scored.append((row, float(m[SCORE])))
    if not scored:
        why = (f"its metric was computed on test in {', '.join(on_test)}" if on_test
               else f"no experiment has {path}:{SCORE}")
        raise SelectionError(f"cannot select for run {run!r}: {why}. Run the grid with "
                             f"-S train.eval_split=validation -S protocol.seed=1000 (see README, 'Choosing hyperparameters')")
    best, score = max(scored, key=lambda rs: rs[1])
    grid = [(row["name"], row["params"].get("runs", {}).get(run, {}), s) for row, s in scored]
    return {"run": run, "best": best, "score": score, "grid": grid, "skipped_on_test": on_test}
