import pytest
import torch
import torch.nn.functional as F

from pmnist.errors import ConfigError
from pmnist.models import MODELS, build_model, validate_model_config
from pmnist.models.nested_ssm import NestedSSM, diag_scan
from pmnist.optim import build_optimizer
from pmnist.cms import CMSScheduler

SMALL = {"hidden_dim": 16, "state_dim": 8, "memory_hidden": 16}
ADAM = {"betas": [0.9, 0.999], "eps": 1e-8}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matmuls: on 2 shared cores, 2 threads ran these tests up to 20x slower than 1."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def scheduler_for(model, periods, lr=1e-3):
    make = lambda params, lr: build_optimizer("adam", params, lr, ADAM)
    sched = CMSScheduler(model.levels(), periods=periods, make_optimizer=make, base_lr=lr)
    model.attach_scheduler(sched)
    return sched


@pytest.mark.parametrize("length", [28, 784, 5])
def test_scan_equals_reference_loop(length):
    torch.manual_seed(0)
    log_a = -F.softplus(torch.randn(2, 4)) * torch.tensor([1.0, 0.1, 0.01, 0.001])  # short to long memory
    b, gain = torch.randn(2, 4, 3, length), 1 - log_a.exp()   # [S, N, R, L]; the (1 - a) gain the model uses
    h, ref = torch.zeros(2, 4, 3, dtype=torch.float64), []
    for t in range(length):  # reference in float64, so the comparison measures the scan's float32 error
        h = log_a.double().exp()[:, :, None] * h + gain.double()[:, :, None] * b[..., t].double()
        ref.append(h)
    torch.testing.assert_close(diag_scan(b, log_a, gain), torch.stack(ref, -1).float(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("length", [28, 784])
def test_state_carries_information(length):
    model = NestedSSM([0], sequence_length=length, **SMALL)
    x = torch.rand(1, 4, 784)
    x2 = x.clone()
    x2[:, :, : 784 // length] += 10.0   # perturb only the first step (large: 1 pixel of 784 fades)
    with torch.no_grad():
        y, y2 = model.core_sequence(x), model.core_sequence(x2)
        # the last step's output sees the first step only through the recurrent state
        assert (y[:, :, -1] - y2[:, :, -1]).abs().max() > 1e-4
        assert (model(x) - model(x2)).abs().max() > 1e-4   # the logits depend on the first row
        x3 = x.clone()
        x3[:, :, -(784 // length):] += 0.5                  # causality: earlier outputs ignore the last step
        torch.testing.assert_close(model.core_sequence(x3)[:, :, :-1], y[:, :, :-1])


def test_levels_partition_parameters():
    model = NestedSSM([0], **SMALL)
    names = [n for n, _ in model.levels()]
    assert names == MODELS["nested_ssm"].levels({}) == ["slow", "medium", "fast", "core"]
    ids = [id(p) for _, ps in model.levels() for p in ps]
    assert sorted(ids) == sorted(id(p) for p in model.parameters()) and len(set(ids)) == len(ids)
    assert type(build_model("nested_ssm", [0], SMALL)) is NestedSSM


def test_config_validation():
    assert validate_model_config("nested_ssm", "models.nested_ssm", {}) == {
        "hidden_dim": 256, "state_dim": 64, "sequence_length": 28, "memory_hidden": 256}
    with pytest.raises(ConfigError, match="sequence_length"):
        validate_model_config("nested_ssm", "models.nested_ssm", {"sequence_length": 30})
    with pytest.raises(ConfigError, match="state_dims"):
        validate_model_config("nested_ssm", "models.nested_ssm", {"state_dims": 4})


def test_api_needs_scheduler():
    model = NestedSSM([0], **SMALL)
    with pytest.raises(RuntimeError, match="attach_scheduler"):
        model.get_memory_utilization()
    with pytest.raises(RuntimeError, match="attach_scheduler"):
        model(torch.rand(1, 2, 784), return_diagnostics=True)


def test_update_frequencies_and_reset():
    torch.manual_seed(0)
    model = NestedSSM([0], **SMALL)
    sched = scheduler_for(model, [100, 10, 1, 1])
    x, y = torch.rand(1, 8, 784), torch.randint(0, 10, (1, 8))
    slow = dict(model.levels())["slow"]
    counts = {"slow": 0, "medium": 0, "fast": 0, "core": 0}
    before = [p.detach().clone() for p in slow]
    for step in range(1, 201):
        sched.zero_grad()
        logits, diag = model(x, return_diagnostics=True)
        assert diag["level_weights"].shape == (1, 3)
        torch.testing.assert_close(diag["level_weights"].sum(-1), torch.ones(1))
        F.cross_entropy(logits[0], y[0]).backward()
        sched.step()
        for name in diag["levels_updated"]:
            counts[name] += 1
        changed = any(not torch.equal(p, q) for p, q in zip(slow, before))
        assert changed == (step % 100 == 0), step          # slow level moves only at its update
        before = [p.detach().clone() for p in slow]
    assert counts == {"slow": 2, "medium": 20, "fast": 200, "core": 200}
    util = model.get_memory_utilization()
    assert util["total_steps"] == 200
    assert {k: util[k]["updates"] for k in counts} == counts
    assert util["slow"]["fraction"] == 0.01 and util["fast"]["fraction"] == 1.0

    model(x).logsumexp(-1).mean().backward()                # leave pending gradients
    assert all(p.grad is not None for p in slow)
    model.reset_state()
    assert model.get_memory_utilization()["total_steps"] == 0
    assert all(model.get_memory_utilization()[k]["updates"] == 0 for k in counts)
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())  # pending dropped


def test_seeds_are_independent_networks():
    x = torch.rand(2, 5, 784)
    both = NestedSSM([3, 7], **SMALL)
    with torch.no_grad():
        out = both(x)
        for i, seed in enumerate([3, 7]):
            torch.testing.assert_close(out[i], NestedSSM([seed], **SMALL)(x[i : i + 1])[0])


def test_learns_unpermuted_mnist(mnist):
    from pmnist.train import train_continual

    train_x, train_y, test_x, test_y = (torch.as_tensor(t) for t in mnist)
    model = NestedSSM([0], hidden_dim=64, state_dim=32, memory_hidden=64)
    sched = scheduler_for(model, [100, 10, 1, 1], lr=1e-2)
    out = train_continual(model, sched, train_x[:40000], train_y[:40000], test_x[:2000], test_y[:2000],
                          torch.arange(784).view(1, 1, 784), seeds=[0], epochs=1, batch_size=64,
                          log=lambda *a: None)
    acc = out["accuracy"][0, 0, 0]
    print(f"nested_ssm unpermuted MNIST accuracy {acc:.4f}")
    assert acc >= 0.90


def test_fused_readout_equals_amax_of_core_sequence():
    """forward's max-over-time readout (a custom backward) against amax over core_sequence's outputs
    through plain autograd: same loss, same gradients for every parameter (the readout's own, D, too)."""
    torch.manual_seed(0)
    model = NestedSSM([0, 1], **SMALL)
    x = torch.rand(2, 5, 784)

    def loss_and_grads(readout):
        z = readout(x)
        memory = sum(model.level_weights()[:, k, None, None] * l2(torch.relu(l1(z))) for k, (l1, l2) in enumerate(model.mem))
        loss = model.head(z + memory).square().sum()
        return loss, torch.autograd.grad(loss, list(model.parameters()))

    fused = loss_and_grads(model.readout)
    reference = loss_and_grads(lambda x: model.core_sequence(x).amax(dim=2))
    assert torch.equal(fused[0], reference[0])
    for got, want in zip(fused[1], reference[1]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
