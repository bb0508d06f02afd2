"""Continual-learning methods (pmnist/methods): each rule against a hand-computed or statistical
reference, seed batching against one seed at a time, CMS + replay end to end, graphs against eager."""

import numpy as np
import pytest
import scipy.stats
import torch

from pmnist.data import make_permutations
from pmnist.cms import CMSScheduler
from pmnist.fast.graphs import Replay
from pmnist.methods import METHODS, build_method
from pmnist.methods.replay import reservoir_add
from pmnist.models import MODELS
from pmnist.models.mlp import MLP
from pmnist.registry import Spec
from pmnist.train import TrainStep, build_run, graph_safe, train_continual

CPU = torch.device("cpu")
TINY_MLP = MODELS["mlp"].small_args  # three levels, like the default MLP


@pytest.fixture
def float64():
    """Float64 parameters and inputs, so differences in summation order stay far below any tolerance."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _run(params, method, base="cms", **overrides):
    return {**params["runs"][base], "lr": 1e-3, "method": method, "method_args": METHODS[method].small_args, **overrides}


def _train(run, model_cfg, data, seeds, perms, device=CPU, epochs=1, batch_size=50, cuda_graphs=False):
    train_x, train_y, test_x, test_y = (t.to(device) for t in data)
    model, scheduler, method = build_run(run, model_cfg, seeds, device)
    out = train_continual(model, scheduler, train_x, train_y, test_x, test_y, perms.to(device), seeds=seeds,
                          epochs=epochs, batch_size=batch_size, method=method, cuda_graphs=cuda_graphs,
                          log=lambda line: None)
    return out, model, scheduler, method


# ---- registry -------------------------------------------------------------------------------------

def test_build_method_fills_defaults_and_rejects_unknown_args():
    model = MLP([0], hidden_dims=[4])
    ewc = build_method("ewc", {"gamma": 0.5}, model=model, seeds=[0])
    defaults = METHODS["ewc"].defaults
    assert (ewc.gamma, ewc.ewc_lambda, ewc.fisher_samples) == (0.5, defaults["ewc_lambda"], defaults["fisher_samples"])
    with pytest.raises(ValueError, match=r"method_args\.lambda: unknown key"):
        build_method("si", {"lambda": 1.0}, model=model, seeds=[0])


def test_graph_safe_needs_model_optimizer_and_method(monkeypatch):
    monkeypatch.setitem(METHODS, "unsafe", Spec("pmnist.methods.base:Method"))   # graph_safe unless said: no
    assert graph_safe({"model": "mlp", "optimizer": "adam", "method": "replay"})
    assert not graph_safe({"model": "mlp", "optimizer": "adam", "method": "unsafe"})


# ---- EWC ------------------------------------------------------------------------------------------

def test_ewc_penalty_is_zero_at_the_anchor_and_grows_with_importance_weighted_distance():
    model = MLP([0, 1], hidden_dims=[3])
    ewc = build_method("ewc", {"ewc_lambda": 4.0}, model=model, seeds=[0, 1])
    w = model.layers[0].weight                                    # [S=2, 3, 784]
    ewc.fisher[0][1, 2, 5] = 3.0                                  # one important entry, of seed 1
    assert ewc.penalty().tolist() == [0.0, 0.0]                  # at the anchor: zero
    with torch.no_grad():
        w[1, 0, 0] += 10.0                                        # an entry of zero importance: free
        w[0, 2, 5] += 10.0                                        # seed 0's entry: seed 0 has no importance
        w[1, 2, 5] += 0.5
    torch.testing.assert_close(ewc.penalty(), torch.tensor([0.0, 4.0 / 2 * 3.0 * 0.5 ** 2]))
    with torch.no_grad():
        w[1, 2, 5] += 0.5                                         # twice as far: four times the penalty
    torch.testing.assert_close(ewc.penalty(), torch.tensor([0.0, 4.0 / 2 * 3.0 * 1.0 ** 2]))


@pytest.mark.parametrize("name, args, scale", [("ewc", {"ewc_lambda": 4.0}, 4.0), ("si", {"c": 0.5}, 1.0)])
def test_penalty_gradient_in_closed_form_is_autograds(name, args, scale):
    """EWC's penalty λ/2 Σ F (θ − θ*)² and SI's c Σ Ω (θ − θ*)²: the value per seed, and the gradient that
    backward() writes into .grad (in closed form: scale w (θ − θ*)), against autograd of the same sum."""
    model = MLP([0, 1], hidden_dims=[3])
    method = build_method(name, args, model=model, seeds=[0, 1])
    weights = method.fisher if name == "ewc" else method.importance
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for w, p in zip(weights, method.params):
            w.copy_(torch.rand(w.shape, generator=g))
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    leaves = [p.detach().clone().requires_grad_() for p in method.params]
    per_seed = scale / 2 * sum((w * (x - a) ** 2).flatten(1).sum(1) for w, x, a in zip(weights, leaves, method.anchor))
    expected = torch.autograd.grad(per_seed.sum(), leaves)
    torch.testing.assert_close(method.penalty(), per_seed.detach())
    for p in method.params:
        p.grad = torch.zeros_like(p)
    untouched = 0 * sum(p.sum() for p in method.params) * torch.ones(2)   # a task loss with zero gradient
    method.backward(untouched, method.penalty())
    for p, e in zip(method.params, expected):
        torch.testing.assert_close(p.grad, e)


def test_online_ewc_accumulates_the_fisher_decayed_by_gamma():
    model = MLP([0, 1], hidden_dims=[3])
    ewc = build_method("ewc", {"gamma": 0.25}, model=model, seeds=[0, 1])
    g = torch.Generator().manual_seed(0)
    task_fishers = [[torch.rand(p.shape, generator=g) for p in ewc.params] for _ in range(2)]
    ewc.task_fisher = lambda images, perm: task_fishers.pop(0)   # the estimator is tested below
    f1, f2 = (list(f) for f in task_fishers)
    ewc.end_task(0, None, None)
    with torch.no_grad():
        for p in ewc.params:
            p.add_(1.0)
    ewc.end_task(1, None, None)
    for fisher, a, b, anchor, p in zip(ewc.fisher, f1, f2, ewc.anchor, ewc.params):
        torch.testing.assert_close(fisher, 0.25 * a + b)
        assert torch.equal(anchor, p.detach())                    # θ*: the parameters after the last task


def test_ewc_fisher_is_the_true_fisher_of_per_sample_gradients(mnist):
    """Logits = output bias b (output weights zeroed), p = softmax(b) for every image:
    ∂ log p_y / ∂b_c = δ_yc − p_c, so the true Fisher of b_c is Σ_y p_y (δ_yc − p_c)² = p_c (1 − p_c).
    The empirical Fisher (data labels, ~uniform) would give ≈ 0.44 for class 0 instead of 0.21, and
    the square of a batch-mean gradient ≈ 0."""
    model = MLP([0, 1], hidden_dims=[8])
    last = model.layers[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
        last.bias[:, 0] = 3.0
    ewc = build_method("ewc", {"fisher_samples": 1000}, model=model, seeds=[0, 1])
    perm = torch.arange(784).expand(2, -1)
    fisher = dict(zip(map(id, ewc.params), ewc.task_fisher(mnist[0][:1000], perm)))[id(last.bias)]  # [S, 10]
    p = torch.softmax(last.bias.detach(), -1)
    true = p * (1 - p)
    torch.testing.assert_close(fisher[:, 0], true[:, 0], rtol=0.15, atol=0)             # 0.21; MC error ~3%
    torch.testing.assert_close(fisher[:, 1:].mean(1), true[:, 1:].mean(1), rtol=0.15, atol=0)  # 0.033; ~5%


@pytest.mark.parametrize("model_name", list(MODELS))
def test_ewc_fisher_in_chunks_equals_one_image_per_backward(model_name, mnist, monkeypatch):
    """The per-image copies (several chunks, the last one short) against the plain definition: one
    image, one backward, square, average; same images and same sampled labels (the same generators)."""
    import pmnist.methods.ewc as ewc_module
    from pmnist.models import build_model
    from pmnist.methods.base import gather_batch
    seeds, n = [0, 1], 10
    model = build_model(model_name, seeds, MODELS[model_name].small_args)
    one_image = sum(p.numel() for p in model.parameters())
    monkeypatch.setattr(ewc_module, "FISHER_CHUNK", 3 * one_image)      # chunks of 3, 3, 3, 1 images
    chunked, plain = (build_method("ewc", {"fisher_samples": n}, model=model, seeds=seeds) for _ in range(2))
    images, perm = mnist[0][:500], make_permutations(0, 2, 1)[:, 0]
    got = chunked.task_fisher(images, perm)
    idx = torch.stack([torch.randperm(len(images), generator=g)[:n] for g in plain.rngs])
    u = torch.stack([torch.rand(n, generator=g, dtype=torch.float64) for g in plain.rngs])
    expected = [torch.zeros_like(p) for p in plain.params]
    for k in range(n):
        logp = torch.log_softmax(model(gather_batch(images, perm, idx[:, k:k + 1]))[:, 0], -1)
        label = (logp.detach().exp().cumsum(-1) < u[:, k:k + 1]).sum(-1, keepdim=True).clamp_(max=9)
        for e, g in zip(expected, torch.autograd.grad(logp.gather(1, label).sum(), plain.params)):
            e.add_(g.square() / n)
    assert any(e.abs().sum() > 0 for e in expected)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-9)


# ---- SI -------------------------------------------------------------------------------------------

class Scalar(torch.nn.Module):
    """One parameter θ, with a seed axis of one."""

    def __init__(self):
        super().__init__()
        self.theta = torch.nn.Parameter(torch.zeros(1, 1, dtype=torch.float64))

    def levels(self):
        return [("all", [self.theta])]


def test_si_importance_is_the_path_integral_of_the_task_gradient():
    """SGD, lr 0.5. Task 0: L = ½(θ − 1)² from θ = 0, 3 steps. Task 1: L = ½θ², 2 steps, with the
    SI penalty (c = 1): ω must use the task-loss gradient alone, Δθ the real (penalised) step."""
    c, xi, lr = 1.0, 0.1, 0.5
    model = Scalar()
    sched = CMSScheduler(model.levels(), [1], lambda ps, lr: torch.optim.SGD(ps, lr=lr), lr)
    si = build_method("si", {"c": c, "xi": xi}, model=model, seeds=[0])

    def steps(target, n):  # what pmnist.train.TrainStep does each step
        for _ in range(n):
            sched.zero_grad()
            si.backward((0.5 * (model.theta - target) ** 2).view(1), si.penalty())
            sched.step()
            si.after_step()

    steps(1.0, 3)
    sched.flush()
    si.end_task(0, None, None)
    # θ: 0 → 0.5 → 0.75 → 0.875;  g = −1, −0.5, −0.25;  Δθ = 0.5, 0.25, 0.125
    omega = 1 * 0.5 + 0.5 * 0.25 + 0.25 * 0.125                  # Σ −g Δθ = 0.65625
    importance = omega / (0.875 ** 2 + xi)                       # Ω = ω / ((θ_end − θ_start)² + ξ)
    assert si.importance[0].item() == pytest.approx(importance, rel=1e-12)
    assert si.anchor[0].item() == 0.875 and not si.omega[0].any()

    steps(0.0, 2)
    # step 1 at θ = θ* = 0.875: penalty gradient 0, g = 0.875, θ → 0.4375
    # step 2: task g = 0.4375, penalty gradient 2cΩ(0.4375 − 0.875); the step uses both, ω the task's only
    total = 0.4375 + 2 * c * importance * (0.4375 - 0.875)
    assert model.theta.item() == pytest.approx(0.4375 - lr * total, rel=1e-12)
    assert si.omega[0].item() == pytest.approx(0.875 * 0.4375 + 0.4375 * lr * total, rel=1e-12)


# ---- replay ---------------------------------------------------------------------------------------

def test_reservoir_keeps_a_uniform_sample_of_everything_offered():
    capacity, n_tasks, per_task, trials = 10, 4, 25, 2000
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(n_tasks * per_task)
    for _ in range(trials):
        images, tasks = torch.full((capacity,), -1), torch.full((capacity,), -1)
        for t in range(n_tasks):
            reservoir_add(images, tasks, t * per_task, torch.arange(per_task), t, g)
        items = tasks * per_task + images
        assert items.min() >= 0 and len(items.unique()) == capacity   # full, no pair twice
        counts[items] += 1
    expected = trials * capacity / len(counts)                     # 200 for every (image, task) pair
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert scipy.stats.chi2.sf(chi2, len(counts) - 1) > 1e-3, f"chi2 {chi2:.0f} for {len(counts) - 1} dof"
    per_task_share = counts.view(n_tasks, per_task).sum(1) / counts.sum()
    torch.testing.assert_close(per_task_share, torch.full((n_tasks,), 1 / n_tasks), atol=0.02, rtol=0)


def test_replay_batches_are_the_current_batch_plus_pairs_from_the_buffer():
    seeds, n, batch, replayed = [0, 1], 100, 16, 7
    args = {"buffer_size": 30, "replay_batch_size": replayed}
    replay = build_method("replay", args, model=MLP(seeds, [4]), seeds=seeds)
    order = torch.stack([torch.randperm(n) for _ in seeds])
    images = torch.zeros(n, 784, dtype=torch.uint8)
    assert all(tasks is None for _, tasks in replay.batches(0, order, batch))   # first task: empty buffer
    replay.end_task(0, images, None)
    replay.end_task(1, images, None)
    batches = replay.batches(2, order, batch)
    assert [idx.shape[1] for idx, _ in batches] == [batch + replayed] * 6 + [n % batch + replayed]
    current = order.split(batch, 1)
    for b, (idx, tasks) in enumerate(batches):
        width = current[b].shape[1]
        assert torch.equal(idx[:, :width], current[b]) and (tasks[:, :width] == 2).all()
        for s in range(len(seeds)):
            memory = set(zip(replay.memory_images[s].tolist(), replay.memory_tasks[s].tolist()))
            assert set(zip(idx[s, width:].tolist(), tasks[s, width:].tolist())) <= memory
    assert set(replay.memory_tasks.unique().tolist()) == {0, 1}


def test_each_sample_is_permuted_by_its_own_task(mnist, params):
    seeds = [0, 1]
    perms = make_permutations(0, len(seeds), 3)
    model, scheduler, method = build_run(_run(params, "none"), TINY_MLP, seeds, CPU)
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    step = TrainStep(model, scheduler, method, mnist[0][:100], mnist[1][:100], perms)
    step.start_task(2)
    idx = torch.tensor([[3, 4, 5], [6, 7, 8]])
    tasks = torch.tensor([[0, 2, 1], [1, 1, 0]])
    step(idx, tasks)
    step(idx)                                                      # no tasks: the current task's permutation
    for s in range(2):
        for b in range(3):
            own = mnist[0][idx[s, b]][perms[s, tasks[s, b]]].float() / 255
            torch.testing.assert_close(seen[0][s, b], own)
            torch.testing.assert_close(seen[1][s, b], mnist[0][idx[s, b]][perms[s, 2]].float() / 255)


# ---- joint ----------------------------------------------------------------------------------------

def test_joint_batches_draw_from_every_task_seen_so_far(mnist, params):
    seeds, n_tasks = [0, 1], 3
    model, scheduler, method = build_run(_run(params, "joint"), TINY_MLP, seeds, CPU)
    trained_on = []                                                # (task, tasks of each batch)
    draw = method.batches

    def spy(task, order, batch_size):
        batches = draw(task, order, batch_size)
        trained_on.extend((task, tasks) for _, tasks in batches)
        return batches

    method.batches = spy
    data = (mnist[0][:600], mnist[1][:600], mnist[2][:100], mnist[3][:100])
    train_x, train_y, test_x, test_y = data
    train_continual(model, scheduler, train_x, train_y, test_x, test_y, make_permutations(0, 2, n_tasks),
                    seeds=seeds, epochs=1, batch_size=50, method=method, log=lambda line: None)
    assert [t for t, _ in trained_on] == [t for t in range(n_tasks) for _ in range(12)]  # as many steps as plain
    for task, tasks in trained_on:
        for s in range(len(seeds)):
            assert set(tasks[s].tolist()) == set(range(task + 1)), (task, s)
    last = torch.cat([tasks for t, tasks in trained_on if t == 2], 1)
    share = torch.stack([(last == k).double().mean(1) for k in range(3)], 1)  # [S, 3]
    torch.testing.assert_close(share, torch.full_like(share, 1 / 3), atol=0.06, rtol=0)


# ---- every method -----------------------------------------------------------------------------------

@pytest.mark.parametrize("method", list(METHODS))
def test_batched_seeds_equal_one_seed_at_a_time(mnist, params, float64, method):
    seeds = [0, 1]
    data = (mnist[0][:600], mnist[1][:600], mnist[2][:200], mnist[3][:200])
    perms = make_permutations(0, len(seeds), 2)
    run = _run(params, method, lr=1e-2)                            # cms periods [3, 2, 1]
    both = _train(run, TINY_MLP, data, seeds, perms, batch_size=25)[0]
    alone = [_train(run, TINY_MLP, data, [s], perms[k:k + 1], batch_size=25)[0] for k, s in enumerate(seeds)]
    assert both["accuracy"][:, 0, 0].min() > 0.2                  # it learned (chance 0.1): equality means something
    for key in both:
        np.testing.assert_allclose(both[key], np.concatenate([a[key] for a in alone]), rtol=1e-10, atol=1e-12,
                                   err_msg=key)


def test_cms_periods_with_replay_end_to_end(mnist, params):
    seeds, n_tasks, n = [0, 1], 3, 1500
    data = (mnist[0][:n], mnist[1][:n], mnist[2][:500], mnist[3][:500])
    run = {**_run(params, "replay"), "periods": [3, 2, 1]}
    out, _, scheduler, method = _train(run, params["models"]["mlp"], data, seeds,
                                       make_permutations(0, len(seeds), n_tasks), batch_size=64)
    assert out["accuracy"].shape == (2, n_tasks, n_tasks) and np.isfinite(out["train_loss"]).all()
    assert np.diagonal(out["accuracy"], axis1=1, axis2=2).min() > 0.3   # every task learned (chance: 0.1)
    # 24 steps per task: the slow levels updated every 3rd and 2nd step, none lost at task ends
    assert [lv.updates for lv in scheduler.levels] == [n_tasks * 8, n_tasks * 12, n_tasks * 24]
    assert method.offered == n_tasks * n and set(method.memory_tasks.unique().tolist()) == set(range(n_tasks))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("base", ["baseline", "cms"])
@pytest.mark.parametrize("method", list(METHODS))
def test_cuda_graphs_match_eager(mnist, params, method, base):
    seeds, cuda = [0, 1], torch.device("cuda")
    data = (mnist[0][:3000], mnist[1][:3000], mnist[2], mnist[3])
    run, perms = _run(params, method, base), make_permutations(0, len(seeds), 3)
    eager = _train(run, params["models"]["mlp"], data, seeds, perms, cuda, epochs=2, batch_size=128)[0]
    graphed, _, scheduler, _ = _train(run, params["models"]["mlp"], data, seeds, perms, cuda, epochs=2,
                                      batch_size=128, cuda_graphs=True)
    assert all(isinstance(group.update_full_chunk, Replay) for group in scheduler.groups)  # the graphs were used
    for key in eager:
        np.testing.assert_array_equal(eager[key], graphed[key], err_msg=key)
