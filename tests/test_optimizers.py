"""The optimizer registry: Newton-Schulz, M3's fast branch, seed-batched equivalence, and a real
check that every update rule learns one MNIST task."""
import pytest
import torch

from pmnist.models.mlp import MLP
from pmnist.optim import OPTIMIZERS, build_optimizer
from pmnist.optim.cms import CMSScheduler
from pmnist.optim.newton_schulz import newton_schulz

NEW = ["muon", "m3", "deep_momentum", "adaptive_deep_momentum"]


@pytest.mark.parametrize("shape", [(3, 32, 64), (3, 64, 32), (2, 256, 128)])
def test_newton_schulz_is_near_orthogonal_and_per_seed(shape):
    torch.manual_seed(0)
    G = torch.randn(shape) * torch.tensor([1e-3, 1.0, 50.0])[: shape[0], None, None]  # scales differ per seed
    O = newton_schulz(G, steps=5)
    sv = torch.linalg.svdvals(O)
    # the quintic iteration maps singular values into ~[0.7, 1.2], not exactly to 1 (rectangular
    # Gaussian matrices: sigma_min/||G||_F is not tiny; a near-singular direction would stay small)
    assert sv.min() > 0.5 and sv.max() < 1.5, (sv.min(), sv.max())
    # per-seed: normalised by each seed's own norm, so each slice alone gives the same result
    for s in range(shape[0]):
        torch.testing.assert_close(O[s], newton_schulz(G[s : s + 1])[0], atol=1e-5, rtol=1e-4)
    # and it really is the polar factor's direction: O is close to U V^T
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    assert ((O * (U @ Vh)).sum((1, 2)) / (U @ Vh).norm(dim=(1, 2)) ** 2 > 0.8).all()


def test_m3_alpha0_is_its_fast_branch():
    torch.manual_seed(0)
    W = torch.randn(2, 8, 12)
    b = torch.randn(2, 8)
    lr, m1, v1, eps = 0.01, 0.9, 0.9, 1e-8
    args = {**OPTIMIZERS["m3"].defaults, "alpha": 0.0, "frequency": 1}
    pW, pb = W.clone().requires_grad_(), b.clone().requires_grad_()
    opt = build_optimizer("m3", [pW, pb], lr, args)
    M = [torch.zeros_like(W), torch.zeros_like(b)]
    V = [torch.zeros_like(W), torch.zeros_like(b)]
    ref = [W.clone(), b.clone()]
    for t in range(1, 6):
        grads = [torch.randn_like(W), torch.randn_like(b)]
        pW.grad, pb.grad = grads[0].clone(), grads[1].clone()
        opt.step()
        for i, g in enumerate(grads):
            M[i] = m1 * M[i] + (1 - m1) * g
            V[i] = v1 * V[i] + (1 - v1) * g * g
            P = M[i] / (1 - m1 ** t) / ((V[i] / (1 - v1 ** t)).sqrt() + eps)
            ref[i] = ref[i] - lr * (newton_schulz(P) if P.ndim == 3 else P)  # rows < cols: no shape scale
        torch.testing.assert_close(pW.detach(), ref[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(pb.detach(), ref[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_seed_batched_equals_one_seed_at_a_time(name):
    torch.manual_seed(0)
    W, b = torch.randn(2, 16, 24) * 0.1, torch.randn(2, 16) * 0.1
    grads = [(torch.randn_like(W), torch.randn_like(b) * 1e-3) for _ in range(4)]
    args, lr = OPTIMIZERS[name].defaults, 0.01

    def run(W, b, grads):
        params = [W.clone().requires_grad_(), b.clone().requires_grad_()]
        opt = build_optimizer(name, params, lr, args)
        for gW, gb in grads:
            params[0].grad, params[1].grad = gW.clone(), gb.clone()
            opt.step()
        return [p.detach() for p in params]

    together = run(W, b, grads)
    for s in range(2):
        alone = run(W[s : s + 1], b[s : s + 1], [(gW[s : s + 1], gb[s : s + 1]) for gW, gb in grads])
        for x, y in zip(together, alone):
            torch.testing.assert_close(x[s : s + 1], y, atol=1e-5, rtol=1e-4)


def test_params_without_grad_are_skipped():
    for name in NEW:
        p, q = torch.ones(1, 4, 4, requires_grad=True), torch.ones(1, 4, requires_grad=True)
        opt = build_optimizer(name, [p, q], 0.1, OPTIMIZERS[name].defaults)
        p.grad = torch.randn(1, 4, 4)
        opt.step()
        assert torch.equal(q.detach(), torch.ones(1, 4)) and not torch.equal(p.detach(), torch.ones(1, 4, 4))


# (lr, training images) per optimizer: one epoch, batch 128, reaches >= 90 % test accuracy. The deep
# momentum memory starts as the identity (plain SGD / RMSprop, no momentum yet), so it gets 40k images.
BUDGET = {"sgd": (0.1, 20000), "adam": (2e-3, 20000), "muon": (0.02, 20000), "m3": (0.02, 20000),
          "deep_momentum": (0.4, 40000), "adaptive_deep_momentum": (2e-3, 40000)}
# The memory MLP runs over every gradient coordinate (~200k), the CPU cost of these tests: narrower here.
TEST_ARGS = {"deep_momentum": {"hidden_dim": 4}, "adaptive_deep_momentum": {"hidden_dim": 4}}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_optimizer_learns_one_mnist_task(name, mnist):
    from pmnist.train import train_continual

    train_x, train_y, test_x, test_y = mnist
    lr, n = BUDGET[name]
    model = MLP(seeds=[0], hidden_dims=[256, 128, 64])
    args = {**OPTIMIZERS[name].defaults, **TEST_ARGS.get(name, {})}
    make = lambda params, lr: build_optimizer(name, params, lr, args)
    scheduler = CMSScheduler(model.levels(), [1, 1, 1], make, lr)
    identity = torch.arange(784).view(1, 1, 784)
    result = train_continual(model, scheduler, train_x[:n], train_y[:n], test_x, test_y, identity,
                             seeds=[0], epochs=1, batch_size=128, cuda_graphs=False, log=lambda *a: None)
    accuracy = result["accuracy"]
    print(f"{name}: lr={lr} n={n} test accuracy {accuracy[0, 0, 0]:.4f}")
    assert accuracy[0, 0, 0] >= 0.90, f"{name} lr={lr}: {accuracy[0, 0, 0]:.4f}"
