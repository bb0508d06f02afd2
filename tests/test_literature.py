"""The literature set (literature/): the published-values table, and its own pipeline end to end through
`dvc repro literature/dvc.yaml` on tiny settings, leaving the main study's stages alone."""
import json
import shutil

import pytest
import yaml

import smoke
from pmnist.config import load_params
from pmnist.errors import ConfigError
from pmnist.literature import (TARGET_POINTS, markdown, paired_rows, table_rows, validate_literature, validate_paired,
                               validate_published)
from pmnist.stats import load_summary

ROOT = smoke.ROOT
SETTINGS = ["mammoth", "vandeven"]


def _literature():
    return validate_literature(yaml.safe_load((ROOT / "literature" / "params.yaml").read_text()))


def _published():
    return _literature()["published"]


def test_every_setting_is_a_valid_study_and_every_published_row_names_one_of_its_runs():
    lit = _literature()
    for setting in SETTINGS:
        params = load_params(ROOT / "literature" / setting / "params.yaml")
        rows = [p for p in lit["published"].values() if p["setting"] == setting]
        assert rows and all(p["run"] in params["runs"] for p in rows)
        pairs = [p for p in lit["paired"].values() if p["setting"] == setting]
        assert all(p["run"] in params["runs"] and p["against"] in params["runs"] for p in pairs)


def test_every_run_of_a_setting_is_a_train_stage_with_the_code_manifests():
    stages = yaml.safe_load((ROOT / "literature" / "dvc.yaml").read_text())["stages"]
    items = stages["train"]["foreach"]
    for setting in SETTINGS:
        runs = load_params(ROOT / "literature" / setting / "params.yaml")["runs"]
        assert {v["run"] for v in items.values() if v["setting"] == setting} == set(runs)
        assert all(k == f"{setting}_{run}" for k, v in items.items() if v["setting"] == setting for run in [v["run"]])
    assert "../results/code/loop.txt" in stages["train"]["do"]["deps"]


def test_cms_and_its_update_matched_control_have_the_same_update_fraction():
    """The matched controls' batch (Mammoth) and periods (van de Ven, iterations held) give cms's u."""
    from pmnist.timescale import level_sizes, update_fraction

    m = load_params(ROOT / "literature" / "mammoth" / "params.yaml")
    sizes = level_sizes(m["models"]["mlp"]["hidden_dims"])
    cms, ctl = m["runs"]["cms"], m["runs"]["uniform_matched"]
    u = update_fraction(sizes, cms["periods"], cms["batch_size"])
    u_ctl = update_fraction(sizes, ctl["periods"], ctl["batch_size"])
    assert len(set(ctl["periods"])) == 1 and abs(u - u_ctl) < 0.001, (u, u_ctl)
    # summed chunks under SGD: [p, p] at batch 128 is batch 128p at lr * p, so the control's lr is scaled
    assert ctl["lr"] == pytest.approx(cms["lr"] * ctl["batch_size"] / cms["batch_size"], rel=1e-12)
    assert m["runs"]["uniform_matched_same_lr"]["lr"] == cms["lr"]

    v = load_params(ROOT / "literature" / "vandeven" / "params.yaml")
    if "cms" not in v["runs"]:  # declared for a GPU, commented out until trained (vandeven/params.yaml)
        return
    iters = v["train"]["iterations_per_task"]
    sizes = level_sizes(v["models"]["mlp"]["hidden_dims"], in_dim=v["protocol"]["pad_to"] ** 2)
    cms, ctl = v["runs"]["cms"], v["runs"]["uniform_matched"]
    assert cms["batch_size"] == ctl["batch_size"]   # a fixed iteration budget: match by periods, not batch
    u, u_ctl = (update_fraction(sizes, r["periods"], r["batch_size"], n_images=iters * r["batch_size"],
                                reference_batch=r["batch_size"]) for r in (cms, ctl))
    assert len(set(ctl["periods"])) == 1 and len(set(cms["periods"])) > 1 and abs(u - u_ctl) < 0.002, (u, u_ctl)


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


@pytest.mark.parametrize("bad, match", [({"pm_pct": 0.2}, "published.r.pm_kind"),
                                        ({"pm_pct": 0.2, "pm_kind": "sem"}, "published.r.pm_kind"),
                                        ({"acc_pct": None, "pm_pct": 0.2, "pm_kind": "sd"}, "published.r.pm_pct"),
                                        ({"source": ""}, "published.r.source")])
def test_a_published_pm_says_what_it_is(bad, match):
    row = {"setting": "mammoth", "run": "sgd", "method": "SGD", "acc_pct": 40.7, "source": "s", **bad}
    with pytest.raises(ConfigError, match=match):
        validate_published({"r": row})


def _metrics(acc, acc_std, forgetting=10.0, forgetting_std=1.0):
    return {"acc_pct": {"mean": acc, "std": acc_std}, "forgetting_pct": {"mean": forgetting, "std": forgetting_std}}


def test_table_rows_difference_target_and_what_each_pm_is():
    params = load_params(ROOT / "literature" / "mammoth" / "params.yaml")
    summary = {"runs": {"sgd": {"n_seeds": 20, "metrics": _metrics(43.0, 1.5)},
                        "si": {"n_seeds": 3, "metrics": _metrics(60.0, 2.0)},
                        "cms": {"n_seeds": 20, "metrics": _metrics(50.0, 1.0, 30.0, 2.0)}}}
    published = validate_published({
        "a": {"setting": "mammoth", "run": "sgd", "method": "SGD", "acc_pct": 41.5, "source": "t1"},
        "b": {"setting": "mammoth", "run": "si", "method": "SI", "acc_pct": 65.0, "pm_pct": 0.5, "pm_kind": "se",
              "source": "t2", "note": "why"},
        "c": {"setting": "mammoth", "run": "cms", "method": "CMS"}})
    rows = table_rows(published, {"mammoth": summary}, {"mammoth": params})
    assert [(r["difference"], r["within_target"]) for r in rows] == [(1.5, True), (-5.0, False), (None, None)]
    assert TARGET_POINTS == 2.0
    assert "20 tasks, 28x28, every task permuted; MLP 100-100; sgd lr 0.2 (momentum 0.0)" in rows[0]["protocol"]
    assert "periods [3, 1] (sum)" in rows[2]["protocol"]
    text = markdown(rows)
    assert "| SI (`b`) | 65.00 ± 0.50 (SE) | 60.00 ± 2.00 | 10.00 ± 1.00 | 3 (of the protocol's 20) | -5.00 | **no** |" in text
    assert "| CMS (`c`) | — (ours only) | 50.00 ± 1.00 | 30.00 ± 2.00 | 20 | — | — |" in text
    assert "standard deviation (SD)" in text and "SE (standard error of the mean)" in text and "- `b`: why" in text
    with pytest.raises(ConfigError, match="published.a.run"):
        table_rows(published, {"mammoth": {"runs": {"si": summary["runs"]["si"]}}}, {"mammoth": params})


def test_paired_rows_are_differences_over_shared_seeds(tmp_path):
    values = {"cms": {"acc_pct": {0: 50.0, 1: 52.0, 2: 51.0}, "forgetting_pct": {0: 20.0, 1: 22.0, 2: 30.0}},
              "ctl": {"acc_pct": {0: 49.0, 1: 50.0}, "forgetting_pct": {0: 21.0, 1: 25.0}}}
    csv = ["run,seed,metric,value"] + [f"{run},{seed},{metric},{v}" for run, metrics in values.items()
                                       for metric, by_seed in metrics.items() for seed, v in by_seed.items()]
    csv += [f"{run},{seed},learning_acc_pct,90.0" for run, metrics in values.items() for seed in metrics["acc_pct"]]
    (tmp_path / "summary.csv").write_text("\n".join(csv) + "\n")
    per_seed = {"mammoth": load_summary(tmp_path / "summary.csv")}  # as the table stage reads the aggregate's file
    paired = validate_paired({"p": {"setting": "mammoth", "run": "cms", "against": "ctl", "note": "n"}})
    (row,) = paired_rows(paired, per_seed)
    assert row["n_seeds"] == 2 and row["acc_pct"]["difference"] == 1.5 and row["forgetting_pct"]["difference"] == -2.0
    assert row["acc_pct"]["ci95"][0] < 1.5 < row["acc_pct"]["ci95"][1]
    assert "| `p` | mammoth | `cms` − `ctl` | 2 | +1.50 [" in markdown([], [row])
    with pytest.raises(ConfigError, match="paired.q.against"):
        paired_rows(validate_paired({"q": {"setting": "mammoth", "run": "cms", "against": "x"}}), per_seed)


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
    table = json.loads((repo / "literature" / "results" / "table.json").read_text())
    rows = table["rows"]
    assert [r["row"] for r in rows] == list(_published())
    assert [p["name"] for p in table["paired"]] == list(_literature()["paired"])
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
