"""Protocol options for published settings: protocol.pad_to (28 | 32), train.iterations_per_task,
and per-run model sizes. The defaults must leave every result of the study bit-identical."""
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pmnist import config
from pmnist.data import image_pixels, load_permutations, make_permutations, pad_images
from pmnist.errors import ConfigError, DataError
from pmnist.methods import METHODS
from pmnist.methods.base import Method
from pmnist.models import validate_model_config
from pmnist.train import build_run, gather_batch, train_continual

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def _raw_params():
    return yaml.load((ROOT / "params.yaml").read_text(), Loader=config._Loader)


def _data(mnist, n_train=500, n_eval=300):
    train_x, train_y, test_x, test_y = mnist
    return train_x[:n_train], train_y[:n_train], test_x[:n_eval], test_y[:n_eval]


def _train(run, model_cfg, data, perms, seeds=(0, 1), in_dim=None, **kw):
    """train_continual of run on data; in_dim None: build_run called as before the options existed."""
    train_x, train_y, eval_x, eval_y = data
    extra = {} if in_dim is None else {"in_dim": in_dim}
    model, scheduler, method = build_run(run, model_cfg, list(seeds), CPU, **extra)
    out = train_continual(model, scheduler, train_x, train_y, eval_x, eval_y, perms, seeds=list(seeds),
                          method=method, cuda_graphs=False, log=lambda line: None, **kw)
    return out, model, scheduler


# ---- params --------------------------------------------------------------------------------------

def test_new_keys_default_so_params_yaml_needs_no_edit():
    raw = _raw_params()
    for section, key in (("protocol", "pad_to"), ("train", "iterations_per_task")):
        raw[section].pop(key, None)
    params = config.validate(raw)
    assert params["protocol"]["pad_to"] == 28 and params["train"]["iterations_per_task"] == 0
    explicit = _raw_params()
    explicit["protocol"]["pad_to"], explicit["train"]["iterations_per_task"] = 28, 0
    assert config.validate(explicit) == params


@pytest.mark.parametrize("section, key, value, match", [
    ("protocol", "pad_to", 30, r"protocol\.pad_to: must be one of 28, 32; got 30"),
    ("protocol", "pad_to", "32", r"protocol\.pad_to: must be one of 28, 32"),
    ("train", "iterations_per_task", -1, r"train\.iterations_per_task: must be an integer >= 0, got -1"),
    ("train", "iterations_per_task", 2.5, r"train\.iterations_per_task: must be an integer >= 0"),
])
def test_bad_values_are_params_errors(section, key, value, match):
    raw = _raw_params()
    raw[section][key] = value
    with pytest.raises(ConfigError, match=match):
        config.validate(raw)


# ---- the default path is today's, bit for bit ----------------------------------------------------

def _old_make_permutations(seed, n_seeds, n_tasks, identity_first_task=False):
    """The formula of the study's permutations before pad_to existed, spelled out."""
    perms = torch.empty(n_seeds, n_tasks, 784, dtype=torch.long)
    for k in range(n_seeds):
        g = torch.Generator().manual_seed(seed + k)
        for t in range(n_tasks):
            perms[k, t] = torch.randperm(784, generator=g)
        if identity_first_task:
            perms[k, 0] = torch.arange(784)
    return perms


@pytest.mark.parametrize("args, sha256", [
    ((0, 2, 3, False), "bcc8ceeddae375403d9311f2dd3c8267e39bc16a5b7355edab996e927dedd820"),
    ((0, 20, 10, False), "8080b8c1a6d7bcfc31666a83934e7cd0e2b0041182af9a9e53dda461e433fe00"),  # the study's
    ((5, 3, 4, True), "15b8e20593cf21a23db65c20fe55333dda39086f5e52110b0bf77db0e5dba7a8"),
])
def test_default_permutations_are_bit_identical_to_before(args, sha256):
    """Hashes recorded with the code before pad_to (torch pinned in requirements.txt)."""
    perms = make_permutations(*args, n_pixels=image_pixels(28))
    assert torch.equal(perms, make_permutations(*args))
    assert torch.equal(perms, _old_make_permutations(*args))
    assert hashlib.sha256(perms.numpy().tobytes()).hexdigest() == sha256


def test_pad_to_28_leaves_the_images_untouched(mnist):
    images = mnist[0][:10]
    assert pad_images(images, 28) is images and image_pixels(28) == 784


@pytest.mark.parametrize("base, method", [("baseline", "none"), ("cms", "replay")])
def test_default_path_equals_options_set_to_their_defaults(mnist, params, base, method):
    """Today's call (no new arguments) and the call with pad_to 28 / in_dim 784 / iterations_per_task 0
    written out give the same bytes, for a plain run and for CMS + a method that draws its own batches."""
    run = {**params["runs"][base], "lr": {"baseline": 1e-3, "cms": 3e-3}[base], "method": method,
           "method_args": {**METHODS[method].defaults, **({"buffer_size": 50} if method == "replay" else {})}}
    data = _data(mnist)  # 500 images at batch 128: the last batch of each epoch is short
    before, _, _ = _train(run, run["model_args"], data, make_permutations(0, 2, 2), epochs=2, batch_size=128)
    padded = (pad_images(data[0], 28), data[1], pad_images(data[2], 28), data[3])
    explicit, _, _ = _train(run, run["model_args"], padded, make_permutations(0, 2, 2, n_pixels=image_pixels(28)),
                            in_dim=image_pixels(28), epochs=2, batch_size=128, iterations_per_task=0)
    assert before["accuracy"][:, 1, 1].min() > 0.3  # it learned, so equality means something
    assert set(before) == set(explicit)
    for key in before:
        assert before[key].tobytes() == explicit[key].tobytes(), key


def test_iterations_of_whole_epochs_equal_the_epochs(mnist, params):
    """iterations_per_task = epochs x ceil(N/B) takes the very same batches as `epochs`: same bytes."""
    run = {**params["runs"]["cms"], "lr": 1e-3}
    data, perms = _data(mnist), make_permutations(0, 2, 2)
    by_epochs, _, _ = _train(run, run["model_args"], data, perms, epochs=2, batch_size=128)
    by_steps, _, _ = _train(run, run["model_args"], data, perms, epochs=5, batch_size=128, iterations_per_task=2 * 4)
    for key in by_epochs:
        assert by_epochs[key].tobytes() == by_steps[key].tobytes(), key


# ---- padding to 32x32 ----------------------------------------------------------------------------

def test_pad_to_32_centres_the_image_in_a_zero_border(mnist):
    images = mnist[0][:50]
    padded = pad_images(images, 32)
    assert padded.shape == (50, 1024) and padded.dtype == torch.uint8 and image_pixels(32) == 1024
    frame = padded.view(50, 32, 32)
    assert torch.equal(frame[:, 2:30, 2:30], images.view(50, 28, 28))   # 2 pixels each side, as transforms.Pad(2)
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert border.sum() == 1024 - 784 and (frame[:, border] == 0).all()  # zero before any permutation
    with pytest.raises(ValueError, match="even pad_to"):
        pad_images(images, 31)


def test_permutations_of_the_padded_image_cover_all_1024_pixels(mnist):
    perms = make_permutations(0, 3, 4, n_pixels=image_pixels(32))
    assert perms.shape == (3, 4, 1024)
    assert (perms.sort(-1).values == torch.arange(1024)).all()           # each row a permutation of 0..1023
    first = make_permutations(0, 3, 4, identity_first_task=True, n_pixels=1024)
    assert (first[:, 0] == torch.arange(1024)).all() and torch.equal(first[:, 1:], perms[:, 1:])
    # The border is permuted with the image: its zeros land anywhere, the image's pixels are all kept.
    padded = pad_images(mnist[0][:20], 32)
    idx = torch.arange(20).expand(3, -1)
    x = gather_batch(padded, perms[:, 1], idx)                             # [3 seeds, 20, 1024]
    expected = padded.to(x.dtype).div(255)[None].expand(3, -1, -1)
    assert torch.equal(x.sort(-1).values, expected.sort(-1).values)
    border_at = torch.ones(32, 32, dtype=torch.bool)
    border_at[2:30, 2:30] = False
    moved = border_at.flatten()[perms[:, 1]]                               # [3, 1024]: output j reads a border pixel
    assert (x[moved[:, None].expand_as(x)] == 0).all()
    assert moved[:, :64].any() and moved[:, 64:].sum() > 100               # scattered, not left at the edges


def test_permutations_stage_and_loader_follow_pad_to(tmp_path, monkeypatch):
    raw = _raw_params()
    raw["protocol"].update(n_seeds=2, n_tasks=3, pad_to=32)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    from stages import permutations
    permutations.main()
    perms = load_permutations("data/permutations.npy", 2, 3, image_pixels(32))
    assert torch.equal(perms, make_permutations(raw["protocol"]["seed"], 2, 3, n_pixels=1024))
    with pytest.raises(DataError, match=r"shape \(2, 3, 1024\), params want 2 seeds x 3 tasks x 784 pixels "
                                        r"\(protocol\.n_seeds, protocol\.n_tasks, protocol\.pad_to squared\)"):
        load_permutations("data/permutations.npy", 2, 3, image_pixels(28))


# ---- the model's input size ----------------------------------------------------------------------

def test_model_input_size_follows_the_protocol(params):
    mlp, _, _ = build_run(params["runs"]["baseline"], params["models"]["mlp"], [0, 1], CPU, in_dim=1024)
    assert mlp.layers[0].weight.shape == (2, 256, 1024)
    assert build_run(params["runs"]["baseline"], params["models"]["mlp"], [0], CPU)[0].layers[0].weight.shape == (1, 256, 784)
    ssm_cfg = {"hidden_dim": 8, "state_dim": 4, "sequence_length": 32, "memory_hidden": 8}
    ssm_run = {**params["runs"]["baseline"], "model": "nested_ssm", "periods": [100, 10, 1, 1],
               "lr_multipliers": [1.0] * 4}  # the test's own run: params.yaml need not hold one
    ssm, _, _ = build_run(ssm_run, ssm_cfg, [0], CPU, in_dim=1024)
    assert ssm.inp.weight.shape == (1, 8, 32)                               # 32 rows of 32 pixels
    assert ssm(torch.rand(1, 3, 1024)).shape == (1, 3, 10)
    with pytest.raises(ValueError, match="sequence_length 28 must divide in_dim 1024"):
        build_run(ssm_run, {**ssm_cfg, "sequence_length": 28}, [0], CPU, in_dim=1024)


def test_sequence_length_is_checked_against_the_pixels_per_image():
    check = lambda length, in_dim=None: validate_model_config(
        "nested_ssm", "runs.x.model_args", {"sequence_length": length}, in_dim=in_dim)
    for length in (28, 784, 32, 1024, 16):     # divides 784 or 1024: fine before the protocol is known
        check(length)
    with pytest.raises(ConfigError, match=r"runs\.x\.model_args\.sequence_length: must divide the pixels per image"):
        check(30)
    check(32, in_dim=1024)
    with pytest.raises(ConfigError, match=r"must divide the 1024 pixels per image of protocol\.pad_to 32 .*got 28"):
        check(28, in_dim=1024)
    with pytest.raises(ConfigError, match=r"must divide the 784 pixels per image of protocol\.pad_to 28 .*got 32"):
        check(32, in_dim=784)


def test_padded_run_learns_and_mismatched_sizes_are_refused(mnist, params):
    run = {**params["runs"]["baseline"], "lr": 1e-3}
    train_x, train_y, eval_x, eval_y = _data(mnist)
    padded = (pad_images(train_x, 32), train_y, pad_images(eval_x, 32), eval_y)
    perms = make_permutations(0, 2, 2, n_pixels=1024)
    out, _, _ = _train(run, run["model_args"], padded, perms, in_dim=1024, epochs=2, batch_size=64)
    assert out["accuracy"][:, 1, 1].min() > 0.5
    with pytest.raises(ValueError, match="pixels per image differ: train 784, eval 784, permutations 1024"):
        _train(run, run["model_args"], _data(mnist), perms, in_dim=1024, epochs=1, batch_size=64)


# ---- iterations per task -------------------------------------------------------------------------

class Recorder(Method):
    """Plain training that records the image indices of every step."""

    def __init__(self, model, seeds):
        super().__init__(model, seeds)
        self.seen = []

    def batches(self, task, order, batch_size):
        steps = super().batches(task, order, batch_size)
        self.seen.append((task, [idx.clone() for idx, _ in steps]))
        return steps


@pytest.mark.parametrize("iterations, n_epochs", [(7, 2), (3, 1), (8, 2), (9, 3)])
def test_each_task_trains_exactly_the_iterations(mnist, params, iterations, n_epochs):
    """500 images at batch 128: 4 steps per epoch (the last of 116). 7 = 4 + 3, 9 = 4 + 4 + 1: not multiples."""
    run = {**params["runs"]["cms"], "lr": 1e-3}                 # periods [3, 2, 1]: flushes do not count as steps
    seeds, data, n_tasks = [0, 1], _data(mnist), 3
    model, scheduler, _ = build_run(run, run["model_args"], seeds, CPU)
    recorder = Recorder(model, seeds)
    steps_after = []
    out = train_continual(model, scheduler, *data, make_permutations(0, 2, n_tasks), seeds=seeds, epochs=5,
                          batch_size=128, method=recorder, cuda_graphs=False, log=lambda line: None,
                          iterations_per_task=iterations, on_task_end=lambda *a: steps_after.append(scheduler.step_count))
    assert steps_after == [iterations * (t + 1) for t in range(n_tasks)]
    assert out["train_loss"].shape == (2, n_tasks, n_epochs) and np.isfinite(out["train_loss"]).all()
    # The steps: successive shuffled epochs of each seed's own order stream, the last cut; each task a fresh epoch.
    rngs = [torch.Generator().manual_seed(s) for s in seeds]
    per_task = {t: [] for t in range(n_tasks)}
    for task, steps in recorder.seen:
        order = torch.stack([torch.randperm(500, generator=g) for g in rngs])
        assert all(torch.equal(idx, ref) for idx, ref in zip(steps, order.split(128, dim=1)))
        per_task[task] += steps
    for t in range(n_tasks):
        assert len(per_task[t]) == n_epochs * 4                 # batches() gives whole epochs ...
    trained = [len(steps) for _, steps in recorder.seen]
    assert sum(trained) == n_epochs * 4 * n_tasks               # ... of which only `iterations` are trained (above)


def test_iterations_mode_train_loss_is_the_mean_over_each_epochs_steps(mnist, params):
    run = {**params["runs"]["baseline"], "lr": 1e-3}
    lines = []
    model, scheduler, method = build_run(run, run["model_args"], [0], CPU)
    out = train_continual(model, scheduler, *_data(mnist), make_permutations(0, 1, 1), seeds=[0], epochs=1,
                          batch_size=128, method=method, cuda_graphs=False, log=lines.append, iterations_per_task=6)
    assert out["train_loss"].shape == (1, 1, 2)
    progress = [line for line in lines if " epoch " in line]
    assert "task 1/1 epoch 1/2 (steps 1-4 of 6)" in progress[0] and "task 1/1 epoch 2/2 (steps 5-6 of 6)" in progress[1]


@pytest.mark.parametrize("method", ["ewc", "si", "replay", "joint"])
def test_methods_work_with_iterations(mnist, params, method):
    args = {"ewc": {"fisher_samples": 10}, "replay": {"buffer_size": 50, "replay_batch_size": 16}}.get(method, {})
    run = {**params["runs"]["baseline"], "lr": 3e-3, "method": method, "method_args": {**METHODS[method].defaults, **args}}
    steps_after = []
    model, scheduler, m = build_run(run, run["model_args"], [0, 1], CPU)
    out = train_continual(model, scheduler, *_data(mnist), make_permutations(0, 2, 3), seeds=[0, 1], epochs=1,
                          batch_size=128, method=m, cuda_graphs=False, log=lambda line: None, iterations_per_task=9,
                          on_task_end=lambda *a: steps_after.append(scheduler.step_count))
    assert steps_after == [9, 18, 27]                             # 9 = 4 + 4 + 1 steps per task
    assert np.isfinite(out["train_loss"]).all() and out["accuracy"][:, 2, 2].min() > 0.2


def test_a_method_with_other_epoch_lengths_is_refused_in_iterations_mode(mnist, params):
    class Doubled(Method):
        def batches(self, task, order, batch_size):
            return super().batches(task, order, batch_size) * 2
    run = {**params["runs"]["baseline"], "lr": 1e-3}
    model, scheduler, _ = build_run(run, run["model_args"], [0], CPU)
    with pytest.raises(RuntimeError, match="Doubled gave 8 steps for an epoch of 500 images at batch 128"):
        train_continual(model, scheduler, *_data(mnist), make_permutations(0, 1, 1), seeds=[0], epochs=1,
                        batch_size=128, method=Doubled(model, [0]), cuda_graphs=False, log=lambda line: None,
                        iterations_per_task=5)


# ---- per-run model sizes (runs.<run>.model_args) -------------------------------------------------

def test_a_wide_mlp_run_sits_beside_the_default_mlp_runs_with_its_own_periods(params):
    raw = _raw_params()
    raw["runs"]["mlp_2x1000"] = {"model": "mlp", "model_args": {"hidden_dims": [1000, 1000]}, "optimizer": "adam",
                                 "lr": 1.0e-4, "periods": [2, 1]}
    validated = config.validate(raw)
    wide, cms = validated["runs"]["mlp_2x1000"], validated["runs"]["cms"]
    assert wide["model_args"] == {"hidden_dims": [1000, 1000]} and wide["periods"] == [2, 1]
    assert wide["lr_multipliers"] == [1.0, 1.0]                 # filled per its own 2 levels
    assert cms["model_args"] == {"hidden_dims": [256, 128, 64]} and cms["periods"] == [3, 2, 1]
    assert validated["runs"]["baseline"]["periods"] == [1, 1, 1]
    assert validated["models"]["mlp"] == params["models"]["mlp"]  # the shared default is untouched
    model, scheduler, _ = build_run(wide, wide["model_args"], [0], CPU, in_dim=1024)
    assert [tuple(layer.weight.shape) for layer in model.layers] == [(1, 1000, 1024), (1, 1000, 1000), (1, 10, 1000)]
    assert [lv.name for lv in scheduler.levels] == ["layer1", "layer2"]
    # Periods are checked against the run's own levels, not the shared model's.
    raw["runs"]["mlp_2x1000"]["periods"] = [3, 2, 1]
    with pytest.raises(ConfigError, match=r"runs\.mlp_2x1000\.periods: has 3 entries but model 'mlp' has 2 levels"):
        config.validate(raw)
    raw["runs"]["mlp_2x1000"]["periods"] = [2, 1]
    raw["runs"]["cms"]["periods"] = [2, 1]
    with pytest.raises(ConfigError, match=r"runs\.cms\.periods: has 2 entries but model 'mlp' has 3 levels"):
        config.validate(raw)


def test_idx_reader_reads_what_torchvision_reads(mnist_dir, mnist):
    """pmnist.data reads IDX with numpy (torchvision's import costs a stage ~1-2 s): same arrays, bit for bit."""
    from torchvision.datasets.mnist import read_image_file, read_label_file
    names = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    for ours, name in zip(mnist, names):
        reader = read_image_file if "images" in name else read_label_file
        theirs = reader(str(mnist_dir / name))
        theirs = theirs.reshape(len(theirs), -1) if "images" in name else theirs.long()
        assert ours.dtype == theirs.dtype and torch.equal(ours, theirs), name
