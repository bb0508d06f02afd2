"""Deep Momentum Gradient Descent (Behrouz et al., "Nested Learning", Sec. 2.3), seed-batched.

The momentum is a learned memory m: R -> R applied to every gradient coordinate. One memory per
parameter tensor and per seed (its weights carry the seed axis, so seeds never share memory):

    x = g / s,  s = RMS(g) over the seed's coordinates     (the MLP sees O(1) inputs whatever the
    m(g) = s * phi(x)                                        gradient scale; s = 0 gives m = 0)
    phi(x) = x + f_theta(x),   f_theta: Linear(1,h) -> SiLU -> [Linear(h,h) -> SiLU] ... -> Linear(h,1)
             with num_layers Linear layers; the last one is zero-initialised, so m(g) = g at step 1
             (plain SGD at first). Hidden layers start from a fixed-seed draw, the same for every
             seed and every run (the optimizer must not touch the global RNG).

Each step, per seed, the memory first takes one gradient step on its inner objective (mean over the
seed's coordinates), then the parameter moves:

    L_in(theta) = mean_j (phi(x_j) - x_j)^2        use_delta_rule: true   (L2 regression, delta rule)
                = -mean_j phi(x_j) x_j             use_delta_rule: false  (dot-product similarity)
    theta <- (1 - memory_decay) theta - inner_lr * grad L_in(theta)     (paper: m_{i+1} = a m_i - eta grad)
    p     <- p - lr * m(g)                                    deep_momentum
    p     <- p - lr * m(g) / (sqrt(v / (1 - beta2^t)) + eps),  v = beta2 v + (1-beta2) g^2
                                                              adaptive_deep_momentum

Notes. With the identity start, the delta-rule objective is already at its minimum (phi(x) = x), so
with use_delta_rule: true the memory never moves and the rule is exactly SGD (or RMS-scaled SGD).
The dot-product objective is linear in phi, hence unbounded: it keeps amplifying phi along x (a
growing effective step size); memory_decay (theta shrinks towards 0, i.e. phi towards the identity)
keeps that bounded.

CUDA-graph safe: the memory weights, v and the step count t are device tensors created on the first
step and updated in place (the inner gradient step included: autograd.grad, no Python branch on any
value, no sync), so a CUDA graph may replay step().
"""
import torch
import torch.nn.functional as F

from pmnist.optim.muon import step_counter


def _init_memory(n_seeds, hidden_dim, num_layers, device):
    """[(W [S, in, out], b [S, 1, out])] per layer; the last layer is zero (phi = identity)."""
    gen = torch.Generator().manual_seed(0)
    dims = [1] + [hidden_dim] * (num_layers - 1) + [1]
    layers = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        last = i == num_layers - 1
        W = torch.zeros(a, b) if last else (torch.rand(a, b, generator=gen) * 2 - 1) / a ** 0.5
        bias = torch.zeros(1, b) if last else (torch.rand(1, b, generator=gen) * 2 - 1) / a ** 0.5
        layers += [W.expand(n_seeds, a, b).clone().to(device), bias.expand(n_seeds, 1, b).clone().to(device)]
    return layers


def _phi(layers, x):
    """x [S, N] -> phi(x) [S, N]; every coordinate goes through its seed's MLP independently."""
    h = x.unsqueeze(-1)
    for i in range(0, len(layers), 2):
        h = torch.baddbmm(layers[i + 1], h, layers[i])
        if i + 2 < len(layers):
            h = F.silu(h)
    return x + h.squeeze(-1)


class DeepMomentum(torch.optim.Optimizer):
    def __init__(self, params, lr, hidden_dim=16, num_layers=2, inner_lr=1e-3, use_delta_rule=False,
                 memory_decay=0.01, adaptive=False, beta2=0.999, eps=1e-8):
        if int(num_layers) < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        super().__init__(params, dict(lr=lr, hidden_dim=int(hidden_dim), num_layers=int(num_layers),
                                      inner_lr=inner_lr, use_delta_rule=use_delta_rule, memory_decay=memory_decay,
                                      adaptive=adaptive, beta2=beta2, eps=eps))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["t"] = step_counter(p)
                    st["memory"] = _init_memory(p.shape[0], group["hidden_dim"], group["num_layers"], p.device)
                    if group["adaptive"]:
                        st["exp_avg_sq"] = torch.zeros_like(p)
                st["t"].add_(1)
                g = p.grad.reshape(p.shape[0], -1).float()
                s = g.pow(2).mean(1, keepdim=True).sqrt()
                x = g / s.clamp_min(1e-30)
                memory = st["memory"]
                with torch.enable_grad():
                    theta = [w.requires_grad_() for w in memory]
                    phi = _phi(theta, x)
                    inner = (phi - x).pow(2) if group["use_delta_rule"] else -phi * x
                    # per-seed means, summed: each seed's memory gets only its own gradient
                    grads = torch.autograd.grad(inner.mean(1).sum(), theta)
                for w, dw in zip(memory, grads):
                    w.requires_grad_(False).mul_(1 - group["memory_decay"]).sub_(dw, alpha=group["inner_lr"])
                update = (s * _phi(memory, x)).view_as(p).to(p.dtype)
                if group["adaptive"]:
                    v = st["exp_avg_sq"]
                    v.mul_(group["beta2"]).addcmul_(p.grad, p.grad, value=1 - group["beta2"])
                    update = update / ((v / (1 - group["beta2"] ** st["t"])).sqrt() + group["eps"])
                p.sub_(group["lr"] * update)
