"""The pre-flight budget (pmnist/budget.py) against measured peak memory, and its refusals.

Each measurement runs in a fresh subprocess on the CPU: the growth of its peak resident memory
(resource.getrusage's ru_maxrss) from just before the data and the model exist to the end of a short
training run (2 tasks, evaluation included), against the budget's estimate for the same run. The
estimate must lie within pmnist.budget.ESTIMATE_FACTOR (3x) of the measurement either way."""
import json
import subprocess
import sys
import types

import pytest

from pmnist import budget
from pmnist.config import load_params
from pmnist.errors import ConfigError

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]

MEASURE = r"""
import json, resource, sys
import torch
from pmnist import budget
from pmnist.train import build_run, train_continual
torch.set_num_threads(1)
run, n_train, n_eval, n_tasks = json.loads(sys.argv[1])
torch.ones(8, 8) @ torch.ones(8, 8)  # thread pools and allocator up before the baseline
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()
base = rss()
train = {"epochs": 1, "iterations_per_task": 4}
est = budget.estimate_run(run, n_tasks=n_tasks, n_train=n_train, n_eval=n_eval, n_pixels=784, train=train)
g = torch.Generator().manual_seed(0)
x = torch.randint(0, 256, (n_train, 784), dtype=torch.uint8, generator=g)
y = torch.randint(0, 10, (n_train,), generator=g)
xe = torch.randint(0, 256, (n_eval, 784), dtype=torch.uint8, generator=g)
ye = torch.randint(0, 10, (n_eval,), generator=g)
perms = torch.stack([torch.stack([torch.randperm(784, generator=g) for _ in range(n_tasks)]) for _ in run["seeds"]])
model, scheduler, method = build_run(run, run["model_args"], run["seeds"], torch.device("cpu"))
train_continual(model, scheduler, x, y, xe, ye, perms, seeds=run["seeds"], epochs=1, iterations_per_task=4,
                batch_size=run["batch_size"], method=method, cuda_graphs=False, log=lambda line: None)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"estimate": est.total, "measured": peak - base, "parts": dict(est)}))
"""


def small_run(name, **changes):
    run = dict(load_params(ROOT / "params.yaml")["runs"][name])
    run.update(changes)
    return run


CONFIGS = {
    "wide mlp, adam, 4 seeds": (small_run("baseline", model_args={"hidden_dims": [2048, 2048, 256]},
                                          seeds=[0, 1, 2, 3], batch_size=128), 2000, 2000, 2),
    "cms schedule, sgd, batch 512": (small_run("cms_sgd", model_args={"hidden_dims": [1024, 512, 256]},
                                               seeds=[0, 1, 2, 3, 4, 5], batch_size=512), 4000, 4000, 2),
}


@pytest.mark.parametrize("config", list(CONFIGS))
def test_estimate_within_factor_of_measured_peak(config):
    run, n_train, n_eval, n_tasks = CONFIGS[config]
    out = subprocess.run([sys.executable, "-c", MEASURE, json.dumps([run, n_train, n_eval, n_tasks])], cwd=ROOT,
                         capture_output=True, text=True, timeout=600, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
                                                                           "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    ratio = got["estimate"] / got["measured"]
    print(config, got, f"estimate / measured = {ratio:.2f}")
    assert 1 / budget.ESTIMATE_FACTOR <= ratio <= budget.ESTIMATE_FACTOR, got


def params_with(**sections):
    params = load_params(ROOT / "params.yaml")
    for section, values in sections.items():
        params[section] = {**params[section], **values}
    return params


CPU = types.SimpleNamespace(type="cpu")


def test_study_runs_fit_and_stay_under_the_ceilings():
    params = load_params(ROOT / "params.yaml")
    for name in ("baseline", "cms", "muon", "nested_ssm"):
        est = budget.check_train(params, name, CPU, free=64 * 2**30)
        assert est["steps"] <= budget.MAX_STEPS_PER_RUN


def test_ceilings_default_when_absent_and_a_param_raises_them():
    params = params_with(protocol={"n_tasks": 101})
    with pytest.raises(ConfigError, match=r"^params.yaml: protocol.n_tasks: 101 tasks exceeds the ceiling of 100; "
                                          r"set protocol.max_tasks to at least 101"):
        budget.check_tasks(params)
    budget.check_tasks(params_with(protocol={"n_tasks": 101, "max_tasks": 101}))
    params = params_with(train={"iterations_per_task": 200_000})
    with pytest.raises(ConfigError, match=r"runs.baseline: 2000000 training steps .* exceeds the ceiling of 1000000"):
        budget.check_train(params, "baseline", CPU, free=64 * 2**30)
    params["train"]["max_steps_per_run"] = 2_000_000
    budget.check_train(params, "baseline", CPU, free=64 * 2**30)


def test_memory_refusal_names_the_key_the_estimate_and_the_limit():
    params = load_params(ROOT / "params.yaml")
    params["runs"]["cms"] = {**params["runs"]["cms"], "model_args": {"hidden_dims": [300_000, 128, 64]}}
    with pytest.raises(ConfigError) as e:
        budget.check_train(params, "cms", CPU, free=24 * 2**30)
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith("params.yaml: runs.cms.model_args: run 'cms' needs about ")
    assert "but 24.00 GiB is free" in message
    with pytest.raises(ConfigError, match=r"^params.yaml: runs.baseline.batch_size: "):
        budget.check_train(params_with(), "baseline", CPU, free=2**28)


def test_permutations_refused_beyond_memory():
    with pytest.raises(ConfigError, match=r"protocol.n_seeds x protocol.n_tasks: the task permutations need about"):
        budget.check_permutations(params_with(protocol={"n_seeds": 10_000, "n_tasks": 100}), free=2**30)
