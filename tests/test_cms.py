"""The CMS scheduler on a toy two-level model with a fixed gradient stream (loss linear in w)."""
import pytest
import torch

from pmnist.optim.cms import CMSScheduler

LR = 0.1


def toy(period_slow, accumulate, make=lambda ps, lr: torch.optim.SGD(ps, lr=lr), lr_scale="none"):
    slow, fast = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(3))
    sched = CMSScheduler([("slow", [slow]), ("fast", [fast])], [period_slow, 1], make, LR,
                         accumulate=accumulate, lr_scale=lr_scale)
    return slow, fast, sched


def feed(slow, fast, sched, grads):
    for g in grads:
        sched.zero_grad()
        ((g * slow).sum() + (g * fast).sum()).backward()  # d/dw = g for both levels
        sched.step()


GRADS = [torch.tensor([1.0, -2.0, 0.5]) * (t + 1) + torch.tensor([0.0, 0.3, -0.1]) * t ** 2 for t in range(6)]


@pytest.mark.parametrize("accumulate, expected_slow", [
    ("sum", -LR * (sum(GRADS[:3]) + sum(GRADS[3:]))),
    ("mean", -LR * (sum(GRADS[:3]) / 3 + sum(GRADS[3:]) / 3)),
    ("last", -LR * (GRADS[2] + GRADS[5])),
])
def test_slow_level_closed_form_after_six_steps(accumulate, expected_slow):
    slow, fast, sched = toy(3, accumulate)
    feed(slow, fast, sched, GRADS)
    torch.testing.assert_close(slow.detach(), expected_slow)
    torch.testing.assert_close(fast.detach(), -LR * sum(GRADS))  # the fast level is plain SGD
    assert [lv.updates for lv in sched.levels] == [2, 6]


def test_slow_level_does_not_move_between_updates():
    slow, fast, sched = toy(3, "sum")
    feed(slow, fast, sched, GRADS[:2])
    assert not slow.detach().any() and fast.detach().any()
    assert sched.due_levels() == ["slow", "fast"]


def test_adam_step_counter_advances_only_on_updates():
    make = lambda ps, lr: torch.optim.Adam(ps, lr=lr, betas=(0.9, 0.999), eps=1e-8)
    slow, fast, sched = toy(3, "sum", make)
    feed(slow, fast, sched, GRADS)
    (slow_group, fast_group) = sched.groups
    assert int(slow_group.optimizer.state[slow]["step"]) == 2
    assert int(fast_group.optimizer.state[fast]["step"]) == 6


def test_lr_scales_with_period():
    for lr_scale, factor in [("none", 1.0), ("sqrt_period", 3 ** 0.5), ("period", 3.0)]:
        _, _, sched = toy(3, "sum", lr_scale=lr_scale)
        assert sched.groups[0].optimizer.param_groups[0]["lr"] == pytest.approx(LR * factor)
        assert sched.groups[1].optimizer.param_groups[0]["lr"] == pytest.approx(LR)


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
