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

from pmnist.cms import CMSScheduler
from pmnist.errors import DivergenceError
from pmnist.fast.graphs import GraphedStep
from pmnist.methods import METHODS, build_method
from pmnist.methods.base import gather_batch
from pmnist.models import DEFAULT_IN_DIM, MODELS, build_model
from pmnist.optim import OPTIMIZERS, build_optimizer


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device is {name!r} but CUDA is not available here; use auto or cpu")
    return device


def graph_safe(run: dict) -> bool:
    """Whether this run's training step may be replayed from CUDA graphs: its model, optimizer and
    method all keep the graph-safety contract (pmnist/fast/__init__.py)."""
    return all(registry[run[axis]].graph_safe for axis, registry in
               (("model", MODELS), ("optimizer", OPTIMIZERS), ("method", METHODS)))


def build_run(run: dict, model_cfg: dict, seeds, device, in_dim=DEFAULT_IN_DIM):
    """(model, scheduler, method) for one run's settings (a validated `runs.<name>` entry); in_dim: the
    protocol's pixels per image, protocol.pad_to squared (the train stage passes it; 784 = pad_to 28)."""
    model = build_model(run["model"], seeds, model_cfg, in_dim=in_dim).to(device)
    make_optimizer = lambda params, lr: build_optimizer(run["optimizer"], params, lr, run["optimizer_args"])
    scheduler = CMSScheduler(model.levels(), run["periods"], make_optimizer, run["lr"], accumulate=run["accumulate"],
                             lr_scale=run["lr_scale"], lr_multipliers=run["lr_multipliers"])
    if hasattr(model, "attach_scheduler"):
        model.attach_scheduler(scheduler)
    # Built last, on the parameters as the scheduler leaves them (views of its flat buffers).
    method = build_method(run["method"], run["method_args"], model=model, seeds=seeds)
    return model, scheduler, method


@torch.no_grad()
def evaluate(model, images, labels, perm, chunk=2000):
    """Accuracy [S] of every seed's model on the whole split, permuted by perm [S, D]."""
    n_seeds, n = perm.shape[0], images.shape[0]
    correct = torch.zeros(n_seeds, dtype=torch.long, device=images.device)
    for start in range(0, n, chunk):
        idx = torch.arange(start, min(start + chunk, n), device=images.device).expand(n_seeds, -1)
        logits = model(gather_batch(images, perm, idx))
        correct += (logits.argmax(-1) == labels[idx]).sum(1)
    return correct.double() / n


def evaluate_all_tasks(model, images, labels, permutations):
    """[S, T]: accuracy of every seed on every task; permutations long [S, T, D]."""
    return torch.stack([evaluate(model, images, labels, permutations[:, t]) for t in range(permutations.shape[1])], 1)


def format_duration(seconds):
    return time.strftime("%H:%M:%S", time.gmtime(seconds)) if math.isfinite(seconds) else "?"


class TrainStep:
    """Forward, backward, CMS update and the method's per-step hook for one batch of every seed.

    Per-seed loss is the mean over the seed's batch (plus the method's penalty); the seeds' losses are
    summed, so seed s's gradient is exactly its own. A batch is (idx, tasks): tasks None means every
    sample is of the current task (`start_task`), else each sample gets its own task's permutation
    (replay, joint). Running totals (loss, first non-finite step per seed) stay on the device, so
    nothing syncs inside an epoch.
    """

    def __init__(self, model, scheduler, method, train_x, train_y, permutations):
        self.model, self.scheduler, self.method = model, scheduler, method
        self.train_x, self.train_y, self.permutations = train_x, train_y, permutations
        n_seeds, device = permutations.shape[0], train_x.device
        self.perm = torch.zeros(n_seeds, train_x.shape[1], dtype=torch.long, device=device)  # current task's
        self.seed_index = torch.arange(n_seeds, device=device)[:, None]
        self.start_tallies(n_seeds, device)

    def start_tallies(self, n_seeds, device):
        self.loss_sum = torch.zeros(n_seeds, device=device)
        self.first_bad = torch.full((n_seeds,), -1, dtype=torch.long, device=device)
        self.step_count = torch.zeros((), dtype=torch.long, device=device)

    def start_task(self, task):
        self.perm.copy_(self.permutations[:, task])

    def __call__(self, idx, tasks=None):
        self.forward_backward(idx, tasks)
        self.update()

    def logits_and_labels(self, idx, tasks):
        """The batch through the model: logits [S, W, C] and labels [S, W], each sample permuted by its
        task's permutation. The one place a protocol's data enters the step (pmnist/sequence_train.py
        reads samples from a pool of datasets instead)."""
        perm = self.perm if tasks is None else self.permutations[self.seed_index, tasks]  # [S, D] | [S, W, D]
        return self.model(gather_batch(self.train_x, perm, idx)), self.train_y[idx]

    def forward_backward(self, idx, tasks):
        logits, labels = self.logits_and_labels(idx, tasks)
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none")
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

    def update(self):
        self.scheduler.step()
        self.method.after_step()


def train_continual(model, scheduler, train_x, train_y, eval_x, eval_y, permutations, *, seeds, epochs,
                    batch_size, method=None, cuda_graphs=True, name="run", log=print, on_task_end=None,
                    iterations_per_task=0):
    """Train on tasks 0..T-1 in order with `method` (None: plain training); after each task evaluate on every task.

    train_x/eval_x: uint8 [N, D] and labels [N] on the model's device; permutations: long [S, T, D]
    (D pixels per image: 784, or 1024 padded to 32x32).

    Length of a task: `epochs` passes over the N training images (batches of batch_size, the last one
    short when B does not divide N: E = epochs), or, with iterations_per_task I > 0, exactly I steps
    (`epochs` unused): batches drawn from successive epochs, each a fresh shuffle of the seed's own order
    stream as above, the last epoch cut after the step that makes I; a task always starts a fresh epoch
    (as van de Ven & Tolias 2019 do: a new data loader per task, 5000 iterations each). Then
    E = ceil(I / ceil(N / batch_size)) epochs, the last one partial.

    Returns float64 numpy arrays: accuracy [S, T, T] (row i: after task i), untrained_accuracy [S, T]
    (before any training, for forward transfer) and train_loss [S, T, E]: entry e is the mean task loss
    (without the method's penalty) over the steps of epoch e of that task, so with iterations_per_task
    the last column averages only the steps of the cut epoch.
    on_task_end(task, accuracy_row [S, T], train_loss [S, E]) is called after each task.
    cuda_graphs: on CUDA, replay each step from CUDA graphs (pmnist/fast/graphs.py; same results): pass
    graph_safe(run).
    """
    device = train_x.device
    n_seeds, n_tasks = permutations.shape[:2]
    n = train_x.shape[0]
    if permutations.shape[2] != train_x.shape[1] or eval_x.shape[1] != train_x.shape[1]:
        raise ValueError(f"pixels per image differ: train {train_x.shape[1]}, eval {eval_x.shape[1]}, "
                         f"permutations {permutations.shape[2]} (pad the images as the permutations were made)")
    steps_per_epoch = math.ceil(n / batch_size)
    n_epochs = math.ceil(iterations_per_task / steps_per_epoch) if iterations_per_task else epochs
    if method is None:
        method = build_method("none", {}, model=model, seeds=seeds)
    # Each seed's data order comes from its own generator, seeded like its tasks: one randperm per epoch.
    order_rngs = [torch.Generator().manual_seed(s) for s in seeds]
    draw_order = lambda: torch.stack([torch.randperm(n, generator=g) for g in order_rngs])
    train_step = TrainStep(model, scheduler, method, train_x, train_y, permutations)
    # On CUDA, replayed from CUDA graphs once every level has updated (same results, fewer launches).
    run_step = GraphedStep(train_step) if cuda_graphs and device.type == "cuda" else train_step

    accuracy = torch.zeros(n_seeds, n_tasks, n_tasks, dtype=torch.float64)
    train_loss = torch.zeros(n_seeds, n_tasks, n_epochs, dtype=torch.float64)
    model.eval()
    untrained = evaluate_all_tasks(model, eval_x, eval_y, permutations).double().cpu()

    start, done = time.time(), 0
    next_order = draw_order()
    for task in range(n_tasks):
        train_step.start_task(task)
        steps_left = iterations_per_task
        for epoch in range(n_epochs):
            model.train()
            order = next_order.to(device)
            batches = method.batches(task, order, batch_size)
            if iterations_per_task:
                if len(batches) != steps_per_epoch:
                    raise RuntimeError(f"method {type(method).__name__} gave {len(batches)} steps for an epoch of "
                                       f"{n} images at batch {batch_size}; iterations_per_task counts "
                                       f"{steps_per_epoch} per epoch")
                batches = batches[:steps_left]  # the last epoch of the task is cut mid-way
                steps_left -= len(batches)
            train_step.loss_sum.zero_()
            for idx, tasks in batches:
                run_step(idx, tasks)
            # Draw the next epoch's order now, while a GPU still works through this epoch's queued steps (the
            # check below waits for them): the same draws in the same sequence, ~0.4 ms per seed per epoch
            # taken off the GPU's idle time.
            if done + 1 < n_tasks * n_epochs:
                next_order = draw_order()
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
            eta = elapsed / done * (n_tasks * n_epochs - done)
            steps = (f" (steps {iterations_per_task - steps_left - len(batches) + 1}-{iterations_per_task - steps_left}"
                     f" of {iterations_per_task})" if iterations_per_task else "")
            log(f"[{name}] seeds {seeds[0]}..{seeds[-1]} task {task + 1}/{n_tasks} epoch {epoch + 1}/{n_epochs}{steps} "
                f"loss {train_loss[:, task, epoch].mean():.4f} | elapsed {format_duration(elapsed)} "
                f"ETA {format_duration(eta)}")
        scheduler.flush()  # apply partial chunks so the evaluation sees all of this task's gradients
        method.end_task(task, train_x, permutations[:, task])
        model.eval()
        accuracy[:, task] = evaluate_all_tasks(model, eval_x, eval_y, permutations).double().cpu()
        log(f"[{name}] after task {task + 1}: mean accuracy on tasks seen "
            f"{accuracy[:, task, :task + 1].mean() * 100:.2f}%")
        if on_task_end is not None:
            on_task_end(task, accuracy[:, task].numpy(), train_loss[:, task].numpy())
    return {"accuracy": accuracy.numpy(), "untrained_accuracy": untrained.numpy(), "train_loss": train_loss.numpy()}
