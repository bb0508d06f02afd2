"""Synaptic Intelligence (Zenke, Poole & Ganguli 2017, "Continual Learning Through Synaptic Intelligence").

Per seed and parameter entry i. During a task, at every training step k:

    ω_i ← ω_i − g_i,k · Δθ_i,k

g_k: the gradient of the step's *task* loss alone (not the penalty's); Δθ_k: the change the step made
to θ. Under CMS a level moves only when its chunk is applied: Δθ is 0 at the other steps, and the
chunk's jump is counted at the step it happens with that step's gradient (in expectation the same
as the chunk-mean gradient times the jump). A flush at the task end counts with the last step's
gradient. At the end of task t, with θ_t the parameters then and θ* the previous anchor:

    Ω_i ← Ω_i + ω_i / ((θ_t,i − θ*_i)² + ξ),   θ* ← θ_t,   ω ← 0

(θ* starts at the initial parameters.) While training, each seed's loss gains  c Σ_i Ω_i (θ_i − θ*_i)².
Ω is not clipped (the paper's rule): an entry whose moves raised the task loss gets negative importance.
Defaults c = 0.1, ξ = 0.1: starting points from the permuted-MNIST literature, not tuned here.
"""
import torch

from pmnist.methods.base import AnchorPenalty, Method


class SynapticIntelligence(Method):
    def __init__(self, model, seeds, c, xi):
        super().__init__(model, seeds)
        self.c, self.xi = c, xi
        # Made once, updated in place: a replayed CUDA graph reads and writes them by address.
        self.importance = [torch.zeros_like(p) for p in self.params]   # Ω
        self.omega = [torch.zeros_like(p) for p in self.params]        # ω, this task's path integral
        self.anchor = [p.detach().clone() for p in self.params]        # θ*, the last task's end
        self.before = [p.detach().clone() for p in self.params]        # θ before the current step
        self.task_grad = [torch.zeros_like(p) for p in self.params]    # g of the latest step
        self.anchor_penalty = AnchorPenalty(self.params, self.anchor, self.importance, scale=2 * c)

    def penalty(self):
        return self.anchor_penalty.value()

    def backward(self, task_loss, penalty):
        # ω needs the task-loss gradient alone, so it is taken apart from the penalty's (2cΩ(θ − θ*),
        # in closed form); both then add to .grad, as one backward of their sum would.
        grads = torch.autograd.grad(task_loss.sum(), self.params)
        torch._foreach_copy_(self.task_grad, grads)
        self.anchor_penalty.add_grad()
        torch._foreach_add_([p.grad for p in self.params], grads)

    @torch.no_grad()
    def after_step(self):
        moved = torch._foreach_sub(self.params, self.before)     # Δθ of this step
        torch._foreach_addcmul_(self.omega, self.task_grad, moved, value=-1)   # ω −= g·Δθ
        torch._foreach_copy_(self.before, self.params)

    @torch.no_grad()
    def end_task(self, task, images, perm):
        self.after_step()  # the flush may have moved slow levels: count it with the last gradient
        denom = torch._foreach_sub(self.params, self.anchor)
        torch._foreach_mul_(denom, denom)
        torch._foreach_add_(denom, self.xi)                      # (θ_t − θ*)² + ξ
        torch._foreach_div_(self.omega, denom)
        torch._foreach_add_(self.importance, self.omega)
        torch._foreach_zero_(self.omega)
        torch._foreach_copy_(self.anchor, self.params)
