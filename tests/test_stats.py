"""Statistics against values derived by hand, and the edge cases (1 seed, identical runs, NaN)."""
import numpy as np
import pytest

from pmnist.stats import compare, comparison_pairs, holm, paired_test, sentence, to_jsonable

X, Y = [5.0, 7.0, 9.0], [4.0, 5.0, 6.0]  # differences 1, 2, 3


def test_paired_t_by_hand():
    # d = (1, 2, 3): mean 2, sd 1, t = 2 / (1 / sqrt 3) = 2 sqrt 3, df 2. The t(2) CDF is
    # 1/2 + t / (2 sqrt(2 + t^2)), so the two-sided p = 1 - t / sqrt(2 + t^2) = 1 - 2 sqrt 3 / sqrt 14.
    r = paired_test(X, Y, n_resamples=2000, seed=0)
    assert r["mean_diff"] == 2.0 and r["n_pairs"] == 3
    assert r["t"] == pytest.approx(2 * np.sqrt(3))
    assert r["p_value"] == pytest.approx(1 - 2 * np.sqrt(3) / np.sqrt(14))
    assert r["cohens_dz"] == pytest.approx(2.0)
    # Wilcoxon, exact: all 3 differences positive, W- = 0; 2 of the 2^3 sign patterns are as extreme.
    assert r["wilcoxon_p"] == pytest.approx(2 / 8)
    assert 1.0 <= r["ci95_low"] <= 2.0 <= r["ci95_high"] <= 3.0
    assert r == paired_test(X, Y, n_resamples=2000, seed=0)  # seeded bootstrap: reproducible


def test_holm_by_hand():
    # sorted: .005 x4 = .02, .01 x3 = .03, .03 x2 = .06, .04 x1 = .04 -> monotone max .06
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    # NaN is left out of m: .01 x2 = .02, .04 x1 = .04
    np.testing.assert_allclose(holm([0.01, np.nan, 0.04]), [0.02, np.nan, 0.04])
    assert holm([0.5, 0.9]).max() <= 1.0 and holm([]).size == 0


def test_edge_cases():
    same = paired_test(X, X)
    assert same["p_value"] is None and same["note"] == "undefined: all paired differences are zero"
    assert same["mean_diff"] == 0.0 and same["wilcoxon_p"] is None
    one = paired_test([1.0], [0.0])
    assert one["p_value"] is None and "at least 2" in one["note"]
    shift = paired_test(X, [4.0, 6.0, 8.0])  # every difference 1: zero variance
    assert shift["t"] is None and shift["cohens_dz"] is None and "zero variance" in shift["note"]
    nan = paired_test([5.0, np.nan, 9.0, 6.0], [4.0, 5.0, 6.0, 4.0])
    assert nan["n_pairs"] == 3 and "1 seed(s) dropped" in nan["note"] and nan["p_value"] is not None
    allnan = paired_test([np.nan, np.nan], [1.0, 2.0])
    assert allnan["mean_diff"] is None and "no seed" in allnan["note"]


def test_compare_and_sentences():
    values = {"base": {"acc_pct": np.array(Y), "forgetting_pct": np.array([9.0, 8.0, 7.0])},
              "cms": {"acc_pct": np.array(X), "forgetting_pct": np.array([8.0, 6.0, 4.0])},
              "cms_ctl": {"acc_pct": np.array(X), "forgetting_pct": np.array([8.0, 6.0, 4.0])}}
    pairs = comparison_pairs(values, "base", [["cms", "cms_ctl"], ["cms", "base"]])
    assert pairs == [("cms", "base"), ("cms_ctl", "base"), ("cms", "cms_ctl")]
    out = compare(values, pairs, ("acc_pct", "forgetting_pct"), n_resamples=500, seed=0)
    res = [r for c in out for r in c["metrics"].values()]
    raw = [r["p_value"] for r in res if r["p_value"] is not None]
    assert len(raw) == 4  # cms vs cms_ctl is identical: undefined, not counted by Holm
    np.testing.assert_allclose(sorted(r["p_holm"] for r in res if r["p_holm"] is not None),
                               sorted(holm(raw)))
    assert out[2]["metrics"]["acc_pct"]["p_holm"] is None
    to_jsonable(out)  # serialisable

    # forgetting: lower is better; d = (-1, -2, -3)
    f = {"mean_diff": -2.0, "ci95_low": -3.0, "ci95_high": -1.0, "p_holm": 0.003}
    assert sentence("cms", "base", "forgetting_pct", f, 0.05).startswith("cms forgets less than base: -2.00 points")
    assert "p_holm = 0.003" in sentence("cms", "base", "forgetting_pct", f, 0.05)
    acc = {"mean_diff": -1.0, "ci95_low": -2.0, "ci95_high": 0.5, "p_holm": 0.41}
    assert sentence("cms", "base", "acc_pct", acc, 0.05).startswith(
        "No significant difference in final average accuracy between cms and base")
    assert "lower final average accuracy than base (worse)" in sentence("cms", "base", "acc_pct", {**acc, "p_holm": 0.01}, 0.05)
    assert "Not tested: final average accuracy of a vs b (undefined: all paired" in sentence("a", "b", "acc_pct", paired_test(X, X), 0.05)


def test_unknown_comparison_runs():
    with pytest.raises(ValueError, match="unknown run.*nested_ssm"):
        comparison_pairs(["base", "cms"], "base", [["nested_ssm", "cms"]])
    with pytest.raises(ValueError, match="itself"):
        comparison_pairs(["base", "cms"], "base", [["cms", "cms"]])
