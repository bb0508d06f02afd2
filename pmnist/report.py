"""results/report.md, the study's verdict, generated only from results/summary.json, results/stats.json,
results/tuning/grid.csv (when present) and the params: nothing in it is copied by hand. It opens with the
answer (make_answer, also results/answer.md and the README's first screen), then the summary forest plot,
then the detail, the long tables last (appendices)."""
import math

import numpy as np

from pmnist.errors import DataError
from pmnist.metrics import CHANCE, HEADLINE, MARGIN, METRICS
from pmnist.plots import (SCHEDULE, _key, figure_paths, find_test, forest_rows, has_schedule, is_plain, norm,
                          plain_partner, primary_pairs)
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
    for run in [r for r in runs if r in summary["runs"]]:
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
    prov = params.get("provenance") or {}
    other = _distinguishing(params["runs"])
    rows = []
    for run, cfg in params["runs"].items():
        if run not in summary["runs"]:
            rows.append((f"`{run}`", "no results yet", "", "", "", cfg["model"], cfg.get("method", ""), cfg["optimizer"],
                         f"{cfg['lr']:.3g}", cfg.get("batch_size", ""), "/".join(map(str, cfg.get("periods") or [])),
                         other[run], prov.get(run) or NO_PROVENANCE))
            continue
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
        return "No primary hypotheses are declared (params `stats.primary`).", "No primary hypotheses, no seed count."
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
                "bootstrap 95% CI (check)", "Wilcoxon p (check)", "Cohen's d_z", "note"), rows),
    ]), "\n".join([
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
        return ("No tuning grid: `results/tuning/grid.csv` is written by `python -m tuning.select ... --write` "
                "from a validation-split experiment grid (README, 'Choosing hyperparameters honestly').")
    order = [r for r in params["runs"] if any(g["run"] == r for g in grid)]
    order += [r for r in dict.fromkeys(g["run"] for g in grid) if r not in order]
    rows, notes = [], []
    for run, setting in [(r, st) for r in order for st in sorted({g["setting"] for g in grid if g["run"] == r})]:
        points = sorted((g for g in grid if g["run"] == run and g["setting"] == setting), key=lambda g: g["value"])
        rows += [(f"`{run}`", f"`{setting}`", _grid_value(g["value"]), f"{g['validation_acc_pct']:.2f}",
                  "**chosen**" if g["chosen"] else "", g["epochs"], g["tuning_seeds"]) for g in points]
        chosen = [g["value"] for g in points if g["chosen"]]
        if len(chosen) != 1:
            raise DataError(f"results/tuning/grid.csv: run {run!r} has {len(chosen)} chosen rows of {setting}, expected 1; "
                            f"rewrite it with `python -m tuning.select ... --write`")
        values, v = [g["value"] for g in points], chosen[0]
        where = ("the only grid point" if len(values) == 1
                 else f"at the grid's lower edge: a smaller {setting} may be better" if v == values[0]
                 else f"at the grid's upper edge: a larger {setting} may be better" if v == values[-1]
                 else "interior to the grid")
        study = {r: _grid_parse(_setting(cfg, setting)) for r, cfg in params["runs"].items() if r in (run, f"{run}_tuned")}
        used = [f"`{r}`" for r, x in study.items() if x == v]
        unused = [f"`{r}` ({_grid_value(x)})" for r, x in study.items() if r == run and x != v]
        notes.append(f"- `{run}`: chosen {setting} {_grid_value(v)} is {where} ({_grid_value(values[0])} .. "
                     f"{_grid_value(values[-1])}, {len(values)} points)"
                     + (f"; used by {', '.join(used)}" if used else "")
                     + (f"; the study's run uses another {setting}: {', '.join(unused)}" if unused else "") + ".")
    return "\n".join([
        "Each grid varies one setting of a run (its lr, its CMS periods, or one of its `method_args` / "
        "`optimizer_args`), chosen "
        "by final average accuracy on the **validation** split, on tuning seeds that do not overlap the "
        "reporting seeds (`tuning/select.py`).", "",
        _table(("grid of run", "setting", "value", "validation accuracy (%)", "chosen", "epochs per task",
                "tuning seeds"), rows),
        "", *notes])


def _setting(cfg, setting):
    """runs.<run>.<setting> (dotted, e.g. method_args.ewc_lambda) of a run's params, or None."""
    for key in setting.split("."):
        cfg = cfg.get(key) if isinstance(cfg, dict) else None
    return cfg


def _runs_short(params, summary):
    """One line per run: the three metrics with CIs, seeds, and its distinctive settings."""
    rows = []
    for run in params["runs"]:
        if run not in summary["runs"]:
            rows.append((f"`{run}`", "no results yet", "", "", "", _settings(run, params)))
            continue
        s = summary["runs"][run]
        flag = " †" if s["learned_nothing_seeds"] else ""
        rows.append((f"`{run}`{flag}", *(_mean_ci(s["metrics"][m]) for m in HEADLINE), s["n_seeds"],
                     _settings(run, params) or "every level every step"))
    return _table(("run", "final accuracy [95% CI]", "forgetting [95% CI]", "learning accuracy [95% CI]", "seeds",
                   "settings"), rows)


def _forest_caption(params, summary, stats):
    runs = {r: params["runs"][r] for r in params["runs"] if r in summary["runs"]}
    rows, uncovered = forest_rows(runs, stats)
    derived = [r for r in rows if not r["declared"]]
    return ("Each run against its same-lr control, paired by seed (mean difference, 95% t-interval): the primary "
            "pairs (★), then every declared pair whose two runs share an lr, then any other run against the "
            "baseline at its own lr. Filled: significant after Holm in its family; hollow: not significant"
            + (f"; grey squares: {len(derived)} same-lr pairs not declared in params `stats`, shown, not tested"
               if derived else "")
            + (f". No same-lr control: {', '.join(f'`{r}`' for r in uncovered)}" if uncovered else "") + ".")


def _timescale(result):
    """The timescale section from results/timescale/timescale.json (pmnist/timescale.py)."""
    rows = ["| run | periods | batch | u | kind | forgetting | final acc. | vs the uniform curve at its u (points, 95% CI, paired seeds) |",
            "|---|---|---|---|---|---|---|---|"]
    tests = {t["run"]: t for t in result["tests"]}
    for r in sorted(result["runs"], key=lambda r: -r["u"]):
        t = tests.get(r["run"])
        versus = "" if t is None else t.get("note") or (
            f"{t['difference_pct']:+.2f} [{t['ci95'][0]:+.2f}, {t['ci95'][1]:+.2f}], {t['n_seeds']} seeds"
            + (" — **below the curve**" if t["ci95"][1] < 0 else " — **above the curve**" if t["ci95"][0] > 0 else ""))
        rows.append(f"| `{r['run']}` | {'/'.join(map(str, r['periods']))} | {r['batch_size']} | {r['u']:.4f} | {r['kind']} "
                    f"| {r['forgetting_pct']:.2f} | {r['acc_pct']:.2f} | {versus} |")
    return "\n".join([
        f"Every run at lr {result['lr']:g} that differs from the others only in its schedule (MLP, Adam, no method, "
        "summed chunks). `u`: parameter-weighted update fraction, the parameters' optimizer steps over the batch-128 "
        "baseline's (a level of period p steps 1/p as often; a batch of 384 steps 1/3 as often). Uniform schedules "
        "(every level one period, any batch) trace forgetting against u; each multi-timescale schedule is compared "
        "per seed with that curve interpolated (linearly in log u) at its own u, on the seeds all runs share "
        "(unadjusted 95% t-intervals). Below the curve would mean the multi-timescale structure itself reduces "
        "forgetting beyond what its update count explains.",
        "", "\n".join(rows), "",
        "![Forgetting against the update fraction](timescale/update_fraction.png)"])


def make_report(params, summary, stats, grid=None, timescale=None):
    """The markdown report. params: validated params; summary, stats: results/summary.json, stats.json;
    grid: rows of results/tuning/grid.csv (value, validation_acc_pct as floats, chosen as bool) or None;
    timescale: results/timescale/timescale.json or None.
    Runs of params without results yet are listed as such, not an error."""
    if "tests" not in stats or "families" not in stats:
        raise DataError("results/stats.json: not a stats file of this version; rerun the stats stage")
    runs, alpha = [r for r in params["runs"] if r in summary["runs"]], stats["alpha"]
    known = set(runs)
    stats = {**stats, "tests": [t for t in stats["tests"] if all(r in known for r in
                                                                  ([t["run"], t["control"]] if t["kind"] == "comparison" else [*t["a"], *t["b"]]))]}
    figs = figure_paths(runs, primary_pairs(stats))
    tests = lambda fam, kind: [t for t in stats["tests"] if t["family"] == fam and t["kind"] == kind]  # noqa: E731
    dead = {run for run, s in summary["runs"].items() if s["learned_nothing_seeds"]}
    primary_text, seeds_text = _primary(tests("primary", "comparison"), stats, alpha, dead)
    return "\n".join([
        "# Does a multi-timescale memory (CMS) reduce catastrophic forgetting on Permuted MNIST?",
        "",
        "_Generated by `stages/report.py` from `results/summary.json`, `results/stats.json`, "
        "`results/tuning/grid.csv` and `params.yaml`; do not edit by hand._",
        "",
        "## The answer",
        "",
        make_answer(params, summary, stats, grid),
        "",
        f"![Each run against its same-lr control: paired differences in forgetting and final accuracy]({figs['forest']})",
        "",
        _forest_caption(params, summary, stats),
        "",
        "Contents: [protocol](#protocol) · [runs](#runs) · [primary hypotheses](#the-primary-hypotheses-holm) · "
        "[2×2](#schedule--learning-rate-22-interactions) · [stability vs plasticity](#stability-vs-plasticity) · "
        "[curves](#curves) · [secondary family](#secondary-family) · [how many seeds](#how-many-seeds-and-why) · "
        "[tuning](#tuning) · appendices: [A runs in full](#appendix-a-every-run-in-full) · "
        "[B secondary tests](#appendix-b-every-secondary-test) · [C accuracy matrices](#appendix-c-accuracy-matrices)",
        "",
        "## Protocol",
        "",
        _protocol(params, stats, summary),
        "",
        "## Runs",
        "",
        _runs_short(params, summary),
        "",
        "Mean over seeds, 95% t-interval in brackets, percentage points. `periods`: update period of each model "
        "level, slow -> fast. Every setting and how it was chosen: [appendix A](#appendix-a-every-run-in-full).",
        "",
        "## The primary hypotheses (Holm)",
        "",
        primary_text,
        "",
        *(f"![Paired differences, {run} vs {control}]({path})\n" for (run, control), path in figs["diff"].items()),
        *(["## Timescale or update count?", "", _timescale(timescale), ""] if timescale else []),
        "## Schedule × learning rate (2×2 interactions)",
        "",
        _interactions(tests("secondary", "interaction"), summary, stats, alpha),
        "",
        "## Stability vs plasticity",
        "",
        "Forgetting against learning accuracy, one point per run (95% CIs on both axes). Dotted lines join runs "
        "identical but for their lr, by rising lr (the baseline's lr trade-off among them); each sweep of params "
        "`plots.tradeoff` is joined in its listed order, starting from the baseline at the sweep's own lr. Lower "
        "right = learns each task well and keeps it.",
        "",
        f"![Stability vs plasticity]({figs['stability_plasticity']})",
        "",
        "## Curves",
        "",
        "One panel per group of runs (primary runs, CMS schedules and controls, methods, optimizers, models), each "
        "with the reference run dashed; one colour per run in every figure.",
        "",
        f"![Average accuracy over tasks]({figs['average_accuracy']})",
        "",
        f"![Final forgetting per task]({figs['forgetting']})",
        "",
        "## Secondary family",
        "",
        _secondary_summary([t for t in stats["tests"] if t["family"] == "secondary"], stats, alpha),
        "",
        "## How many seeds, and why",
        "",
        seeds_text,
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
        "## Appendix A: every run in full",
        "",
        _runs(params, summary),
        "",
        "## Appendix B: every secondary test",
        "",
        _secondary([t for t in stats["tests"] if t["family"] == "secondary"], stats, alpha, dead),
        "",
        "## Appendix C: accuracy matrices",
        "",
        "Mean over seeds: " + ", ".join(f"[`{run}`]({path})" for run, path in figs["matrix"].items()) + ".",
    ])


def _secondary_summary(tests, stats, alpha):
    """The secondary family in a few lines: how many tests, how many significant, by metric."""
    if not tests:
        return "No secondary tests (params `stats.reference`, `stats.comparisons`, `stats.interactions`)."
    k = stats["families"].get("secondary", {}).get("k", 0)
    by = []
    for m in dict.fromkeys(t["metric"] for t in tests):
        ts = [t for t in tests if t["metric"] == m]
        by.append(f"{METRICS[m][0]}: {sum(_sig(t, alpha) for t in ts)} of {len(ts)} significant")
    return (f"Exploratory, not the study's hypotheses: the primary pairs' other metrics, every run against the "
            f"reference, the declared `stats.comparisons` and the 2×2 interactions, {k} tests Holm-corrected among "
            f"themselves ({'; '.join(by)}). Every test, with its sentence-level detail, is in "
            f"[appendix B](#appendix-b-every-secondary-test).")


def _grid_parse(v):
    """A grid value: a number, or a period profile (written 3/2/1, or a list) as a tuple of ints."""
    if isinstance(v, (list, tuple)):
        return tuple(int(x) for x in v)
    if isinstance(v, str) and "/" in v:
        return tuple(int(x) for x in v.split("/"))
    return float(v)


def _grid_value(v):
    return "/".join(map(str, v)) if isinstance(v, tuple) else f"{v:.6g}"


def parse_grid(rows, path="results/tuning/grid.csv"):
    """csv.DictReader rows of grid.csv -> typed rows; a malformed file is a DataError naming it."""
    out = []
    for i, row in enumerate(rows, start=2):
        missing = [c for c in GRID_COLUMNS if c not in row or row[c] is None]
        if missing:
            raise DataError(f"{path}: line {i}: missing column(s) {', '.join(missing)}; expected {', '.join(GRID_COLUMNS)}")
        try:
            out.append({**row, "value": _grid_parse(row["value"]), "validation_acc_pct": float(row["validation_acc_pct"]),
                        "chosen": {"true": True, "false": False}[row["chosen"].strip().lower()]})
        except (ValueError, KeyError):
            raise DataError(f"{path}: line {i}: value and validation_acc_pct must be numbers and chosen true/false, "
                            f"got {dict(row)}") from None
    return out


# ---- the answer: the first screen, generated from the numbers ------------------------------------------
ANSWER_BEGIN, ANSWER_END = "<!-- answer:begin -->", "<!-- answer:end -->"
FORGET, ACC = "forgetting_pct", "acc_pct"
REL_TOL = 0.01   # two runs' parameter updates per image "match" within 1 % (integer batch sizes and periods)


def _pts(v):
    return f"{v:+.2f}"


def _iv(t, sign=1):
    """'−2.26 [−2.82, −1.70]' of a stats.json test, sign-flipped for the reverse pair."""
    lo, hi = sorted((sign * t["ci95_low"], sign * t["ci95_high"])) if t["ci95_low"] is not None else (None, None)
    return f"{_pts(sign * t['mean_diff'])}" + ("" if lo is None else f" [{lo:+.2f}, {hi:+.2f}]")


def _sig(t, alpha):
    return t.get("p_holm") is not None and t["p_holm"] < alpha


def _level_params(cfg, params):
    """Parameters per level of an MLP (weights + biases; the last level holds the 10-way head too), or None
    for a model whose levels are not plain linear layers."""
    if cfg["model"] != "mlp" or "hidden_dims" not in cfg["model_args"]:
        return None
    dims = [params["protocol"].get("pad_to", 28) ** 2, *cfg["model_args"]["hidden_dims"]]
    n = [(dims[i] + 1) * dims[i + 1] for i in range(len(dims) - 1)]
    n[-1] += (dims[-1] + 1) * 10
    return n


def _updates_per_image(cfg, params):
    """Parameter-weighted updates per training image: sum_l n_l / (batch * period_l) / sum_l n_l."""
    n = _level_params(cfg, params)
    periods = cfg["periods"] or [1] * len(n or [])
    if n is None or len(n) != len(periods) or not cfg["batch_size"]:
        return None
    return sum(k / (cfg["batch_size"] * p) for k, p in zip(n, periods)) / sum(n)


def _lr_per_step(cfg):
    """Each level's lr averaged per step: lr x multiplier x lr_scale(period) / period."""
    scale = {"none": lambda p: 1.0, "sqrt_period": math.sqrt, "period": float}[cfg["lr_scale"]]
    return [cfg["lr"] * m * scale(p) / p for m, p in zip(cfg["lr_multipliers"], cfg["periods"])]


# What a pair of runs can hold equal: short name -> (long name, value of a run's settings or None).
FACTORS = {
    "lr": ("the learning rate", lambda c, params: c["lr"]),
    "updates per image": ("the parameter updates per training image (parameter-weighted)", _updates_per_image),
    "per-level lr per step": ("each level's lr per step (lr × multiplier / period)", lambda c, params: _lr_per_step(c)),
    "periods": ("the periods used (only which level is slow differs)", lambda c, params: sorted(c["periods"])),
}


def _equal(a, b):
    if a is None or b is None:
        return False
    a, b = np.atleast_1d(a), np.atleast_1d(b)
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=REL_TOL if a.size == 1 else 1e-9, atol=0))


def _both(a, b, params):
    """norm() of runs a and b, a per-level list left empty (bare test configs) filled to the other's length."""
    ca, cb = (norm(params["runs"][r]) for r in (a, b))
    for k, fill in (("periods", 1), ("lr_multipliers", 1.0)):
        if not ca[k]:
            ca[k] = [fill] * len(cb[k])
        if not cb[k]:
            cb[k] = [fill] * len(ca[k])
    return ca, cb


def _held(a, b, params):
    """The FACTORS that runs a and b hold equal (only meaningful factors: the periods' order needs periods
    that differ, updates and lr per step need a schedule or batch that differs)."""
    ca, cb = _both(a, b, params)
    out = []
    for name, (_, f) in FACTORS.items():
        if not _equal(f(ca, params), f(cb, params)):
            continue
        if name == "periods" and ca["periods"] == cb["periods"]:
            continue
        if name != "lr" and (ca["periods"], ca["batch_size"], ca["lr_multipliers"]) == \
                (cb["periods"], cb["batch_size"], cb["lr_multipliers"]):
            continue
        out.append(name)
    return out


def _fmt(v):
    if isinstance(v, list):
        return "/".join(_value(x) for x in v)
    return _value(v)


def _differs(a, b, params, keys=("lr", "batch_size", "periods", "lr_multipliers", "accumulate", "lr_scale",
                                 "optimizer", "method", "model")):
    """'periods 3/2/1 vs 1/1/1, lr 5e-05 vs 2e-05': the settings in which run a differs from run b."""
    ca, cb = _both(a, b, params)
    names = {"batch_size": "batch", "lr_multipliers": "lr multipliers", "lr_scale": "lr scale"}
    return ", ".join(f"{names.get(k, k)} {_fmt(ca[k])} vs {_fmt(cb[k])}" for k in keys if ca[k] != cb[k])


def _settings(run, params, keys=("periods", "lr", "batch_size", "optimizer", "method")):
    """'periods 3/2/1, lr 5e-05': a run's distinctive settings (periods only when not all 1)."""
    c = norm(params["runs"][run])
    parts = []
    for k in keys:
        if k == "periods" and not has_schedule(c):
            continue
        if k == "batch_size" and c[k] == params["train"].get("batch_size"):
            continue
        if k == "method" and c[k] == "none":
            continue
        if k == "optimizer" and c[k] == "adam":
            continue
        parts.append(f"{ {'batch_size': 'batch'}.get(k, k)} {_fmt(c[k])}")
    return ", ".join(parts)


def _pairs(stats, runs, metric):
    """(test, a, b) for every comparison test on metric whose runs are both in runs, in stats.json order."""
    return [(t, t["run"], t["control"]) for t in stats["tests"]
            if t["kind"] == "comparison" and t["metric"] == metric and t["run"] in runs and t["control"] in runs]


def _headline_text(h, c, summary, stats):
    """'forgetting **-2.26 points** (21.18 % vs 23.44 %), 95% CI ..., **-9.6 %** relative (...)' per metric."""
    out = []
    for metric in (FORGET, ACC):
        t, sign = find_test(stats, h, c, metric)
        label = METRICS[metric][0]
        if t is None or t["mean_diff"] is None:
            out.append(f"{label}: not tested")
            continue
        base = summary["runs"][c]["metrics"][metric]["mean"]
        runm = summary["runs"][h]["metrics"][metric]["mean"]
        d = sign * t["mean_diff"]
        text = f"{label} **{d:+.2f} points** ({runm:.2f} % vs {base:.2f} %)"
        if t["ci95_low"] is not None and base:
            lo, hi = sorted((sign * t["ci95_low"], sign * t["ci95_high"]))
            rel = lambda v: 100 * v / base  # noqa: E731
            text += (f", 95% CI {lo:+.2f} to {hi:+.2f}, **{rel(d):+.1f} %** relative to `{c}` "
                     f"({rel(lo):+.1f} to {rel(hi):+.1f} %)")
        out.append(text)
    return out


def _regime(a, b, h, params):
    """What sets run a's regime apart from the headline run h: 'optimizer sgd, lr 0.01' (and the control's lr
    when it differs from a's)."""
    ca, cb, ch = (norm(params["runs"][r]) for r in (a, b, h))
    parts = [f"{k} {_fmt(ca[k])}" for k in ("model", "optimizer", "method", "lr", "batch_size") if ca[k] != ch[k]]
    if ca["lr"] != cb["lr"]:
        parts.append(f"`{b}` at lr {_fmt(cb['lr'])}")
    return ", ".join(parts) or f"as `{h}`"


def make_answer(params, summary, stats, grid=None):
    """The report's first screen (and the README's): what the numbers say, in plain words, generated from
    params, results/summary.json, results/stats.json and the tuning grid. Markdown, no links."""
    runs = {r: params["runs"][r] for r in params["runs"] if r in summary["runs"]}
    alpha = stats["alpha"]
    prim = [t for t in stats["tests"] if t["family"] == "primary" and t["run"] in runs and t["control"] in runs]
    if not prim:
        return ("No primary hypothesis is declared (params `stats.primary`), so there is no headline answer; "
                "every run and test is below.")
    lead = next((t for t in prim if t["metric"] == FORGET), prim[0])
    h, c = lead["run"], lead["control"]
    k = stats["families"]["primary"]["k"]
    t_f, sign = find_test(stats, h, c, FORGET)
    if t_f is None or t_f.get("p_holm") is None:
        yes = "Not tested"
    elif _sig(t_f, alpha):
        yes = "Yes" if sign * t_f["mean_diff"] < 0 else "No: it forgets more"
    else:
        yes = "Not detectably"
    forget, acc = _headline_text(h, c, summary, stats)
    t_a, _ = find_test(stats, h, c, ACC)
    tested = [t for t in (t_f, t_a) if t is not None and t.get("p_holm") is not None]
    sig = [METRICS[t["metric"]][0] for t in tested if _sig(t, alpha)]
    n = t_f["n_pairs"] if t_f else 0
    lines = [f"**Does `{h}` forget less than `{c}`? {yes}.** `{h}` ({_settings(h, params)}) against `{c}` "
             f"({_settings(c, params) or 'every level every step'}), {n} seeds paired: {forget}; {acc}. "
             + (f"Significant after Holm ({' and '.join(sig)}; p_holm {', '.join(_p(t['p_holm']) for t in tested)})"
                if sig else "Neither is significant after Holm") + f", alpha = {alpha:g}.", ""]

    # controls: every declared pair with the headline run on one side (and the primary pairs), same family
    fam = lambda r: _key(runs[r], ("lr", "batch_size", *SCHEDULE))  # noqa: E731
    ctrl = [(t, a, b) for t, a, b in _pairs(stats, runs, FORGET)
            if {a, b} != {h, c} and fam(a) == fam(b) == fam(h) and (h in (a, b) or t["family"] == "primary")]
    if ctrl:
        lines.append("- **Controls** (forgetting, run − control, points, 95% CI; significant = after Holm in its "
                     "family):")
        held_by = {}
        for t, a, b in ctrl:
            held = _held(a, b, params)
            for f in held:
                held_by.setdefault(f, []).append((t, a, b))
            same = f"same {', '.join(held)}; " if held else ""
            lines.append(f"  - `{a}` − `{b}` ({same}{_differs(a, b, params)}): {_iv(t)}, {verdict(t, alpha)}.")
        verdicts = []
        for f, (long, _) in FACTORS.items():
            pairs = held_by.get(f, [])
            wins = [f"`{a}` − `{b}`" for t, a, b in pairs if _sig(t, alpha)]
            if not pairs:
                verdicts.append(f"{long}: no declared control holds it equal")
            elif f == "periods":
                verdicts.append(f"which level is slow **{'matters' if wins else 'makes no detectable difference'}** "
                                f"({len(wins)} of {len(pairs)} such pairs differ)")
            elif wins:
                verdicts.append(f"{long}: **ruled out** as the whole explanation ({len(wins)} of {len(pairs)} pairs "
                                f"holding it equal still differ)")
            else:
                verdicts.append(f"{long}: **not ruled out** (no pair holding it equal differs significantly)")
        lines.append("  - So: " + "; ".join(verdicts) + ".")

    # which level: runs identical but for the order of their periods
    perms = {}
    for r, cfg in runs.items():
        cn = norm(cfg)
        if has_schedule(cn) and len(set(cn["periods"])) > 1:
            perms.setdefault(_key(cn, ("periods",)) + repr(sorted(cn["periods"])), []).append(r)
    level = []
    for members in perms.values():
        if len(members) < 2:
            continue
        ranked = sorted(members, key=lambda r: summary["runs"][r]["metrics"][FORGET]["mean"])
        level.append(" < ".join(f"`{r}` ({_fmt(norm(runs[r])['periods'])}) "
                                f"{_mean_ci(summary['runs'][r]['metrics'][FORGET])}" for r in ranked))
    if level:
        lines.append("- **Which level is slow** (mean forgetting, 95% CI, runs identical but for the order of their "
                     "periods, slow → fast): " + "; ".join(level) + ".")

    # schedules (and batch sizes) at the headline run's lr against the baseline at that lr
    partner = plain_partner(h, runs)
    sweep = list({a: (t, a) for t, a, b in _pairs(stats, runs, FORGET)
                  if partner and b == partner and a not in (h, c) and fam(a) == fam(h)}.values())
    if sweep:
        less = [a for t, a in sweep if _sig(t, alpha) and t["mean_diff"] < 0]
        more = [a for t, a in sweep if _sig(t, alpha) and t["mean_diff"] > 0]
        best = min(sweep, key=lambda x: x[0]["mean_diff"])
        lines.append(f"- **Other schedules and batch sizes at `{h}`'s lr**, against `{partner}`: {len(sweep)} tested; "
                     f"{len(less)} forget significantly less ({', '.join(f'`{a}`' for a in less) or 'none'}), "
                     f"{len(more)} significantly more ({', '.join(f'`{a}`' for a in more) or 'none'}); the "
                     f"largest reduction: `{best[1]}` {_iv(best[0])}.")

    # robustness: held-out seeds, the checks, other regimes
    rob = []
    tuned = sorted({g["tuning_seeds"] for g in grid or [] if g["run"] in (h, c)})
    seeds = summary["runs"][h]["seeds"]
    if tuned:
        rob.append(f"`{h}`'s and `{c}`'s hyperparameters were chosen on the validation split with tuning seeds "
                   f"{', '.join(tuned)}; every number here is on the {params['train']['eval_split']} split with "
                   f"seeds {seeds[0]}..{seeds[-1]}, which tuning never saw")
    agree = [t for t in prim if t.get("p_holm") is not None]
    flips = [t for t in agree if _sig(t, alpha) != (t.get("wilcoxon_p_holm") is not None and t["wilcoxon_p_holm"] < alpha)
             or (t["bootstrap_ci95_low"] is not None and _sig(t, alpha) != (t["bootstrap_ci95_low"] > 0 or t["bootstrap_ci95_high"] < 0))]
    if agree:
        rob.append(f"{len(agree) - len(flips)} of the {len(agree)} primary verdicts are the same under the Wilcoxon "
                   f"signed-rank test (Holm) and the BCa bootstrap interval"
                   + (" (not: " + ", ".join(f"`{t['run']}` − `{t['control']}` {t['metric']}" for t in flips) + ")" if flips else ""))
    done = {frozenset((a, b)) for _, a, b in ctrl} | {frozenset((h, c))}
    by_run = {}
    for t, a, b in _pairs(stats, runs, FORGET):
        ca, cb, ch = norm(runs[a]), norm(runs[b]), norm(runs[h])
        if (frozenset((a, b)) in done or t["family"] == "primary" or not has_schedule(ca) or has_schedule(cb)
                or _key(ca, ("lr", *SCHEDULE)) != _key(cb, ("lr", *SCHEDULE))
                or (_key(ca, ("lr", *SCHEDULE)) == _key(ch, ("lr", *SCHEDULE)) and _equal(ca["lr"], ch["lr"]))):
            continue
        gap = abs(math.log(ca["lr"] / cb["lr"]))  # the control nearest the run's lr (the same lr if declared)
        if a not in by_run or gap < by_run[a][0]:
            by_run[a] = (gap, t, b)
    if by_run:
        rob.append("in other regimes, a schedule against the same run without it: " + "; ".join(
            f"`{a}` − `{b}` ({_regime(a, b, h, params)}) {_iv(t)}, {verdict(t, alpha)}"
            for a, (_, t, b) in by_run.items()))
    if rob:
        lines.append("- **Robustness**: " + "; ".join(rob) + ".")

    # beside the standard methods
    methods = [r for r, cfg in runs.items() if norm(cfg)["method"] != "none" and not has_schedule(norm(cfg))]
    if methods:
        direct, indirect = [], []
        for m in methods:
            tf, sf = find_test(stats, h, m, FORGET)
            ta, sa = find_test(stats, h, m, ACC)
            if tf is not None and tf["mean_diff"] is not None:
                direct.append(f"`{h}` − `{m}` forgetting {_iv(tf, sf)}" + (f", final accuracy {_iv(ta, sa)}" if ta else "")
                              + f" ({tf['n_pairs']} seeds)")
                continue
            tm, sm = find_test(stats, m, c, FORGET)
            if tm is not None and tm["mean_diff"] is not None and tm["ci95_low"] is not None:
                lo, hi = sorted((sm * tm["ci95_low"], sm * tm["ci95_high"]))
                hlo, hhi = sorted((sign * t_f["ci95_low"], sign * t_f["ci95_high"]))
                rel = "less" if hi < hlo else "more" if lo > hhi else "about as much as (intervals overlap)"
                indirect.append((m, _iv(tm, sm), rel))
        if direct:
            lines.append("- **Beside the standard methods** (paired on the seeds both trained, each at its own lr): "
                         + "; ".join(direct) + ".")
        if indirect:
            lines.append(f"- **Beside the standard methods**, each against `{c}` on the seeds both trained (forgetting, "
                         f"points): `{h}` {_iv(t_f, sign)}; " + "; ".join(f"`{m}` {iv}" for m, iv, _ in indirect)
                         + f". `{h}` reduces forgetting " + "; ".join(
                             f"{rel} than `{m}`" if rel in ("less", "more") else f"{rel} `{m}`" for m, _, rel in indirect)
                         + " (not a direct test: the pairs `[" + h + ", <method>]` are not in `stats.comparisons`).")
    pending = [r for r in params["runs"] if r not in summary["runs"]]
    if pending:
        lines.append(f"- **Not in these results yet** (in params.yaml, not trained): {', '.join(f'`{r}`' for r in pending)}.")
    return "\n".join(lines)


def readme_with_answer(readme, answer, report="results/report.md"):
    """README text with the block between ANSWER_BEGIN and ANSWER_END replaced by the generated answer (a
    link to the report after it); the README unchanged when it has no such block."""
    start, end = readme.find(ANSWER_BEGIN), readme.find(ANSWER_END)
    if start < 0 or end < start:
        return readme
    block = f"{ANSWER_BEGIN}\n{answer}\n\nEvery number, test and figure: [{report}]({report}).\n{ANSWER_END}"
    return readme[:start] + block + readme[end + len(ANSWER_END):]
