"""Nested state-space model (the sound version of "Nested Learning in DHC-SSM"), batched over seeds.

Each image x [D] (D = in_dim, the protocol's pixels per image: 784, or 1024 with protocol.pad_to 32)
is read as a sequence of L = sequence_length rows of P = D / L pixels (D = 784, L = 28: 28 rows of 28
pixels; L = 784: one pixel per step; D = 1024, L = 32: 32 rows of 32). Per seed, with H = hidden_dim,
N = state_dim, M = memory_hidden:

    u_t = GELU(W_in x_t + b_in)                      x_t in R^P, u_t in R^H
    h_t = a * h_{t-1} + (1 - a) * (B u_t + b_B),     h_0 = 0, h_t in R^N, a = exp(-softplus(nu)) in (0, 1)
    y_t = GELU(C h_t + b_C + D * u_t)                y_t in R^H
    z   = max_t y_t                                  readout: max over time of the nonlinear outputs
    w   = softmax(level_logits)                      [3], order slow, medium, fast
    r   = z + sum_k w_k * MLP_k(z)                   MLP_k: H -> M -> H with ReLU (the memory levels)
    logits = W_head r + b_head

The recurrence is diagonal, linear and time-invariant, so it is stable by construction (0 < a < 1;
the (1 - a) input gain makes h an exponential moving average, bounded for any length) and is
computed exactly by batched GEMMs over a chunked scan (`diag_scan`): no Python loop over time steps.

CMS levels, slow -> fast: ["slow", "medium", "fast", "core"]: the three memory MLPs, then the core
(input projection, SSM, readout, level logits, head). Their update frequencies are the run's CMS
`periods` (default run: [100, 10, 1, 1]); the model itself never optimises anything, and every
path carries gradients (the CMSScheduler sums each chunk's gradients: the paper's rule).

Defects of the public implementation fixed here:
  * its state was reset to zero on every call, so nothing recurred: here h_t carries information
    across all steps of a sequence (it is a state-space model);
  * its slow weights moved *along* the gradient (ascent): here all updates are the optimizer's
    descent steps, taken by pmnist.cms.CMSScheduler;
  * its slow path was detached between updates: here nothing is detached; gradients of every
    step reach the slow parameters and are accumulated until their level's update.
"""
import math

import torch
from torch import nn
import torch.nn.functional as F

from pmnist.models.layers import SeedLinear, per_seed_init

MEMORY_LEVELS = ("slow", "medium", "fast")


# Sequences up to this long are scanned with one [L, L] decay matrix (one batched GEMM, L^2 multiply-adds
# per step and state: cheapest for short sequences); longer ones in chunks of ~sqrt(L) steps.
ONE_CHUNK_MAX = 64


def diag_scan(b, log_a, gain=None):
    """h_t = a * h_{t-1} + gain * b_t along the LAST axis, h_{-1} = 0, for b [S, N, R, L] (R sequences
    of L steps per seed and state) and log_a [S, N] (a = exp(log_a) <= 1); gain [S, N] (default 1).
    Returns h [S, N, R, L], contiguous. Time is last so every product below is a batched GEMM over
    (seed, state) pairs with no transposing copy.

    Exact two-level chunked scan: split time into C chunks of K steps (K = L up to ONE_CHUNK_MAX, else
    ~sqrt(L)); inside a chunk the recurrence is a [K, K] lower-triangular matrix of decay powers (the
    gain folded in), across chunks a [C, C] one. Only powers a^k with k >= 0 appear, so nothing
    overflows (unlike a^t * cumsum(a^-t b))."""
    S, N, R, L = b.shape
    K = L if L <= ONE_CHUNK_MAX else math.ceil(math.sqrt(L))
    C = math.ceil(L / K)
    log_a = log_a.reshape(S * N, 1, 1)

    def decay_matrix(n, scale):  # [S*N, n, n]: a^(scale * (t - s)) for t >= s, else 0
        d = torch.arange(n, device=b.device)
        diff = d[:, None] - d[None, :]
        # clamp before exp: masked entries would be a^(negative) = inf and poison the backward
        return torch.exp(log_a * (scale * diff.clamp(min=0))) * (diff >= 0)

    within = decay_matrix(K, 1)
    if gain is not None:
        within = within * gain.reshape(S * N, 1, 1)
    if C * K > L:
        b = F.pad(b, (0, C * K - L))                                # zero inputs after the end: causal
    chunks = b.reshape(S * N, R * C, K)
    local = torch.bmm(chunks, within.mT)                            # state from this chunk only
    if C == 1:
        return local.view(S, N, R, L)
    local = local.view(S * N, R, C, K)
    ends = torch.bmm(local[..., -1], decay_matrix(C, K).mT)         # [S*N, R, C]: state at chunk ends
    entering = F.pad(ends[..., :-1], (1, 0))                        # state before chunk c
    carry = torch.exp(log_a * torch.arange(1, K + 1, device=b.device))   # [S*N, 1, K]: a^(k+1)
    h = local + entering[..., None] * carry[:, :, None]
    return h.view(S, N, R, C * K)[..., :L].contiguous()


class _MaxOverTimeOfGelu(torch.autograd.Function):
    """z = max_t GELU(pre_t + D * u_t), for pre, u [S, B*L, H] (time-major rows of each sequence), D [S, H].

    Equals core_sequence(x).amax(dim=2). Why a Function: only the argmax step of each (seed, image,
    unit) receives gradient, so the backward needs the pre-activation there only (gathered: [S, B, H])
    instead of amax's and addcmul's ~10 passes over [S, B, L, H] (mask casts, counts, products by 1).
    Ties (two steps with the exact same output) send the whole gradient to the first, where amax
    would split it: a valid subgradient either way, and practically never met."""

    @staticmethod
    def forward(ctx, pre, u, D, length):
        S, rows, H = pre.shape
        v = torch.addcmul(pre, D[:, None], u).view(S, rows // length, length, H)
        z, step = F.gelu(v).max(dim=2, keepdim=True)                   # [S, B, 1, H]
        ctx.save_for_backward(step, v.gather(2, step), u.view_as(v).gather(2, step), D)
        ctx.shape = v.shape
        return z.squeeze(2)

    @staticmethod
    def backward(ctx, grad_z):
        step, v_at, u_at, D = ctx.saved_tensors
        grad_v = torch.ops.aten.gelu_backward(grad_z.unsqueeze(2), v_at)   # [S, B, 1, H], at the argmax
        spread = lambda g: grad_z.new_zeros(ctx.shape).scatter_(2, step, g).flatten(1, 2)
        grad_D = (grad_v * u_at).sum((1, 2)) if ctx.needs_input_grad[2] else None
        return spread(grad_v), spread(grad_v * D[:, None, None]), grad_D, None


def _one_seed(p, hidden_dim, state_dim, memory_hidden, n_classes):
    """One seed's layers, in a fixed creation order (so seed s's init is reproducible)."""
    return {
        "inp": nn.Linear(p, hidden_dim),
        "B": nn.Linear(hidden_dim, state_dim),
        "C": nn.Linear(state_dim, hidden_dim),
        "mem": [(nn.Linear(hidden_dim, memory_hidden), nn.Linear(memory_hidden, hidden_dim))
                for _ in MEMORY_LEVELS],
        "head": nn.Linear(hidden_dim, n_classes),
    }


class NestedSSM(nn.Module):
    def __init__(self, seeds, hidden_dim=256, state_dim=64, sequence_length=28, memory_hidden=256,
                 in_dim=784, n_classes=10):
        super().__init__()
        if in_dim % sequence_length:
            raise ValueError(f"NestedSSM: sequence_length {sequence_length} must divide in_dim {in_dim}")
        self.length = sequence_length
        nets = per_seed_init(seeds, lambda: _one_seed(in_dim // sequence_length, hidden_dim, state_dim,
                                                      memory_hidden, n_classes))
        self.inp = SeedLinear([n["inp"] for n in nets])
        self.B = SeedLinear([n["B"] for n in nets])
        self.C = SeedLinear([n["C"] for n in nets])
        self.head = SeedLinear([n["head"] for n in nets])
        self.mem = nn.ModuleList(
            nn.ModuleList(SeedLinear([n["mem"][k][j] for n in nets]) for j in range(2))
            for k in range(len(MEMORY_LEVELS)))
        S = len(seeds)
        # Deterministic inits (identical for every seed): timescales 1/(-log a) log-spaced over
        # [1, L] so the states cover short to whole-sequence memory; D = 1; uniform level weights.
        tau = torch.logspace(0, math.log10(sequence_length), state_dim)
        self.nu = nn.Parameter(torch.log(torch.expm1(1 / tau)).repeat(S, 1))  # softplus(nu) = 1 / tau
        self.D = nn.Parameter(torch.ones(S, hidden_dim))
        self.level_logits = nn.Parameter(torch.zeros(S, len(MEMORY_LEVELS)))
        self.scheduler = None

    def _state_readout_inputs(self, x):
        """x [S, B, D] -> (C h_t + b_C, u_t), each [S, B*L, H]: what y_t = GELU(C h_t + b_C + D u_t) reads."""
        S, Bt, _ = x.shape
        rows = x.reshape(S, Bt * self.length, -1)                     # [S, B*L, P]
        u = F.gelu(self.inp(rows))                                    # [S, B*L, H]
        log_a = -F.softplus(self.nu)                                  # [S, N], a in (0, 1)
        drive = self.B(u, transpose_out=True).mT                      # [S, N, B*L]: B u + b_B, time last
        h = diag_scan(drive.view(S, -1, Bt, self.length), log_a, gain=1 - log_a.exp())  # [S, N, B, L]
        return self.C(h.view(S, -1, Bt * self.length).mT), u

    def core_sequence(self, x):
        """x [S, B, D] -> y [S, B, L, H], the per-step SSM outputs (y_t sees x_1..x_t only)."""
        pre, u = self._state_readout_inputs(x)
        return F.gelu(torch.addcmul(pre, self.D[:, None], u)).view(x.shape[0], x.shape[1], self.length, -1)

    def readout(self, x):
        """x [S, B, D] -> z [S, B, H] = core_sequence(x).amax(dim=2), by a cheaper backward.
        Max over time: "feature seen at some step"; learned clearly faster than the mean here."""
        return _MaxOverTimeOfGelu.apply(*self._state_readout_inputs(x), self.D, self.length)

    def level_weights(self):
        return torch.softmax(self.level_logits, dim=-1)              # [S, 3], per seed

    def forward(self, x, return_diagnostics=False):
        """x [S, B, D] -> logits [S, B, 10]; with return_diagnostics also
        {"levels_updated": names the scheduler's next step() updates, "level_weights": [S, 3]}."""
        z = self.readout(x)                                            # [S, B, H]
        w = self.level_weights()
        memory = sum(w[:, k, None, None] * l2(torch.relu(l1(z))) for k, (l1, l2) in enumerate(self.mem))
        logits = self.head(z + memory)
        if not return_diagnostics:
            return logits
        return logits, {"levels_updated": self._scheduler().due_levels(), "level_weights": w.detach()}

    def levels(self):
        """(name, params) slow -> fast; each parameter in exactly one level."""
        core = [*self.inp.parameters(), *self.B.parameters(), self.nu, *self.C.parameters(), self.D,
                self.level_logits, *self.head.parameters()]
        return [*((name, list(m.parameters())) for name, m in zip(MEMORY_LEVELS, self.mem)), ("core", core)]

    # ---- the API, backed by the one CMSScheduler that trains this model -------------------
    def attach_scheduler(self, scheduler):
        """Called by the training code with the CMSScheduler built on self.levels()."""
        self.scheduler = scheduler

    def _scheduler(self):
        if self.scheduler is None:
            raise RuntimeError("NestedSSM: no scheduler attached; call model.attach_scheduler(CMSScheduler(...)) first")
        return self.scheduler

    def get_memory_utilization(self):
        """{level: {"updates": n, "fraction": n / total_steps}, "total_steps": steps}."""
        sched = self._scheduler()
        total = sched.step_count
        out = {lv.name: {"updates": lv.updates, "fraction": lv.updates / total if total else 0.0}
               for lv in sched.levels}
        return {**out, "total_steps": total}

    def reset_state(self):
        """Zero the step counters and drop pending accumulated gradients (optimizer state is kept)."""
        self._scheduler().reset()
