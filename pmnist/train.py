"""The continual-learning loop: tasks learned one after another, all seeds at once.

Every seed trains its own copy of the model (parameters stacked on a leading seed axis), with its own
initialisation, data order, optimizer state and method state; nothing couples seeds, so the result
equals training the seeds one by one. Data sit on the device as uint8 tensors; a task's permutation
is an index, and each batch is gathered by index: no DataLoader and no per-sample Python in the hot
loop. A method (pmnist.methods: EWC, SI, replay, joint, or none) may choose what each step trains on,
add a penalty to the loss, and keep state between steps and tasks; nothing else changes.
"""
import math
import time

import torch
import torch.nn.functional as F

from pmnist.errors import DivergenceError
from pmnist.methods import METHODS, build_method
from pmnist.models import build_model
from pmnist.optim import OPTIMIZERS, build_optimizer
from pmnist.optim.cms import CMSScheduler


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device is {name!r} but CUDA is not available here; use auto or cpu")
    return device


def graph_safe(run: dict) -> bool:
    """Whether this run's training step may be replayed from a CUDA graph (optimizer and method)."""
    return OPTIMIZERS[run["optimizer"]].graph_safe and METHODS[run["method"]].graph_safe


def build_run(run: dict, model_cfg: dict, seeds, device):
    """(model, scheduler, method) for one run's settings (a validated `runs.<name>` entry)."""
    model = build_model(run["model"], seeds, model_cfg).to(device)
    make_optimizer = lambda params, lr: build_optimizer(run["optimizer"], params, lr, run["optimizer_args"])
    scheduler = CMSScheduler(model.levels(), run["periods"], make_optimizer, run["lr"], accumulate=run["accumulate"],
                             lr_scale=run["lr_scale"], lr_multipliers=run["lr_multipliers"])
    if hasattr(model, "attach_scheduler"):
        model.attach_scheduler(scheduler)
    # Built last, on the parameters as the scheduler leaves them (views of its flat buffers).
    method = build_method(run["method"], run["method_args"], model=model, seeds=seeds)
    return model, scheduler, method


def gather_batch(images, perm, idx):
    """images uint8 [N, 784], idx long [S, B], perm long [S, 784] (one per seed) or [S, B, 784] (one
    per sample) -> [S, B, 784] in [0, 1], in the default dtype (the parameters'): seed s gets
    images[idx[s]] with its pixels permuted by its permutation."""
    x = images[idx]                                                     # [S, B, 784]
    if perm.dim() == 2:
        perm = perm.unsqueeze(1).expand(-1, idx.shape[1], -1)
    return torch.gather(x, 2, perm).to(torch.get_default_dtype()).div_(255)


@torch.no_grad()
def evaluate(model, images, labels, perm, chunk=2000):
    """Accuracy [S] of every seed's model on the whole split, permuted by perm [S, 784]."""
    n_seeds, n = perm.shape[0], images.shape[0]
    correct = torch.zeros(n_seeds, dtype=torch.long, device=images.device)
    for start in range(0, n, chunk):
        idx = torch.arange(start, min(start + chunk, n), device=images.device).expand(n_seeds, -1)
        logits = model(gather_batch(images, perm, idx))
        correct += (logits.argmax(-1) == labels[idx]).sum(1)
    return correct.double() / n


def evaluate_all_tasks(model, images, labels, permutations):
    """[S, T]: accuracy of every seed on every task; permutations long [S, T, 784]."""
    return torch.stack([evaluate(model, images, labels, permutations[:, t]) for t in range(permutations.shape[1])], 1)


def _fmt(seconds):
    return time.strftime("%H:%M:%S", time.gmtime(seconds)) if math.isfinite(seconds) else "?"


class TrainStep:
    """Forward, backward, CMS update and the method's per-step hook for one batch of every seed.

    Per-seed loss is the mean over the seed's batch (plus the method's penalty); the seeds' losses are
    summed, so seed s's gradient is exactly its own. A batch is (idx, tasks): tasks None means every
    sample is of the current task (`start_task`), else each sample gets its own task's permutation
    (replay, joint). On CUDA with `cuda_graphs`, once every level has updated once, forward+backward
    is recorded as a CUDA graph per batch shape (each level's update by the scheduler) and replayed:
    a few launches per step instead of a few hundred. Running totals (loss, first non-finite step per
    seed) stay on the device, so nothing syncs inside an epoch.
    """

    def __init__(self, model, scheduler, method, train_x, train_y, permutations, cuda_graphs):
        self.model, self.scheduler, self.method = model, scheduler, method
        self.train_x, self.train_y, self.permutations = train_x, train_y, permutations
        n_seeds, device = permutations.shape[0], train_x.device
        self.perm = torch.zeros(n_seeds, train_x.shape[1], dtype=torch.long, device=device)  # current task's
        self.seed_index = torch.arange(n_seeds, device=device)[:, None]
        self.loss_sum = torch.zeros(n_seeds, device=device)
        self.first_bad = torch.full((n_seeds,), -1, dtype=torch.long, device=device)
        self.step_count = torch.zeros((), dtype=torch.long, device=device)
        self.use_graphs = cuda_graphs and device.type == "cuda"
        self.graphs = {}  # (width, tasks given) -> (static idx, static tasks, CUDAGraph)

    def start_task(self, task):
        self.perm.copy_(self.permutations[:, task])

    def _forward_backward(self, idx, tasks):
        perm = self.perm if tasks is None else self.permutations[self.seed_index, tasks]  # [S, 784] | [S, W, 784]
        logits = self.model(gather_batch(self.train_x, perm, idx))
        loss = F.cross_entropy(logits.flatten(0, 1), self.train_y[idx].flatten(), reduction="none")
        loss = loss.view(idx.shape[0], -1).mean(1)
        penalty = self.method.penalty()
        self.scheduler.zero_grad()
        self.method.backward(loss, penalty)
        loss = loss.detach()
        objective = loss if penalty is None else loss + penalty.detach()
        self.loss_sum += loss  # the task loss alone: comparable across methods
        newly_bad = (self.first_bad < 0) & ~torch.isfinite(objective)
        self.first_bad.copy_(torch.where(newly_bad, self.step_count, self.first_bad))
        self.step_count += 1

    def __call__(self, idx, tasks=None):
        key = (idx.shape[1], tasks is not None)
        if key in self.graphs:
            static_idx, static_tasks, graph = self.graphs[key]
            static_idx.copy_(idx)
            if tasks is not None:
                static_tasks.copy_(tasks)
            graph.replay()
        else:
            self._forward_backward(idx, tasks)
        self.scheduler.step()
        self.method.after_step()
        if self.use_graphs and key not in self.graphs and all(lv.updates for lv in self.scheduler.levels):
            self._capture(key, idx, tasks)

    def _capture(self, key, idx, tasks):
        if not self.graphs:
            self.scheduler.capture_graphs()
        static_idx, static_tasks = idx.clone(), None if tasks is None else tasks.clone()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._forward_backward(static_idx, static_tasks)
        self.graphs[key] = (static_idx, static_tasks, graph)


def train_continual(model, scheduler, train_x, train_y, eval_x, eval_y, permutations, *, seeds, epochs,
                    batch_size, method=None, cuda_graphs=True, name="run", log=print, on_task_end=None):
    """Train on tasks 0..T-1 in order with `method` (None: plain training); after each task evaluate on every task.

    train_x/eval_x: uint8 [N, 784] and labels [N] on the model's device; permutations: long [S, T, 784].
    Returns float64 numpy arrays: accuracy [S, T, T] (row i: after task i), untrained_accuracy
    [S, T] (before any training, for forward transfer) and train_loss [S, T, epochs] (the mean task
    loss of the epoch's steps, without the method's penalty).
    on_task_end(task, accuracy_row [S, T], train_loss [S, epochs]) is called after each task.
    """
    device = train_x.device
    n_seeds, n_tasks = permutations.shape[:2]
    n = train_x.shape[0]
    if method is None:
        method = build_method("none", {}, model=model, seeds=seeds)
    # Each seed's data order comes from its own generator, seeded like its tasks.
    order_rngs = [torch.Generator().manual_seed(s) for s in seeds]
    train_step = TrainStep(model, scheduler, method, train_x, train_y, permutations, cuda_graphs)

    accuracy = torch.zeros(n_seeds, n_tasks, n_tasks, dtype=torch.float64)
    train_loss = torch.zeros(n_seeds, n_tasks, epochs, dtype=torch.float64)
    model.eval()
    untrained = evaluate_all_tasks(model, eval_x, eval_y, permutations).double().cpu()

    start, done = time.time(), 0
    for task in range(n_tasks):
        train_step.start_task(task)
        for epoch in range(epochs):
            model.train()
            order = torch.stack([torch.randperm(n, generator=g) for g in order_rngs]).to(device)
            batches = method.batches(task, order, batch_size)
            train_step.loss_sum.zero_()
            for idx, tasks in batches:
                train_step(idx, tasks)
            done += 1
            bad = (train_step.first_bad >= 0).nonzero().flatten().tolist()
            if bad:
                s = bad[0]
                raise DivergenceError(
                    f"run '{name}' diverged: non-finite loss for seed {seeds[s]} on task {task} at step "
                    f"{int(train_step.first_bad[s])} (epoch {epoch}); lower the lr or check the data. "
                    f"No results written.")
            train_loss[:, task, epoch] = (train_step.loss_sum / len(batches)).double().cpu()
            elapsed = time.time() - start
            eta = elapsed / done * (n_tasks * epochs - done)
            log(f"[{name}] seeds {seeds[0]}..{seeds[-1]} task {task + 1}/{n_tasks} epoch {epoch + 1}/{epochs} "
                f"loss {train_loss[:, task, epoch].mean():.4f} | elapsed {_fmt(elapsed)} ETA {_fmt(eta)}")
        scheduler.flush()  # apply partial chunks so the evaluation sees all of this task's gradients
        method.end_task(task, train_x, permutations[:, task])
        model.eval()
        accuracy[:, task] = evaluate_all_tasks(model, eval_x, eval_y, permutations).double().cpu()
        log(f"[{name}] after task {task + 1}: mean accuracy on tasks seen "
            f"{accuracy[:, task, :task + 1].mean() * 100:.2f}%")
        if on_task_end is not None:
            on_task_end(task, accuracy[:, task].numpy(), train_loss[:, task].numpy())
    return {"accuracy": accuracy.numpy(), "untrained_accuracy": untrained.numpy(), "train_loss": train_loss.numpy()}
