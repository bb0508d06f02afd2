"""What a continual-learning method may change about training, and the plain default (no method).

The trainer (pmnist.train) calls, for each task t:

    each epoch    batches(t, order, batch_size)   the epoch's steps: what each step trains on
    each step     penalty()                       [S], added to each seed's loss  } inside the step that
                  backward(task_loss, penalty)    gradients into .grad            } a CUDA graph replays
                  (the CMS scheduler's step)
                  after_step()                    per-step bookkeeping, on the device
    task end      (scheduler.flush()) end_task(t, images, perm)

Rules that keep a method right with all seeds batched and with CUDA graphs:
  * state is per seed: every tensor has the leading seed axis, every random draw comes from the
    seed's own CPU generator (`seed_generators`), never from the global RNG;
  * penalty/backward/after_step read and write only device tensors made once and updated in place
    (a replayed graph uses their addresses), never read a device value on the host, and never
    branch on one;
  * randomness is drawn in batches()/end_task(), for a whole epoch or task at once, and moved to
    the device in one copy (no host work and no host-to-device copy per step).
The penalty's gradient joins the task gradient in .grad, so under CMS it accumulates into each
level's chunk like the task gradient does.
"""
import zlib

import numpy as np
import torch


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


def weighted_sq_distance(params, anchors, weights):
    """[S]: per seed, the sum over every parameter entry of weight * (param - anchor)**2."""
    return sum((w * (p - a).square()).flatten(1).sum(1) for p, a, w in zip(params, anchors, weights))
