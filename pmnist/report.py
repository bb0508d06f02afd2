"""results/report.md, the study's verdict, generated only from results/summary.json, results/stats.json,
results/tuning/grid.csv (when present) and the params: nothing in it is copied by hand."""
from pmnist.errors import DataError
from pmnist.metrics import CHANCE, HEADLINE, MARGIN, METRICS
from pmnist.plots import figure_paths, primary_pairs
from pmnist.stats import TARGET_HALF_WIDTH, sentence, verdict

GRID_COLUMNS = ("run", "setting", "value", "validation_acc_pct", "chosen", "epochs", "tuning_seeds")
NO_PROVENANCE = "not recorded (no `provenance` entry in params.yaml)"


def _f(v, fmt=".2f"):
    return "n/a" if v is None else format(v, fmt)


def _p(v):
    return "n/a" if v is None else ("< 0.001" if v < 0.001 else f"{v:.3f}")


def _peq(v, name="p"):
    return f"{name} n/a" if v is None else (f"{name} < 0.001" if v < 0.001 else f"{name} = {v:.3f}")


def _ci(lo, hi):
    return "" if lo is None else f" [{lo:.2f}, {hi:.2f}]"


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def _mean_ci(s):
    """A summary.json metric entry as 'mean [low, high]'."""
    return "n/a" if s["mean"] is None else f"{s['mean']:.2f}{_ci(s['ci95_low'], s['ci95_high'])}"


def _diff(r):
    return f"{_f(r['mean_diff'], '+.2f')}{_ci(r['ci95_low'], r['ci95_high'])}"


def _seeds(runs, summary):
    """The protocol's seeds line, from the seeds each run trained (results/summary.json)."""
    by_seeds = {}
    for run in runs:
        by_seeds.setdefault(tuple(summary["runs"][run]["seeds"]), []).append(run)
    span = lambda s: f"{len(s)} (seed values {s[0]}..{s[-1]})" if len(s) > 1 else f"1 (seed value {s[0]})"  # noqa: E731
    if len(by_seeds) == 1:
        return (f"- **Seeds**: {span(next(iter(by_seeds)))}; every run trains the same seeds on the same task "
                f"sequences, so runs are compared **paired by seed**.")
    common = max(by_seeds, key=lambda s: len(by_seeds[s]))
    others = "; ".join(f"{span(s)} for " + ", ".join(f"`{r}`" for r in members)
                       for s, members in sorted(by_seeds.items(), key=lambda kv: -len(kv[0])) if s != common)
    return (f"- **Seeds**: {others}; {span(common)} for every other run. Seed k has the same task sequence in "
            f"every run, so runs are compared **paired by seed**, on the seeds both trained (the `seeds` columns).")


def _protocol(params, stats, summary):
    p, t = params["protocol"], params["train"]
    models = "; ".join(f"`{name}`: " + ", ".join(f"{k} = {v}" for k, v in cfg.items())
                       for name, cfg in params["models"].items())
    return "\n".join([
        f"- **Tasks**: {p['n_tasks']} permuted-MNIST tasks learned one after another"
        + (" (task 1 unpermuted)" if p["identity_first_task"] else "") + f", {t['epochs']} epoch(s) each, default "
        f"batch {t['batch_size']}, {t['train_subset'] or 'all'} training images; after each task every task is "
        f"evaluated on the **{t['eval_split']}** split.",
        _seeds(params["runs"], summary),
        f"- **Models**: {models}.",
        f"- **Metrics** (percentage points): final accuracy = mean_j R[T-1, j]; forgetting = mean over j < T-1 of "
        f"max_l R[l, j] - R[T-1, j] (Chaudhry et al. 2018); learning accuracy = mean_j R[j, j] (plasticity). "
        f"BWT and FWT are in `results/summary.json`, not tested (BWT is minus forgetting here, up to the max).",
        f"- **Statistics**: paired t-test per comparison, with the paired 95% t-interval of the mean difference "
        f"(the interval that agrees with the test). Holm correction within each family: **primary** = the "
        f"{stats['families'].get('primary', {}).get('k', 0)} declared hypotheses, **secondary** = everything "
        f"else. alpha = {stats['alpha']:g}. A BCa bootstrap interval and the Wilcoxon signed-rank test are "
        f"robustness checks only.",
        "- **Compute**: the runs' wall times are in their logs only (nothing here depends on the clock); "
        "the whole study's time on the accelerator, per run and in all, is measured in "
        "[bench/README.md](../bench/README.md). Numerics: float32 parameters and optimizer state; on CUDA the "
        + ("matmuls run in **TF32** (`train.tf32`; every run's paired effect against float32 is in bench/README.md)"
           if t["tf32"] else "matmuls run in float32 (`train.tf32: false`)")
        + "; Newton-Schulz in each run's `ns_dtype`.",
    ])


def _value(v):
    """A setting, short: floats to 3 significant digits, also inside lists."""
    if isinstance(v, float):
        return f"{v:.3g}"
    return "[" + ", ".join(map(_value, v)) + "]" if isinstance(v, list) else str(v)


def _distinguishing(runs):
    """run -> the settings without their own column (accumulate, lr_scale, lr_multipliers, *_args) whose
    value differs between runs, e.g. m3's alpha; *_args are compared among runs of the same optimizer,
    model or method only, so defaults filled in by the config do not clutter the table."""
    flat = {}
    for run, cfg in runs.items():
        f = {(None, k): cfg[k] for k in ("accumulate", "lr_scale", "lr_multipliers") if k in cfg}
        for group in ("optimizer", "model", "method"):
            f.update({(cfg.get(group), f"{group}_args.{k}"): v for k, v in (cfg.get(f"{group}_args") or {}).items()})
        flat[run] = f
    keys = {key for f in flat.values() for key in f}
    varies = {key for key in keys if len({repr(f[key]) for f in flat.values() if key in f}) > 1}
    return {run: ", ".join(f"{name} = {_value(f[(g, name)])}" for g, name in sorted(varies, key=str) if (g, name) in f)
            for run, f in flat.items()}


def _runs(params, summary):
    missing = [r for r in params["runs"] if r not in summary["runs"]]
    if missing:
        raise DataError(f"results/summary.json: no run(s) {', '.join(missing)}; rerun the aggregate stage")
    prov = params.get("provenance") or {}
    other = _distinguishing(params["runs"])
    rows = []
    for run, cfg in params["runs"].items():
        s = summary["runs"][run]
        flag = " †" if s["learned_nothing_seeds"] else ""
        rows.append((f"`{run}`{flag}", *(_mean_ci(s["metrics"][m]) for m in HEADLINE), s["n_seeds"],
                     cfg["model"], cfg.get("method", ""), cfg["optimizer"], f"{cfg['lr']:.3g}", cfg.get("batch_size", ""),
                     "/".join(map(str, cfg.get("periods") or [])), other[run], prov.get(run) or NO_PROVENANCE))
    header = ("run", "final accuracy [95% CI]", "forgetting [95% CI]", "learning accuracy [95% CI]", "seeds",
              "model", "method", "optimizer", "lr", "batch", "periods", "other settings that differ",
              "how its hyperparameters were chosen")
    bad = {run: s["learned_nothing_seeds"] for run, s in summary["runs"].items()
           if run in params["runs"] and s["learned_nothing_seeds"]}
    lines = [_table(header, rows), "",
             "Mean over seeds, 95% t-interval in brackets. `periods`: update period of each model level, "
             "slow -> fast (1 = every step)."]
    if bad:
        lines += ["", f"† **Learned nothing**: no task's accuracy ever exceeded {100 * (CHANCE + MARGIN):g}% "
                      f"(chance is {100 * CHANCE:g}%) on these seeds, so their numbers measure a dead run, not "
                      f"forgetting: " + "; ".join(f"`{r}` seed(s) {', '.join(map(str, s))}" for r, s in bad.items()) + "."]
    return "\n".join(lines)


def _seeds_verdict(tests):
    wide = [r for r in tests if r["ci95_half_width"] is None or r["ci95_half_width"] > TARGET_HALF_WIDTH]
    if not wide:
        return f"Every primary difference is pinned down to ±{TARGET_HALF_WIDTH:g} point or better."
    return (f"Wider than ±{TARGET_HALF_WIDTH:g} point: " + ", ".join(f"`{r['run']}` vs `{r['control']}`" for r in wide)
            + " (more seeds: the runs' `n_seeds` in params.yaml).")


def _primary(tests, stats, alpha, dead=()):
    if not tests:
        return "No primary hypotheses are declared (params `stats.primary`)."
    k = stats["families"]["primary"]["k"]
    rows = [(_name(r), METRICS[r["metric"]][0], r["n_pairs"], _diff(r),
             _p(r["p_value"]), _p(r["p_holm"]), verdict(r, alpha),
             _ci(r["bootstrap_ci95_low"], r["bootstrap_ci95_high"]).strip() or "n/a", _p(r["wilcoxon_p"]),
             _f(r["cohens_dz"]), _note(r, dead)) for r in tests]
    seeds = [(f"`{r['run']}` vs `{r['control']}`, {METRICS[r['metric']][0]}", r["n_pairs"], _f(r["sd_diff"]),
              f"±{_f(r['ci95_half_width'])}", _f(r["seeds_for_half_width_1"], "d")) for r in tests]
    return "\n".join([
        f"The {len(tests)} declared hypotheses, Holm-corrected among themselves only (k = {k} tests), "
        f"alpha = {alpha:g}. Differences are run minus control, in points, paired by seed.", "",
        *(f"- {sentence(r, alpha, k)}" for r in tests), "",
        _table(("comparison", "metric", "seeds", "difference [95% t-CI]", "p", "p_holm", "verdict",
                "bootstrap 95% CI (check)", "Wilcoxon p (check)", "Cohen's d_z", "note"), rows), "",
        "### How many seeds, and why", "",
        f"The half-width of a difference's 95% t-interval is t_(n-1) · sd / √n, with n the paired seeds and sd "
        f"the standard deviation of the per-seed differences; the last column is the smallest n that would pin "
        f"the difference down to ±{TARGET_HALF_WIDTH:g} point at the observed sd. " + _seeds_verdict(tests), "",
        _table(("comparison", "paired seeds", "sd of differences", "95% CI half-width",
                f"seeds for ±{TARGET_HALF_WIDTH:g} point"), seeds),
    ])


def _interactions(tests, summary, stats, alpha):
    if not tests:
        return "No interactions are declared (params `stats.interactions`)."
    k = stats["families"]["secondary"]["k"]
    out = []
    for name in dict.fromkeys(r["name"] for r in tests):
        group = [r for r in tests if r["name"] == name]
        (a0, a1), (b0, b1) = group[0]["a"], group[0]["b"]
        out += [f"### `{name}`: (`{a0}` − `{a1}`) − (`{b0}` − `{b1}`)", "",
                f"Does the effect of the first run over the second differ between row a and row b? The interaction "
                f"is the per-seed contrast of the two differences, t-tested (secondary family, Holm over {k} tests).", ""]
        for r in group:
            m = r["metric"]
            cell = lambda run: _mean_ci(summary["runs"][run]["metrics"][m])  # noqa: E731
            ea, eb = r["simple_effects"]["a"], r["simple_effects"]["b"]
            out += [f"**{METRICS[m][0]}**", "", _table(("", "first run", "second run", "first − second [95% t-CI]"), [
                (f"a: `{a0}` − `{a1}`", cell(a0), cell(a1), _diff(ea)),
                (f"b: `{b0}` − `{b1}`", cell(b0), cell(b1), _diff(eb)),
                ("interaction a − b", "", "", f"**{_diff(r)}**, {_peq(r['p_value'])}, {_peq(r['p_holm'], 'p_holm')}"),
            ]), "", f"- {sentence(r, alpha, k)}", ""]
    return "\n".join(out).rstrip()


def _name(r):
    """A test's name in a table cell."""
    if r["kind"] == "comparison":
        return f"`{r['run']}` vs `{r['control']}`"
    return f"interaction `{r['name']}`"


def _note(r, dead):
    """The test's own note, plus a warning when one of its runs learned nothing."""
    runs = [r["run"], r["control"]] if r["kind"] == "comparison" else [*r["a"], *r["b"]]
    flags = [f"† `{run}` learned nothing" for run in dict.fromkeys(runs) if run in dead]
    return "; ".join(filter(None, [r["note"], *flags]))


def _secondary(tests, stats, alpha, dead=()):
    if not tests:
        return "No secondary tests (params `stats.reference`, `stats.comparisons`, `stats.interactions`)."
    k = stats["families"].get("secondary", {}).get("k", 0)
    rows = [(_name(r), METRICS[r["metric"]][0], r["n_pairs"], _diff(r), _p(r["p_value"]), _p(r["p_holm"]),
             verdict(r, alpha), _ci(r["bootstrap_ci95_low"], r["bootstrap_ci95_high"]).strip() or "n/a",
             f"{_p(r['wilcoxon_p'])} ({_p(r['wilcoxon_p_holm'])})", _f(r["cohens_dz"]), _note(r, dead))
            for r in tests]
    return "\n".join([
        f"**Secondary (Holm within the secondary family, {k} tests)**: exploratory, not the study's hypotheses. "
        f"Difference = first run minus second (interactions: the contrast of the 2×2 section), in points.", "",
        _table(("comparison", "metric", "seeds", "difference [95% t-CI]", "p", "p_holm", "verdict",
                "bootstrap 95% CI (check)", "Wilcoxon p (p_holm)", "Cohen's d_z", "note"), rows),
    ])


def _tuning(grid, params):
    if grid is None:
        return ("No tuning grid: `results/tuning/grid.csv` is written by `python -m stages.select ... --write` "
                "from a validation-split experiment grid (README, 'Choosing hyperparameters honestly').")
    order = [r for r in params["runs"] if any(g["run"] == r for g in grid)]
    order += [r for r in dict.fromkeys(g["run"] for g in grid) if r not in order]
    rows, notes = [], []
    for run in order:
        points = sorted((g for g in grid if g["run"] == run), key=lambda g: (g["setting"], g["value"]))
        settings = sorted({g["setting"] for g in points})
        if len(settings) != 1:
            raise DataError(f"results/tuning/grid.csv: run {run!r} has grids over {', '.join(settings)}, expected one "
                            f"setting; rewrite it with `python -m stages.select ... --write`")
        setting = settings[0]
        rows += [(f"`{run}`", f"`{setting}`", f"{g['value']:.6g}", f"{g['validation_acc_pct']:.2f}",
                  "**chosen**" if g["chosen"] else "", g["epochs"], g["tuning_seeds"]) for g in points]
        chosen = [g["value"] for g in points if g["chosen"]]
        if len(chosen) != 1:
            raise DataError(f"results/tuning/grid.csv: run {run!r} has {len(chosen)} chosen rows, expected 1; "
                            f"rewrite it with `python -m stages.select ... --write`")
        values, v = [g["value"] for g in points], chosen[0]
        where = ("the only grid point" if len(values) == 1
                 else f"at the grid's lower edge: a smaller {setting} may be better" if v == values[0]
                 else f"at the grid's upper edge: a larger {setting} may be better" if v == values[-1]
                 else "interior to the grid")
        study = {r: _setting(cfg, setting) for r, cfg in params["runs"].items() if r in (run, f"{run}_tuned")}
        used = [f"`{r}`" for r, x in study.items() if x == v]
        unused = [f"`{r}` ({_f(x, '.6g')})" for r, x in study.items() if r == run and x != v]
        notes.append(f"- `{run}`: chosen {setting} {v:.6g} is {where} ({values[0]:.6g} .. {values[-1]:.6g}, "
                     f"{len(values)} points)"
                     + (f"; used by {', '.join(used)}" if used else "")
                     + (f"; the study's run uses another {setting}: {', '.join(unused)}" if unused else "") + ".")
    return "\n".join([
        "Each grid varies one setting of a run (its lr, or one of its `method_args` / `optimizer_args`), chosen "
        "by final average accuracy on the **validation** split, on tuning seeds that do not overlap the "
        "reporting seeds (`stages/select.py`).", "",
        _table(("grid of run", "setting", "value", "validation accuracy (%)", "chosen", "epochs per task",
                "tuning seeds"), rows),
        "", *notes])


def _setting(cfg, setting):
    """runs.<run>.<setting> (dotted, e.g. method_args.ewc_lambda) of a run's params, or None."""
    for key in setting.split("."):
        cfg = cfg.get(key) if isinstance(cfg, dict) else None
    return cfg


def make_report(params, summary, stats, grid=None):
    """The markdown report. params: validated params; summary, stats: results/summary.json, stats.json;
    grid: rows of results/tuning/grid.csv (value, validation_acc_pct as floats, chosen as bool) or None."""
    if "tests" not in stats or "families" not in stats:
        raise DataError("results/stats.json: not a stats file of this version; rerun the stats stage")
    runs, alpha = list(params["runs"]), stats["alpha"]
    figs = figure_paths(runs, primary_pairs(stats))
    tests = lambda fam, kind: [t for t in stats["tests"] if t["family"] == fam and t["kind"] == kind]  # noqa: E731
    dead = {run for run, s in summary["runs"].items() if s["learned_nothing_seeds"]}
    return "\n".join([
        "# Does a multi-timescale memory (CMS) reduce catastrophic forgetting on Permuted MNIST?",
        "",
        "_Generated by `stages/report.py` from `results/summary.json`, `results/stats.json`, "
        "`results/tuning/grid.csv` and `params.yaml`; do not edit by hand._",
        "",
        "## Protocol",
        "",
        _protocol(params, stats, summary),
        "",
        "## Runs",
        "",
        _runs(params, summary),
        "",
        "## Verdict: the primary hypotheses",
        "",
        _primary(tests("primary", "comparison"), stats, alpha, dead),
        "",
        *(f"![Paired differences, {run} vs {control}]({path})\n" for (run, control), path in figs["diff"].items()),
        "## Schedule × learning rate (2×2 interactions)",
        "",
        _interactions(tests("secondary", "interaction"), summary, stats, alpha),
        "",
        "## Stability vs plasticity",
        "",
        "Forgetting against learning accuracy, one point per run (95% CIs on both axes); runs of one sweep "
        "(params `plots.tradeoff`) are joined in their listed order. Lower right = learns each task well and "
        "keeps it.",
        "",
        f"![Stability vs plasticity]({figs['stability_plasticity']})",
        "",
        "## Secondary results",
        "",
        _secondary([t for t in stats["tests"] if t["family"] == "secondary"], stats, alpha, dead),
        "",
        "## Published settings reproduced",
        "",
        "Published Permuted-MNIST numbers (Mammoth's SGD, online EWC, SI and replay; van de Ven & Tolias' "
        "fine-tuning baseline) beside this code's runs of the same protocols are a pipeline of their own, "
        "with its own generated table: [literature/results/table.md](../literature/results/table.md) "
        "(`dvc repro literature/dvc.yaml`).",
        "",
        "## Tuning",
        "",
        _tuning(grid, params),
        "",
        "## Figures",
        "",
        f"![Average accuracy over tasks]({figs['average_accuracy']})",
        "",
        f"![Final forgetting per task]({figs['forgetting']})",
        "",
        "Accuracy matrices (mean over seeds): " + ", ".join(f"[`{run}`]({path})" for run, path in figs["matrix"].items()) + ".",
    ])


def parse_grid(rows, path="results/tuning/grid.csv"):
    """csv.DictReader rows of grid.csv -> typed rows; a malformed file is a DataError naming it."""
    out = []
    for i, row in enumerate(rows, start=2):
        missing = [c for c in GRID_COLUMNS if c not in row or row[c] is None]
        if missing:
            raise DataError(f"{path}: line {i}: missing column(s) {', '.join(missing)}; expected {', '.join(GRID_COLUMNS)}")
        try:
            out.append({**row, "value": float(row["value"]), "validation_acc_pct": float(row["validation_acc_pct"]),
                        "chosen": {"true": True, "false": False}[row["chosen"].strip().lower()]})
        except (ValueError, KeyError):
            raise DataError(f"{path}: line {i}: value and validation_acc_pct must be numbers and chosen true/false, "
                            f"got {dict(row)}") from None
    return out
