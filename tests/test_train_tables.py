"""The protocols' recipes and the results tables, without training: every protocol recipe resolves
for its method, CoOp's per-shot epochs and PromptSRC's per-dataset GPA are chosen, and the few-shot,
cross-dataset and DG tables average over seeds and datasets with the published numbers beside."""
import pytest

from fastprompt.cli import main
from fastprompt.train.config import resolve_config
from fastprompt.errors import ConfigError
from fastprompt.protocols.grid import job_config, plan
from fastprompt.protocols.definitions import DATASETS_11, DG_TARGETS, PROTOCOL_RECIPES, PROTOCOLS, XD_TARGETS, recipe_for
from fastprompt.train.config import load_recipe, recipe_path
from fastprompt.protocols.report import table_csv, table_markdown
from fastprompt.protocols.results import RunResult
from fastprompt.protocols.tables import build_tables


def test_every_protocol_recipe_resolves_for_its_method():
    for method, by_protocol in PROTOCOL_RECIPES.items():
        for key, rec in by_protocol.items():
            cfg = resolve_config([(recipe_path(rec.recipe), load_recipe(rec.recipe))], method=method,
                                 arguments=dict(rec.overrides))
            assert cfg["METHOD"] == method and rec.source, (method, key)


def test_recipes_the_original_scripts_use():
    epochs = {k: load_recipe(recipe_for("coop", "fewshot", "dtd", k).recipe)["OPTIM"]["MAX_EPOCH"]
              for k in (1, 2, 4, 8, 16)}
    assert epochs == {1: 50, 2: 100, 4: 100, 8: 200, 16: 200}  # CoOp's COOP.md
    assert recipe_for("coop", "fewshot", "imagenet", 16).recipe == "coop/vit_b16_ep50"
    gpa = {d: dict(recipe_for("promptsrc", "fewshot", d, 4).overrides)["TRAINER.PROMPTSRC.GPA_MEAN"]
           for d in ("dtd", "food-101")}
    assert gpa == {"dtd": 45, "food-101": 30}
    assert recipe_for("maple", "dg", "imagenet", 16).recipe == "maple/vit_b16_c2_ep5_batch4_2ctx_cross_datasets"
    jobs = plan("crossdataset", "cocoop", "out", ["dtd", "ImageNet", "EuroSAT"], seeds=[1, 2])
    assert [(j.dataset, j.seed, j.evals) for j in jobs] == [("imagenet", s, (("dtd", "all"), ("eurosat", "all")))
                                                            for s in (1, 2)]
    cfg = job_config(jobs[0], "cocoop", "/data", {}, ["OPTIM.MAX_EPOCH", "3"])
    assert (cfg["DATASET"]["NUM_SHOTS"], cfg["DATASET"]["NAME"], cfg["OPTIM"]["MAX_EPOCH"]) == (16, "imagenet", 3)
    assert len(plan("fewshot", "coop", "out", None, seeds=[1])) == 11 * 5
    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        plan("base2new", "nope", "out")


def _runs(kind, method, rows):
    """``rows``: (dataset, shots, seed, accuracy, {(eval dataset, subsample): accuracy})."""
    return [RunResult(kind, method, d, k, s, acc, ev, "") for d, k, s, acc, ev in rows]


def test_fewshot_table():
    runs = _runs("fewshot", "coop", [(d, k, s, 10.0 * k + s + i, {}) for i, d in enumerate(DATASETS_11)
                                     for k in (1, 2, 4, 8, 16) for s in (1, 2, 3)])
    (table,) = build_tables(runs)
    assert [c for c, _ in table.columns] == ["1", "2", "4", "8", "16"]
    avg = table.rows[-1]
    assert avg.key == "average" and avg.cells["16"].mean == pytest.approx(160 + 2 + 5)
    assert avg.cells["16"].std == pytest.approx((2 / 3) ** 0.5)  # std over seeds of the per-seed averages
    assert avg.published == {"1": 67.56, "2": 70.65, "4": 74.02, "8": 76.98, "16": 79.89}
    assert "k16,k16_std,k16_seeds,published_k16" in table_csv(table)
    assert "| **Average** | 17.00 ± 0.82 |" in table_markdown(table)


def test_crossdataset_and_dg_tables_share_the_imagenet_runs():
    evals = {(t, "all"): 50.0 + i for i, t in enumerate(XD_TARGETS + DG_TARGETS)}
    runs = _runs("xd", "cocoop", [("imagenet", 16, s, 70.0 + s, {k: v + s for k, v in evals.items()})
                                  for s in (1, 2)])
    xd, dg = build_tables(runs)
    assert (xd.protocol, dg.protocol) == ("crossdataset", "dg")
    assert [r.key for r in xd.rows] == ["imagenet", *XD_TARGETS, "average"]
    assert xd.rows[0].cells["accuracy"].mean == 71.5 and xd.rows[0].published == {"accuracy": 71.02}
    assert xd.rows[-1].cells["accuracy"].mean == pytest.approx(50 + 4.5 + 1.5)  # targets only
    assert xd.rows[-1].published == {"accuracy": 65.74}
    assert [r.label for r in dg.rows] == ["ImageNet", "ImageNet-V2", "ImageNet-Sketch", "ImageNet-A", "ImageNet-R",
                                          "Average"]
    assert dg.rows[-1].published == {"accuracy": 59.91}
    # a subset of the targets: the published average (over all 10) is a note, not beside the row
    (part,) = build_tables(_runs("xd", "cocoop", [("imagenet", 16, 1, 70.0, {("dtd", "all"): 40.0,
                                                                             ("eurosat", "all"): 30.0})]))
    assert part.rows[-1].published == {} and "covers 10 datasets" in table_markdown(part)
    assert "No published" in table_markdown(build_tables(_runs("xd", "rpp", [("imagenet", 16, 1, 1.0,
                                                                               {("dtd", "all"): 2.0})]))[0])


def test_bad_list_values_are_one_line_errors(capsys):
    for argv, message in ((["--seeds", "1", "x"], "argument --seeds: expected an integer >= 0, got 'x'"),
                          (["--shots", "0"], "argument --shots: expected a positive integer, got 0"),
                          (["--datasets", "OPTIM.LR", "1"], "--datasets needs at least one value")):
        with pytest.raises(SystemExit) as exc:
            main(["run", "--protocol", "fewshot", "--method", "coop", "--data", ".", *argv])
        assert exc.value.code == 2 and message in capsys.readouterr().err
    assert set(PROTOCOLS) == {"base2new", "fewshot", "crossdataset", "dg", "multitask"}
