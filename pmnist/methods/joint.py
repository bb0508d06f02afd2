"""Joint training on every task seen so far: the upper bound of the sequence, not a continual method.

Task t gets the same steps as every other method (epochs × ⌈N/B⌉, batches of B): each epoch visits
every training image once, in the seed's usual order, but each sample's task (hence its permutation)
is drawn uniformly from {0, …, t}, independently per sample, from the seed's own generator. So on
task t every batch mixes all tasks seen so far in equal expectation, and an epoch gives each about
N/(t+1) samples. Task 0 is plain training. No hyperparameters.
"""
import torch

from pmnist.methods.base import Method, seed_generators


class Joint(Method):
    def __init__(self, model, seeds):
        super().__init__(model, seeds)
        self.rngs = seed_generators(seeds, "joint")

    def batches(self, task, order, batch_size):
        tasks = torch.stack([torch.randint(task + 1, order.shape[1:], generator=g) for g in self.rngs])
        return list(zip(order.split(batch_size, dim=1), tasks.to(order.device).split(batch_size, dim=1)))
