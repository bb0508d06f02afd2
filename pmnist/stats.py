"""Paired comparisons of runs by seed: t-test, Wilcoxon signed-rank, bootstrap CI of the mean
difference, Cohen's d_z, Holm-adjusted p-values, and one plain sentence per comparison.

Inputs are plain arrays: values[run][metric] = per-seed values, index k = the same seed in every run."""
import math
import warnings

import numpy as np
import pandas as pd
from scipy import stats as st

from pmnist.metrics import METRICS

TESTED = ("acc_pct", "bwt_pct", "forgetting_pct", "learning_acc_pct")


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


def _bootstrap_ci(d, n_resamples, seed):
    """95% CI of mean(d): BCa bootstrap, percentile when BCa is undefined (tiny or odd samples)."""
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DegenerateDataWarning: handled by the fallback below
            ci = st.bootstrap((d,), np.mean, n_resamples=n_resamples, confidence_level=0.95,
                              method=method, rng=np.random.default_rng(seed)).confidence_interval
        if np.isfinite(ci.low) and np.isfinite(ci.high):
            return float(ci.low), float(ci.high), f"{method} bootstrap"
    return None, None, None


def paired_test(x, y, n_resamples=10000, seed=0):
    """Compare run x with its control y, paired by index; d = x - y over pairs where both are defined.
    - mean_diff = mean(d), with a 95% bootstrap CI (scipy.stats.bootstrap, BCa, rng seeded with `seed`)
    - paired t-test: t = mean(d) / (sd(d) / sqrt(n)), df = n - 1, two-sided (scipy.stats.ttest_rel)
    - Wilcoxon signed-rank test on d, zero differences dropped (scipy.stats.wilcoxon)
    - Cohen's d_z = mean(d) / sd(d), sd with ddof = 1
    Undefined values are None, and "note" says why (1 seed, zero variance, NaN metrics)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired values must be two 1-D arrays of equal length, got {x.shape} and {y.shape}")
    both = ~(np.isnan(x) | np.isnan(y))
    d = x[both] - y[both]
    n = len(d)
    r = dict(n_pairs=n, mean_diff=None, ci95_low=None, ci95_high=None, ci_method=None, t=None,
             p_value=None, wilcoxon_w=None, wilcoxon_p=None, cohens_dz=None)
    notes = [f"{(~both).sum()} seed(s) dropped: metric is NaN"] if not both.all() else []
    if n == 0:
        return {**r, "note": "; ".join(notes + ["undefined: no seed has both values"])}
    r["mean_diff"] = float(d.mean())
    if n < 2:
        notes.append("undefined: tests need at least 2 paired seeds, got 1")
    elif np.ptp(d) == 0:  # zero variance: t and d_z divide by sd(d) = 0
        r.update(ci95_low=float(d[0]), ci95_high=float(d[0]), ci_method="exact (all differences equal)")
        if d[0] == 0:
            notes.append("undefined: all paired differences are zero")
        else:
            notes.append(f"t-test and d_z undefined: every paired difference is {d[0]:.4g} (zero variance)")
    else:
        r["t"], r["p_value"] = map(float, st.ttest_rel(x[both], y[both]))
        r["cohens_dz"] = float(d.mean() / d.std(ddof=1))
        r["ci95_low"], r["ci95_high"], r["ci_method"] = _bootstrap_ci(d, n_resamples, seed)
    if n >= 2 and (d != 0).any():
        w = st.wilcoxon(d)
        r["wilcoxon_w"], r["wilcoxon_p"] = float(w.statistic), float(w.pvalue)
    return {**r, "note": "; ".join(notes) or None}


def comparison_pairs(runs, reference, extra=()):
    """(run, control) pairs: every run against `reference`, then the `extra` [run, control] pairs
    (e.g. each run against its own control), without duplicates. Unknown run names are an error."""
    runs = list(runs)
    pairs = [(r, reference) for r in runs if r != reference] + [tuple(p) for p in extra]
    unknown = sorted({name for pair in pairs for name in pair} - set(runs))
    if unknown:
        raise ValueError(f"stats: comparison names unknown run(s) {', '.join(unknown)}; "
                         f"runs in results/summary.csv: {', '.join(runs)}")
    for run, control in pairs:
        if run == control:
            raise ValueError(f"stats.comparisons: [{run}, {control}] compares a run with itself")
    return list(dict.fromkeys(pairs))


def compare(values, pairs, metrics=TESTED, n_resamples=10000, seed=0):
    """paired_test for every (run, control) pair and metric, then Holm across the whole study:
    p_holm adjusts all t-test p-values together, wilcoxon_p_holm all Wilcoxon p-values together.
    Returns [{run, control, metrics: {metric: result}}]."""
    out = [{"run": run, "control": control,
            "metrics": {m: paired_test(values[run][m], values[control][m], n_resamples, seed) for m in metrics}}
           for run, control in pairs]
    results = [res for c in out for res in c["metrics"].values()]
    for raw, adj in (("p_value", "p_holm"), ("wilcoxon_p", "wilcoxon_p_holm")):
        adjusted = holm([np.nan if res[raw] is None else res[raw] for res in results])
        for res, p in zip(results, adjusted):
            res[adj] = None if np.isnan(p) else float(p)
    return out


def _p(p):
    return "< 0.001" if p < 0.001 else f"= {p:.2g}"


def sentence(run, control, metric, res, alpha):
    """What the data support, in one plain sentence, from the Holm-adjusted t-test at level alpha."""
    label, higher_better = METRICS[metric]
    p, diff = res.get("p_holm"), res.get("mean_diff")
    if p is None:
        return f"Not tested: {label} of {run} vs {control} ({res.get('note') or 'undefined'})."
    ci = f" (95% CI {res['ci95_low']:+.2f} to {res['ci95_high']:+.2f})" if res.get("ci95_low") is not None else ""
    if p >= alpha:
        return (f"No significant difference in {label} between {run} and {control} at alpha = {alpha:g}: "
                f"{diff:+.2f} points{ci}, p_holm {_p(p)}.")
    if metric == "forgetting_pct":
        verb = "forgets less than" if diff < 0 else "forgets more than"
        return f"{run} {verb} {control}: {diff:+.2f} points of {label}{ci}, p_holm {_p(p)}."
    better = (diff > 0) == higher_better
    return (f"{run} has {'higher' if diff > 0 else 'lower'} {label} than {control} "
            f"({'better' if better else 'worse'}): {diff:+.2f} points{ci}, p_holm {_p(p)}.")


def load_summary(path):
    """results/summary.csv (run, seed, metric, value) -> (values[run][metric] = array over seeds, seeds).
    Runs keep their order in the file; a seed missing from a run is NaN there (dropped when pairing)."""
    df = pd.read_csv(path)
    missing = {"run", "seed", "metric", "value"} - set(df.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    seeds = sorted(df["seed"].unique().tolist())
    values = {}
    for run, g in df.groupby("run", sort=False):
        wide = g.pivot(index="seed", columns="metric", values="value").reindex(seeds)
        values[run] = {m: wide[m].to_numpy(dtype=np.float64) for m in wide.columns}
    return values, seeds


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
