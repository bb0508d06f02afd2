"""The literature set (literature/): the published-values table, and its own pipeline end to end through
`dvc repro literature/dvc.yaml` on tiny settings, leaving the main study's stages alone."""
import json
import shutil

import pytest
import yaml

import smoke
from pmnist.config import load_params
from pmnist.errors import ConfigError
from pmnist.literature import TARGET_POINTS, markdown, table_rows, validate_literature, validate_published

ROOT = smoke.ROOT
SETTINGS = ["mammoth", "vandeven"]


def _published():
    return validate_published(yaml.safe_load((ROOT / "literature" / "params.yaml").read_text())["published"])


def test_every_setting_is_a_valid_study_and_every_published_row_names_one_of_its_runs():
    published = _published()
    for setting in SETTINGS:
        params = load_params(ROOT / "literature" / setting / "params.yaml")
        rows = [p for p in published.values() if p["setting"] == setting]
        assert rows and all(p["run"] in params["runs"] for p in rows)


@pytest.mark.parametrize("bad, match", [({"setting": "../x"}, "published.r.setting"),
                                        ({"acc_pct": "40"}, "published.r.acc_pct"),
                                        ({"colour": 1}, "colour")])
def test_a_bad_published_row_names_its_key(bad, match):
    row = {"setting": "mammoth", "run": "sgd", "method": "SGD", "acc_pct": 40.7, "source": "s", **bad}
    with pytest.raises(ConfigError, match=match):
        validate_published({"r": row})


def test_an_unknown_section_of_the_literature_params_is_named_with_the_closest_key():
    with pytest.raises(ConfigError, match="publsihed: unknown key; did you mean 'published'"):
        validate_literature({"publsihed": {}})


def test_table_rows_difference_and_target():
    params = load_params(ROOT / "literature" / "mammoth" / "params.yaml")
    summary = {"runs": {"sgd": {"n_seeds": 3, "metrics": {"acc_pct": {"mean": 43.0, "std": 1.5}}},
                        "si": {"n_seeds": 3, "metrics": {"acc_pct": {"mean": 60.0, "std": 2.0}}}}}
    published = validate_published({
        "a": {"setting": "mammoth", "run": "sgd", "method": "SGD", "acc_pct": 41.5, "source": "t1"},
        "b": {"setting": "mammoth", "run": "si", "method": "SI", "acc_pct": 65.0, "std_pct": 0.5, "source": "t2",
              "note": "why"}})
    rows = table_rows(published, {"mammoth": summary}, {"mammoth": params})
    assert [(r["difference"], r["within_target"]) for r in rows] == [(1.5, True), (-5.0, False)]
    assert TARGET_POINTS == 2.0
    assert "20 tasks, 28x28, every task permuted; MLP 100-100; sgd lr 0.2 (momentum 0.0)" in rows[0]["protocol"]
    text = markdown(rows)
    assert "| SI (`b`) | 65.00 ± 0.50 | 60.00 ± 2.00 | 3 | -5.00 | **no** |" in text and "- `b`: why" in text
    with pytest.raises(ConfigError, match="published.a.run"):
        table_rows(published, {"mammoth": {"runs": {"si": summary["runs"]["si"]}}}, {"mammoth": params})


TINY = {"protocol": {"n_seeds": 2, "n_tasks": 2}, "train": {"train_subset": 1000, "device": "cpu"}}


def test_literature_pipeline_end_to_end_leaves_the_main_study_alone(tmp_path):
    repo = smoke.make_copy(tmp_path / "repo", smoke.only_runs(smoke.TWO_RUNS))
    shutil.copytree(ROOT / "literature", repo / "literature",
                    ignore=shutil.ignore_patterns("results", "data", "*.md"))
    for setting in SETTINGS:
        path = repo / "literature" / setting / "params.yaml"
        params = yaml.safe_load(path.read_text())
        tiny = smoke.merge(params, TINY)
        if setting == "vandeven":
            tiny["train"]["iterations_per_task"] = 10
        for run in tiny["runs"].values():
            if run.get("method") == "ewc":
                run["method_args"]["fisher_samples"] = 20
        path.write_text(yaml.safe_dump(tiny, sort_keys=False))
    smoke.commit(repo, "literature")
    out = smoke.run(["dvc", "repro", "literature/dvc.yaml"], repo, timeout=900).stdout
    assert "Running stage 'literature/dvc.yaml:table'" in out
    assert not (repo / "results" / "runs").exists()  # no main-study stage ran
    rows = json.loads((repo / "literature" / "results" / "table.json").read_text())
    assert [r["row"] for r in rows] == list(_published())
    summary = json.loads((repo / "literature" / "mammoth" / "results" / "summary.json").read_text())
    assert rows[0]["ours_mean"] == round(summary["runs"]["sgd"]["metrics"]["acc_pct"]["mean"], 2)
    assert rows[0]["ours_mean"] > 20  # a tiny epoch of SGD at lr 0.2 still learns (chance 10%)
    noop = smoke.run(["dvc", "repro", "literature/dvc.yaml"], repo).stdout
    assert "Running stage" not in noop

    # A published row naming a run its setting lacks: one error line naming the key, the table kept.
    table = (repo / "literature" / "results" / "table.md").read_bytes()
    params = repo / "literature" / "params.yaml"
    params.write_text(params.read_text().replace("run: er500,", "run: er501,"))
    bad = smoke.run(["dvc", "repro", "literature/dvc.yaml"], repo, check=False)
    assert bad.returncode != 0
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert errors and "published.mammoth_er500.run" in errors[0] and "er501" in errors[0], bad.stderr
    assert (repo / "literature" / "results" / "table.md").read_bytes() == table
