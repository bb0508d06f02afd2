"""Online EWC (Schwarz et al. 2018, "Progress & Compress"; EWC: Kirkpatrick et al. 2017).

Per seed and parameter entry i. At the end of task t, with θ_t the parameters then (after the flush):

    F   ← γ F + F_t          F_t: diagonal Fisher of task t at θ_t (below); F starts at 0
    θ*  ← θ_t

While training each later task, each seed's loss gains  (λ/2) Σ_i F_i (θ_i − θ*_i)².
With γ = 1 this is the sum of all past tasks' Fisher (one anchor, the latest parameters).

F_t is the *true* Fisher (not the empirical one, which would use the data's labels), estimated by
Monte Carlo from `fisher_samples` training images of task t, drawn per seed without replacement:

    F_t = 1/n Σ_k (∂/∂θ log p_θ(ŷ_k | x_k))²,   ŷ_k ~ p_θ(· | x_k), one label sampled from the model.

One image per backward pass: the Fisher is the mean of squared per-sample gradients, not the square
of a batch gradient. Cost: fisher_samples forward+backward passes per task, outside the training step.
Defaults: λ = 100 (an untuned starting point: choose it on the validation split), γ = 1, n = 200.
"""
import torch

from pmnist.methods.base import Method, seed_generators, weighted_sq_distance
from pmnist.train import gather_batch


class OnlineEWC(Method):
    def __init__(self, model, seeds, ewc_lambda, gamma, fisher_samples):
        super().__init__(model, seeds)
        self.ewc_lambda, self.gamma, self.fisher_samples = ewc_lambda, gamma, fisher_samples
        self.rngs = seed_generators(seeds, "ewc")
        # Made once, updated in place: a replayed CUDA graph reads them by address. Zero Fisher: no
        # penalty on the first task, and the step computes it the same way on every task.
        self.fisher = [torch.zeros_like(p) for p in self.params]
        self.anchor = [p.detach().clone() for p in self.params]

    def penalty(self):
        return self.ewc_lambda / 2 * weighted_sq_distance(self.params, self.anchor, self.fisher)

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
        fisher = [torch.zeros_like(p) for p in self.params]
        for k in range(n):
            with torch.enable_grad():
                logp = torch.log_softmax(self.model(gather_batch(images, perm, idx[:, k:k + 1]))[:, 0], -1)  # [S, C]
                cdf = logp.detach().exp().cumsum(-1)
                label = (cdf < u[:, k:k + 1]).sum(-1, keepdim=True).clamp_(max=logp.shape[-1] - 1)  # [S, 1]
                grads = torch.autograd.grad(logp.gather(1, label).sum(), self.params)  # per seed: its own
            torch._foreach_addcmul_(fisher, grads, grads, value=1 / n)
        return fisher
