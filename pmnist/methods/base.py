"""What a continual-learning method may change about training, and the plain default (no method).

The trainer (pmnist.train) calls, for each task t:

    each epoch    batches(t, order, batch_size)   the epoch's steps: what each step trains on
    each step     penalty()                       [S], added to each seed's loss
                  backward(task_loss, penalty)    gradients into .grad
                  (the CMS scheduler's step)
                  after_step()                    per-step bookkeeping
    task end      (scheduler.flush()) end_task(t, images, perm)

All seeds train at once, so a method keeps its state per seed: every tensor has the leading seed
axis, and every random draw comes from the seed's own CPU generator (`seed_generators`), never from
the global RNG. The penalty's gradient joins the task gradient in .grad, so under CMS it accumulates
into each level's chunk like the task gradient does. A method registered graph_safe (so that its runs
replay the step from CUDA graphs) keeps its per-step hooks to the contract in pmnist/fast/__init__.py.
"""
import zlib

import numpy as np
import torch


def gather_batch(images, perm, idx):
    """The inputs of a step: images uint8 [N, D], idx long [S, B], perm long [S, D] (one per seed) or
    [S, B, D] (one per sample) -> [S, B, D] in [0, 1], in the default dtype (the parameters'): seed s
    gets images[idx[s]] with its pixels permuted by its permutation. D: pixels per image (784, or 1024
    padded to 32x32)."""
    x = images[idx]                                                     # [S, B, D]
    if perm.dim() == 2:
        perm = perm.unsqueeze(1).expand(-1, idx.shape[1], -1)
    return torch.gather(x, 2, perm).to(torch.get_default_dtype()).div_(255)


class Method:
    """No method: train on the current task's batches alone (plain sequential training)."""

    def __init__(self, model, seeds):
        self.model, self.seeds = model, list(seeds)
        self.params = list(model.parameters())

    def batches(self, task, order, batch_size):
        """This epoch's steps, a list of (idx [S, W] long, tasks [S, W] long or None) on the device:
        idx are training-image indices, tasks each sample's task (whose permutation it gets);
        None means every sample is of the current task. order: [S, N], this epoch's image order."""
        return [(idx, None) for idx in order.split(batch_size, dim=1)]

    def penalty(self):
        """[S]: the regulariser added to each seed's mean task loss, or None."""
        return None

    def backward(self, task_loss, penalty):
        """Backpropagate this step's objective; gradients add to .grad (CMS sums a chunk's)."""
        objective = task_loss if penalty is None else task_loss + penalty
        objective.sum().backward()  # summed over seeds: each seed's gradient is its own

    def after_step(self):
        """After the optimizer step (the scheduler's), every step."""

    def end_task(self, task, images, perm):
        """After the task's last step and the scheduler's flush. images: the training images
        uint8 [N, 784] (on the device); perm: [S, 784], this task's permutation per seed."""


def seed_generators(seeds, stream):
    """One CPU generator per seed for a method's own draws, seeded from (seed, stream name): reproducible
    from the seed alone, and independent of the seed's data order (whose generator has the bare seed)."""
    key = zlib.crc32(stream.encode())
    return [torch.Generator().manual_seed(int(np.random.SeedSequence([seed, key]).generate_state(1)[0]))
            for seed in seeds]


class AnchorPenalty:
    """The quadratic pull towards an anchor that EWC and SI add to each seed's loss,

        value  = scale / 2 * sum over every parameter entry of w (θ − θ*)²      [S], one per seed
        ∂/∂θ   = scale * w (θ − θ*)                                            added into .grad

    (EWC: scale λ, w the Fisher; SI: scale 2c, w the importance Ω.) The gradient is written in closed
    form, not by autograd: through the MLP's eight tensors autograd's backward of this sum was about 70
    small kernels, ≈ 265 µs of EWC's 560 µs step at 20 seeds on an H100; here it is a few foreach
    launches. value() and add_grad() belong to one training step:
    add_grad() reuses w (θ − θ*) from the value() before it (in a CUDA graph, from the same replay)."""

    def __init__(self, params, anchors, weights, scale):
        self.params, self.anchors, self.weights, self.scale = params, anchors, weights, scale
        self.pull = None   # w (θ − θ*), per parameter: made by value(), read by add_grad()

    @torch.no_grad()
    def value(self):
        distance = torch._foreach_sub(self.params, self.anchors)
        self.pull = torch._foreach_mul(distance, self.weights)
        return self.scale / 2 * sum(t.flatten(1).sum(1) for t in torch._foreach_mul(self.pull, distance))

    @torch.no_grad()
    def add_grad(self):
        torch._foreach_add_([p.grad for p in self.params], self.pull, alpha=self.scale)
