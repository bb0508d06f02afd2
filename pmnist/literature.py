"""The literature table: published Permuted-MNIST accuracies beside this project's runs of the same
published settings (literature/, a pipeline of its own; literature/README.md says where each number and
setting was read).

literature/params.yaml has two sections:
* `published` maps a row name to {setting, run, method, acc_pct, pm_pct, pm_kind, source, note}: `setting`
  is a folder of literature/ holding that protocol's params.yaml and results (a whole study of its own:
  tasks, padding, training length), `run` one of its runs. `acc_pct` is the published final average
  accuracy, or null for a row of ours only (no published value: CMS and its controls); `pm_pct` the
  published ± and `pm_kind` what it is: `sd` (standard deviation over runs), `se` (standard error of the
  mean) or `unstated` (the source read does not say).
* `paired` maps a comparison name to {setting, run, against, note}: two runs of one setting compared
  paired by seed (their shared seeds) on final accuracy and average forgetting, the difference's mean
  and 95 % t-interval (results/summary.csv, the aggregate stage's per-seed table).

Ours is the run's final average accuracy over its seeds (results/summary.json), mean ± sample standard
deviation over seeds (SD, not a standard error). Torch-free (numpy and scipy, through pmnist.metrics).
"""
import math

from pmnist.metrics import mean_ci
from pmnist.validate import fail, name, non_negative_float, one_of, section, string, unknown

TARGET_POINTS = 2.0  # the aim: within 2 points of each published value
PM_KINDS = {"sd": "SD", "se": "SE", "unstated": "kind not stated"}
PAIRED_METRICS = ("acc_pct", "forgetting_pct")

ROW_SCHEMA = {
    "setting": name,                    # a folder of literature/ (checked like a run name: no path)
    "run": name,
    "method": string,                   # the published table's row label (or ours, for a row of ours only)
    "acc_pct": (non_negative_float, None),  # published final average accuracy; null: no published value
    "pm_pct": (non_negative_float, None),   # its published +-, when the source gives one
    "pm_kind": (one_of(*PM_KINDS), None),   # what that +- is: sd, se or unstated (required with pm_pct)
    "source": (string, ""),             # paper, table and row (or file and commit)
    "note": (string, ""),               # known protocol differences, read from the code
}

PAIRED_SCHEMA = {
    "setting": name,
    "run": name,
    "against": name,                    # the control: difference = run - against, per shared seed
    "note": (string, ""),
}


def validate_literature(raw) -> dict:
    """literature/params.yaml -> {"published": rows, "paired": comparisons} (validated)."""
    if not isinstance(raw, dict):
        fail("published", "literature/params.yaml must be a mapping with sections published (and paired)")
    for section_name in raw:
        if section_name not in ("published", "paired"):
            unknown("", section_name, ("published", "paired"))
    return {"published": validate_published(raw.get("published")), "paired": validate_paired(raw.get("paired"))}


def validate_published(raw) -> dict:
    if not isinstance(raw, dict) or not raw:
        fail("published", "must be a non-empty mapping of row name -> {setting, run, method, acc_pct, source}")
    rows = {name("published", row): section(f"published.{row}", cfg, ROW_SCHEMA) for row, cfg in raw.items()}
    for row, r in rows.items():
        if (r["pm_pct"] is None) != (r["pm_kind"] is None):
            fail(f"published.{row}.pm_kind", "pm_pct and pm_kind go together: a published +- says what it is "
                                             f"({', '.join(PM_KINDS)})")
        if r["acc_pct"] is None and r["pm_pct"] is not None:
            fail(f"published.{row}.pm_pct", "a row without a published acc_pct has no published +-")
        if r["acc_pct"] is not None and not r["source"]:
            fail(f"published.{row}.source", "a published value needs its source")
    return rows


def validate_paired(raw) -> dict:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        fail("paired", "must be a mapping of comparison name -> {setting, run, against}")
    return {name("paired", k): section(f"paired.{k}", cfg, PAIRED_SCHEMA) for k, cfg in raw.items()}


def describe(params: dict, run_name: str) -> str:
    """One line of protocol for a run of a setting's params (validated by pmnist.config)."""
    p, t, run = params["protocol"], params["train"], params["runs"][run_name]
    hidden = "-".join(map(str, run["model_args"]["hidden_dims"]))  # model_args: the validated model settings
    length = (f"{t['iterations_per_task']} iterations/task" if t["iterations_per_task"]
              else f"{t['epochs']} epoch{'s' * (t['epochs'] > 1)}/task")
    args = lambda d: ", ".join(f"{k} {v}" for k, v in d.items())  # noqa: E731
    opt = f"{run['optimizer']} lr {run['lr']:g}" + (f" ({args(run['optimizer_args'])})" if run["optimizer_args"] else "")
    method = "" if run["method"] == "none" else f"; {run['method']} ({args(run['method_args'])})"
    periods = "" if all(q == 1 for q in run["periods"]) else f"; periods {run['periods']} ({run['accumulate']})"
    first = "task 1 unpermuted" if p["identity_first_task"] else "every task permuted"
    return (f"{p['n_tasks']} tasks, {p['pad_to']}x{p['pad_to']}, {first}; MLP {hidden}; {opt}, batch "
            f"{run['batch_size']}, {length}{periods}{method}")


def _r(x):
    return None if x is None else round(x, 2)


def _pm(mean, std) -> str:
    return f"{mean:.2f}" + (" ± —" if std is None else f" ± {std:.2f}")


def table_rows(published: dict, summaries: dict, settings: dict) -> list:
    """[{row, method, published, published_pm, published_pm_kind, ours_mean, ours_std, ours_forgetting,
    n_seeds, protocol_seeds, difference, within_target, protocol, source, note}]; summaries / settings:
    setting -> summary.json / validated params. A row without a published value has published,
    difference and within_target None."""
    rows = []
    for row, pub in published.items():
        setting, run = pub["setting"], pub["run"]
        if setting not in summaries:
            fail(f"published.{row}.setting", f"{setting!r} has no results; settings: {', '.join(summaries)}")
        runs = summaries[setting]["runs"]
        if run not in runs:
            fail(f"published.{row}.run", f"{run!r} is not a run of {setting}; runs: {', '.join(runs)}")
        acc, forgetting = runs[run]["metrics"]["acc_pct"], runs[run]["metrics"]["forgetting_pct"]
        difference = None if pub["acc_pct"] is None else round(acc["mean"] - pub["acc_pct"], 2)
        rows.append({"row": row, "method": pub["method"], "published": pub["acc_pct"],
                     "published_pm": pub["pm_pct"], "published_pm_kind": pub["pm_kind"],
                     "ours_mean": _r(acc["mean"]), "ours_std": _r(acc["std"]),
                     "ours_forgetting": _r(forgetting["mean"]), "ours_forgetting_std": _r(forgetting["std"]),
                     "n_seeds": runs[run]["n_seeds"], "protocol_seeds": settings[setting]["protocol"]["n_seeds"],
                     "difference": difference,
                     "within_target": None if difference is None else abs(difference) <= TARGET_POINTS,
                     "protocol": describe(settings[setting], run), "source": pub["source"], "note": pub["note"]})
    return rows


def paired_rows(paired: dict, per_seed: dict) -> list:
    """[{name, setting, run, against, n_seeds, <metric>: {difference, ci95}}]; per_seed: setting -> (values,
    seeds, trained) of its results/summary.csv (pmnist.stats.load_summary). Differences over the seeds
    both runs trained."""
    out = []
    for key, cmp in paired.items():
        setting = cmp["setting"]
        if setting not in per_seed:
            fail(f"paired.{key}.setting", f"{setting!r} has no results; settings: {', '.join(per_seed)}")
        values, _, trained = per_seed[setting]
        for field in ("run", "against"):
            if cmp[field] not in values:
                fail(f"paired.{key}.{field}", f"{cmp[field]!r} is not a run of {setting} with results; "
                                              f"runs: {', '.join(values)}")
        a, b = cmp["run"], cmp["against"]
        both = trained[a] & trained[b]
        row = {"name": key, "setting": setting, "run": a, "against": b, "n_seeds": int(both.sum()), "note": cmp["note"]}
        for metric in PAIRED_METRICS:
            mean, _, low, high = mean_ci(values[a][metric][both] - values[b][metric][both])
            ci = None if math.isnan(float(low)) else [round(float(low), 2), round(float(high), 2)]
            row[metric] = {"difference": round(float(mean), 2), "ci95": ci}
        out.append(row)
    return out


def _seeds(r) -> str:
    return str(r["n_seeds"]) + ("" if r["n_seeds"] >= r["protocol_seeds"] else f" (of the protocol's {r['protocol_seeds']})")


def markdown(rows: list, paired: list = ()) -> str:
    def published(r):
        if r["published"] is None:
            return "— (ours only)"
        pm = "" if r["published_pm"] is None else f" ± {r['published_pm']:.2f} ({PM_KINDS[r['published_pm_kind']]})"
        return f"{r['published']:.2f}{pm}"
    lines = ["# Published settings reproduced", "",
             "Generated by `dvc repro literature/dvc.yaml` (stage `table`) from each setting's "
             "results/summary.json and literature/params.yaml; final average accuracy (%) over all tasks after "
             f"the last. Target: within {TARGET_POINTS:g} points.", "",
             "What each ± is: **ours** is the mean ± the sample **standard deviation (SD)** over seeds (the spread "
             "of single runs, not a standard error). A **published** ± is labelled as its source states it: SD "
             "(standard deviation), SE (standard error of the mean) or *kind not stated* when the source read "
             "does not say; a published value without ± had none in its source. Rows marked *ours only* have no "
             "published value (CMS and its controls): no difference is computed. A run trained on fewer seeds "
             "than its protocol says so in the seeds column.", "",
             "| row | published | ours: accuracy | ours: forgetting | seeds | difference | within target | protocol (ours) | source |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        diff = "—" if r["difference"] is None else f"{r['difference']:+.2f}"
        target = "—" if r["within_target"] is None else ("yes" if r["within_target"] else "**no**")
        lines.append(f"| {r['method']} (`{r['row']}`) | {published(r)} | {_pm(r['ours_mean'], r['ours_std'])} | "
                     f"{_pm(r['ours_forgetting'], r['ours_forgetting_std'])} | {_seeds(r)} | {diff} | {target} | "
                     f"{r['protocol']} | {r['source'] or '—'} |")
    if paired:
        lines += ["", "## Paired by seed", "",
                  "Run minus control over the seeds both trained: mean difference in points and its 95 % "
                  "t-interval (forgetting: lower is better).", "",
                  "| comparison | setting | run − control | seeds | final accuracy | forgetting |", "|---|---|---|---|---|---|"]
        ci = lambda m: f"{m['difference']:+.2f}" + ("" if m["ci95"] is None else f" [{m['ci95'][0]:+.2f}, {m['ci95'][1]:+.2f}]")  # noqa: E731
        for p in paired:
            lines.append(f"| `{p['name']}` | {p['setting']} | `{p['run']}` − `{p['against']}` | {p['n_seeds']} | "
                         f"{ci(p['acc_pct'])} | {ci(p['forgetting_pct'])} |")
        notes = [f"- `{p['name']}`: {p['note']}" for p in paired if p["note"]]
        if notes:
            lines += ["", *notes]
    notes = [f"- `{r['row']}`: {r['note']}" for r in rows if r["note"]]
    if notes:
        lines += ["", "Known protocol differences (read from the published code; literature/README.md):", "", *notes]
    return "\n".join(lines) + "\n"
