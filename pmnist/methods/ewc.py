"""Online EWC (Schwarz et al. 2018, "Progress & Compress"; EWC: Kirkpatrick et al. 2017).

Per seed and parameter entry i. At the end of task t, with θ_t the parameters then (after the flush):

    F   ← γ F + F_t          F_t: diagonal Fisher of task t at θ_t (below); F starts at 0
    θ*  ← θ_t

While training each later task, each seed's loss gains  (λ/2) Σ_i F_i (θ_i − θ*_i)².
With γ = 1 this is the sum of all past tasks' Fisher (one anchor, the latest parameters).

F_t is the *true* Fisher (not the empirical one, which would use the data's labels), estimated by
Monte Carlo from `fisher_samples` training images of task t, drawn per seed without replacement:

    F_t = 1/n Σ_k (∂/∂θ log p_θ(ŷ_k | x_k))²,   ŷ_k ~ p_θ(· | x_k), one label sampled from the model.

The Fisher is the mean of squared per-sample gradients, not the square of a batch gradient: each image
gets its own copy of its seed's network (every parameter repeated along the seed axis, which the models
already batch over and which never mixes seeds), so one backward through a chunk of images gives each
image's own gradient. Cost per task: about fisher_samples × parameters / FISHER_CHUNK forward+backward
passes (not one per image: 200 per task were ≈ 0.45 s of an H100's time at 20 seeds, 1000 per task
most of the literature's oEWC run), outside the training step.
The penalty's gradient is written in closed form (base.AnchorPenalty).
Defaults: λ = 100 (an untuned starting point: choose it on the validation split), γ = 1, n = 200.
"""
import torch
from torch.func import functional_call

from pmnist.methods.base import AnchorPenalty, Method, gather_batch, seed_generators

FISHER_CHUNK = 2 ** 25   # parameter entries copied per chunk of images (128 MiB in float32), at least one image


class OnlineEWC(Method):
    def __init__(self, model, seeds, ewc_lambda, gamma, fisher_samples):
        super().__init__(model, seeds)
        self.ewc_lambda, self.gamma, self.fisher_samples = ewc_lambda, gamma, fisher_samples
        self.rngs = seed_generators(seeds, "ewc")
        # Made once, updated in place: a replayed CUDA graph reads them by address. Zero Fisher: no
        # penalty on the first task, and the step computes it the same way on every task.
        self.fisher = [torch.zeros_like(p) for p in self.params]
        self.anchor = [p.detach().clone() for p in self.params]
        self.anchor_penalty = AnchorPenalty(self.params, self.anchor, self.fisher, scale=ewc_lambda)

    def penalty(self):
        return self.anchor_penalty.value()

    def backward(self, task_loss, penalty):
        task_loss.sum().backward()
        self.anchor_penalty.add_grad()   # the penalty's gradient, λ F (θ − θ*), in closed form

    @torch.no_grad()
    def end_task(self, task, images, perm):
        task_fisher = self.task_fisher(images, perm)
        torch._foreach_mul_(self.fisher, self.gamma)
        torch._foreach_add_(self.fisher, task_fisher)
        torch._foreach_copy_(self.anchor, self.params)

    def task_fisher(self, images, perm):
        """[per parameter, shaped like it]: the task's diagonal true Fisher at the current parameters."""
        n = min(self.fisher_samples, images.shape[0])
        device = images.device
        # Per seed: which images, and the uniforms that pick each sampled label (inverse CDF).
        idx = torch.stack([torch.randperm(images.shape[0], generator=g)[:n] for g in self.rngs]).to(device)
        u = torch.stack([torch.rand(n, generator=g, dtype=torch.float64) for g in self.rngs]).to(device)
        n_seeds = len(self.seeds)
        chunk = max(1, FISHER_CHUNK // sum(p.numel() for p in self.params))   # images per chunk, all seeds
        fisher = [torch.zeros_like(p) for p in self.params]
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            x = gather_batch(images, perm, idx[:, start:start + m]).flatten(0, 1)[:, None]   # [S*m, 1, D]
            # copy k of seed s, at s*m + k, sees image k of seed s alone
            copies = {name: p.detach().repeat_interleave(m, 0).requires_grad_() for name, p in self.model.named_parameters()}
            with torch.enable_grad():
                logp = torch.log_softmax(functional_call(self.model, copies, (x,))[:, 0], -1)   # [S*m, C]
                cdf = logp.detach().exp().cumsum(-1)
                label = (cdf < u[:, start:start + m].reshape(-1, 1)).sum(-1, keepdim=True).clamp_(max=logp.shape[-1] - 1)
                # each copy gets its own gradient; in named_parameters() order, which is self.params'
                grads = torch.autograd.grad(logp.gather(1, label).sum(), list(copies.values()))
            for f, g in zip(fisher, grads):
                f.add_(g.view(n_seeds, m, *g.shape[1:]).square().sum(1), alpha=1 / n)
        return fisher
