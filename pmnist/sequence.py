"""The sequence protocol (the pipeline in sequence/; its torch side, data to training loop, is
pmnist/sequence_train.py): a task is a dataset, a sequence an ordered list of
them, learned one after another with all seeds at once; after each task every task's evaluation set
is measured, giving the same T x T accuracy matrix per seed as the Permuted-MNIST study.

  params      `validate_sequence_params`: sequence/params.yaml checked before any work. Runs have the
              main study's keys (pmnist/config.py checks them with the same code) plus `sequence`.
  data        `load_sequence_data`: each task's dataset read and harmonised (pmnist/datasets.py) into
              one uint8 pool on the device, task t at rows offsets[t] .. offsets[t] + sizes[t].
  heads       one shared 10-way head (domain-incremental: every dataset has 10 classes), or with
              data.heads per_task one 10-way head per task (`TaskHeads`: the model's 10 T outputs, each
              sample read through its own task's ten).
  training    `train_sequence`: pmnist.train's step (TrainStep: forward, backward, the CMS scheduler's
              update, the method's hooks, CUDA-graph replay) with each sample's image and label taken
              from its own task's rows instead of a permutation of one image set. Methods (EWC,
              replay, joint) work unchanged: their (image index, task) pairs index a task's own rows.
              A task lasts train.epochs passes over its images (or iterations_per_task steps); the data
              order of seed s comes from torch.Generator().manual_seed(s), a fresh randperm per epoch.
  metrics     pmnist/headline.py's (final average accuracy, forgetting, learning accuracy), and the
              note's table (`note_table`): each task's accuracy at its end R[j, j] and after the last
              task R[T-1, j], and "average retention", the mean of R[T-1, j] over the tasks before the last.

Joint training on a sequence of datasets of different sizes: a sample assigned to an earlier task
whose dataset is smaller takes image index mod that dataset's size (a few images then come twice per epoch).
"""
from pmnist.config import SCHEMA, _run
from pmnist.datasets import DATASETS, SHAPES
from pmnist.models import MODELS, validate_model_config
from pmnist.validate import (boolean, fail, list_of, md5_hex, name, non_negative_int, one_of, positive_int, run_pair,
                             section, string, unit_interval, unknown)

# The two sections of runs and where each writes: `runs` (the sequences that can be downloaded here,
# sequence/dvc.yaml) and `cifar_runs` (sequences with CIFAR-10, sequence/cifar10/dvc.yaml).
RUN_SECTIONS = {"runs": "results", "cifar_runs": "results/cifar10"}
HERE = ("mnist", "fashion_mnist")    # the datasets `runs` may use (their download stages are in sequence/dvc.yaml)

SEQUENCE_SCHEMA = {
    "protocol": {"seed": non_negative_int, "n_seeds": positive_int},
    "data": {"shape": one_of(*SHAPES), "heads": one_of("shared", "per_task")},
    "split": SCHEMA["split"],
    "train": SCHEMA["train"],
    "stats": {"alpha": unit_interval, "seed": non_negative_int, "bootstrap_resamples": positive_int,
              "comparisons": (list_of(run_pair, min_len=0), []),
              "cifar_comparisons": (list_of(run_pair, min_len=0), [])},
}
TOP_LEVEL = (*SEQUENCE_SCHEMA, "datasets", "sequences", "models", "runs", "cifar_runs", "note", "provenance")
OPTIONAL = ("cifar_runs", "note", "provenance")
# The metrics a claim may name (pmnist/sequence_report.py computes them per seed).
CLAIM_METRICS = ("acc_pct", "forgetting_pct", "bwt_pct", "fwt_pct", "learning_acc_pct", "retention_pct")
CLAIM_SCHEMA = {
    "claim": string,                        # the note's claim, in words
    "note_numbers": string,                 # its own numbers, as the note gives them
    "comment": (string, ""),
    "metric": one_of(*CLAIM_METRICS),       # what the claim is tested on, paired by seed
    "higher_is_better": boolean,            # the claimed direction of run - control
    "pairs": (list_of(run_pair, min_len=0), []),         # [run, control] of runs
    "cifar_pairs": (list_of(run_pair, min_len=0), []),   # ... of cifar_runs (the note's sequence)
    "pmnist_pairs": (list_of(run_pair, min_len=0), []),  # ... of the root params.yaml's runs (Permuted MNIST)
    "pmnist_metric": (one_of(*CLAIM_METRICS[:5]), "acc_pct"),
}


def _datasets(raw):
    if not isinstance(raw, dict):
        fail("datasets", "must be a mapping of dataset -> {mirrors, md5}")
    out = {}
    for ds, cfg in raw.items():
        if ds not in DATASETS:
            unknown("datasets", ds, DATASETS)
        out[ds] = section(f"datasets.{ds}", cfg, {"mirrors": list_of(string, min_len=0),
                                                   "md5": {f: md5_hex for f in DATASETS[ds].files}})
    return out


def _sequences(raw, datasets):
    if not isinstance(raw, dict) or not raw:
        fail("sequences", "must be a non-empty mapping of sequence name -> [dataset, ...]")
    out = {}
    for seq, tasks in raw.items():
        key = f"sequences.{name('sequences', seq)}"
        tasks = list_of(string)(key, tasks)
        for i, ds in enumerate(tasks):
            if ds not in datasets:
                fail(f"{key}[{i}]", f"{ds!r} is not under datasets: ({', '.join(datasets)})")
        out[seq] = tasks
    return out


def validate_sequence_params(raw) -> dict:
    """sequence/params.yaml -> validated params, defaults filled; ConfigError naming the key otherwise."""
    if not isinstance(raw, dict):
        fail("", "sequence/params.yaml must be a mapping of sections")
    for s in raw:
        if s not in TOP_LEVEL:
            unknown("", s, TOP_LEVEL)
    for s in TOP_LEVEL:
        if s not in raw and s not in OPTIONAL:
            fail(s, "missing section")
    params = {s: section(s, raw[s], spec) for s, spec in SEQUENCE_SCHEMA.items()}
    params["datasets"] = _datasets(raw["datasets"])
    params["sequences"] = _sequences(raw["sequences"], params["datasets"])
    if not isinstance(raw["models"], dict):
        fail("models", "must be a mapping of model name -> settings")
    params["models"] = {}
    for model, cfg in raw["models"].items():
        if model not in MODELS:
            unknown("models", model, MODELS)
        params["models"][model] = validate_model_config(model, f"models.{model}", cfg or {})
    seen = set()
    for sec in RUN_SECTIONS:
        runs = raw.get(sec) or {}
        if not isinstance(runs, dict) or (sec == "runs" and not runs):
            fail(sec, "must be a mapping of run name -> settings" + (" (non-empty)" if sec == "runs" else ""))
        params[sec] = {}
        for run_name, cfg in runs.items():
            key = f"{sec}.{run_name}"
            if run_name in seen:
                fail(key, "a run of this name exists in another section: names must be unique")
            seen.add(run_name)
            if not isinstance(cfg, dict) or "sequence" not in cfg:
                fail(f"{key}.sequence", "missing: every run names its sequence (a key of sequences:)")
            cfg = dict(cfg)
            seq = cfg.pop("sequence")
            if seq not in params["sequences"]:
                fail(f"{key}.sequence", f"{seq!r} is not a sequence; valid: {', '.join(params['sequences'])}")
            tasks = params["sequences"][seq]
            if sec == "runs" and any(ds not in HERE for ds in tasks):
                fail(f"{key}.sequence", f"{seq!r} uses {', '.join(d for d in tasks if d not in HERE)}: a run of such a "
                                        f"sequence belongs under cifar_runs (sequence/cifar10/dvc.yaml downloads it)")
            if sec == "cifar_runs" and "cifar10" not in tasks:
                fail(f"{key}.sequence", f"{seq!r} has no cifar10: put the run under runs")
            run = _run(run_name, cfg, params)
            run["sequence"], run["tasks"] = seq, tasks
            params[sec][run_name] = run
    for sec, pairs in (("runs", "comparisons"), ("cifar_runs", "cifar_comparisons")):
        for i, pair in enumerate(params["stats"][pairs]):
            for r in pair:
                if r not in params[sec]:
                    fail(f"stats.{pairs}[{i}]", f"{r!r} is not a run of {sec}")
            if params[sec][pair[0]]["sequence"] != params[sec][pair[1]]["sequence"]:
                fail(f"stats.{pairs}[{i}]", "pairs runs of different sequences: paired by seed, they must share one")
    claims = (raw.get("note") or {}).get("claims") or {}
    if not isinstance(claims, dict):
        fail("note.claims", "must be a mapping of claim name -> {claim, note_numbers, metric, higher_is_better, pairs}")
    params["note"] = {"claims": {}}
    for cid, c in claims.items():
        key = f"note.claims.{name('note.claims', cid)}"
        c = section(key, c, CLAIM_SCHEMA)
        for field, sec in (("pairs", "runs"), ("cifar_pairs", "cifar_runs")):
            for i, pair in enumerate(c[field]):
                for r in pair:
                    if r not in params[sec]:
                        fail(f"{key}.{field}[{i}]", f"{r!r} is not a run of {sec}")
        params["note"]["claims"][cid] = c
    provenance = raw.get("provenance") or {}
    if not isinstance(provenance, dict):
        fail("provenance", "must be a mapping of name -> text")
    params["provenance"] = {k: string(f"provenance.{k}", v) for k, v in provenance.items()}
    return params


def load_sequence_params(path="params.yaml"):
    from pmnist.config import read_yaml

    return validate_sequence_params(read_yaml(path, label="sequence/params.yaml"))


# ---- the note's table -------------------------------------------------------------------------------
def note_table(R):
    """R [..., T, T] -> {"at_end": [..., T] R[j, j], "after_last": [..., T] R[T-1, j],
    "average_retention": [...] mean_{j < T-1} R[T-1, j]} (fractions; the note's "average retention":
    its numbers are this mean, (61.2 + 75.8) / 2 = 68.5)."""
    import numpy as np

    R = np.asarray(R, dtype=np.float64)
    after = R[..., -1, :]
    retention = after[..., :-1].mean(-1) if R.shape[-1] > 1 else np.full(R.shape[:-2], np.nan)
    return {"at_end": np.diagonal(R, axis1=-2, axis2=-1), "after_last": after, "average_retention": retention}
