"""Hyperparameter selection from a `dvc exp show --json` table, on validation data and tuning seeds.

A grid is a set of DVC experiments run with `train.eval_split=validation` and a `protocol.seed` whose seeds
do not overlap the reporting seeds. For a run R, an experiment's score is R's final average accuracy,
`acc_pct` of results/metrics/R.json (the DVC metrics that train@R writes); where it came from (split,
seeds, epochs) is read from the experiment's params. Selection = argmax of the score over the experiments.

It refuses: a table without R's metric; an experiment evaluated on test; one whose tuning seeds overlap the
reporting seeds; an experiment whose R metrics are the parent commit's, untouched (train@R did not run
there, so its params do not describe them); a grid that varies anything of R but the lr, or repeats
an lr. The committed grids (results/tuning/grid_part*.json) predate results/metrics: their DVCLive metrics
(results/live/R/metrics.json) carry their own split and seeds, and are read too.
"""
from pmnist.errors import SelectionError

METRICS_FILE, SCORE = "results/metrics/{run}.json", "acc_pct"
# DVCLive metrics of the committed grids: the average accuracy on tasks seen after the last task is
# the final average accuracy, the same number as acc_pct.
LIVE_FILE, LIVE_SCORE = "results/live/{run}/metrics.json", "average_accuracy_seen_pct"
GRID_COLUMNS = ("run", "lr", "validation_acc_pct", "chosen", "epochs", "tuning_seeds")


def _row(rev, name, parent):
    data = rev.get("data") or {}
    return {"name": name or rev["rev"][:7],
            "params": (data.get("params") or {}).get("params.yaml", {}).get("data") or {},
            "metrics": {path: m.get("data") for path, m in (data.get("metrics") or {}).items()},
            "parent": parent}


def experiments(exp_show: list) -> list:
    """[{name, params, metrics, parent}] for every experiment (not the workspace or commit rows);
    parent is the commit row the experiment started from, in the same form."""
    rows = []
    for commit in exp_show:
        parent = _row(commit, commit.get("name"), None)
        for exp in commit.get("experiments") or []:
            for rev in exp["revs"]:
                rows.append(_row(rev, rev.get("name") or exp.get("name"), parent))
    return rows


def _relevant(params, run):
    """What R's metrics depend on: if these differ from the parent's, identical metrics are stale."""
    train = params.get("train") or {}
    return ((params.get("runs") or {}).get(run), params.get("protocol"),
            *(train.get(k) for k in ("eval_split", "epochs", "train_subset")))


def measurement(row, run):
    """R's score in one experiment with its provenance: {score, split, first_seed, n_seeds, epochs, stale},
    or None when the experiment has no metric for R."""
    p = row["params"]
    protocol, epochs = p.get("protocol") or {}, (p.get("train") or {}).get("epochs")
    m = row["metrics"].get(METRICS_FILE.format(run=run))
    if m and SCORE in m:
        parent = (row["parent"] or {}).get("metrics", {}).get(METRICS_FILE.format(run=run))
        stale = m == parent and _relevant(p, run) != _relevant(row["parent"]["params"], run)
        return {"score": float(m[SCORE]), "split": (p.get("train") or {}).get("eval_split"),
                "first_seed": protocol.get("seed"), "n_seeds": protocol.get("n_seeds"), "epochs": epochs, "stale": stale}
    live = row["metrics"].get(LIVE_FILE.format(run=run))
    if live and LIVE_SCORE in live:  # written by the train stage itself, so never stale
        return {"score": float(live[LIVE_SCORE]), "split": "validation" if live.get("on_validation") == 1 else "test",
                "first_seed": live.get("first_seed"), "n_seeds": live.get("n_seeds"), "epochs": epochs, "stale": False}
    return None


def select(rows: list, run: str, reporting_seeds: range) -> dict:
    """The best experiment for `run`: {"run", "best": row, "score", "grid": [grid.csv rows], "skipped": {why: names}}."""
    scored, skipped = [], {"evaluated on test": [], "metrics not recomputed (the parent commit's)": []}
    for row in rows:
        m = measurement(row, run)
        if m is None:
            continue
        if m["split"] != "validation":
            skipped["evaluated on test"].append(row["name"])
            continue
        if m["stale"]:
            skipped["metrics not recomputed (the parent commit's)"].append(row["name"])
            continue
        if m["first_seed"] is None or m["n_seeds"] is None:
            raise SelectionError(f"experiment {row['name']}: no protocol.seed / protocol.n_seeds in its params; "
                                 f"pass the full `dvc exp show --json` table")
        seeds = range(int(m["first_seed"]), int(m["first_seed"]) + int(m["n_seeds"]))
        if set(seeds) & set(reporting_seeds):
            raise SelectionError(f"experiment {row['name']}: run {run!r} was tuned on seeds {seeds.start}..{seeds.stop - 1}, "
                                 f"which overlap the reporting seeds {reporting_seeds.start}..{reporting_seeds.stop - 1}; "
                                 f"tune with -S protocol.seed=1000")
        scored.append((row, m, seeds))
    if not scored:
        why = "; ".join(f"{reason} in {', '.join(names)}" for reason, names in skipped.items() if names) \
            or f"no experiment has {METRICS_FILE.format(run=run)}:{SCORE}"
        raise SelectionError(f"cannot select for run {run!r}: {why}. Run the grid with -S train.eval_split=validation "
                             f"-S protocol.seed=1000, running train@{run} (see README, 'Choosing hyperparameters')")
    settings = [row["params"].get("runs", {}).get(run) or {} for row, _, _ in scored]
    _check_grid(run, [row["name"] for row, _, _ in scored], settings)
    best = max(range(len(scored)), key=lambda i: scored[i][1]["score"])
    grid = [{"run": run, "lr": s["lr"], "validation_acc_pct": round(m["score"], 2), "chosen": i == best,
             "epochs": m["epochs"], "tuning_seeds": f"{seeds.start}..{seeds.stop - 1}", "experiment": row["name"]}
            for i, ((row, m, seeds), s) in enumerate(zip(scored, settings))]
    return {"run": run, "best": scored[best][0], "score": scored[best][1]["score"], "grid": grid,
            "skipped": {k: v for k, v in skipped.items() if v}}


def _check_grid(run, names, settings):
    """Only the lr may vary, each lr once: otherwise the grid's lr column would not say what was chosen."""
    for i, s in enumerate(settings):
        if "lr" not in s:
            raise SelectionError(f"experiment {names[i]}: no runs.{run}.lr in its params")
        for key in sorted((set(s) | set(settings[0])) - {"lr"}):
            if s.get(key) != settings[0].get(key):
                raise SelectionError(f"run {run!r}: experiments {names[0]} and {names[i]} differ in runs.{run}.{key} "
                                     f"({settings[0].get(key)!r} vs {s.get(key)!r}), not only in lr; select one grid at a time")
        for j in range(i):
            if settings[j]["lr"] == s["lr"]:
                raise SelectionError(f"run {run!r}: experiments {names[j]} and {names[i]} both have lr {s['lr']:g}; "
                                     f"pass each grid point once")


def grid_csv(old_rows, choices):
    """results/tuning/grid.csv text: the old file's rows of other runs, then the new grids; per run by lr."""
    new = {c["run"] for c in choices}
    rows = [r for r in old_rows if r["run"] not in new] + [g for c in choices for g in c["grid"]]
    rows.sort(key=lambda r: (r["run"], float(r["lr"])))
    fmt = lambda k, v: ("true" if v else "false") if k == "chosen" and isinstance(v, bool) else str(v)  # noqa: E731
    lines = [",".join(GRID_COLUMNS)] + [",".join(fmt(k, r[k]) for k in GRID_COLUMNS) for r in rows]
    return "\n".join(lines) + "\n"
