"""The seed-batched trainer against the one-seed-at-a-time reference loop in bench/."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pmnist.data import make_permutations
from pmnist.train import build_run, train_continual

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from sequential import train_sequential  # noqa: E402


def test_batched_equals_sequential(mnist, params):
    train_x, train_y, test_x, test_y = mnist
    train_x, train_y, test_x, test_y = train_x[:1000], train_y[:1000], test_x[:500], test_y[:500]
    seeds, n_tasks = [0, 1], 2
    perms = make_permutations(0, len(seeds), n_tasks)
    run = {**params["runs"]["baseline"], "lr": 1e-3, "batch_size": 100}
    model, scheduler, method = build_run(run, params["models"]["mlp"], seeds, torch.device("cpu"))
    batched = train_continual(model, scheduler, train_x, train_y, test_x, test_y, perms, seeds=seeds,
                              epochs=2, batch_size=100, method=method, log=lambda line: None)["accuracy"]
    sequential = train_sequential(seeds, perms, train_x, train_y, test_x, test_y, hidden_dims=[256, 128, 64],
                                  lr=1e-3, epochs=2, batch_size=100).numpy()
    assert batched[:, 1, 1].min() > 0.5  # it learned, so the comparison means something
    np.testing.assert_allclose(batched, sequential, atol=2 / 500)  # at most one test image flips


def test_build_run_passes_lr_multipliers_and_method(params):
    run = {**params["runs"]["cms"], "lr": 1e-3, "periods": [3, 2, 1], "lr_multipliers": [4.0, 0.5, 1.0],
           "method": "si", "method_args": {"c": 0.5, "xi": 0.1}}
    model, scheduler, method = build_run(run, params["models"]["mlp"], [0], torch.device("cpu"))
    assert [scheduler.lr(n) for n in ("layer1", "layer2", "layer3")] == [4e-3, 5e-4, 1e-3]
    assert type(method).__name__ == "SynapticIntelligence" and method.c == 0.5
    assert all(a is b for a, b in zip(method.params, model.parameters()))


def _train(params, mnist, run, device, cuda_graphs, n_images=3000):
    train_x, train_y, test_x, test_y = (t.to(device) for t in mnist)
    seeds = [0, 1]
    perms = make_permutations(0, len(seeds), 2).to(device)
    model, scheduler, method = build_run(run, params["models"][run["model"]], seeds, device)
    return train_continual(model, scheduler, train_x[:n_images], train_y[:n_images], test_x, test_y, perms,
                           seeds=seeds, epochs=2, batch_size=128, method=method, cuda_graphs=cuda_graphs,
                           log=lambda line: None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("run_name, accumulate", [
    ("baseline", "sum"), ("cms", "sum"), ("cms", "mean"), ("cms", "last"), ("nested_ssm", "sum"),
    ("muon", "sum"), ("m3", "sum"), ("deep_momentum", "sum")])
def test_cuda_graphs_match_eager(mnist, params, run_name, accumulate):
    run = {**params["runs"][run_name], "accumulate": accumulate}
    eager = _train(params, mnist, run, torch.device("cuda"), cuda_graphs=False)
    graphed = _train(params, mnist, run, torch.device("cuda"), cuda_graphs=True)
    for key in eager:
        np.testing.assert_array_equal(eager[key], graphed[key], err_msg=key)
