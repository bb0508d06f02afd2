"""The CMS scheduler: closed forms on a toy two-level model with a fixed gradient stream (loss linear
in w), flat buffers (bitwise equal to per-tensor optimizers), lr multipliers, and on CUDA fused Adam
over the flat buffer and graph replays."""
import pytest
import torch

from pmnist.cms import CMSScheduler
from pmnist.fast import buffers
from pmnist.fast.buffers import SideBySide, flat_optimizer
from pmnist.fast.graphs import Replay, capture_scheduler
from pmnist.models.mlp import MLP
from pmnist.optim import OPTIMIZERS, build_optimizer

LR = 0.1


def toy(period_slow, accumulate, make=lambda ps, lr: torch.optim.SGD(ps, lr=lr), lr_scale="none", **kw):
    slow, fast = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(3))
    sched = CMSScheduler([("slow", [slow]), ("fast", [fast])], [period_slow, 1], make, LR,
                         accumulate=accumulate, lr_scale=lr_scale, **kw)
    return slow, fast, sched


def feed(slow, fast, sched, grads):
    for g in grads:
        sched.zero_grad()
        ((g * slow).sum() + (g * fast).sum()).backward()  # d/dw = g for both levels
        sched.step()


GRADS = [torch.tensor([1.0, -2.0, 0.5]) * (t + 1) + torch.tensor([0.0, 0.3, -0.1]) * t ** 2 for t in range(6)]


@pytest.mark.parametrize("flatten", [True, False])
@pytest.mark.parametrize("accumulate, expected_slow", [
    ("sum", -LR * (sum(GRADS[:3]) + sum(GRADS[3:]))),
    ("mean", -LR * (sum(GRADS[:3]) / 3 + sum(GRADS[3:]) / 3)),
    ("last", -LR * (GRADS[2] + GRADS[5])),
])
def test_slow_level_closed_form_after_six_steps(accumulate, expected_slow, flatten):
    slow, fast, sched = toy(3, accumulate, flatten=flatten)
    feed(slow, fast, sched, GRADS)
    torch.testing.assert_close(slow.detach(), expected_slow)
    torch.testing.assert_close(fast.detach(), -LR * sum(GRADS))  # the fast level is plain SGD
    assert [lv.updates for lv in sched.levels] == [2, 6]


def test_slow_level_does_not_move_between_updates():
    slow, fast, sched = toy(3, "sum")
    feed(slow, fast, sched, GRADS[:2])
    assert not slow.detach().any() and fast.detach().any()
    assert sched.due_levels() == ["slow", "fast"]


@pytest.mark.parametrize("flatten", [True, False])
def test_adam_step_counter_advances_only_on_updates(flatten):
    make = lambda ps, lr: torch.optim.Adam(ps, lr=lr, betas=(0.9, 0.999), eps=1e-8)
    slow, fast, sched = toy(3, "sum", make, flatten=flatten)
    feed(slow, fast, sched, GRADS)
    (slow_group, fast_group) = sched.groups
    # flattened: Adam is built on the group's flat buffer, so its state is keyed by that tensor
    key = (lambda g, p: g.buffers.flats[0][0]) if flatten else (lambda g, p: p)
    assert int(slow_group.optimizer.state[key(slow_group, slow)]["step"]) == 2
    assert int(fast_group.optimizer.state[key(fast_group, fast)]["step"]) == 6


def test_lr_scales_with_period():
    for lr_scale, factor in [("none", 1.0), ("sqrt_period", 3 ** 0.5), ("period", 3.0)]:
        _, _, sched = toy(3, "sum", lr_scale=lr_scale)
        assert sched.groups[0].optimizer.param_groups[0]["lr"] == pytest.approx(LR * factor)
        assert sched.groups[1].optimizer.param_groups[0]["lr"] == pytest.approx(LR)


def test_lr_multipliers_every_level_every_step_at_lr_over_period():
    """The control run: periods all 1, level l at lr * multiplier[l]. Equal periods with different
    multipliers are separate groups; each level is plain SGD at its own lr."""
    slow, fast, sched = toy(1, "sum", lr_multipliers=[1 / 3, 1.0])
    assert len(sched.groups) == 2
    assert [g.lr for g in sched.groups] == [pytest.approx(LR), pytest.approx(LR / 3)]
    assert sched.lr("slow") == pytest.approx(LR / 3) and sched.lr("fast") == pytest.approx(LR)
    feed(slow, fast, sched, GRADS)
    torch.testing.assert_close(slow.detach(), -LR / 3 * sum(GRADS))
    torch.testing.assert_close(fast.detach(), -LR * sum(GRADS))
    assert [lv.updates for lv in sched.levels] == [6, 6]
    # combined with lr_scale: lr = base * period**a * multiplier
    _, _, sched = toy(4, "sum", lr_scale="sqrt_period", lr_multipliers=[0.5, 2.0])
    assert sched.lr("slow") == pytest.approx(LR * 2 * 0.5) and sched.lr("fast") == pytest.approx(LR * 2.0)
    # same period and multiplier: one group
    _, _, sched = toy(1, "sum")
    assert len(sched.groups) == 1
    with pytest.raises(ValueError, match="lr_multipliers"):
        toy(3, "sum", lr_multipliers=[1.0])


@pytest.mark.parametrize("accumulate", ["sum", "mean", "last"])
def test_partial_chunk_at_task_end_is_applied_once(accumulate):
    """4 steps (one full chunk + 1 pending gradient), flush at the task boundary, 3 more steps:
    the pending gradient is applied at the flush, exactly once, and the next chunk starts afresh."""
    slow, fast, sched = toy(3, accumulate)
    feed(slow, fast, sched, GRADS[:4])
    sched.flush()
    combine = {"sum": lambda gs: sum(gs), "mean": lambda gs: sum(gs) / len(gs), "last": lambda gs: gs[-1]}[accumulate]
    after_flush = -LR * (combine(GRADS[:3]) + combine(GRADS[3:4]))
    torch.testing.assert_close(slow.detach(), after_flush)
    assert sched.levels[0].updates == 2
    sched.flush()  # nothing pending: a second flush changes nothing
    torch.testing.assert_close(slow.detach(), after_flush)
    assert sched.levels[0].updates == 2
    feed(slow, fast, sched, GRADS[:3])
    torch.testing.assert_close(slow.detach(), after_flush - LR * combine(GRADS[:3]))
    torch.testing.assert_close(fast.detach(), -LR * (sum(GRADS[:4]) + sum(GRADS[:3])))


def test_reset_drops_pending_gradients_and_counters():
    slow, fast, sched = toy(3, "sum")
    feed(slow, fast, sched, GRADS[:2])
    sched.reset()
    assert sched.step_count == 0 and [lv.updates for lv in sched.levels] == [0, 0]
    assert not slow.grad.any()
    feed(slow, fast, sched, GRADS[3:6])  # a fresh chunk: only these three gradients count
    torch.testing.assert_close(slow.detach(), -LR * sum(GRADS[3:6]))


# ---- flat buffers ------------------------------------------------------------------------------

def test_parameters_and_gradients_are_views_of_one_flat_buffer_per_group():
    model = MLP([0, 1], [16, 8, 4])
    make = lambda ps, lr: build_optimizer("adam", ps, lr, OPTIMIZERS["adam"].defaults)
    sched = CMSScheduler(model.levels(), [3, 2, 1], make, 1e-3)
    for group in sched.groups:
        (flat, flat_grad), = group.buffers.flats
        assert flat.grad is flat_grad
        assert group.optimizer.param_groups[0]["params"] == [flat]          # fused Adam: one tensor
        for p in group.params:
            assert p.untyped_storage().data_ptr() == flat.untyped_storage().data_ptr()
            assert p.grad.untyped_storage().data_ptr() == flat_grad.untyped_storage().data_ptr()
    assert sum(g.buffers.flats[0][0].numel() for g in sched.groups) == sum(p.numel() for p in model.parameters())
    # a non-elementwise optimizer gets the per-parameter views (it needs each matrix's shape)
    model = MLP([0, 1], [16, 8, 4])
    sched = CMSScheduler(model.levels(), [1, 1, 1],
                         lambda ps, lr: build_optimizer("muon", ps, lr, OPTIMIZERS["muon"].defaults), 1e-3)
    assert [p.shape for p in sched.groups[0].optimizer.param_groups[0]["params"]] == \
        [p.shape for _, ps in model.levels() for p in ps]


def test_replacing_a_gradient_buffer_is_caught():
    slow, fast, sched = toy(3, "sum")
    feed(slow, fast, sched, GRADS[:1])
    fast.grad = None                              # e.g. model.zero_grad() (set_to_none)
    ((GRADS[1] * slow).sum() + (GRADS[1] * fast).sum()).backward()
    with pytest.raises(RuntimeError, match="grad"):
        sched.step()


def _mlp_run(make, flatten, accumulate, periods=(3, 2, 1), steps=8, device="cpu", graphs=False, synthetic=False):
    """A small 2-seed MLP trained on random data by a CMS schedule: a task of `steps` steps, a flush,
    3 more steps. Returns the parameters and the scheduler. synthetic: fixed random gradients written
    into .grad instead of backward (a stream that does not depend on the parameters, so two runs that
    differ by rounding cannot diverge through the model: a ReLU flipping turns a zero gradient into a
    full Adam step)."""
    torch.manual_seed(0)
    model = MLP([0, 1], [32, 16, 8]).to(device)
    sched = CMSScheduler(model.levels(), list(periods), make, 1e-2, accumulate=accumulate, flatten=flatten)
    data = [(torch.rand(2, 16, 784, device=device), torch.randint(0, 10, (2, 16), device=device))
            for _ in range(steps + 3)]
    fixed = [[torch.randn_like(p) * 1e-2 for p in model.parameters()] for _ in data]
    for i, (x, y) in enumerate(data):
        sched.zero_grad()
        if synthetic:
            for p, g in zip(model.parameters(), fixed[i]):
                p.grad.add_(g)                    # in place, as autograd accumulates
        else:
            torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten()).backward()
        sched.step()
        if graphs and i == max(periods) - 1:
            capture_scheduler(sched)
        if i == steps - 1:
            sched.flush()
    return [p.detach().clone() for p in model.parameters()], sched


@pytest.mark.parametrize("accumulate", ["sum", "mean", "last"])
def test_flat_adam_is_bitwise_the_per_tensor_adam(accumulate):
    """Same (foreach) Adam, per tensor vs over the flat buffer: identical bits, parameters and moments."""
    make = lambda ps, lr: torch.optim.Adam(ps, lr=lr, foreach=True)
    flat, fs = _mlp_run(make, True, accumulate)
    ref, rs = _mlp_run(make, False, accumulate)
    for x, y in zip(flat, ref):
        assert torch.equal(x, y), (x - y).abs().max()
    for fg, rg in zip(fs.groups, rs.groups):
        state = fg.optimizer.state[fg.buffers.flats[0][0]]
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(state[key], torch.cat([rg.optimizer.state[p][key].flatten() for p in rg.params]))
        assert int(state["step"]) == fg.levels[0].updates


@pytest.mark.parametrize("accumulate", ["sum", "mean", "last"])
def test_registry_adam_fused_on_the_flat_buffer_matches_per_tensor_foreach_adam(accumulate):
    """The registry's Adam (fused on CPU too: same formula, another evaluation order, ~1 ulp apart per
    step), on a fixed gradient stream (see _mlp_run: through a model, rounding differences can flip a
    ReLU and grow into whole Adam steps, for fused-vs-foreach as for any two orders of evaluation)."""
    make = lambda ps, lr: build_optimizer("adam", ps, lr, OPTIMIZERS["adam"].defaults)
    flat, fs = _mlp_run(make, True, accumulate, synthetic=True)
    ref, _ = _mlp_run(lambda ps, lr: torch.optim.Adam(ps, lr=lr, foreach=True), False, accumulate, synthetic=True)
    assert all(g.optimizer.defaults["fused"] for g in fs.groups)
    for x, y in zip(flat, ref):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-5)


def small(name):
    return {**OPTIMIZERS[name].defaults, **OPTIMIZERS[name].small_args}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_flat_buffers_change_nothing_for_any_registered_optimizer(name):
    args = small(name)
    make = lambda ps, lr: build_optimizer(name, ps, lr, args)
    flat, _ = _mlp_run(make, True, "sum", steps=5)
    ref, _ = _mlp_run(make, False, "sum", steps=5)
    for x, y in zip(flat, ref):
        assert torch.equal(x, y), (name, (x - y).abs().max())


def test_cuda_slices_are_about_one_per_sm_where_the_fused_kernel_gets_fewer_blocks():
    assert buffers.cuda_slice_size(2_427_620) == 18968 and 2_427_620 / 18968 <= buffers.CUDA_SLICES   # the MLP, 10 seeds
    assert buffers.cuda_slice_size(10_000) == buffers.MIN_SLICE                                      # small: 3 slices
    assert buffers.cuda_slice_size(12_138_100) == 0                                              # 50 seeds: 186 chunks
    assert all(buffers.cuda_slice_size(n) % 4 == 0 for n in range(1, 10_000_000, 99_991))       # 16-byte aligned


@pytest.mark.parametrize("make", [lambda ps, lr: torch.optim.Adam(ps, lr=lr, foreach=True),
                                  lambda ps, lr: torch.optim.SGD(ps, lr=lr, momentum=0.9)], ids=["adam", "sgd"])
def test_an_elementwise_optimizer_in_slices_is_bitwise_the_whole_buffer(make):
    """flat_optimizer with slices (what CUDA uses, buffers.cuda_slice_size): 100 slices of 7 (and one of 3) in
    three optimizers of at most 36; same bits as one optimizer over the whole buffer, slices are views."""
    torch.manual_seed(0)
    init, grads = torch.randn(703), [torch.randn(703) for _ in range(5)]
    results = []
    for slice_size in (0, 7):
        flat, flat_grad = init.clone(), torch.zeros(703)
        flat.grad = flat_grad
        opt = flat_optimizer(make, [(flat, flat_grad)], 0.01, slice_size)
        for g in grads:
            flat_grad.copy_(g)
            opt.step()
        results.append(flat)
    assert isinstance(opt, SideBySide) and [len(o.param_groups[0]["params"]) for o in opt.optimizers] == [36, 36, 29]
    part = opt.optimizers[1].param_groups[0]["params"][0]
    assert part.data_ptr() == flat.data_ptr() + 36 * 7 * 4 and part.grad.data_ptr() == flat_grad.data_ptr() + 36 * 7 * 4
    assert torch.equal(results[0], results[1])


# ---- CUDA ----------------------------------------------------------------------------------------

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("accumulate", ["sum", "mean", "last"])
@pytest.mark.parametrize("slice_size, graphs", [(0, False), (512, False), (512, True), (None, True)])
def test_cuda_fused_adam_on_the_flat_buffer_is_bitwise_per_tensor_fused_adam(accumulate, slice_size, graphs, monkeypatch):
    """Fused Adam over the whole flat buffer (slice_size 0) or over its slices side by side on streams
    (eager, and replayed from CUDA graphs: parallel branches): bitwise the per-tensor fused Adam.
    slice_size None: buffers.cuda_slice_size's own choice."""
    if slice_size is not None:
        monkeypatch.setattr(buffers, "cuda_slice_size", lambda numel: slice_size)
    make = lambda ps, lr: build_optimizer("adam", ps, lr, OPTIMIZERS["adam"].defaults)   # fused, capturable
    flat, fs = _mlp_run(make, True, accumulate, device="cuda", graphs=graphs)
    ref, _ = _mlp_run(make, False, accumulate, device="cuda")
    if slice_size != 0:       # None: the choice for this small MLP is slices of MIN_SLICE
        assert all(isinstance(g.optimizer, SideBySide) for g in fs.groups)
        assert slice_size != 512 or max(len(g.optimizer.optimizers) for g in fs.groups) == 3   # 99 slices: 36, 36, 27
    else:
        assert all(len(g.optimizer.param_groups[0]["params"]) == 1 for g in fs.groups)
    for x, y in zip(flat, ref):
        assert torch.equal(x, y), (x - y).abs().max()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", [name for name, spec in OPTIMIZERS.items() if spec.graph_safe])
def test_cuda_graph_replays_of_the_scheduler_equal_eager(name):
    """capture_scheduler() after every level's first update, then replays: same bits as eager updates
    (the flush's partial chunk runs eagerly in both)."""
    args = small(name)
    make = lambda ps, lr: build_optimizer(name, ps, lr, args)
    graphed, gs = _mlp_run(make, True, "sum", device="cuda", graphs=True, steps=10)
    eager, _ = _mlp_run(make, True, "sum", device="cuda", steps=10)
    assert all(isinstance(g.update_full_chunk, Replay) for g in gs.groups)
    for x, y in zip(graphed, eager):
        assert torch.equal(x, y), (name, (x - y).abs().max())
