"""Metric definitions against matrices worked by hand."""
import numpy as np
import pytest

from pmnist.errors import DataError
from pmnist.io import write_npz
from pmnist.metrics import (aggregate, average_accuracy, average_forgetting, backward_transfer,
                            final_average_accuracy, forgetting_per_task, forward_transfer,
                            learned_nothing, learning_accuracy, load_runs, mean_ci, summarize)

# R[i, j]: accuracy on task j after training task i; entries above the diagonal are untrained tasks.
R = np.array([[0.90, 0.10, 0.20],
              [0.92, 0.95, 0.10],
              [0.70, 0.85, 0.90]])
B = np.array([0.10, 0.05, 0.05])  # untrained model's accuracy per task
PERFECT = np.array([[1.0, 0.1, 0.1],
                    [1.0, 1.0, 0.1],
                    [1.0, 1.0, 1.0]])


def test_hand_computed():
    # A_0 = .90; A_1 = (.92 + .95) / 2 = .935; A_2 = (.70 + .85 + .90) / 3 = 2.45 / 3
    np.testing.assert_allclose(average_accuracy(R), [0.90, 0.935, 2.45 / 3])
    assert final_average_accuracy(R) == pytest.approx(2.45 / 3)
    # BWT = ((.70 - .90) + (.85 - .95)) / 2 = -.15
    assert backward_transfer(R) == pytest.approx(-0.15)
    # FWT = ((R[0,1] - b1) + (R[1,2] - b2)) / 2 = ((.10 - .05) + (.10 - .05)) / 2 = .05
    assert forward_transfer(R, B) == pytest.approx(0.05)
    # f_0 = max(.90, .92) - .70 = .22 (the best, not the first, accuracy); f_1 = .95 - .85 = .10
    np.testing.assert_allclose(forgetting_per_task(R), [0.22, 0.10])
    assert average_forgetting(R) == pytest.approx(0.16)
    # LA = (.90 + .95 + .90) / 3
    assert learning_accuracy(R) == pytest.approx(2.75 / 3)


def test_perfect_learner():
    assert final_average_accuracy(PERFECT) == 1.0
    assert backward_transfer(PERFECT) == 0.0
    assert average_forgetting(PERFECT) == 0.0
    assert learning_accuracy(PERFECT) == 1.0
    assert forward_transfer(PERFECT, np.full(3, 0.1)) == pytest.approx(0.0)


def test_one_task():
    R1 = np.array([[0.8]])
    assert final_average_accuracy(R1) == pytest.approx(0.8)
    assert learning_accuracy(R1) == pytest.approx(0.8)
    assert np.isnan(backward_transfer(R1)) and np.isnan(average_forgetting(R1))
    assert np.isnan(forward_transfer(R1, [0.1]))
    assert forgetting_per_task(R1).shape == (0,)


def test_batch_dims():
    stack = np.stack([R, PERFECT])  # [2 seeds, T, T]
    np.testing.assert_allclose(backward_transfer(stack), [-0.15, 0.0])
    np.testing.assert_allclose(average_forgetting(stack), [0.16, 0.0])
    np.testing.assert_allclose(forward_transfer(stack, np.stack([B, np.full(3, 0.1)])), [0.05, 0.0], atol=1e-12)
    assert average_accuracy(stack[None]).shape == (1, 2, 3)
    with pytest.raises(ValueError, match="shape"):
        average_accuracy(np.zeros((2, 3)))


def test_mean_ci_t_interval():
    # n = 3, mean 2, sd 1. For df = 2 the t CDF is 1/2 + t / (2 sqrt(2 + t^2)), so the 0.975 quantile
    # solves t / sqrt(2 + t^2) = 0.95: t = 0.95 sqrt(2 / (1 - 0.95^2)).
    t = 0.95 * np.sqrt(2 / (1 - 0.95 ** 2))
    mean, std, low, high = mean_ci([1.0, 2.0, 3.0])
    assert (mean, std) == (2.0, 1.0)
    assert low == pytest.approx(2 - t / np.sqrt(3)) and high == pytest.approx(2 + t / np.sqrt(3))
    one = summarize([5.0])
    assert one["mean"] == 5.0 and one["ci95_low"] is None and "1 seed" in one["note"]


def test_learned_nothing():
    dead = np.full((3, 3), 0.0995)
    dead[0, 2] = 0.9  # above the diagonal: a task not trained yet, does not count as learning
    assert learned_nothing(dead) and not learned_nothing(R)
    # learned task 0 only once (16%), then forgot it: it did learn something
    once = dead.copy()
    once[1, 0] = 0.16
    assert not learned_nothing(once)
    edge = np.full((3, 3), 0.15)  # "exceeded" chance + margin is strict
    assert learned_nothing(edge) and not learned_nothing(edge, margin=0.04)
    np.testing.assert_array_equal(learned_nothing(np.stack([R, dead, once])), [False, True, False])


def _write_seeds(root, run, mats, seeds=(10, 11)):
    for k, (mat, seed) in enumerate(zip(mats, seeds)):
        write_npz(root / run / f"seed_{k}.npz", accuracy=mat, untrained_accuracy=B,
                  train_loss=np.zeros((3, 2)), seed=np.int64(seed))


def test_load_and_aggregate(tmp_path):
    _write_seeds(tmp_path, "a", [R, PERFECT])
    _write_seeds(tmp_path, "dead", [np.full((3, 3), 0.1), R])
    (tmp_path / "stale").mkdir()  # a removed run: must be ignored
    data = load_runs(tmp_path, {"a": [10, 11], "dead": [10, 11]}, n_tasks=3)
    summary, rows, curves, forgetting = aggregate(data)
    assert list(summary["runs"]) == ["a", "dead"]
    a = summary["runs"]["a"]
    assert a["n_seeds"] == 2 and a["seeds"] == [10, 11] and a["learned_nothing_seeds"] == []
    assert summary["runs"]["dead"]["learned_nothing_seeds"] == [10]
    assert a["metrics"]["bwt_pct"]["mean"] == pytest.approx(100 * (-0.15 + 0) / 2)
    assert set(a["metrics"]) == {"acc_pct", "forgetting_pct", "bwt_pct", "fwt_pct", "learning_acc_pct"}
    assert {(r["seed"], r["metric"]) for r in rows} >= {(10, "acc_pct"), (11, "forgetting_pct")}
    assert [c["task"] for c in curves["a"]] == [1, 2, 3]
    assert curves["a"][0]["average_accuracy"] == pytest.approx(100 * (0.90 + 1.0) / 2)
    assert forgetting["a"][0] == {"task": 1, "forgetting": pytest.approx(100 * (0.22 + 0) / 2)}


def test_load_runs_names_the_bad_file(tmp_path):
    _write_seeds(tmp_path, "a", [R, PERFECT])
    with pytest.raises(FileNotFoundError, match="b/seed_0.npz"):
        load_runs(tmp_path, {"a": [10, 11], "b": [10, 11]}, n_tasks=3)
    with pytest.raises(DataError, match=r"a/seed_0\.npz: 'accuracy' has shape \(3, 3\), expected \(4, 4\)"):
        load_runs(tmp_path, {"a": [10, 11]}, n_tasks=4)
    with pytest.raises(DataError, match=r"a/seed_0\.npz: holds seed 10, expected 0"):
        load_runs(tmp_path, {"a": [0, 1]}, n_tasks=3)  # trained on other seeds: would mispair
    write_npz(tmp_path / "c" / "seed_0.npz", accuracy=R, seed=np.int64(0))
    with pytest.raises(DataError, match="c/seed_0.npz: no array 'untrained_accuracy'"):
        load_runs(tmp_path, {"c": [0]}, n_tasks=3)
