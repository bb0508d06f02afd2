"""Experience replay with a per-seed reservoir buffer (ER: Chaudhry et al. 2019, "On Tiny Episodic
Memories in Continual Learning"; reservoir sampling: Vitter 1985, Algorithm R).

Memory, per seed: `buffer_size` (image index, task id) pairs, not pixels; a replayed sample is
rebuilt from its training image and its own task's permutation. At the end of each task every
training image of that task is offered to the reservoir, so the buffer is always a uniform sample
(without replacement) of all (image, task) pairs of the tasks finished so far.

Step: the current batch (B images of the current task, the usual order) plus `replay_batch_size`
pairs drawn uniformly with replacement from the buffer, trained as one batch: the loss is each seed's
mean over all B + R samples. On the first task the buffer is empty and batches are plain.
Defaults: 1000 pairs per seed (100 per task after 10 tasks), R = 128 (the default batch size).
"""
import torch

from pmnist.methods.base import Method, seed_generators


class Replay(Method):
    def __init__(self, model, seeds, buffer_size, replay_batch_size):
        super().__init__(model, seeds)
        self.replay_batch_size = replay_batch_size
        self.rngs = seed_generators(seeds, "replay")
        # On the CPU: the buffer changes only at task ends and is read when an epoch's batches are drawn.
        self.memory_images = torch.zeros(len(self.seeds), buffer_size, dtype=torch.long)
        self.memory_tasks = torch.zeros(len(self.seeds), buffer_size, dtype=torch.long)
        self.offered = 0  # pairs offered to the reservoir so far (the same for every seed)

    def batches(self, task, order, batch_size):
        current = order.split(batch_size, dim=1)
        if self.offered == 0:  # first task: nothing stored yet
            return [(idx, None) for idx in current]
        filled = min(self.offered, self.memory_images.shape[1])
        slots = torch.stack([torch.randint(filled, (len(current) * self.replay_batch_size,), generator=g)
                             for g in self.rngs])
        shape = (len(self.seeds), len(current), self.replay_batch_size)
        images = self.memory_images.gather(1, slots).view(shape).to(order.device)
        tasks = self.memory_tasks.gather(1, slots).view(shape).to(order.device)
        return [(torch.cat([idx, images[:, b]], 1), torch.cat([torch.full_like(idx, task), tasks[:, b]], 1))
                for b, idx in enumerate(current)]

    def end_task(self, task, images, perm):
        n = images.shape[0]
        for s, g in enumerate(self.rngs):
            reservoir_add(self.memory_images[s], self.memory_tasks[s], self.offered, torch.arange(n), task, g)
        self.offered += n


def reservoir_add(memory_images, memory_tasks, offered, new_images, new_task, generator):
    """Offer new_images (all of task new_task), in order, to one seed's reservoir (memory_*: [capacity],
    updated in place), which has been offered `offered` pairs before.

    Algorithm R, vectorised: the k-th pair ever offered (0-based) takes slot k while the buffer fills,
    afterwards slot j ~ uniform{0..k} if j < capacity, else it is dropped. Where several pairs draw
    the same slot the last one wins, exactly as in the one-at-a-time loop."""
    capacity, n = memory_images.shape[0], new_images.shape[0]
    k = torch.arange(offered, offered + n, dtype=torch.float64)
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    slot = torch.where(k < capacity, k, torch.floor(u * (k + 1))).long()
    kept = slot < capacity
    last = torch.full((capacity,), -1, dtype=torch.long)
    last.scatter_reduce_(0, slot[kept], torch.arange(n)[kept], "amax")
    won = last >= 0
    memory_images[won] = new_images[last[won]]
    memory_tasks[won] = new_task
