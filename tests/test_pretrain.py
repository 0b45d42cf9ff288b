"""``fastprompt pretrain``: ImageNet-21K folder trees and shards, the objective choice, resume, transfer."""
import json
import os
import sys

import pytest
import torch
from safetensors.torch import load_file

from fastprompt.cli import main as cli_main
from fastprompt.train import ConfigError
from fastprompt.pretrain.run import pretrain_run, set_objective
from fastprompt.train.records import read_metrics
from fastprompt.train.state import load_state

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pretrain_job import N_CLASSES, SMALL, config as _cfg, make_data  # noqa: E402

pytest.importorskip("webdataset")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(str(tmp_path_factory.mktemp("pretrain")), transfer=True)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTPROMPT_CACHE", str(tmp_path / "cache"))


def test_folder_tree_full_vocabulary_then_transfer_table(data, tmp_path, capsys):
    run = str(tmp_path / "run")
    code = cli_main(["pretrain", "--recipe", "pomp/vit_b16_ep5", "--data", data["root"], "--model", "tiny",
                     "--pretrained", "none", "--output-dir", run, "--transfer-data", data["transfer"], "--no-progress",
                     "--workers", "0", *SMALL])
    assert code == 0, capsys.readouterr().err
    with open(os.path.join(run, "pretrain.json")) as f:
        record = json.load(f)
    assert record["objective"] == "full" and record["requested"] == "auto"
    assert "needs" in record["reason"] and "available" in record["reason"]  # the estimate and the budget, named
    assert record["num_classes"] == N_CLASSES
    with open(os.path.join(run, "classes.json")) as f:
        assert len(json.load(f)["classes"]) == N_CLASSES  # the names used are written into the run
    log = open(os.path.join(run, "log.txt")).read()
    assert "objective: full" in log and "images/s" in log
    steps = [r for r in read_metrics(os.path.join(run, "metrics.jsonl")) if r["kind"] == "step"]
    assert steps and all(r["images_per_s"] > 0 for r in steps)  # throughput is logged
    for name in ("imagenet", "imagenetv2", "dtd"):
        assert os.path.isfile(os.path.join(run, "transfer", f"eval_{name}.json")), name
    md = open(os.path.join(run, "transfer", "dg_pomp.md")).read()
    assert "ImageNet-V2" in md and "ImageNet-21K" in md
    assert "skipped" in log  # the transfer sets that are not there are named, not silently dropped
    out = capsys.readouterr().out
    assert "transfer imagenet: accuracy" in out
    # the transfer result is what `fastprompt eval` gives for the same prompts and dataset
    assert cli_main(["eval", "--checkpoint", run, "--data", data["transfer"], "--dataset", "dtd",
                     "--out", str(tmp_path / "dtd.json")]) == 0
    with open(tmp_path / "dtd.json") as f, open(os.path.join(run, "transfer", "eval_dtd.json")) as g:
        assert json.load(f)["accuracy"] == json.load(g)["accuracy"]


@pytest.mark.parametrize("recipe", ["pomp/vit_b16_ep5", "rpp/vit_b16_ep5"])
def test_auto_falls_back_to_local_contrast_when_the_step_does_not_fit(data, tmp_path, monkeypatch, recipe):
    from fastprompt.pretrain import step_memory

    monkeypatch.setattr(step_memory, "available_memory", lambda device: 1 << 20)  # 1 MiB
    run = str(tmp_path / "run")
    result = pretrain_run(_cfg(recipe, "TRAIN.MAX_STEPS", "2", **{"DATASET.ROOT": data["root"]}), run,
                          progress=False)
    assert result["objective"] == "local"
    with open(os.path.join(run, "pretrain.json")) as f:
        record = json.load(f)
    assert record["objective"] == "local" and "1.0 MiB available" in record["reason"]
    assert "objective: local" in open(os.path.join(run, "log.txt")).read()


def test_forced_objective_is_obeyed(data, tmp_path):
    cfg = _cfg("rpp/vit_b16_ep5", "TRAIN.MAX_STEPS", "1", **{"DATASET.ROOT": data["root"], "TRAIN.OBJECTIVE": "local"})
    result = pretrain_run(cfg, str(tmp_path / "run"), progress=False)
    assert result["objective"] == "local"


def _interrupt_at(step):
    class Stop(Exception):
        pass

    def callback(event, trainer, info):
        if event == "step" and info["step"] == step:
            raise Stop()
    return Stop, callback


def test_shards_resume_mid_epoch_is_bit_identical(data, tmp_path):
    cfg = _cfg("pomp/vit_b16_ep5", "TRAIN.CHECKPOINT_STEPS", "1", **{"DATASET.SHARDS": data["shards"]})
    full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
    pretrain_run(cfg, full, progress=False)
    stop, callback = _interrupt_at(11)  # 15 batches per epoch (120 samples / 8): mid-epoch of epoch 1
    with pytest.raises(stop):
        pretrain_run(cfg, cut, progress=False, callbacks=[callback])
    state = load_state(os.path.join(cut, "state.pt"))
    assert state["step"] == 11 and state["stream"] is not None
    pretrain_run(cfg, cut, resume=True, progress=False)
    a, b = load_file(os.path.join(full, "prompt.safetensors")), load_file(os.path.join(cut, "prompt.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ref = {r["step"]: r["loss"] for r in read_metrics(os.path.join(full, "metrics.jsonl")) if r["kind"] == "step"}
    got = {r["step"]: r["loss"] for r in read_metrics(os.path.join(cut, "metrics.jsonl")) if r["kind"] == "step"}
    assert got == ref


def test_resume_keeps_the_objective_chosen_at_the_start(data, tmp_path, monkeypatch):
    from fastprompt.pretrain import step_memory

    run = str(tmp_path / "run")
    cfg = _cfg("pomp/vit_b16_ep5", "TRAIN.CHECKPOINT_STEPS", "1", **{"DATASET.ROOT": data["root"]})
    stop, callback = _interrupt_at(2)
    with pytest.raises(stop):
        pretrain_run(cfg, run, progress=False, callbacks=[callback])
    monkeypatch.setattr(step_memory, "available_memory", lambda device: 1 << 20)  # would now choose local
    assert pretrain_run(cfg, run, resume=True, progress=False)["objective"] == "full"


def test_only_pretraining_methods_and_known_objectives(data, tmp_path):
    with pytest.raises(ConfigError, match="pomp or rpp"):
        pretrain_run(_cfg("coop/vit_b16_ep50", **{"DATASET.ROOT": data["root"]}), str(tmp_path / "a"))
    with pytest.raises(ConfigError, match="TRAIN.OBJECTIVE"):
        pretrain_run(_cfg("pomp/vit_b16_ep5", **{"DATASET.ROOT": data["root"], "TRAIN.OBJECTIVE": "sampled"}),
                     str(tmp_path / "b"))
    with pytest.raises(ConfigError, match="--shards"):
        pretrain_run(_cfg("pomp/vit_b16_ep5"), str(tmp_path / "c"))


def test_set_objective_switches_pomp_and_rpp(tiny_model):
    import fastprompt

    names = [f"class {i}" for i in range(12)]
    pomp = fastprompt.POMPLearner.from_model(tiny_model, names, num_sampled_classes=4)
    set_objective(pomp, "full")
    assert pomp.objective.mode == pomp.config.mode == "full"
    rpp = fastprompt.RPPLearner.from_model(tiny_model, names, depth=1, kl_weight=0.0, pomp_num_sampled_classes=5)
    set_objective(rpp, "local")
    assert rpp.objective.num_sampled_classes == 5 and rpp.config.pomp
    set_objective(rpp, "full")
    assert rpp.objective is None and not rpp.config.pomp
    with pytest.raises(ValueError, match="'full' or 'local'"):
        set_objective(rpp, "sampled")
