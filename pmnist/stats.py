"""Paired comparisons of runs by seed, in two declared families, Holm-corrected within each.

- primary: the hypotheses the study was run for (`stats.primary`: run, control, metric).
- secondary: everything else worth a look, on every tested metric: the primary pairs' other metrics,
  every run vs `stats.reference`, the `stats.comparisons` pairs and the 2x2 `stats.interactions`.
A test appears in one family only (the primary one if declared there).

Each test: the paired t-test and THE interval beside it, the paired t-interval mean(d) +- t_{n-1} sd/sqrt(n),
so the interval and the test always agree; Wilcoxon signed-rank and a BCa bootstrap interval are extra,
labelled robustness checks. Inputs are plain arrays: values[run][metric] = per-seed values, index k =
the same seed in every run."""
import math
import warnings

import numpy as np
import pandas as pd
from scipy import stats as st

from pmnist.errors import ConfigError, DataError
from pmnist.metrics import HEADLINE, METRICS

TESTED = HEADLINE
CONFIDENCE = 0.95
TARGET_HALF_WIDTH = 1.0  # points: how precisely we want each primary difference pinned down
# Paired differences are rounded to this many decimals (of a point) before any statistic. Why: the metrics
# are means of per-task accuracies (counts / test images), so two seeds' differences that are equal in
# exact arithmetic can differ by ~1e-14 after floating point, and which of them do depends on the machine
# and library versions. Scipy's Wilcoxon then sees no tie (exact p) or a tie (normal approximation): for
# cms_p631 vs baseline on learning accuracy 1.9e-06 on one machine, 8.8e-05 on another. Distinct values of
# these metrics differ by at least 100 / (tasks x test images) points (1e-3 here), far above 1e-9.
DIFF_DECIMALS = 9


def holm(p):
    """Holm-Bonferroni step-down adjustment. With the m defined p-values sorted ascending,
    p_adj_(k) = max_{i <= k} min(1, (m - i + 1) * p_(i)) (1-based). NaN stays NaN and is not counted in m."""
    p = np.asarray(p, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    defined = np.flatnonzero(~np.isnan(p))
    order = defined[np.argsort(p[defined], kind="stable")]
    m = len(order)
    out[order] = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    return out


def t_half_width(sd, n, confidence=CONFIDENCE):
    """Half-width of the t-interval of a mean: t_{n-1, (1+c)/2} * sd / sqrt(n)."""
    return float(st.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n))


def seeds_needed(sd, target=TARGET_HALF_WIDTH, confidence=CONFIDENCE):
    """Smallest n >= 2 with t_{n-1} * sd / sqrt(n) <= target, for differences of standard deviation sd."""
    # t_{n-1} > z, so no n below (z sd / target)^2 can do: start there and step up.
    z = st.norm.ppf(0.5 + confidence / 2)
    n = max(2, math.ceil((z * sd / target) ** 2))
    while t_half_width(sd, n, confidence) > target:
        n += 1
    return n


def _bootstrap_ci(d, n_resamples, seed):
    """95% CI of mean(d): BCa bootstrap, percentile when BCa is undefined (tiny or odd samples)."""
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DegenerateDataWarning: handled by the fallback below
            ci = st.bootstrap((d,), np.mean, n_resamples=n_resamples, confidence_level=CONFIDENCE,
                              method=method, rng=np.random.default_rng(seed)).confidence_interval
        if np.isfinite(ci.low) and np.isfinite(ci.high):
            return float(ci.low), float(ci.high), f"{method} bootstrap"
    return None, None, None


def paired_test(x, y, n_resamples=10000, seed=0):
    """Compare x with its control y, paired by index; d = x - y over pairs where both are defined.
    - paired t-test: t = mean(d) / (sd(d) / sqrt(n)), df = n - 1, two-sided
    - ci95: the t-interval mean(d) +- t_{n-1} sd(d) / sqrt(n), consistent with the t-test's p
    - Cohen's d_z = mean(d) / sd(d), sd with ddof = 1
    - checks: Wilcoxon signed-rank on d (zero differences dropped), BCa bootstrap CI of mean(d)
    d is rounded to DIFF_DECIMALS decimals first, so floating-point noise makes no ties and breaks none.
    Undefined values are None, and "note" says why (1 seed, zero variance, NaN metrics)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired values must be two 1-D arrays of equal length, got {x.shape} and {y.shape}")
    both = ~(np.isnan(x) | np.isnan(y))
    d = np.round(x[both] - y[both], DIFF_DECIMALS)   # ties equal in exact arithmetic compare equal (above)
    n = len(d)
    r = dict(n_pairs=n, mean_diff=None, sd_diff=None, ci95_low=None, ci95_high=None, ci95_half_width=None,
             t=None, df=None, p_value=None, cohens_dz=None, wilcoxon_w=None, wilcoxon_p=None,
             bootstrap_ci95_low=None, bootstrap_ci95_high=None, bootstrap_method=None)
    notes = [f"{(~both).sum()} seed(s) dropped: metric is NaN"] if not both.all() else []
    if n == 0:
        return {**r, "note": "; ".join(notes + ["undefined: no seed has both values"])}
    r["mean_diff"] = float(d.mean())
    if n < 2:
        return {**r, "note": "; ".join(notes + ["undefined: tests need at least 2 paired seeds, got 1"])}
    sd = float(d.std(ddof=1))
    half = t_half_width(sd, n)
    r.update(sd_diff=sd, df=n - 1, ci95_low=r["mean_diff"] - half, ci95_high=r["mean_diff"] + half,
             ci95_half_width=half)
    if sd == 0:  # t and d_z divide by sd(d) = 0
        if d[0] == 0:
            notes.append("undefined: all paired differences are zero")
        else:
            notes.append(f"t-test and d_z undefined: every paired difference is {d[0]:.4g} (zero variance)")
    else:
        r["t"] = r["mean_diff"] / (sd / math.sqrt(n))
        r["p_value"] = float(2 * st.t.sf(abs(r["t"]), n - 1))
        r["cohens_dz"] = r["mean_diff"] / sd
        r["bootstrap_ci95_low"], r["bootstrap_ci95_high"], r["bootstrap_method"] = _bootstrap_ci(d, n_resamples, seed)
    if (d != 0).any():
        w = st.wilcoxon(d)
        r["wilcoxon_w"], r["wilcoxon_p"] = float(w.statistic), float(w.pvalue)
    return {**r, "note": "; ".join(notes) or None}


# ---- the families ----------------------------------------------------------------------------------
def plan(s, runs):
    """The tests declared by params `stats` (s), in report order: [{family, kind, ...}].
    kind "comparison": run, control, metric; kind "interaction": name, a, b, metric, testing
    (a0 - a1) - (b0 - b1). Runs must be in `runs` (those of results/summary.csv)."""
    for i, p in enumerate(s["primary"]):
        if p["metric"] not in TESTED:
            raise ConfigError(f"params.yaml: stats.primary[{i}].metric: {p['metric']!r} is not tested; "
                              f"use one of {', '.join(TESTED)}")
    tests = [{"family": "primary", "kind": "comparison", "run": p["run"], "control": p["control"],
              "metric": p["metric"]} for p in s["primary"]]
    seen = {(frozenset((t["run"], t["control"])), t["metric"]) for t in tests}
    pairs = [(p["run"], p["control"]) for p in s["primary"]]  # their other metrics, first
    if s.get("reference"):
        pairs += [(r, s["reference"]) for r in runs if r != s["reference"]]
    pairs += [tuple(p) for p in s.get("comparisons") or []]
    for run, control in pairs:
        for m in TESTED:
            key = (frozenset((run, control)), m)
            if key not in seen:  # a test belongs to one family only; [a, b] and [b, a] are one test
                seen.add(key)
                tests.append({"family": "secondary", "kind": "comparison", "run": run, "control": control, "metric": m})
    tests += [{"family": "secondary", "kind": "interaction", "name": i["name"], "a": list(i["a"]), "b": list(i["b"]),
               "metric": m} for i in s.get("interactions") or [] for m in TESTED]
    for t in tests:
        for name in _runs_of(t):
            if name not in runs:
                raise DataError(f"results/summary.csv: no run {name!r} (named in params stats); "
                                f"rerun the aggregate stage (dvc repro aggregate)")
    return tests


def _runs_of(t):
    return [t["run"], t["control"]] if t["kind"] == "comparison" else [*t["a"], *t["b"]]


def _interval(d):
    """mean and t-interval of per-seed values d (NaN dropped), JSON-ready."""
    d = d[~np.isnan(d)]
    if len(d) < 2:
        return {"mean_diff": float(d.mean()) if len(d) else None, "ci95_low": None, "ci95_high": None}
    half = t_half_width(float(d.std(ddof=1)), len(d))
    return {"mean_diff": float(d.mean()), "ci95_low": float(d.mean() - half), "ci95_high": float(d.mean() + half)}


def run_tests(values, tests, n_resamples=10000, seed=0, trained=None):
    """paired_test for every planned test, then Holm within each family (t-test p -> p_holm, Wilcoxon p
    -> wilcoxon_p_holm). trained: run -> bool per seed (None: every run trained every seed); a test uses
    the seeds all its runs trained, so only a NaN metric of a trained seed counts as dropped.
    Returns (results, families {name: {k, k_wilcoxon}})."""
    out = []
    for t in tests:
        common = np.logical_and.reduce([trained[r] for r in _runs_of(t)]) if trained else slice(None)
        v = lambda run: values[run][t["metric"]][common]  # noqa: E731
        if t["kind"] == "comparison":
            res = paired_test(v(t["run"]), v(t["control"]), n_resamples, seed)
        else:
            (a0, a1), (b0, b1) = t["a"], t["b"]
            res = paired_test(v(a0) - v(a1), v(b0) - v(b1), n_resamples, seed)
            res["simple_effects"] = {"a": _interval(v(a0) - v(a1)), "b": _interval(v(b0) - v(b1))}
        if t["family"] == "primary":
            res["seeds_for_half_width_1"] = None if res["sd_diff"] is None else seeds_needed(res["sd_diff"])
        out.append({**t, **res})
    families = {}
    for family in dict.fromkeys(t["family"] for t in out):
        members = [r for r in out if r["family"] == family]
        for raw, adj in (("p_value", "p_holm"), ("wilcoxon_p", "wilcoxon_p_holm")):
            for r, p in zip(members, holm([np.nan if r[raw] is None else r[raw] for r in members])):
                r[adj] = None if np.isnan(p) else float(p)
        families[family] = {"k": sum(r["p_value"] is not None for r in members),
                            "k_wilcoxon": sum(r["wilcoxon_p"] is not None for r in members)}
    return out, families


FAMILIES = {
    "primary": "the declared hypotheses (params stats.primary); Holm within this family only",
    "secondary": "the primary pairs' other metrics, every run vs stats.reference, stats.comparisons and "
                 "stats.interactions, on every tested metric; Holm within this family only",
}


def analyse(s, values, seeds, trained=None):
    """The content of results/stats.json, from params `stats` (s) and load_summary's (values, seeds, trained)."""
    tests, families = run_tests(values, plan(s, list(values)), s["bootstrap_resamples"], s["seed"], trained)
    return to_jsonable({
        "alpha": s["alpha"], "confidence": CONFIDENCE, "seeds": seeds, "tested_metrics": list(TESTED),
        "interval": "ci95_*: paired t-interval mean(d) +- t_{n-1} sd(d) / sqrt(n), consistent with p_value; "
                    f"seeds_for_half_width_1: seeds needed for a half-width <= {TARGET_HALF_WIDTH:g} point "
                    f"at the observed sd of the differences (primary tests)",
        "checks": f"bootstrap_ci95_*: BCa bootstrap ({s['bootstrap_resamples']} resamples, seed {s['seed']}); "
                  "wilcoxon_*: Wilcoxon signed-rank, Holm within the same family",
        "families": {name: {**families[name], "what": FAMILIES[name]} for name in families},
        "tests": tests,
    })


# ---- words -----------------------------------------------------------------------------------------
def _p(p):
    return "< 0.001" if p < 0.001 else f"= {p:.2g}"


def title(r):
    """`cms` vs `baseline`, or the interaction's contrast."""
    if r["kind"] == "comparison":
        return f"{r['run']} vs {r['control']}"
    (a0, a1), (b0, b1) = r["a"], r["b"]
    return f"interaction {r['name']}: ({a0} - {a1}) - ({b0} - {b1})"


def verdict(r, alpha):
    """Short verdict for a table cell; never "not significant" alone beside a CI that excludes zero."""
    if r.get("p_holm") is None:
        return "not tested"
    if r["p_holm"] < alpha:
        return "significant"
    excludes = r["ci95_low"] > 0 or r["ci95_high"] < 0
    return "not significant after Holm; unadjusted CI excludes 0" if excludes else "not significant"


def sentence(r, alpha, k):
    """What the data support, in one plain sentence: the t-test Holm-adjusted over the k tests of r's family."""
    label, higher_better = METRICS[r["metric"]]
    what, diff, p = title(r), r["mean_diff"], r.get("p_holm")
    if p is None:
        return f"Not tested: {label} of {what} ({r.get('note') or 'undefined'})."
    ci = f"95% CI {r['ci95_low']:+.2f} to {r['ci95_high']:+.2f}"
    holm_ = f"p = {r['p_value']:.2g} unadjusted, p_holm {_p(p)} over the {k} {r['family']} tests"
    if p >= alpha:
        if r["ci95_low"] > 0 or r["ci95_high"] < 0:
            return (f"{what}, {label}: {diff:+.2f} points ({ci}); not significant after Holm correction over "
                    f"the {k} {r['family']} tests (p_holm {_p(p)}), though the unadjusted 95% CI excludes zero.")
        return f"{what}, {label}: no significant difference at alpha = {alpha:g}: {diff:+.2f} points ({ci}; {holm_})."
    if r["kind"] == "interaction":
        return f"{what}, {label}: the two differences differ by {diff:+.2f} points ({ci}; {holm_})."
    if r["metric"] == "forgetting_pct":
        verb = "forgets less than" if diff < 0 else "forgets more than"
        return f"{r['run']} {verb} {r['control']}: {diff:+.2f} points of {label} ({ci}; {holm_})."
    better = (diff > 0) == higher_better
    return (f"{r['run']} has {'higher' if diff > 0 else 'lower'} {label} than {r['control']} "
            f"({'better' if better else 'worse'}): {diff:+.2f} points ({ci}; {holm_}).")


# ---- input and output ------------------------------------------------------------------------------
def load_summary(path):
    """results/summary.csv (run, seed, metric, value) -> (values[run][metric] = array over seeds, seeds,
    trained[run] = bool array over seeds). Runs keep their order in the file; a seed a run did not train
    is NaN there and False in trained (runs may train different numbers of seeds)."""
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a readable CSV ({e}); rerun the aggregate stage") from None
    missing = {"run", "seed", "metric", "value"} - set(df.columns)
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(sorted(missing))}; rerun the aggregate stage")
    seeds = sorted(df["seed"].unique().tolist())
    values, trained = {}, {}
    for run, g in df.groupby("run", sort=False):
        trained[run] = np.isin(seeds, g["seed"].unique())
        if g.duplicated(["seed", "metric"]).any():
            raise DataError(f"{path}: run {run!r} has a (seed, metric) twice; rerun the aggregate stage")
        wide = g.pivot(index="seed", columns="metric", values="value").reindex(seeds)
        values[run] = {m: wide[m].to_numpy(dtype=np.float64) for m in wide.columns}
        absent = [m for m in TESTED if m not in values[run]]
        if absent:
            raise DataError(f"{path}: run {run!r} has no {', '.join(absent)}; rerun the aggregate stage")
    return values, seeds, trained


def to_jsonable(obj):
    """Numpy scalars -> Python numbers, NaN/inf -> None (strict JSON, readable by any tool)."""
    if isinstance(obj, dict):
        return {k: to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (np.generic, float)):
        v = obj.item() if isinstance(obj, np.generic) else obj
        return None if isinstance(v, float) and not math.isfinite(v) else v
    return obj
