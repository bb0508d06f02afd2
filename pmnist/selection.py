"""Hyperparameter selection from a `dvc exp show --json` table, on validation data and tuning seeds.

A grid is a set of DVC experiments run with `train.eval_split=validation` and a `protocol.seed` whose seeds
do not overlap the reporting seeds. For a run R, an experiment's score is R's final average accuracy,
`acc_pct` of results/metrics/R.json (the DVC metrics that train@R writes); where it came from (split,
seeds, epochs) is read from the experiment's params. Selection = argmax of the score over the experiments.

It refuses: a table without R's metric; an experiment evaluated on test; one whose tuning seeds overlap the
reporting seeds; an experiment whose R metrics are the parent commit's, untouched (train@R did not run
there, so its params do not describe them); a grid that varies more than ONE setting of runs.R, or repeats
a value. The setting a grid varies is found from the experiments: `lr`, or one key of `method_args` or
`optimizer_args`, named dotted (`method_args.ewc_lambda`). Experiments that failed (no metrics at all)
are skipped, and reported under the runs whose params they changed.
"""
from pmnist.config import seed_count
from pmnist.errors import SelectionError

METRICS_FILE, SCORE = "results/metrics/{run}.json", "acc_pct"
GRID_COLUMNS = ("run", "setting", "value", "validation_acc_pct", "chosen", "epochs", "tuning_seeds")
TUNABLE = ("method_args", "optimizer_args")  # runs.R.<these>.<key> (and runs.R.lr) are what a grid may vary
TUNABLE_KEYS = ("lr", "periods")               # ... and these keys of runs.R itself (periods: CMS's profile)


def _row(rev, name, parent):
    data = rev.get("data") or {}
    return {"name": name or rev["rev"][:7], "rev": rev.get("rev"),
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


def pooled(tables: list) -> list:
    """The experiments() rows of several `dvc exp show --json` tables (grids run in several places or at
    several times), each experiment once: a later table repeats an earlier one's experiments, and a table
    taken while one still ran lacks its metrics, so the copy with the most metrics is kept."""
    best = {}
    for rows in tables:
        for row in rows:
            key = row["rev"] or row["name"]
            if key not in best or _n_metrics(row) > _n_metrics(best[key]):
                best[key] = row
    return list(best.values())


def _n_metrics(row):
    return sum(1 for m in row["metrics"].values() if m)


def _relevant(params, run):
    """What R's metrics depend on: if these differ from the parent's, identical metrics are stale."""
    train = params.get("train") or {}
    return ((params.get("runs") or {}).get(run), params.get("protocol"),
            *(train.get(k) for k in ("eval_split", "epochs", "train_subset", "n_seeds")))


def measurement(row, run):
    """R's score in one experiment with its provenance: {score, split, first_seed, n_seeds, epochs, stale},
    or None when the experiment has no metric for R."""
    p = row["params"]
    protocol, train = p.get("protocol") or {}, p.get("train") or {}
    own = ((p.get("runs") or {}).get(run) or {}).get("n_seeds")
    n_seeds = None if protocol.get("n_seeds") is None else seed_count(protocol["n_seeds"], train.get("n_seeds"), own)
    m = row["metrics"].get(METRICS_FILE.format(run=run))
    if m and SCORE in m:
        parent = (row["parent"] or {}).get("metrics", {}).get(METRICS_FILE.format(run=run))
        stale = m == parent and _relevant(p, run) != _relevant(row["parent"]["params"], run)
        return {"score": float(m[SCORE]), "split": train.get("eval_split"),
                "first_seed": protocol.get("seed"), "n_seeds": n_seeds, "epochs": train.get("epochs"), "stale": stale}
    return None


def failed(row):
    """True when the experiment has no metrics at all (its run failed or diverged before writing them)."""
    return not any(m for path, m in row["metrics"].items() if path.startswith("results/metrics/"))


def changes(row, run):
    """True when the experiment's runs.R differs from its parent commit's."""
    return ((row["params"].get("runs") or {}).get(run)
            != ((row["parent"] or {}).get("params", {}).get("runs") or {}).get(run))


def get_setting(cfg, setting):
    """runs.R.<setting> (dotted) of one run's params, or None."""
    for key in setting.split("."):
        cfg = cfg.get(key) if isinstance(cfg, dict) else None
    return cfg


def show(v):
    """A setting's value as messages and grid.csv write it: numbers in %g, lists (periods) as 3/2/1."""
    if isinstance(v, list):
        return "/".join(show(x) for x in v)
    return format(v, "g") if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def _number(v):
    """Sort key of a grid value: numbers by value, periods ([3, 2, 1] or 3/2/1) by their tuple of numbers."""
    if isinstance(v, list):
        v = show(v)
    try:
        return (0, (float(v),), "")
    except (TypeError, ValueError):
        try:
            return (0, tuple(float(x) for x in str(v).split("/")), "")
        except ValueError:
            return (1, (0.0,), str(v))



def select(rows: list, run: str, reporting_seeds: range) -> dict:
    """The best experiment for `run`: {"run", "setting", "best": row, "score", "grid": [grid.csv rows],
    "skipped": {why: names}}."""
    scored, skipped = [], {"evaluated on test": [], "metrics not recomputed (the parent commit's)": [],
                           "failed: no metrics": []}
    for row in rows:
        m = measurement(row, run)
        if m is None:
            if failed(row) and changes(row, run):
                skipped["failed: no metrics"].append(row["name"])
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
    settings = [(row["params"].get("runs") or {}).get(run) or {} for row, _, _ in scored]
    setting = grid_setting(run, [row["name"] for row, _, _ in scored], settings)
    best = max(range(len(scored)), key=lambda i: scored[i][1]["score"])
    grid = [{"run": run, "setting": setting, "value": get_setting(s, setting),
             "validation_acc_pct": round(m["score"], 2), "chosen": i == best,
             "epochs": m["epochs"], "tuning_seeds": f"{seeds.start}..{seeds.stop - 1}", "experiment": row["name"]}
            for i, ((row, m, seeds), s) in enumerate(zip(scored, settings))]
    return {"run": run, "setting": setting, "best": scored[best][0], "score": scored[best][1]["score"], "grid": grid,
            "skipped": {k: v for k, v in skipped.items() if v}}


def _flat(cfg):
    """One run's params as {dotted key: value}, method_args / optimizer_args opened one level."""
    out = {}
    for key, v in cfg.items():
        if key in TUNABLE and isinstance(v, dict):
            out.update({f"{key}.{k}": x for k, x in v.items()})
        else:
            out[key] = v
    return out


def grid_setting(run, names, settings):
    """The ONE setting of runs.R the grid varies (`lr` or `method_args.K` / `optimizer_args.K`), each value
    once: otherwise grid.csv's setting and value would not say what was chosen. A single point is an lr grid."""
    flat = [_flat(s) for s in settings]
    varied = [k for k in sorted(set().union(*flat)) if any(f.get(k) != flat[0].get(k) for f in flat)]
    for key in varied:
        if not (key in TUNABLE_KEYS or key.split(".")[0] in TUNABLE):
            i = next(i for i, f in enumerate(flat) if f.get(key) != flat[0].get(key))
            raise SelectionError(f"run {run!r}: experiments {names[0]} and {names[i]} differ in runs.{run}.{key} "
                                 f"({flat[0].get(key)!r} vs {flat[i].get(key)!r}), which a grid may not vary "
                                 f"(only lr, periods, method_args.* or optimizer_args.*); select one grid at a time")
    if len(varied) > 1:
        raise SelectionError(f"run {run!r}: the experiments vary {len(varied)} settings "
                             f"({', '.join(f'runs.{run}.{k}' for k in varied)}), a grid varies one; "
                             f"select one grid at a time")
    setting = varied[0] if varied else "lr"
    for i, f in enumerate(flat):
        if f.get(setting) is None:
            raise SelectionError(f"experiment {names[i]}: no runs.{run}.{setting} in its params")
        for j in range(i):
            if flat[j][setting] == f[setting]:
                raise SelectionError(f"run {run!r}: experiments {names[j]} and {names[i]} both have {setting} "
                                     f"{show(f[setting])}; pass each grid point once")
    return setting


def grid_csv(old_rows, choices):
    """results/tuning/grid.csv text: the old file's rows of other runs, then the new grids; sorted by run,
    setting and (numeric) value."""
    new = {(c["run"], c["setting"]) for c in choices}
    rows = [r for r in old_rows if (r["run"], r["setting"]) not in new] + [g for c in choices for g in c["grid"]]
    rows.sort(key=lambda r: (r["run"], r["setting"], _number(r["value"])))
    fmt = lambda k, v: ("true" if v else "false") if k == "chosen" and isinstance(v, bool) else \
        show(v) if isinstance(v, list) else str(v)  # noqa: E731
    lines = [",".join(GRID_COLUMNS)] + [",".join(fmt(k, r[k]) for k in GRID_COLUMNS) for r in rows]
    return "\n".join(lines) + "\n"
