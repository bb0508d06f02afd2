"""The training step replayed from CUDA graphs: a few launches per step instead of a few hundred.

Two kinds of graph, both recorded once every CMS level has updated once (its optimizer state exists):
  * per update group of the scheduler, its full-chunk update (combine, optimizer step, zero the
    gradients), replayed at every later full chunk (a flush's partial chunk runs eagerly);
  * per batch shape, the step's forward and backward (with the method's penalty and backward),
    replayed with the batch's indices copied into the graph's static inputs.
What a replay may run is the graph-safety contract (pmnist/fast/__init__.py); a run uses graphs only
if its model, optimizer and method are all registered graph_safe (pmnist.train.graph_safe).
"""
import torch


class Replay:
    """fn recorded as a CUDA graph; calling this replays it."""

    def __init__(self, fn, pool=None):
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            fn()

    def __call__(self):
        self.graph.replay()


def capture_scheduler(scheduler):
    """Replace each update group's full-chunk update by the replay of its CUDA graph."""
    pool = torch.cuda.graph_pool_handle()
    for group in scheduler.groups:
        if any(level.updates == 0 for level in group.levels):
            raise RuntimeError(f"period-{group.period} levels have not updated yet: capture after their first update")
        group.update_full_chunk = Replay(group.update_full_chunk, pool)


class GraphedStep:
    """A pmnist.train.TrainStep whose forward+backward is replayed from a CUDA graph per batch shape
    (width, whether each sample names its task), and whose scheduler replays its updates."""

    def __init__(self, step):
        self.step = step
        self.graphs = {}   # (width, tasks given) -> (static idx, static tasks, Replay)

    def __call__(self, idx, tasks=None):
        key = (idx.shape[1], tasks is not None)
        if key in self.graphs:
            static_idx, static_tasks, replay = self.graphs[key]
            static_idx.copy_(idx)
            if tasks is not None:
                static_tasks.copy_(tasks)
            replay()
        else:
            self.step.forward_backward(idx, tasks)
        self.step.update()
        if key not in self.graphs and all(level.updates for level in self.step.scheduler.levels):
            self._capture(key, idx, tasks)

    def _capture(self, key, idx, tasks):
        if not self.graphs:
            capture_scheduler(self.step.scheduler)
        static_idx, static_tasks = idx.clone(), None if tasks is None else tasks.clone()
        self.graphs[key] = (static_idx, static_tasks, Replay(lambda: self.step.forward_backward(static_idx, static_tasks)))
