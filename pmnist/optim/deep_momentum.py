"""Deep Momentum Gradient Descent, DMGD (Behrouz et al., "Nested Learning", Sec. "More Expressive
Designs for Momentum", Eq. 50 of arXiv v2 / Eq. 23 of the NeurIPS version), seed-batched.

What the paper gives. Momentum is a key/value-less associative memory trained by one gradient step
per outer step (Eq. 33-34, App. B):

    W_{i+1} = W_i + m_{i+1},   m_{i+1} = alpha m_i - eta grad_m L(m_i),   L(m) = <m, grad L(W_i; x_i)>

(alpha != 1 "is equivalent to GD on the above plus an l2-regularisation on the momentum"). DMGD
replaces the linear memory by an MLP (Eq. 50):

    W_{i+1} = W_i + m_{i+1}(u_i),   m_{i+1} = alpha_{i+1} m_i - eta_t grad L^(2)(m_i; u_i, 1),   u_i = grad L(W_i; x_i)

with L^(2) "the internal objective of momentum (e.g. dot product similarity)"; the delta-rule
variant replaces dot-product similarity by l2 regression (Eq. 48-49, "Delta Momentum"). The paper
leaves the memory's architecture open ("the internal loss function and the model need to be designed
carefully to obtain an effective momentum module"). Read in: HOPE.md of github.com/henryhawke/mcp-titan
(NeurIPS text, Eq. 17-24) and the arXiv v2 text (Sec. 4.2, 4.4, App. B).

What this module implements (written with the sign used here: W <- W - lr M, so M is the descent
direction and M's objective rewards agreement with the gradient u). Per parameter tensor and per
seed, the memory M has parameters theta = (m, psi):

    m   : one number per coordinate -- the linear memory of Eq. 33 (the momentum table)
    psi : a small MLP h: R -> R (Linear(1, H) -> SiLU -> [Linear(H, H) -> SiLU] ... -> Linear(H, 1),
          num_layers Linear layers, H = hidden_dim; num_layers = 0: no MLP. Hidden layers start from
          a fixed-seed draw, identical for every seed and run; the last layer starts at zero, so
          M = m, plain momentum, at step 1)

    read-out, per coordinate j:  M_theta_j = m_j + c * h_psi(m_j / c),
                                 c = sqrt(RMS(m)^2 + RMS(u)^2) over the seed's tensor (see Scales)
    inner objective:  dot    L2(theta; u) = -sum_j M_theta_j u_j              (dot-product similarity)
                      delta  L2(theta; u) = 1/2 sum_j (M_theta_j - u_j)^2      (l2 regression, delta rule; default)
    inner step (Eq. 50): theta <- alpha theta - eta grad_theta L2(theta; u_t)
    outer step (Eq. 50): W <- W - lr M_{theta_{t+1}}

The memory is read out at its own content (a key-less memory, as the paper describes momentum in
App. B); the current gradient reaches the update through the inner step, which writes u_t into m and
psi before the read-out (Eq. 50's m_{i+1}(u_i)). Feeding u_t to the MLP as well was tried and
rejected: the delta rule then trains the read-out to reproduce u_t itself (memory -> identity on the
gradient, momentum cancelled); one MNIST task, 20k images, hidden 16,
lr 1: 0.73-0.78 test accuracy with u_t as an input (memory_lr 0.01-0.1) vs 0.92 without.
Under the delta rule the MLP learns a calibrated read-out of the momentum (it is fitted to map the
memory before a step to that step's gradient, so it reads out the least-squares prediction of the
next gradient). Under dot it grows along the gradient's agreement with the momentum until the decay
balances it; with a decay of beta per step that equilibrium is small (measured: the MLP's term ~1 %
of the table's norm at memory_lr 0.01-0.1), so `dot` is in practice heavy-ball momentum.

Scales: the MLP works in units of c = sqrt(RMS(m)^2 + RMS(u)^2) (per seed and tensor, computed before
the inner step and held fixed through it): its input m / c, its output and the regression's error
(M - u) / c all have RMS <= 1 whatever the gradient's and the memory's own scales do. Its inner step is
that of the per-coordinate mean of the objective in those units (eta_psi = memory_lr / (n c^2), n =
coordinates of the tensor), so memory_lr depends neither on the gradient's scale nor on the tensor's size.
Why c and not s = RMS(u) alone (the first version): when a tensor's gradient becomes tiny beside the
momentum it has stored, m / s grows without bound, and so do the MLP's input, its regression target and
its inner step. That is how the full-protocol run diverged (seed 5, task 3, step 11809: the MLP's
largest weight 1.9, 2.7, 60, 1.3e6 over four steps, then inf);
tests/test_optimizers.py drops a gradient's scale by 1e6 and checks the memory stays bounded.

alpha and eta_m come from `momentum` (beta) so that the LINEAR memory (num_layers = 0: no MLP) is
exactly classical momentum under either objective:

    dot    alpha = beta, eta_m = 1:      m <- beta m + u              heavy ball = torch.optim.SGD(momentum=beta)
    delta  alpha = 1,    eta_m = 1-beta: m <- beta m + (1-beta) u     EMA (Adam's first moment); the
                                          regression's own forgetting (m - u) replaces the decay
(the MLP's weights take the same alpha: decay beta under dot, which bounds the otherwise unbounded
Hebbian growth of a dot-product memory; none under the delta rule, whose objective is bounded.)
So an EMA step is 1-beta times a heavy-ball step: with `delta` use a ~1/(1-beta) larger lr.
tests/test_optimizers.py checks the dot/linear case against torch.optim.SGD(momentum) bit for bit,
the delta/linear case against the EMA, and that with the defaults the MLP leaves its init.
Measured with the first version (s in place of c; CPU, one MNIST task, 20k images, batch 128, seed 0):
linear delta memory (EMA) lr 1: 0.918; defaults (delta, hidden 128, memory_lr 0.01) lr 1: 0.926, the
MLP's term at the end ~0.6-0.9 of the table's norm per tensor (so far from plain momentum); memory_lr 0.1: 0.885.

CUDA-graph safe: m, the MLP's weights and everything else are device tensors created on the first
step and updated in place (the inner gradient by autograd.grad: no Python branch on a value, no sync).
Cost: the MLP runs on every coordinate (activations [S, n, hidden]), forward, backward, and forward
again for the read-out after the inner step. On CUDA, the two-layer MLP (the runs' design) runs in
two Triton kernels instead (pmnist/fast/deep_momentum_triton.py: activations kept in registers, the same
arithmetic up to the order of sums); the autograd code below is the reference and the CPU path.
"""
import torch
import torch.nn.functional as F

from pmnist.fast.streams import side_by_side

OBJECTIVES = ("delta", "dot")


def _init_mlp(n_seeds, hidden_dim, num_layers, device):
    """[(W [S, in, out], b [S, 1, out])] per Linear layer; the last layer is zero (h = 0)."""
    gen = torch.Generator().manual_seed(0)
    dims = [1] + [hidden_dim] * (num_layers - 1) + [1]
    layers = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        last = i == num_layers - 1
        W = torch.zeros(a, b) if last else (torch.rand(a, b, generator=gen) * 2 - 1) / a ** 0.5
        bias = torch.zeros(1, b) if last else (torch.rand(1, b, generator=gen) * 2 - 1) / a ** 0.5
        layers += [W.expand(n_seeds, a, b).clone().to(device), bias.expand(n_seeds, 1, b).clone().to(device)]
    return layers


def _mlp(layers, x):
    """x [S, N] -> h [S, N]; every coordinate through its seed's MLP independently."""
    h = x.unsqueeze(-1)
    for i in range(0, len(layers), 2):
        h = torch.baddbmm(layers[i + 1], h, layers[i])
        if i + 2 < len(layers):
            h = F.silu(h)
    return h.squeeze(-1)


def read_out(m, mlp, c):
    """M_theta [S, N] for the table m [S, N], the MLP's weights and the memory's scale c [S, 1]
    (memory_scale): the MLP reads the table and answers in units of c."""
    if not mlp:
        return m
    return m + c * _mlp(mlp, m / c)


def memory_scale(m, u):
    """c = sqrt(RMS(m)^2 + RMS(u)^2) per seed [S, 1]: the unit of the MLP's input m / c, its output and
    the inner regression's error (M - u) / c. Both m / c and u / c have RMS <= 1 whatever the two scales
    do, so no input, target or inner step can grow with their ratio (see the module docstring)."""
    return (m.pow(2).mean(1, keepdim=True) + u.pow(2).mean(1, keepdim=True)).sqrt_().clamp_min_(1e-12)


def _triton_step(p, mlp):
    """pmnist.fast.deep_momentum_triton where it handles p (CUDA, two-layer MLP), else None: the
    reference below runs everywhere else (CPU, other depths) and is what the kernels are tested against."""
    if not (p.is_cuda and len(mlp) == 4):
        return None
    from pmnist.fast import deep_momentum_triton   # imports triton: only where CUDA is used
    return deep_momentum_triton if deep_momentum_triton.supported(p) else None


class DeepMomentum(torch.optim.Optimizer):
    def __init__(self, params, lr, momentum=0.9, objective="delta", hidden_dim=128, num_layers=2, memory_lr=0.01):
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
        if int(num_layers) < 0:
            raise ValueError(f"num_layers must be >= 0 (0: the linear memory alone, classical momentum), got {num_layers}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        super().__init__(params, dict(lr=lr, momentum=momentum, objective=objective, hidden_dim=int(hidden_dim),
                                      num_layers=int(num_layers), memory_lr=memory_lr))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            # Each tensor's memory is its own, and its step a chain of small kernels: on CUDA the
            # tensors' chains run side by side on streams (pmnist/fast/streams.py; same kernels, same results).
            side_by_side(lambda p: self._step_tensor(p, group), params, params[0].device if params else "cpu")

    def _step_tensor(self, p, group):
        beta, delta = group["momentum"], group["objective"] == "delta"
        alpha, eta_m = (1.0, 1 - beta) if delta else (beta, 1.0)
        st = self.state[p]
        if not st:
            st["m"] = torch.zeros(p.shape[0], p[0].numel(), dtype=torch.float32, device=p.device)
            st["mlp"] = (_init_mlp(p.shape[0], group["hidden_dim"], group["num_layers"], p.device)
                         if group["num_layers"] else [])
        m, mlp = st["m"], st["mlp"]
        u = p.grad.reshape(p.shape[0], -1).float()
        c = memory_scale(m, u)     # before the inner step: a constant of it
        fused = _triton_step(p, mlp)
        if fused is not None:      # CUDA, two-layer MLP: the same step in two kernels
            fused.step(p, u, m, mlp, c, group["lr"], alpha, eta_m, group["memory_lr"], delta)
            return
        with torch.enable_grad():
            theta = [m.requires_grad_()] + [w.requires_grad_() for w in mlp]
            M = read_out(theta[0], theta[1:], c)
            inner = (M - u).pow(2).mul(0.5) if delta else -(M * u)
            # a sum over seeds: each seed's memory gets only its own gradient
            grads = torch.autograd.grad(inner.sum(), theta)
        m.requires_grad_(False).mul_(alpha).sub_(grads[0], alpha=eta_m)
        if mlp:
            scale = (group["memory_lr"] / (m.shape[1] * c * c)).unsqueeze(-1)   # [S, 1, 1]
            for w, dw in zip(mlp, grads[1:]):
                w.requires_grad_(False).mul_(alpha).sub_(dw * scale)
        update = read_out(m, mlp, c).view_as(p).to(p.dtype)
        p.add_(update, alpha=-group["lr"])
