"""Statistics against values derived by hand, the two Holm families, and the edge cases."""
import json

import numpy as np
import pytest

from pmnist.errors import ConfigError, DataError
from pmnist.stats import (holm, load_summary, paired_test, plan, run_tests, seeds_needed, sentence,
                          to_jsonable, verdict)

X, Y = [5.0, 7.0, 9.0], [4.0, 5.0, 6.0]  # differences 1, 2, 3
# For df = 2 the t CDF is 1/2 + t / (2 sqrt(2 + t^2)), so its 0.975 quantile solves t / sqrt(2 + t^2) = 0.95.
T2 = 0.95 * np.sqrt(2 / (1 - 0.95 ** 2))


def test_paired_t_by_hand():
    # d = (1, 2, 3): mean 2, sd 1, t = 2 / (1 / sqrt 3) = 2 sqrt 3, df 2; two-sided p = 1 - t / sqrt(2 + t^2).
    r = paired_test(X, Y, n_resamples=2000, seed=0)
    assert r["mean_diff"] == 2.0 and r["n_pairs"] == 3 and r["df"] == 2 and r["sd_diff"] == 1.0
    assert r["t"] == pytest.approx(2 * np.sqrt(3))
    assert r["p_value"] == pytest.approx(1 - 2 * np.sqrt(3) / np.sqrt(14))
    assert r["cohens_dz"] == pytest.approx(2.0)
    # THE interval is the t-interval 2 +- t_2 * 1 / sqrt 3, not the bootstrap one
    assert r["ci95_half_width"] == pytest.approx(T2 / np.sqrt(3))
    assert (r["ci95_low"], r["ci95_high"]) == (pytest.approx(2 - T2 / np.sqrt(3)), pytest.approx(2 + T2 / np.sqrt(3)))
    # Wilcoxon, exact: all 3 differences positive, W- = 0; 2 of the 2^3 sign patterns are as extreme.
    assert r["wilcoxon_p"] == pytest.approx(2 / 8)
    assert r["bootstrap_method"] == "BCa bootstrap"
    assert 1.0 <= r["bootstrap_ci95_low"] <= 2.0 <= r["bootstrap_ci95_high"] <= 3.0
    assert r == paired_test(X, Y, n_resamples=2000, seed=0)  # seeded bootstrap: reproducible


def test_interval_agrees_with_the_test():
    # The 95% t-interval excludes zero exactly when the two-sided t-test has p < 0.05.
    rng = np.random.default_rng(1)
    for shift in np.linspace(0, 1.5, 40):
        x = rng.normal(shift, 1, 8)
        r = paired_test(x, np.zeros(8), n_resamples=100)
        assert (r["ci95_low"] > 0 or r["ci95_high"] < 0) == (r["p_value"] < 0.05)


def test_holm_by_hand():
    # sorted: .005 x4 = .02, .01 x3 = .03, .03 x2 = .06, .04 x1 = .04 -> monotone max .06
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    # NaN is left out of m: .01 x2 = .02, .04 x1 = .04
    np.testing.assert_allclose(holm([0.01, np.nan, 0.04]), [0.02, np.nan, 0.04])
    np.testing.assert_allclose(holm([0.5, 0.9]), [1.0, 1.0])  # capped at 1
    assert holm([]).size == 0


def test_seeds_needed_by_hand():
    # sd 1, target 1 point: t_{n-1, .975} / sqrt(n) <= 1. Tables: t_5 = 2.571, /sqrt 6 = 1.050 (too wide);
    # t_6 = 2.447, /sqrt 7 = 0.925. So 7 seeds.
    assert seeds_needed(1.0) == 7
    # sd 2: t_{n-1} / sqrt(n) <= 1/2. t_17 = 2.110, /sqrt 18 = 0.497; t_16 = 2.120, /sqrt 17 = 0.514. So 18.
    assert seeds_needed(2.0) == 18
    assert seeds_needed(0.0) == 2  # no spread: the smallest sample that has an interval


def test_edge_cases():
    same = paired_test(X, X)
    assert same["p_value"] is None and same["note"] == "undefined: all paired differences are zero"
    assert same["mean_diff"] == 0.0 and same["wilcoxon_p"] is None
    one = paired_test([1.0], [0.0])
    assert one["p_value"] is None and one["ci95_low"] is None and "at least 2" in one["note"]
    shift = paired_test(X, [4.0, 6.0, 8.0])  # every difference 1: zero variance
    assert shift["t"] is None and shift["cohens_dz"] is None and "zero variance" in shift["note"]
    assert shift["ci95_low"] == shift["ci95_high"] == 1.0
    nan = paired_test([5.0, np.nan, 9.0, 6.0], [4.0, 5.0, 6.0, 4.0])
    assert nan["n_pairs"] == 3 and "1 seed(s) dropped" in nan["note"] and nan["p_value"] is not None
    allnan = paired_test([np.nan, np.nan], [1.0, 2.0])
    assert allnan["mean_diff"] is None and "no seed" in allnan["note"]



def test_floating_point_noise_neither_makes_nor_breaks_a_tie():
    """0.1 + 0.2 and 0.3 are one difference in exact arithmetic; as floats they differ in the last bit, and
    which metrics come out so depends on the machine. Unrounded, Wilcoxon ranks them apart (statistic 6.0,
    p 0.109) instead of tied (6.5, p 0.117): the committed report's Wilcoxon p changed with the machine
    that ran the analysis. Every statistic must be the same for both."""
    noisy = [0.1 + 0.2, -0.3, 0.5, 0.7, -0.9, 1.1, 1.3, 1.6]
    exact = [0.3, -0.3, 0.5, 0.7, -0.9, 1.1, 1.3, 1.6]
    assert noisy[0] != exact[0]
    zero = [0.0] * len(exact)
    assert paired_test(noisy, zero) == paired_test(exact, zero)
    assert paired_test(exact, zero)["wilcoxon_w"] == 6.5  # the tie, ranked as one

STATS = {"primary": [{"run": "cms", "control": "base", "metric": "forgetting_pct"}],
         "reference": "base", "comparisons": [["base", "cms"], ["cms", "ctl"]],
         "interactions": [{"name": "ix", "a": ["cms", "base"], "b": ["ctl", "base"]}]}
RUNS = ["base", "cms", "ctl"]


def test_plan_families():
    tests = plan(STATS, RUNS)
    key = lambda t: (t["family"], t.get("run"), t.get("control"), t["metric"])  # noqa: E731
    assert [key(t) for t in tests if t["family"] == "primary"] == [("primary", "cms", "base", "forgetting_pct")]
    secondary = [key(t) for t in tests if t["family"] == "secondary" and t["kind"] == "comparison"]
    # the primary pair's other metrics come first; the primary test itself is not repeated, nor is
    # [base, cms] (the same test, reversed); BWT/FWT are never tested
    assert secondary == [("secondary", "cms", "base", "acc_pct"), ("secondary", "cms", "base", "learning_acc_pct"),
                         ("secondary", "ctl", "base", "acc_pct"), ("secondary", "ctl", "base", "forgetting_pct"),
                         ("secondary", "ctl", "base", "learning_acc_pct"),
                         ("secondary", "cms", "ctl", "acc_pct"), ("secondary", "cms", "ctl", "forgetting_pct"),
                         ("secondary", "cms", "ctl", "learning_acc_pct")]
    ix = [t for t in tests if t["kind"] == "interaction"]
    assert [(t["family"], t["name"], t["metric"]) for t in ix] == [
        ("secondary", "ix", m) for m in ("acc_pct", "forgetting_pct", "learning_acc_pct")]


def test_plan_refuses_unknown_runs_and_untested_metrics():
    with pytest.raises(DataError, match="results/summary.csv: no run 'ctl'"):
        plan(STATS, ["base", "cms"])
    with pytest.raises(ConfigError, match=r"stats.primary\[0\].metric: 'bwt_pct' is not tested"):
        plan({**STATS, "primary": [{"run": "cms", "control": "base", "metric": "bwt_pct"}]}, RUNS)


def _values(rng, n=10):
    base = {m: rng.normal(50, 1, n) for m in ("acc_pct", "forgetting_pct", "learning_acc_pct")}
    shifted = lambda by: {m: v + by + rng.normal(0, 0.3, n) for m, v in base.items()}  # noqa: E731
    return {"base": base, "cms": shifted(-0.4), "ctl": shifted(0.1)}


def test_holm_within_each_family_only():
    values = _values(np.random.default_rng(0))
    out, families = run_tests(values, plan(STATS, RUNS), n_resamples=200)
    primary = [r for r in out if r["family"] == "primary"]
    secondary = [r for r in out if r["family"] == "secondary"]
    assert families == {"primary": {"k": 1, "k_wilcoxon": 1}, "secondary": {"k": 11, "k_wilcoxon": 11}}
    # one primary test: its Holm p is its own p, however many secondary tests there are
    assert primary[0]["p_holm"] == pytest.approx(primary[0]["p_value"])
    np.testing.assert_allclose([r["p_holm"] for r in secondary], holm([r["p_value"] for r in secondary]))
    np.testing.assert_allclose([r["wilcoxon_p_holm"] for r in secondary], holm([r["wilcoxon_p"] for r in secondary]))
    assert primary[0]["seeds_for_half_width_1"] == seeds_needed(primary[0]["sd_diff"])
    assert "seeds_for_half_width_1" not in secondary[0]


def test_interaction_contrast_by_hand():
    a0, a1, b0, b1 = [3.0, 5.0, 4.0], [1.0, 1.0, 1.0], [2.0, 2.0, 2.0], [1.0, 2.0, 0.0]
    # a0 - a1 = (2, 4, 3), b0 - b1 = (1, 0, 2): contrast (1, 4, 1), mean 2, sd sqrt 3
    values = {r: {m: np.array(v) for m in ("acc_pct", "forgetting_pct", "learning_acc_pct")}
              for r, v in (("a0", a0), ("a1", a1), ("b0", b0), ("b1", b1))}
    spec = {"primary": [], "interactions": [{"name": "ix", "a": ["a0", "a1"], "b": ["b0", "b1"]}]}
    out, _ = run_tests(values, plan(spec, list(values)), n_resamples=100)
    r = out[0]
    assert r["kind"] == "interaction" and r["mean_diff"] == pytest.approx(2.0)
    assert r["sd_diff"] == pytest.approx(np.sqrt(3)) and r["t"] == pytest.approx(2 / (np.sqrt(3) / np.sqrt(3)))
    assert r["simple_effects"]["a"]["mean_diff"] == pytest.approx(3.0)
    assert r["simple_effects"]["b"]["mean_diff"] == pytest.approx(1.0)
    assert r["simple_effects"]["b"]["ci95_low"] == pytest.approx(1 - T2 / np.sqrt(3))


def _res(diff, low, high, p_holm, p=0.01, family="primary"):
    return {"kind": "comparison", "run": "cms", "control": "base", "family": family, "mean_diff": diff,
            "ci95_low": low, "ci95_high": high, "p_value": p, "p_holm": p_holm}


def test_sentences():
    f = {**_res(-2.0, -3.0, -1.0, 0.003, p=0.001), "metric": "forgetting_pct"}
    s = sentence(f, 0.05, 3)
    assert s.startswith("cms forgets less than base: -2.00 points of average forgetting (95% CI -3.00 to -1.00")
    assert "p_holm = 0.003 over the 3 primary tests" in s
    acc = {**_res(-1.0, -2.0, 0.5, 0.41, p=0.2), "metric": "acc_pct"}
    assert "no significant difference" in sentence(acc, 0.05, 3)
    assert "lower final average accuracy than base (worse)" in sentence({**acc, "p_holm": 0.01}, 0.05, 3)
    assert sentence({**acc, "p_holm": None, "note": "undefined: all paired differences are zero"}, 0.05, 3) == \
        "Not tested: final average accuracy of cms vs base (undefined: all paired differences are zero)."


def test_no_no_difference_beside_an_interval_that_excludes_zero():
    # unadjusted p = 0.02, CI [0.3, 2.1] excludes zero, but Holm over 3 tests gives 0.06
    r = {**_res(1.2, 0.3, 2.1, 0.06, p=0.02), "metric": "acc_pct"}
    s = sentence(r, 0.05, 3)
    assert "no significant difference" not in s.lower()
    assert ("not significant after Holm correction over the 3 primary tests (p_holm = 0.06), "
            "though the unadjusted 95% CI excludes zero") in s
    assert verdict(r, 0.05) == "not significant after Holm; unadjusted CI excludes 0"
    assert verdict({**r, "ci95_low": -0.1}, 0.05) == "not significant"
    assert verdict({**r, "p_holm": 0.01}, 0.05) == "significant"


def test_results_are_strict_json():
    values = _values(np.random.default_rng(0))
    values["ctl"]["forgetting_pct"][:] = np.nan  # forgetting undefined: 1 task
    out, _ = run_tests(values, plan(STATS, RUNS), n_resamples=100)
    text = json.dumps(to_jsonable(out), allow_nan=False)  # raises on a NaN or inf left behind
    back = json.loads(text)
    nan_test = next(r for r in back if r.get("run") == "ctl" and r["metric"] == "forgetting_pct")
    assert nan_test["mean_diff"] is None and nan_test["p_holm"] is None
    assert to_jsonable({"x": np.float64("nan"), "y": [np.int64(3), np.inf]}) == {"x": None, "y": [3, None]}


def test_load_summary(tmp_path):
    path = tmp_path / "summary.csv"
    rows = [f"{run},{s},{m},{v}" for run, v in (("b", 1.0), ("a", 2.0)) for s in (0, 1)
            for m in ("acc_pct", "forgetting_pct", "learning_acc_pct")]
    path.write_text("run,seed,metric,value\n" + "\n".join(rows[:-1]) + "\n")  # a's seed 1 has no learning acc
    values, seeds, trained = load_summary(path)
    assert list(values) == ["b", "a"] and seeds == [0, 1]
    np.testing.assert_array_equal(values["a"]["learning_acc_pct"], [2.0, np.nan])
    assert trained["a"].tolist() == [True, True]  # a NaN metric of a trained seed, not an untrained seed
    path.write_text("run,seed,metric,value\n" + "\n".join(r for r in rows if not r.startswith("a,1,")) + "\n")
    values, seeds, trained = load_summary(path)
    assert trained["a"].tolist() == [True, False] and np.isnan(values["a"]["acc_pct"][1])
    path.write_text("run,seed,value\nb,0,1.0\n")
    with pytest.raises(DataError, match=r"summary.csv: missing column\(s\) metric"):
        load_summary(path)


def test_a_run_with_fewer_seeds_pairs_on_the_seeds_both_trained():
    values = {"a": {"acc_pct": np.array([5.0, 7.0, 9.0, np.nan])}, "b": {"acc_pct": np.array([4.0, 5.0, 6.0, 1.0])}}
    trained = {"a": np.array([True, True, True, False]), "b": np.ones(4, bool)}
    test = {"family": "primary", "kind": "comparison", "run": "a", "control": "b", "metric": "acc_pct"}
    (r,), _ = run_tests(values, [test], n_resamples=100, trained=trained)
    assert r["n_pairs"] == 3 and r["mean_diff"] == 2.0 and r["note"] is None  # seed 3: not trained, not "dropped"
    values["a"]["acc_pct"][0] = np.nan  # a trained seed whose metric is undefined IS dropped, and said so
    (r,), _ = run_tests(values, [test], n_resamples=100, trained=trained)
    assert r["n_pairs"] == 2 and r["note"] == "1 seed(s) dropped: metric is NaN"
