"""The sequence pipeline's analysis (torch-free): per-run summaries, the note's table, the paired
comparisons, and the verdict on each claim of the design note "Nested Learning in DHC-SSM".

Per seed, from the accuracy matrix R [T, T] (pmnist/metrics.py's definitions, in points):
acc_pct, forgetting_pct, bwt_pct, fwt_pct, learning_acc_pct, and retention_pct = 100 x the note's
"average retention", the mean of R[T-1, j] over the tasks j < T-1 (pmnist.sequence.note_table).

Comparisons are paired by seed (runs of one sequence share each seed's data order and initial
weights), with pmnist.stats.paired_test (t-interval, t-test, Wilcoxon, bootstrap), Holm-corrected
within one family: every test of stats.comparisons and of the note's claims together.

A claim's verdict, per pair of runs (params note.claims.<claim>.pairs, on the claim's metric, in its
claimed direction):
  supported           the difference has the claimed sign and p_holm < alpha
  not supported       otherwise; "the opposite holds" is added when p_holm < alpha with the other sign
  not testable here   a pair of CIFAR-10 runs (they cannot be run here)
  not run yet         a pair of other runs without results (a Permuted-MNIST run not yet in the root params)
"""
import numpy as np

from pmnist.io import read_npz
from pmnist.metrics import METRICS, headline, load_runs, summarize
from pmnist.sequence import note_table
from pmnist.stats import holm, paired_test

SEQ_METRICS = {**METRICS, "retention_pct": ("average retention (mean accuracy of the earlier tasks after the last)", True)}
SHOWN = ("acc_pct", "forgetting_pct", "learning_acc_pct", "retention_pct")
NOT_HERE = ("CIFAR-10 cannot be downloaded on these machines (no network; no copy reachable), so the note's "
            "sequence CIFAR-10 -> MNIST -> Fashion-MNIST was not run here; `dvc repro sequence/cifar10/dvc.yaml` "
            "runs it (cifar_runs) wherever CIFAR-10 downloads")


def per_seed(data):
    """run -> metric -> per-seed values (points), from load_runs' output."""
    out = {}
    for run, d in data.items():
        R = d["accuracy"]
        values = headline(R, d["untrained_accuracy"])
        values["retention_pct"] = 100 * note_table(R)["average_retention"]
        out[run] = values
    return out


def load_section(runs, results_root):
    """load_runs for every run of a params section (each at its own number of tasks)."""
    data = {}
    for name, run in runs.items():
        data.update(load_runs(f"{results_root}/runs", {name: run["seeds"]}, len(run["tasks"])))
        device = read_npz(f"{results_root}/runs/{name}/seed_0.npz").get("device")   # the train stage records it
        data[name]["device"] = None if device is None else str(device)
    return data


def summaries(runs, data):
    """summary.json content: run -> {sequence, tasks, n_seeds, seeds, metrics: {m: summarize}, note_table}."""
    values = per_seed(data)
    out = {}
    for name, d in data.items():
        table = note_table(d["accuracy"])
        out[name] = {"sequence": runs[name]["sequence"], "tasks": runs[name]["tasks"], "n_seeds": len(d["seed"]),
                     "seeds": [int(s) for s in d["seed"]], "device": d.get("device"),
                     "metrics": {m: summarize(v) for m, v in values[name].items()},
                     "note_table": {"at_end_pct": [summarize(100 * table["at_end"][:, j]) for j in range(table["at_end"].shape[1])],
                                    "after_last_pct": [summarize(100 * table["after_last"][:, j])
                                                       for j in range(table["after_last"].shape[1])]}}
    return out


def _pmnist_values(tidy, run, metric):
    """Per-seed values of a Permuted-MNIST run from the main study's results/summary.csv rows, by seed."""
    rows = [r for r in tidy if r["run"] == run and r["metric"] == metric]
    return {int(r["seed"]): float(r["value"]) for r in rows}


def claim_tests(params, values, pmnist_tidy=None):
    """Every planned test: stats.comparisons (family 'comparisons') and each claim's pairs, as
    [{kind, claim, benchmark, run, control, metric, higher_is_better, ...paired_test}], Holm over the
    tested ones together; pairs without results get tested=False and a reason."""
    s = params["stats"]
    plan = [{"claim": None, "benchmark": "sequence", "run": a, "control": b, "metric": m, "higher_is_better": SEQ_METRICS[m][1]}
            for a, b in s["comparisons"] for m in SHOWN]
    for cid, c in (params.get("note") or {}).get("claims", {}).items():
        for a, b in c.get("pairs") or []:
            plan.append({"claim": cid, "benchmark": "sequence", "run": a, "control": b, "metric": c["metric"],
                         "higher_is_better": c["higher_is_better"]})
        for a, b in c.get("cifar_pairs") or []:
            plan.append({"claim": cid, "benchmark": "cifar", "run": a, "control": b, "metric": c["metric"],
                         "higher_is_better": c["higher_is_better"]})
        for a, b in c.get("pmnist_pairs") or []:
            plan.append({"claim": cid, "benchmark": "pmnist", "run": a, "control": b, "metric": c.get("pmnist_metric", "acc_pct"),
                         "higher_is_better": True})
    out = []
    for t in plan:
        if t["benchmark"] == "pmnist":
            x = _pmnist_values(pmnist_tidy or [], t["run"], t["metric"])
            y = _pmnist_values(pmnist_tidy or [], t["control"], t["metric"])
            common = sorted(set(x) & set(y))
            if len(common) < 2:
                missing = [r for r, v in ((t["run"], x), (t["control"], y)) if not v]
                out.append({**t, "tested": False, "reason": f"Permuted MNIST: no results for {', '.join(missing) or 'two common seeds'} "
                                                            f"in the main study's results/summary.csv"})
                continue
            res = paired_test(np.array([x[k] for k in common]), np.array([y[k] for k in common]),
                              s["bootstrap_resamples"], s["seed"])
        elif t["run"] in values and t["control"] in values:
            res = paired_test(values[t["run"]][t["metric"]], values[t["control"]][t["metric"]], s["bootstrap_resamples"], s["seed"])
        else:
            out.append({**t, "tested": False, "reason": NOT_HERE if t["benchmark"] == "cifar" else
                        f"no results for {', '.join(r for r in (t['run'], t['control']) if r not in values)}"})
            continue
        out.append({**t, "tested": True, **res})
    tested = [r for r in out if r["tested"]]
    for r, p in zip(tested, holm([np.nan if r["p_value"] is None else r["p_value"] for r in tested])):
        r["p_holm"] = None if np.isnan(p) else float(p)
    return out


def pair_verdict(r, alpha):
    if not r["tested"]:
        return "not testable here" if r["benchmark"] == "cifar" else "not run yet"
    p, d = r.get("p_holm"), r["mean_diff"]
    if p is None or d is None:
        return f"not supported (no test: {r.get('note') or 'undefined'})"
    claimed = (d > 0) == r["higher_is_better"] and d != 0
    if p < alpha:
        return "supported" if claimed else "not supported: the opposite holds"
    return "not supported"


# ---- markdown --------------------------------------------------------------------------------------
def _ci(s, digits=2):
    if s["mean"] is None:
        return "–"
    if s["ci95_low"] is None:
        return f"{s['mean']:.{digits}f}"
    return f"{s['mean']:.{digits}f} [{s['ci95_low']:.{digits}f}, {s['ci95_high']:.{digits}f}]"


def _diff(r):
    if not r["tested"] or r["mean_diff"] is None:
        return "–"
    if r["ci95_low"] is None:
        return f"{r['mean_diff']:+.2f}"
    return f"{r['mean_diff']:+.2f} [{r['ci95_low']:+.2f}, {r['ci95_high']:+.2f}]"


def _p(r):
    p = r.get("p_holm")
    return "–" if p is None else ("< 0.001" if p < 0.001 else f"{p:.2g}")


def _describe(run):
    opt = run["optimizer"] + (f" ({', '.join(f'{k} {v}' for k, v in run['optimizer_args'].items())})" if run["optimizer_args"] else "")
    method = "" if run["method"] == "none" else f"; {run['method']} ({', '.join(f'{k} {v}' for k, v in run['method_args'].items())})"
    return f"{run['model']}; {opt}, lr {run['lr']:g}, periods {run['periods']}{method}"


def markdown(params, section, summary, tests):
    runs, alpha = params[section], params["stats"]["alpha"]
    t, d = params["train"], params["data"]
    length = f"{t['iterations_per_task']} iterations" if t["iterations_per_task"] else f"{t['epochs']} epoch(s)"
    shape = {"rgb32": "32x32x3 as the 5-Datasets benchmark (Saha et al. 2021): MNIST-like images zero-padded by 2, "
                      "grey replicated to 3 channels; CIFAR-10 unchanged",
             "grey32": "32x32x1 (declared alternative): MNIST-like images zero-padded by 2; CIFAR-10 converted to grey"}[d["shape"]]
    devices = sorted({s["device"] for s in summary.values() if s.get("device")})
    L = ["# Dataset sequences: the design note's claims tested", "",
         f"Generated by `dvc repro sequence/dvc.yaml` from results/runs/ and sequence/params.yaml ({section}). "
         "A task is a dataset; each run learns its sequence's tasks in order and is evaluated on every task's "
         f"{'held-out validation split' if t['eval_split'] == 'validation' else 'test set'} after each task.", "",
         f"* Inputs: {shape}; pixels in [0, 1], no normalisation.",
         f"* Head: {'one shared 10-way head (domain-incremental)' if d['heads'] == 'shared' else 'one 10-way head per task (task-incremental)'}.",
         f"* Training: {length} per task, batch {t['batch_size']} (unless a run sets its own)"
         + (f", the first {t['train_subset']} training images of each dataset" if t["train_subset"] else "") + ".",
         f"* Trained on: {', '.join(devices) if devices else 'device not recorded'}.",
         *(f"* Hyperparameters ({key}): {text}" for key, text in (params.get("provenance") or {}).items()),
         "* Intervals: mean [95% t-interval] over seeds; differences are paired by seed, Holm-corrected over "
         f"every test of this report together (alpha {alpha:g}).", "",
         "## Every run", "",
         "| run | sequence | seeds | final accuracy | forgetting | learning accuracy | average retention | setting |",
         "|---|---|---|---|---|---|---|---|"]
    for name, s in summary.items():
        m = s["metrics"]
        L.append(f"| `{name}` | {' → '.join(s['tasks'])} | {s['n_seeds']} | {_ci(m['acc_pct'])} | {_ci(m['forgetting_pct'])} | "
                 f"{_ci(m['learning_acc_pct'])} | {_ci(m['retention_pct'])} | {_describe(runs[name])} |")
    L += ["", "## The note's table", "",
          "Each task's accuracy (%) at the end of its own training and after the last task; average retention = "
          "mean accuracy of the earlier tasks after the last (the note's definition, by its numbers).", ""]
    for seq in dict.fromkeys(s["sequence"] for s in summary.values()):
        members = [n for n, s in summary.items() if s["sequence"] == seq]
        tasks = summary[members[0]]["tasks"]
        L += [f"**{seq}**: {' → '.join(tasks)}", "",
              "| run | " + " | ".join(f"task {j + 1} ({ds}) at its end" for j, ds in enumerate(tasks)) + " | "
              + " | ".join(f"task {j + 1} after the last" for j in range(len(tasks) - 1)) + " | average retention |",
              "|---|" + "---|" * (2 * len(tasks))]
        for n in members:
            nt = summary[n]["note_table"]
            L.append(f"| `{n}` | " + " | ".join(_ci(x, 1) for x in nt["at_end_pct"]) + " | "
                     + " | ".join(_ci(x, 1) for x in nt["after_last_pct"][:-1]) + f" | {_ci(summary[n]['metrics']['retention_pct'], 1)} |")
        L.append("")
    comps = [r for r in tests if r["claim"] is None]
    if comps:
        L += ["## Paired comparisons", "", "| run vs control | metric | difference [95% CI] | p (Holm) | verdict |", "|---|---|---|---|---|"]
        for r in comps:
            v = "–" if not r["tested"] else ("significant" if r.get("p_holm") is not None and r["p_holm"] < alpha else "not significant")
            L.append(f"| `{r['run']}` vs `{r['control']}` | {SEQ_METRICS[r['metric']][0]} | {_diff(r)} | {_p(r)} | {v} |")
        L.append("")
    L += ["## The note's claims", "",
          "Each claim of \"Nested Learning in DHC-SSM\" beside our result on the benchmark named. Verdicts: "
          "*supported* (the claimed direction, p_holm < alpha), *not supported* (otherwise; *the opposite holds* "
          "when significant the other way), *not testable here* (no results can be had here), *not run yet* "
          "(no results yet). Permuted-MNIST rows are the main study's runs, read from ../results/summary.csv.", ""]
    for cid, c in (params.get("note") or {}).get("claims", {}).items():
        L += [f"### {c['claim']}", "", f"The note's numbers: {c['note_numbers']}.", ""]
        if c.get("comment"):
            L += [c["comment"], ""]
        L += ["| benchmark | run vs control | metric | difference [95% CI] | p (Holm) | verdict |", "|---|---|---|---|---|---|"]
        bench = {"sequence": "our sequence", "cifar": "the note's sequence", "pmnist": "Permuted MNIST"}
        for r in (r for r in tests if r["claim"] == cid):
            label = "the note's sequence" if r["benchmark"] == "cifar" else (
                bench[r["benchmark"]] if r["benchmark"] == "pmnist" or r["run"] not in summary
                else " → ".join(summary[r["run"]]["tasks"]))
            why = "" if r["tested"] else f" ({r['reason']})"
            L.append(f"| {label} | `{r['run']}` vs `{r['control']}` | {SEQ_METRICS[r['metric']][0]} | {_diff(r)} | {_p(r)} | "
                     f"**{pair_verdict(r, alpha)}**{why} |")
        L.append("")
    if section == "runs":
        L += ["## Not run here", "", f"{NOT_HERE}. Its runs are `cifar_runs` in sequence/params.yaml; their report is "
              "results/cifar10/report.md, written by that pipeline.", ""]
    return "\n".join(L)

