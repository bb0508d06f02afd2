"""Adaptive Deep Momentum (pmnist/optim/adaptive_deep_momentum.py): without its MLP it is Adam; with
it, its memory leaves its init and the update is no longer Adam's; seeds are independent; the step
never reads a device value on the host and takes one Python path (CUDA-graph safety, CPU proxy); it
learns one MNIST task."""
import sys

import pytest
import torch

from pmnist.models.mlp import MLP
from pmnist.optim import OPTIMIZERS, build_optimizer
from pmnist.optim.adaptive_deep_momentum import AdaptiveDeepMomentum
from pmnist.cms import CMSScheduler

NAME = "adaptive_deep_momentum"


def make(params, lr, **args):
    """From the registry when its line is there (the way runs build it), else the class itself."""
    if NAME in OPTIMIZERS:
        return build_optimizer(NAME, params, lr, {**OPTIMIZERS[NAME].defaults, **args})
    return AdaptiveDeepMomentum(params, lr, **args)


def _params_and_grads(steps, seed=0, scales=(1.0, 1e-2)):
    torch.manual_seed(seed)
    params = [torch.randn(3, 6, 10) * 0.1, torch.randn(3, 6) * 0.1]
    drift = [torch.randn_like(p) for p in params]
    grads = [[(d + torch.randn_like(d)) * s for d, s in zip(drift, scales)] for _ in range(steps)]
    return params, grads


def _run(opt_of, params, grads):
    ps = [p.clone().requires_grad_() for p in params]
    opt = opt_of(ps)
    for gs in grads:
        for p, g in zip(ps, gs):
            p.grad = g.clone()
        opt.step()
    return [p.detach() for p in ps], opt


def test_registry_entry_matches_the_note():
    """The note's settings are the defaults: betas 0.9 / 0.999; the memory at deep momentum's design size."""
    assert NAME in OPTIMIZERS, "registry line missing in pmnist/optim/__init__.py"
    d = OPTIMIZERS[NAME].defaults
    assert d["betas"] == [0.9, 0.999] and (d["hidden_dim"], d["num_layers"]) == (128, 2)
    assert OPTIMIZERS[NAME].load() is AdaptiveDeepMomentum


def test_without_mlp_it_is_adam():
    params, grads = _params_and_grads(50)
    lr = 1e-3
    ours, _ = _run(lambda ps: make(ps, lr, num_layers=0), params, grads)
    ref, _ = _run(lambda ps: torch.optim.Adam(ps, lr=lr, betas=(0.9, 0.999), eps=1e-8, foreach=False), params, grads)
    for x, y, p0 in zip(ours, ref, params):
        # equal up to float32 rounding: its bias corrections are float32 device tensors, torch's Python floats
        assert (x - y).abs().max() < 1e-4 * (y - p0).abs().max()


def test_with_mlp_the_memory_learns_and_the_update_is_not_adams():
    torch.manual_seed(0)
    params = [torch.randn(3, 32, 64) * 0.1, torch.randn(3, 32) * 0.1]
    drift = [torch.randn_like(p) for p in params]
    grads = [[(d + torch.randn_like(d)) * 10 ** -(1 + i) for i, d in enumerate(drift)] for _ in range(300)]
    lr = 1e-3
    deep, opt = _run(lambda ps: make(ps, lr), params, grads)
    adam, _ = _run(lambda ps: make(ps, lr, num_layers=0), params, grads)
    for p0, x, y, st in zip(params, deep, adam, opt.state.values()):
        assert st["mlp"][-2].abs().max() > 1e-3, "the memory's read-out never left its (zero) init"
        assert torch.isfinite(x).all()
        moved = (x - p0).norm()
        assert (x - y).norm() > 0.005 * moved


def test_seed_batched_equals_one_seed_at_a_time():
    params, grads = _params_and_grads(6)
    together, _ = _run(lambda ps: make(ps, 1e-2, hidden_dim=8), params, grads)
    for s in range(3):
        alone, _ = _run(lambda ps: make(ps, 1e-2, hidden_dim=8), [p[s:s + 1] for p in params],
                        [[g[s:s + 1] for g in gs] for gs in grads])
        for x, y in zip(together, alone):
            torch.testing.assert_close(x[s:s + 1], y, atol=1e-6, rtol=1e-5)


def _no_sync(*args, **kwargs):
    raise AssertionError("step() reads a tensor value on the host (a device sync; baked into a CUDA graph)")


@pytest.mark.parametrize("num_layers", [0, 2])
def test_step_is_graph_replayable_no_host_reads_and_one_python_path(num_layers, monkeypatch):
    params, grads = _params_and_grads(6)
    ps = [p.clone().requires_grad_() for p in params]
    opt = make(ps, 1e-3, hidden_dim=8, num_layers=num_layers)
    for p, g in zip(ps, grads[0]):
        p.grad = g.clone()
    opt.step()                                  # first step: creates the state
    storages = {id(p): [t.data_ptr() for t in [opt.state[p]["m"], opt.state[p]["v"], opt.state[p]["step"],
                                                 *opt.state[p]["mlp"]]] for p in ps}
    paths = []

    def tracer(frame, event, arg):
        if frame.f_code.co_filename.endswith("adaptive_deep_momentum.py"):
            paths[-1].append((frame.f_lineno, event))
            return tracer
        return None

    for attr in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy"):
        monkeypatch.setattr(torch.Tensor, attr, _no_sync)
    for gs in grads[1:]:
        for p, g in zip(ps, gs):
            p.grad.copy_(g)
        paths.append([])
        previous = sys.gettrace()
        sys.settrace(tracer)
        try:
            opt.step()
        finally:
            sys.settrace(previous)
    monkeypatch.undo()
    assert paths[0] and all(p == paths[0] for p in paths), "step() took a different Python path on a later step"
    for p in ps:
        now = [t.data_ptr() for t in [opt.state[p]["m"], opt.state[p]["v"], opt.state[p]["step"], *opt.state[p]["mlp"]]]
        assert now == storages[id(p)], "step() reallocated a state tensor"


def test_bad_settings_are_refused():
    p = torch.zeros(1, 3, 4, requires_grad=True)
    with pytest.raises(ValueError, match="betas"):
        AdaptiveDeepMomentum([p], 1e-3, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="num_layers"):
        AdaptiveDeepMomentum([p], 1e-3, num_layers=-1)


def test_learns_one_mnist_task(mnist):
    """The budget of tests/test_optimizers.py (one epoch of 20 000 images, batch 128, seed 0, >= 90 %),
    at the note's lr 1e-3; memory hidden 16 for the CPU's sake."""
    from pmnist.train import train_continual

    torch.set_num_threads(1)
    train_x, train_y, test_x, test_y = mnist
    model = MLP(seeds=[0], hidden_dims=[256, 128, 64])
    scheduler = CMSScheduler(model.levels(), [1, 1, 1], lambda ps, lr: make(ps, lr, hidden_dim=16), 1e-3)
    result = train_continual(model, scheduler, train_x[:20000], train_y[:20000], test_x, test_y,
                             torch.arange(784).view(1, 1, 784), seeds=[0], epochs=1, batch_size=128,
                             cuda_graphs=False, log=lambda *a: None)
    assert result["accuracy"][0, 0, 0] >= 0.90, result["accuracy"][0, 0, 0]


def test_the_inner_step_in_chunks_equals_it_whole(monkeypatch):
    """The MLP's inner gradient is summed over coordinates chunk by chunk (bounded memory): the same steps."""
    import pmnist.optim.adaptive_deep_momentum as module

    params, grads = _params_and_grads(5)
    whole, _ = _run(lambda ps: make(ps, 1e-3, hidden_dim=8), params, grads)
    monkeypatch.setattr(module, "CHUNK", 7)            # 60 coordinates per seed: 9 chunks, the last short
    chunked, _ = _run(lambda ps: make(ps, 1e-3, hidden_dim=8), params, grads)
    for x, y in zip(whole, chunked):
        torch.testing.assert_close(x, y, atol=1e-7, rtol=1e-6)
