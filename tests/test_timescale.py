"""The timescale analysis (pmnist/timescale.py): update fractions of the study's schedules, which runs it
compares, and the paired test of a multi-timescale schedule against the uniform schedules' curve."""
import numpy as np
import pytest

from pmnist.timescale import analyse, level_sizes, schedule_runs, update_fraction

SIZES = level_sizes([256, 128, 64])


def test_level_sizes_are_the_mlp_levels():
    assert SIZES == [784 * 256 + 256, 256 * 128 + 128, 128 * 64 + 64 + 64 * 10 + 10]
    assert sum(SIZES) == 242762


@pytest.mark.parametrize("periods, batch, u", [([1, 1, 1], 128, 1.0), ([3, 2, 1], 128, 0.3817),
                                               ([1, 1, 1], 336, 0.3817), ([3, 3, 3], 128, 0.3348),
                                               ([1, 1, 1], 384, 0.3348), ([1, 2, 3], 128, 0.908)])
def test_update_fraction(periods, batch, u):
    assert update_fraction(SIZES, periods, batch) == pytest.approx(u, abs=5e-5)


def _run(lr=5e-5, periods=(1, 1, 1), batch=128, **kw):
    cfg = {"model": "mlp", "optimizer": "adam", "optimizer_args": {"betas": [0.9, 0.999], "eps": 1e-8},
           "method": "none", "lr": lr, "accumulate": "sum", "lr_scale": "none", "lr_multipliers": [1.0] * 3,
           "periods": list(periods), "batch_size": batch}
    return {**cfg, **kw}


def test_only_runs_that_differ_in_their_schedule_are_compared():
    runs = {"base": _run(), "cms": _run(periods=(3, 2, 1)), "b336": _run(batch=336),
            "other_lr": _run(lr=2e-5), "mean": _run(periods=(3, 2, 1), accumulate="mean"),
            "ewc": _run(method="ewc"), "cut": _run(lr_multipliers=[0.5, 1.0, 1.0])}
    assert sorted(schedule_runs(runs, 5e-5)) == ["b336", "base", "cms"]


def _matrix(forgetting, n_seeds=6, rng=None):
    """Accuracy matrices [S, 2, 2] whose average forgetting is `forgetting` points (+ per-seed noise)."""
    rng = rng or np.random.default_rng(0)
    f = forgetting / 100 + rng.normal(0, 0.002, n_seeds)
    R = np.zeros((n_seeds, 2, 2))
    R[:, 0, 0], R[:, 1, 1], R[:, 1, 0] = 0.95, 0.95, 0.95 - f
    return R


def test_a_schedule_on_the_uniform_curve_is_not_different_and_one_below_it_is():
    runs = {"base": _run(), "b384": _run(batch=384), "on": _run(periods=(3, 2, 1)), "below": _run(periods=(2, 1, 1))}
    u_on, u_below = update_fraction(SIZES, [3, 2, 1], 128), update_fraction(SIZES, [2, 1, 1], 128)
    u_low = update_fraction(SIZES, [1, 1, 1], 384)
    line = lambda u: 20 + 10 * (np.log(u) - np.log(u_low)) / (0 - np.log(u_low))  # forgetting, linear in log u
    acc = {"base": _matrix(line(1.0)), "b384": _matrix(line(u_low)), "on": _matrix(line(u_on), rng=np.random.default_rng(1)),
           "below": _matrix(line(u_below) - 3, rng=np.random.default_rng(2))}
    result = analyse(runs, acc, 5e-5, [256, 128, 64])
    tests = {t["run"]: t for t in result["tests"]}
    assert tests["on"]["ci95"][0] < 0 < tests["on"]["ci95"][1]
    assert tests["below"]["difference_pct"] == pytest.approx(-3, abs=0.5) and tests["below"]["ci95"][1] < 0
    kinds = {r["run"]: r["kind"] for r in result["runs"]}
    assert kinds == {"base": "uniform", "b384": "uniform", "on": "multi-timescale", "below": "multi-timescale"}


def test_a_schedule_outside_the_uniform_range_is_not_extrapolated():
    runs = {"base": _run(), "b256": _run(batch=256), "slow": _run(periods=(12, 4, 1))}
    acc = {r: _matrix(20) for r in runs}
    (test,) = analyse(runs, acc, 5e-5, [256, 128, 64])["tests"]
    assert "not extrapolated" in test["note"]
