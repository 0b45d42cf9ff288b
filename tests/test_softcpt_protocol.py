"""SoftCPT's multi-task protocol as one command (issue 27): ``fastprompt run --protocol multitask
--method softcpt`` runs the shot sweep x seeds for the SoftCPT variants and the hard-sharing baselines
on the multi-task sets, and writes the paper's table (average over tasks per K, beside the published
numbers of kding1225/softcpt's README) and a per-task table per variant; ``fastprompt train``'s last
line gives a multi-task run's task average. Generated Plant-6 tree, the tiny random CLIP, 1 epoch."""
import csv
import io
import json
import os
import sys

import pytest

from fastprompt.cli import main
from fastprompt.errors import ConfigError
from fastprompt.protocols.grid import plan
from fastprompt.protocols.published import load_published, published

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_multitask_data import _plant6  # noqa: E402

# 1 epoch in batches of 8 (Plant-6's 16 classes: 2 steps at 1 shot, 4 at 2), no loader processes
FAST = ["OPTIM.MAX_EPOCH", "1", "DATALOADER.TRAIN_X.BATCH_SIZE", "8", "DATALOADER.NUM_WORKERS", "0",
        "TRAIN.TENSORBOARD", "False", "OPTIM.WARMUP_EPOCH", "-1"]
TINY = ["--model", "tiny", "--pretrained", "none"]
VARIANTS = ("NATA", "hard-shared")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("data"))
    _plant6(root)
    return root


@pytest.fixture(scope="module")
def grid(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("grid")
    cache = os.environ.get("FASTPROMPT_CACHE")
    os.environ["FASTPROMPT_CACHE"] = str(tmp_path_factory.mktemp("cache"))  # the few-shot draws' cache
    try:
        assert main(["run", "--protocol", "multitask", "--method", "softcpt", "--data", data, "--datasets", "plant6",
                     "--variants", *VARIANTS, "--shots", "1", "2", "--seeds", "1", "2", "--output-dir", str(out),
                     *TINY, *FAST]) == 0
    finally:
        if cache is None:
            os.environ.pop("FASTPROMPT_CACHE", None)
        else:
            os.environ["FASTPROMPT_CACHE"] = cache
    return out


def _csv(path):
    return list(csv.DictReader(io.StringIO(path.read_text())))


def _eval(grid, variant, shots, seed):
    return json.loads((grid / "multitask" / f"softcpt-{variant}" / "plant6" / f"shots{shots}" / f"seed{seed}"
                       / "eval.json").read_text())


def test_the_sweep_writes_the_papers_table_beside_the_published_numbers(grid):
    rows = {r["dataset"]: r for r in _csv(grid / "results" / "multitask_softcpt_plant6.csv")}
    assert list(rows) == list(VARIANTS)
    for variant in VARIANTS:
        for k in (1, 2):
            averages = [_eval(grid, variant, k, s)["task_average"] for s in (1, 2)]
            assert float(rows[variant][f"k{k}"]) == pytest.approx(sum(averages) / 2, abs=0.006)  # 2 decimals
            assert float(rows[variant][f"k{k}_std"]) == pytest.approx(abs(averages[0] - averages[1]) / 2, abs=0.006)
            assert rows[variant][f"k{k}_seeds"] == "1;2"
    # the README's table, Plant-6 block: SoftCPT-NATA and CoOp-MT (= one prompt for all tasks)
    assert [rows["NATA"]["published_k1"], rows["NATA"]["published_k2"]] == ["54.94", "61.58"]
    assert [rows["hard-shared"]["published_k1"], rows["hard-shared"]["published_k2"]] == ["53.14", "59.08"]
    assert rows["NATA"]["published_checked"] == "true"
    assert "kding1225/softcpt @ 7cab4b9" in rows["NATA"]["published_source"]
    # Avg. is the mean over 1-16 shots: with 1 and 2 shots only there is none, and none published beside
    assert "avg" not in rows["NATA"] and "published_avg" not in rows["NATA"]
    md = (grid / "results" / "multitask_softcpt_plant6.md").read_text()
    assert "## Multi-task few-shot learning: Plant-6, average over tasks" in md
    assert "| Method | 1 shot | 2 shots | 1 shot (published) |" in md
    assert "| SoftCPT-NATA | " in md and "no Avg. column" in md
    pytest.importorskip("matplotlib")
    assert (grid / "results" / "multitask_softcpt_plant6.png").stat().st_size > 1000


def test_each_variant_has_its_per_task_table_with_no_published_cells(grid):
    rows = _csv(grid / "results" / "multitask_softcpt-NATA_plant6_tasks.csv")
    names = [t["task"] for t in _eval(grid, "NATA", 1, 1)["tasks"]]
    assert [r["dataset"] for r in rows] == names + ["average"] and len(names) == 6
    for i, name in enumerate(names):
        values = [_eval(grid, "NATA", 2, s)["tasks"][i]["value"] for s in (1, 2)]
        assert float(rows[i]["k2"]) == pytest.approx(sum(values) / 2, abs=0.006)
    assert all(r["published_k1"] == "" for r in rows)
    md = (grid / "results" / "multitask_softcpt-NATA_plant6_tasks.md").read_text()
    assert "No per-task numbers are published" in md and "| Task | 1 shot | 2 shots | Seeds |" in md


def test_results_reads_the_grid_back(grid, capsys):
    capsys.readouterr()
    assert main(["results", str(grid), "--protocol", "multitask"]) == 0
    out = capsys.readouterr().out
    assert "Plant-6, average over tasks" in out and "one prompt for all tasks (CoOp-MT) on Plant-6, per task" in out


def test_a_second_run_skips_every_finished_run(grid, data, capsys):
    capsys.readouterr()
    assert main(["run", "--protocol", "multitask", "--method", "softcpt", "--data", data, "--datasets", "plant6",
                 "--variants", *VARIANTS, "--shots", "1", "2", "--seeds", "1", "2", "--output-dir", str(grid),
                 *TINY, *FAST]) == 0
    assert "fastprompt run: 8 skipped (finished)" in capsys.readouterr().err


def test_the_default_sweep_is_the_papers():
    jobs = plan("multitask", "softcpt", "/out")
    assert len(jobs) == 3 * 5 * 5 * 3  # General-10, Plant-6, Fashion-20 x 5 variants x 1-16 shots x seeds 1-3
    by = {(os.path.relpath(j.run_dir, "/out")): j for j in jobs}
    nats = by["multitask/softcpt-NATS/general10/shots4/seed2"]
    assert (nats.recipe, nats.method, nats.overrides) == ("softcpt/rn50_ep50", "softcpt",
                                                          (("TRAINER.MTCOOP.TASK_CSC", "True"),))
    hard = by["multitask/softcpt-hard-per-class/fashion20/shots16/seed3"]
    assert (hard.recipe, hard.method, hard.overrides) == ("softcpt_hard/rn50_ep50", "softcpt_hard",
                                                          (("TRAINER.MTCOOPH.CSC", "True"),))
    # the README's General-10 runs of the class-feature variants sample 10% of the negative classes
    cata = plan("multitask", "softcpt", "/out", datasets=["General-10"], variants=["CATA"], shots=[1], seeds=[1],
                config="vit_b16_ep50")
    assert cata[0].recipe == "softcpt/vit_b16_ep50" and ("TRAINER.MTCOOP.CLS_SAMPLE_RATE", "0.1") in cata[0].overrides


@pytest.mark.parametrize("argv,message", [
    (["--method", "coop"], "method 'coop' has no multitask protocol"),
    (["--datasets", "dtd"], "'dtd' is not a multi-task dataset"),
    (["--variants", "NATX"], "unknown SoftCPT variant 'NATX'"),
    (["--config", "rn18_ep50"], "unknown SoftCPT config 'rn18_ep50'"),
])
def test_bad_multitask_grids_are_one_line_errors(argv, message, data, tmp_path, capsys):
    args = {"--method": "softcpt", "--datasets": "plant6"}
    args.update(dict(zip(argv[::2], argv[1::2])))
    assert main(["run", "--protocol", "multitask", "--data", data, "--output-dir", str(tmp_path),
                 *[x for kv in args.items() for x in kv], *TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_variants_belong_to_the_multitask_protocol(data, tmp_path, capsys):
    assert main(["run", "--protocol", "fewshot", "--method", "coop", "--data", data, "--datasets", "dtd",
                 "--variants", "NATA", "--output-dir", str(tmp_path), *TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--variants / --config choose the multitask protocol's SoftCPT runs" in err[0]


def test_a_published_average_that_is_not_the_mean_of_its_shots_is_refused(tmp_path):
    rows = "{1: 50.0, 2: 60.0, 4: 70.0, 8: 80.0, 16: 90.0, avg: 71.0}"  # the mean is 70.00
    (tmp_path / "softcpt.yaml").write_text(
        f"method: softcpt\nmultitask:\n  - source: a table\n    checked: false\n    rows:\n      plant6/NATA: {rows}\n")
    with pytest.raises(ConfigError, match=r"avg 71.0 is not the mean of its shot columns \(70.00\)"):
        load_published(str(tmp_path / "softcpt.yaml"))
    (tmp_path / "softcpt.yaml").write_text(
        "method: softcpt\nmultitask:\n  - source: a table\n    checked: false\n    rows:\n      dtd/NATA: {1: 50.0}\n")
    with pytest.raises(ConfigError, match=r"row 'dtd/NATA' is not '<dataset>/<SoftCPT variant>'"):
        load_published(str(tmp_path / "softcpt.yaml"))


def test_the_shipped_numbers_are_the_readme_table():
    """Every published block holds SoftCPT-NATA, -NATS and CoOp-MT of its dataset, each row's Avg. its
    five shots' mean (the loader checks it); spot values against the README image."""
    pub = published("softcpt", "multitask")
    assert pub.value("general10/NATA", 16) == 74.17 and pub.value("fashion20/NATS", "avg") == 60.88
    assert pub.value("plant6/hard-shared", 8) == 69.95 and pub.value("general10/hard-per-task", 1) is None
    assert all(b.checked for b in pub.blocks)


def test_train_reports_a_multitask_run_by_its_task_average(data, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FASTPROMPT_CACHE", str(tmp_path / "cache"))
    capsys.readouterr()
    assert main(["train", "--recipe", "softcpt/vit_b16_ep50", "--dataset", "plant6", "--data", data, "--shots", "1",
                 "--output-dir", str(tmp_path / "run"), "--no-progress", *TINY, *FAST]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert last.startswith(f"test task average {result['task_average']:.2f}% over 6 tasks (each task's own metric, "
                           "averaged); pooled over all test images: accuracy ")
    assert f"accuracy {result['accuracy']:.2f}%" in last
