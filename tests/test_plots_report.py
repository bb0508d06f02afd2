"""The aggregate -> stats -> plots -> report stages end to end, on tiny fabricated npz inputs."""
import importlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pmnist.io import write_npz

ROOT = Path(__file__).resolve().parents[1]
T, S = 3, 3


def _fake_run(rng, forget):
    """One seed's accuracy matrix: each task learned to ~.95, then decays by `forget` per later task."""
    R = np.full((T, T), 0.1)
    for i in range(T):
        for j in range(i + 1):
            R[i, j] = 0.95 - forget * (i - j) + rng.normal(0, 0.01)
    return R.clip(0, 1)


@pytest.fixture
def study(tmp_path, monkeypatch):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["protocol"].update(n_seeds=S, n_tasks=T)
    raw["stats"]["bootstrap_resamples"] = 200
    raw["plots"]["dpi"] = 40
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    rng = np.random.default_rng(0)
    forget = {"baseline": 0.2, "cms": 0.1, "cms_same_lr": 0.1}
    for run in [*raw["runs"], "removed_run"]:  # removed_run: a stale directory, must be ignored
        for k in range(S):
            write_npz(tmp_path / "results" / "runs" / run / f"seed_{k}.npz",
                      accuracy=_fake_run(rng, forget.get(run, 0.0)), untrained_accuracy=np.full(T, 0.1),
                      train_loss=np.ones((T, 2)), seed=np.int64(k))
    monkeypatch.chdir(tmp_path)
    return tmp_path, list(raw["runs"])


def _stage(name):
    importlib.import_module(f"stages.{name}").main()


def test_stages_end_to_end(study):
    root, runs = study
    for name in ("aggregate", "stats", "plots", "report"):
        _stage(name)
    res = root / "results"
    metrics = json.loads((res / "metrics.json").read_text())
    assert list(metrics) == runs
    summary = pd.read_csv(res / "summary.csv")
    assert set(summary["run"]) == set(runs) and len(summary) == len(runs) * S * 5
    for run in runs:
        assert list(pd.read_csv(res / "curves" / f"{run}.csv").columns) == \
            ["task", "average_accuracy", "ci95_low", "ci95_high"]
        assert len(pd.read_csv(res / "forgetting" / f"{run}.csv")) == T - 1
    stats = json.loads((res / "stats.json").read_text())
    pairs = [(c["run"], c["control"]) for c in stats["comparisons"]]
    raw = yaml.safe_load((root / "params.yaml").read_text())
    extra = [tuple(p) for p in raw["stats"]["comparisons"]]
    assert pairs == [(r, "baseline") for r in runs if r != "baseline"] + extra

    pngs = sorted((res / "figures").glob("*.png"))
    assert len(pngs) == 2 + len(runs) + len(pairs)
    assert all(p.read_bytes().startswith(b"\x89PNG") and p.stat().st_size > 1000 for p in pngs)

    report = (res / "report.md").read_text()
    for run in runs:
        assert f"`{run}`" in report
    for run, control in pairs:
        assert f"**`{run}` vs `{control}`**" in report
    for png in pngs:  # every figure is linked, relative to results/
        assert f"(figures/{png.name})" in report
    assert "removed_run" not in report
    assert "cms forgets less than baseline" in report  # 0.1 vs 0.2 per task: a clear difference
    for run in runs:  # how each run's hyperparameters were chosen
        assert raw.get("provenance", {}).get(run, "reference repository's values") in report


def test_one_seed(study):
    root, runs = study
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["protocol"]["n_seeds"] = 1
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    for name in ("aggregate", "stats", "plots", "report"):
        _stage(name)
    stats = json.loads((root / "results" / "stats.json").read_text())
    r = stats["comparisons"][0]["metrics"]["acc_pct"]
    assert r["p_value"] is None and "at least 2" in r["note"]
    assert "Not tested: final average accuracy of cms vs baseline" in (root / "results" / "report.md").read_text()


def test_missing_npz_is_named(study):
    root, _ = study
    (root / "results" / "runs" / "cms" / "seed_1.npz").unlink()
    with pytest.raises(FileNotFoundError, match="cms/seed_1.npz"):
        _stage("aggregate")


def test_missing_inputs_named(study):
    with pytest.raises(FileNotFoundError, match="results/summary.csv"):
        _stage("stats")
    with pytest.raises(FileNotFoundError, match="results/metrics.json"):
        _stage("report")
