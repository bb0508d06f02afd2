"""The sequence protocol (pmnist/sequence.py, pmnist/sequence_train.py, pmnist/sequence_report.py) and the
note's hybrid model (pmnist/models/hybrid_ssm.py), offline and on synthetic data: params checks, the
model's seed independence and levels, the loop's accuracy matrix with every method and both head
settings, the note's table, and the verdicts."""
import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from pmnist.errors import ConfigError
from pmnist.models.hybrid_ssm import HybridSSM
from pmnist.sequence import load_sequence_params, note_table, validate_sequence_params
from pmnist.sequence_report import claim_tests, pair_verdict, per_seed
from pmnist.sequence_train import SequenceData, build_sequence_run, train_sequence

ROOT = Path(__file__).resolve().parents[1]
SMALL_HYBRID = {"channels": [4, 8], "hidden_dim": 8, "state_dim": 4, "memory_hidden": 6}


@pytest.fixture(scope="module")
def raw_params():
    import yaml
    return yaml.safe_load((ROOT / "sequence" / "params.yaml").read_text())


# ---- params ------------------------------------------------------------------------------------------
def test_the_committed_params_validate_and_name_the_note_runs():
    p = load_sequence_params(ROOT / "sequence" / "params.yaml")
    for seq in ("mf", "fm"):
        nested, standard = p["runs"][f"{seq}_nested_ssm"], p["runs"][f"{seq}_standard_ssm"]
        assert nested["model"] == standard["model"] == "hybrid_ssm"
        assert nested["periods"] == [100, 10, 1, 1] and standard["periods"] == [1, 1, 1, 1]
        assert p["runs"][f"{seq}_nested_ssm_shared"]["lr"] == p["runs"][f"{seq}_standard_ssm_shared"]["lr"]
        assert p["runs"][f"{seq}_deep_momentum"]["optimizer_args"]["hidden_dim"] == 128
        sgd = p["runs"][f"{seq}_sgd_momentum"]
        assert (sgd["optimizer"], sgd["lr"], sgd["optimizer_args"]["momentum"]) == ("sgd", 0.01, 0.9)
        assert p["runs"][f"{seq}_adaptive_deep_momentum"]["lr"] == 1e-3
        assert all(r["n_seeds"] >= 20 for r in p["runs"].values())
    assert p["sequences"]["cifar10_mnist_fashion"] == ["cifar10", "mnist", "fashion_mnist"]
    assert {r["sequence"] for r in p["cifar_runs"].values()} == {"cifar10_mnist_fashion"}
    claims = p["note"]["claims"]
    assert claims["nested_forgets_less"]["metric"] == "retention_pct" and claims["nested_forgets_less"]["cifar_pairs"]
    assert ["mf_deep_momentum", "mf_sgd_momentum"] in claims["deep_momentum_beats_sgd_and_adam"]["pairs"]


@pytest.mark.parametrize("edit, message", [
    (lambda p: p["runs"]["mf_mlp"].update(sequence="nope"), r"runs\.mf_mlp\.sequence: 'nope' is not a sequence"),
    (lambda p: p["runs"]["mf_mlp"].update(sequence="cifar10_mnist_fashion"), r"belongs under cifar_runs"),
    (lambda p: p["sequences"].update(bad=["mnist", "svhn"]), r"sequences\.bad\[1\]: 'svhn' is not under datasets"),
    (lambda p: p["data"].update(shape="rgb64"), r"data\.shape: must be one of rgb32, grey32"),
    (lambda p: p["stats"]["comparisons"].append(["mf_mlp", "fm_mlp"]), r"different sequences"),
    (lambda p: p["runs"]["mf_mlp"].update(optimizer="adamw"), r"unknown optimizer 'adamw'"),
    (lambda p: p["datasets"]["cifar10"]["md5"].pop("test_batch"), r"datasets\.cifar10\.md5\.test_batch: missing"),
    (lambda p: p["note"]["claims"]["nested_forgets_less"].update(metric="happiness"), r"nested_forgets_less\.metric"),
    (lambda p: p["note"]["claims"]["nested_forgets_less"]["pairs"].append(["mf_mlp", "cmf_mlp"]),
     r"'cmf_mlp' is not a run of runs"),
])
def test_bad_params_are_refused_naming_the_key(raw_params, edit, message):
    p = copy.deepcopy(raw_params)
    edit(p)
    with pytest.raises(ConfigError, match=message):
        validate_sequence_params(p)


# ---- the hybrid model --------------------------------------------------------------------------------
@pytest.mark.parametrize("in_dim", [3072, 1024, 784])
def test_hybrid_seeds_are_independent_and_levels_cover_every_parameter(in_dim):
    torch.manual_seed(0)
    x = torch.rand(3, 4, in_dim)
    together = HybridSSM([0, 1, 2], **SMALL_HYBRID, in_dim=in_dim)
    y = together(x)
    assert y.shape == (3, 4, 10)
    for s in range(3):
        alone = HybridSSM([s], **SMALL_HYBRID, in_dim=in_dim)
        torch.testing.assert_close(alone(x[s:s + 1]), y[s:s + 1], atol=1e-5, rtol=1e-4)
    names = [n for n, _ in together.levels()]
    assert names == ["slow", "medium", "fast", "core"]
    listed = [p for _, ps in together.levels() for p in ps]
    assert len(listed) == len(set(map(id, listed))) == len(list(together.parameters()))
    assert all(p.shape[0] == 3 for p in together.parameters()), "every parameter has the seed axis"


def test_hybrid_refuses_an_input_it_cannot_read():
    with pytest.raises(ValueError, match="square image"):
        HybridSSM([0], **SMALL_HYBRID, in_dim=1000)
    with pytest.raises(ValueError, match="halved"):
        HybridSSM([0], **{**SMALL_HYBRID, "channels": [4, 4, 4, 4, 4, 4]}, in_dim=3072)


# ---- the loop on synthetic tasks ---------------------------------------------------------------------
def synthetic(n_train=(300, 200), n_eval=100, d=1024, seed=0):
    """Two 'datasets' of different sizes, each label a class-specific bright patch at a dataset-specific place."""
    g = torch.Generator().manual_seed(seed)
    train, evaluation = [], []
    for t, n in enumerate(n_train):
        for store, size in ((train, n), (evaluation, n_eval)):
            y = torch.randint(0, 10, (size,), generator=g)
            x = torch.randint(0, 40, (size, d), generator=g, dtype=torch.uint8)
            cols = (t * 500 + y[:, None] * 40 + torch.arange(30)) % d
            x.scatter_(1, cols, 250)
            store.append((x, y))
    return SequenceData(["a", "b"], train, evaluation)


def run_of(model="mlp", method="none", **extra):
    p = load_sequence_params(ROOT / "sequence" / "params.yaml")
    base = {**p["runs"]["mf_mlp"], "lr": 1e-2, "method": method, "model": model,
            "model_args": {"hidden_dims": [32, 16, 8]} if model == "mlp" else SMALL_HYBRID}
    from pmnist.methods import METHODS
    base["method_args"] = METHODS[method].resolve("method_args", {"buffer_size": 50} if method == "replay" else
                                                  {"fisher_samples": 20} if method == "ewc" else {})
    base["periods"] = [1, 1, 1] if model == "mlp" else [100, 10, 1, 1]
    base["lr_multipliers"] = [1.0] * len(base["periods"])
    return {**base, **extra}


@pytest.mark.parametrize("model, method, heads", [("mlp", "none", False), ("mlp", "replay", False), ("mlp", "ewc", False),
                                                  ("mlp", "joint", False), ("mlp", "none", True),
                                                  ("hybrid_ssm", "none", False), ("hybrid_ssm", "ewc", True)])
def test_the_sequence_loop_learns_and_fills_the_accuracy_matrix(model, method, heads):
    torch.manual_seed(0)
    data = synthetic()
    run = run_of(model, method)
    seeds = [0, 1]
    m, sched, meth = build_sequence_run(run, seeds, torch.device("cpu"), 1024, 2, heads)
    epochs = 5 if model == "mlp" else 1          # the hybrid: that it runs with each method and head (CPU time)
    out = train_sequence(m, sched, meth, data, seeds=seeds, epochs=epochs, batch_size=32, per_task_heads=heads,
                         cuda_graphs=False, log=lambda *a: None)
    R = out["accuracy"]
    assert R.shape == (2, 2, 2) and out["untrained_accuracy"].shape == (2, 2)
    assert out["train_loss"].shape == (2, 2, epochs) and np.isfinite(out["train_loss"]).all()
    if model == "mlp":
        assert np.diagonal(R, axis1=1, axis2=2).mean() > 0.4, R   # the tasks learned (chance 0.1)


def test_two_seeds_together_equal_each_alone():
    data = synthetic()
    run = run_of("mlp", "replay")

    def train(seeds):
        m, sched, meth = build_sequence_run(run, seeds, torch.device("cpu"), 1024, 2, False)
        return train_sequence(m, sched, meth, data, seeds=seeds, epochs=1, batch_size=32, cuda_graphs=False,
                              log=lambda *a: None)["accuracy"]

    together = train([0, 1])
    for k, s in enumerate([0, 1]):
        np.testing.assert_allclose(train([s])[0], together[k], atol=0.011)   # an image or so of 100 may flip


def test_iterations_per_task_counts_steps_per_dataset():
    data = synthetic(n_train=(100, 40))
    m, sched, meth = build_sequence_run(run_of(), [0], torch.device("cpu"), 1024, 2, False)
    out = train_sequence(m, sched, meth, data, seeds=[0], epochs=1, batch_size=32, iterations_per_task=9,
                         cuda_graphs=False, log=lambda *a: None)
    # task 0: 4 steps per epoch -> 3 epochs (the last cut); task 1: 2 steps per epoch -> 5 epochs
    assert out["train_loss"].shape == (1, 2, 5)
    assert np.isfinite(out["train_loss"][0, 0, :3]).all() and np.isnan(out["train_loss"][0, 0, 3:]).all()
    assert sched.step_count == 18


# ---- the note's table and the verdicts ---------------------------------------------------------------
def test_average_retention_is_the_notes_mean_of_the_earlier_tasks():
    """The note's own numbers: standard SSM 61.2 and 75.8 after task 3 -> 68.5; nested 78.5, 85.2 -> 81.9 (rounded)."""
    R = np.zeros((2, 3, 3))
    R[0, 2] = [0.612, 0.758, 0.887]
    R[1, 2] = [0.785, 0.852, 0.899]
    R[:, [0, 1], [0, 1]] = [[0.853, 0.921], [0.861, 0.934]]
    t = note_table(R)
    np.testing.assert_allclose(t["average_retention"], [0.685, 0.8185])
    np.testing.assert_allclose(t["at_end"][1], [0.861, 0.934, 0.899])


def _params_with(claim_pairs):
    return {"stats": {"comparisons": [], "alpha": 0.05, "bootstrap_resamples": 100, "seed": 0},
            "note": {"claims": {"c": {"metric": "retention_pct", "higher_is_better": True, "pairs": claim_pairs,
                                      "cifar_pairs": [["x_cifar", "y_cifar"]],
                                      "pmnist_pairs": [["p_new", "p_old"]]}}}}


def _matrices(final_first_task):
    R = np.zeros((len(final_first_task), 2, 2))
    R[:, 0, 0], R[:, 1, 1], R[:, 1, 0] = 0.9, 0.9, final_first_task
    return {"accuracy": R, "untrained_accuracy": np.full((len(final_first_task), 2), 0.1)}


def test_verdicts_supported_opposite_and_not_testable():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.4, 0.6, 20)
    values = per_seed({"better": _matrices(base + 0.05 + rng.normal(0, 0.01, 20)), "same": _matrices(base),
                       "worse": _matrices(base - 0.05 + rng.normal(0, 0.01, 20))})
    tidy = [{"run": r, "seed": str(k), "metric": "acc_pct", "value": str(v)}
            for r, vs in (("p_new", base + 0.1), ("p_old", base)) for k, v in enumerate(vs)]
    tests = claim_tests(_params_with([["better", "same"], ["worse", "same"], ["same", "missing"]]), values, tidy)
    verdicts = {(t["run"], t["control"]): pair_verdict(t, 0.05) for t in tests}
    assert verdicts[("better", "same")] == "supported"
    assert verdicts[("worse", "same")] == "not supported: the opposite holds"
    assert verdicts[("same", "missing")] == "not run yet" and verdicts[("x_cifar", "y_cifar")] == "not testable here"
    assert verdicts[("p_new", "p_old")] == "supported"
    cifar = next(t for t in tests if t["benchmark"] == "cifar")
    assert "CIFAR-10 cannot be downloaded" in cifar["reason"]
    assert abs(next(t for t in tests if t["run"] == "better")["mean_diff"] - 5) < 1   # points of retention
