"""The reference way to train: one seed at a time, nn.Sequential, a DataLoader, one Adam.

Kept minimal and independent of pmnist's trainer, as the baseline for bench/speed.py and as the
oracle for tests/test_train.py: same init (torch.manual_seed(seed) before building the network),
same tasks and the same per-seed data order, so its accuracy matrices must equal the batched ones.
"""
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def mlp(hidden_dims, in_dim=784, n_classes=10):
    dims = [in_dim, *hidden_dims, n_classes]
    layers = []
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


@torch.no_grad()
def accuracy(model, x, y, batch_size=2000):
    correct = sum((model(xb).argmax(1) == yb).sum().item() for xb, yb in DataLoader(TensorDataset(x, y), batch_size))
    return correct / len(y)


def train_one_seed(seed, permutations, train_x, train_y, test_x, test_y, hidden_dims, lr, epochs, batch_size):
    """Accuracy matrix [T, T] of one seed; permutations long [T, 784]; images uint8 [N, 784]."""
    device = train_x.device
    torch.manual_seed(seed)
    model = mlp(hidden_dims).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8)
    order_rng = torch.Generator().manual_seed(seed)
    n_tasks = len(permutations)
    tests = [(test_x[:, p].float() / 255, test_y) for p in permutations]
    acc = torch.zeros(n_tasks, n_tasks, dtype=torch.float64)
    for task, perm in enumerate(permutations):
        data = TensorDataset(train_x[:, perm].float() / 255, train_y)
        for _ in range(epochs):
            order = torch.randperm(len(train_y), generator=order_rng).tolist()
            for xb, yb in DataLoader(data, batch_size=batch_size, sampler=order):
                loss = F.cross_entropy(model(xb), yb)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        acc[task] = torch.tensor([accuracy(model, x, y) for x, y in tests])
    return acc


def train_sequential(seeds, permutations, train_x, train_y, test_x, test_y, **kw):
    """[S, T, T]: every seed trained alone, one after another."""
    return torch.stack([train_one_seed(s, permutations[k], train_x, train_y, test_x, test_y, **kw)
                        for k, s in enumerate(seeds)])
