"""The three headline numbers of a run, from its accuracy matrices, and the learned-nothing check.

R[..., i, j] is the accuracy on task j after training task i (fractions in [0, 1]); every function
accepts leading batch dims (e.g. seeds). The train stage writes these per run as DVC metrics
(results/metrics/<run>.json), so this module is its own small, numpy-only file: the train stages
depend on it, not on the rest of pmnist/metrics.py (editing a secondary metric must not retrain).
Definitions follow GEM (Lopez-Paz & Ranzato 2017) and Chaudhry et al. 2018."""
import numpy as np

CHANCE = 0.1   # ten balanced classes
MARGIN = 0.05


def _check(R):
    R = np.asarray(R, dtype=np.float64)
    if R.ndim < 2 or R.shape[-1] != R.shape[-2]:
        raise ValueError(f"accuracy matrix must have shape [..., T, T], got {R.shape}")
    return R


def average_accuracy(R):
    """A_i = mean_{j <= i} R[i, j]: mean accuracy over the tasks seen so far, after each task i. [..., T]"""
    R = _check(R)
    T = R.shape[-1]
    seen = np.tril(np.ones((T, T), dtype=bool))
    return np.where(seen, R, 0.0).sum(-1) / np.arange(1, T + 1)  # where(): unseen entries may be NaN


def final_average_accuracy(R):
    """ACC = A_{T-1} = mean_j R[T-1, j]: mean accuracy over all tasks after training the last one."""
    return average_accuracy(R)[..., -1]


def forgetting_per_task(R):
    """f_j = max_{j <= l < T-1} R[l, j] - R[T-1, j] for each task j < T-1 (Chaudhry et al. 2018): the
    drop from the best accuracy ever reached on task j to its final accuracy. [..., T-1]"""
    R = _check(R)
    past = R[..., :-1, :-1]  # rows l < T-1, columns j < T-1
    T1 = past.shape[-1]
    trained = np.tril(np.ones((T1, T1), dtype=bool))  # l >= j: task j has been trained by then
    best = np.where(trained, past, -np.inf).max(-2, initial=-np.inf)
    return best - R[..., -1, :-1]


def average_forgetting(R):
    """F = mean_{j < T-1} f_j (Chaudhry et al. 2018). NaN for T = 1 (no earlier task to forget)."""
    R = _check(R)
    if R.shape[-1] == 1:
        return np.full(R.shape[:-2], np.nan)
    return forgetting_per_task(R).mean(-1)


def learning_accuracy(R):
    """LA = mean_j R[j, j]: accuracy on each task right after training it (plasticity)."""
    return np.diagonal(_check(R), axis1=-2, axis2=-1).mean(-1)


def headline_means(R):
    """The DVC metrics of one run, R [S, T, T]: means over seeds in percentage points, 2 decimals
    (NaN, e.g. forgetting with one task, becomes None)."""
    values = {"acc_pct": final_average_accuracy(R), "forgetting_pct": average_forgetting(R),
              "learning_acc_pct": learning_accuracy(R)}
    out = {}
    for key, v in values.items():
        m = float(np.mean(v) * 100)
        out[key] = round(m, 2) if np.isfinite(m) else None
    return out


def learned_nothing(R, chance=CHANCE, margin=MARGIN):
    """R [..., T, T] -> bool [...]: True where no task was ever above chance + margin at any point after
    it was trained (R[i, j] with j <= i), e.g. Adam at lr 1e6 sitting at 9.95% on every task."""
    R = _check(R)
    T = R.shape[-1]
    seen = np.tril(np.ones((T, T), dtype=bool))
    return ~(np.where(seen, R, 0.0) > chance + margin).any(axis=(-2, -1))
