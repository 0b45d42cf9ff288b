"""Recipes, the config loader (fastprompt YAML, original Dassl YAML, KEY VALUE), the schedule."""

import pytest
import torch

from fastprompt.train.build import check_backbone, open_clip_name
from fastprompt.train.config import dump_yaml, read_yaml, resolve_config
from fastprompt.errors import ConfigError
from fastprompt.train.methods import METHODS, learner_kwargs
from fastprompt.train.config import list_recipes, load_recipe, recipe_path
from fastprompt.train.schedule import EpochSchedule, build_optimizer, schedule_from_config

# configs/trainers/KgCoOp/vit_b16_ep100_ctxv1.yaml of htyao89/KgCoOp @ c43ccc3, as written there
KGCOOP_ORIGINAL = """DATALOADER:
  TRAIN_X:
    BATCH_SIZE: 128
  TEST:
    BATCH_SIZE: 100
  NUM_WORKERS: 8

INPUT:
  SIZE: (224, 224)
  INTERPOLATION: "bicubic"
  PIXEL_MEAN: [0.48145466, 0.4578275, 0.40821073]
  PIXEL_STD: [0.26862954, 0.26130258, 0.27577711]
  TRANSFORMS: ["random_resized_crop", "random_flip", "normalize"]

OPTIM:
  NAME: "sgd"
  LR: 0.002
  MAX_EPOCH: 100
  LR_SCHEDULER: "cosine"
  WARMUP_EPOCH: 1
  WARMUP_TYPE: "constant"
  WARMUP_CONS_LR: 1e-5

TRAIN:
  PRINT_FREQ: 5

MODEL:
  BACKBONE:
    NAME: "ViT-B/16"

TRAINER:
  COOP:
    CTX_INIT: True
"""


def _recipe(name, **arguments):
    return resolve_config([(name, load_recipe(name))], arguments=arguments)


def test_every_recipe_resolves_to_learner_settings():
    names = list_recipes()
    for expected in ("coop/vit_b16_ep50", "coop/rn50_ep50", "cocoop/vit_b16_c4_ep10_batch1_ctxv1",
                     "maple/vit_b16_c2_ep5_batch4_2ctx", "promptsrc/vit_b16_c2_ep20_batch4_4+4ctx",
                     "kgcoop/vit_b16_ep100_ctxv1", "pre/vit_b16_ep50_ctxv1", "softcpt/rn50_ep50",
                     "pomp/vit_b16_ep5_randaug2", "vpt/vit_b16_c2_ep5_batch4_4", "rpp/vit_b16_ep5"):
        assert expected in names
    for name in names:
        cfg = _recipe(name)
        assert cfg["METHOD"] == name.split("/")[0]
        spec = METHODS[cfg["METHOD"]]
        learner_kwargs(cfg["METHOD"], cfg["TRAINER"][spec.section], "OxfordPets")
        adam = cfg["METHOD"] == "tcp"  # TCP's config: Adam (eps 1e-3 by its README's edit of Dassl)
        assert cfg["OPTIM"]["NAME"] == ("adam" if adam else "sgd") and cfg["OPTIM"]["WARMUP_TYPE"] == "constant"


def test_recipe_values_are_the_originals():
    cocoop = _recipe("cocoop/vit_b16_c4_ep10_batch1_ctxv1")
    assert cocoop["DATALOADER"]["TRAIN_X"]["BATCH_SIZE"] == 1 and cocoop["OPTIM"]["MAX_EPOCH"] == 10
    assert cocoop["TRAINER"]["COCOOP"] == {"N_CTX": 4, "CTX_INIT": "a photo of a", "PREC": "fp16"}
    maple = _recipe("maple/vit_b16_c2_ep5_batch4_2ctx")
    assert (maple["OPTIM"]["LR"], maple["OPTIM"]["MAX_EPOCH"], maple["TRAINER"]["MAPLE"]["PROMPT_DEPTH"]) == (0.0035, 5, 9)
    psrc = _recipe("promptsrc/vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets")
    assert psrc["TRAINER"]["PROMPTSRC"]["GPA_MEAN"] == 6 and psrc["TRAINER"]["PROMPTSRC"]["PROMPT_DEPTH_TEXT"] == 3
    kg = _recipe("kgcoop/vit_b16_ep100_ctxv1")
    assert learner_kwargs("kgcoop", kg["TRAINER"]["COOP"], "EuroSAT") == {
        "n_ctx": 4, "csc": False, "ctx_init": "a photo of a", "w": 8.0, "class_token_position": "end",
        "template": "EuroSAT"}
    pre = _recipe("pre/vit_b16_ep50_ctxv1")
    assert pre["TRAINER"]["PRE"]["ENCODER"] == "LSTM1" and pre["TRAINER"]["PRE"]["PREC"] == "amp"
    assert _recipe("coop/rn50_ep50")["MODEL"]["BACKBONE"]["NAME"] == "RN50"
    assert _recipe("coop/vit_b16_ep50")["OPTIM"]["WARMUP_CONS_LR"] == 1e-5


def test_original_yaml_unchanged_with_overrides(tmp_path):
    folder = tmp_path / "configs" / "trainers" / "KgCoOp"
    folder.mkdir(parents=True)
    path = folder / "vit_b16_ep100_ctxv1.yaml"
    path.write_text(KGCOOP_ORIGINAL)
    dataset = tmp_path / "oxford_pets.yaml"
    dataset.write_text('DATASET:\n  NAME: "OxfordPets"\n')
    cfg = resolve_config([(str(dataset), read_yaml(str(dataset))), (str(path), read_yaml(str(path)))],
                         overrides=["TRAINER.COOP.N_CTX", "4", "TRAINER.COOP.W", "8.0", "DATASET.NUM_SHOTS", "16",
                                    "DATASET.SUBSAMPLE_CLASSES", "base"])
    assert cfg["METHOD"] == "kgcoop"  # from the folder the file sits in
    assert cfg["INPUT"]["SIZE"] == (224, 224) and cfg["OPTIM"]["WARMUP_CONS_LR"] == 1e-5
    assert (cfg["DATASET"]["NAME"], cfg["DATASET"]["NUM_SHOTS"], cfg["DATASET"]["SUBSAMPLE_CLASSES"]) == \
        ("OxfordPets", 16, "base")
    assert cfg["TRAINER"]["COOP"]["W"] == 8.0 and cfg["TRAINER"]["COOP"]["CTX_INIT"] is True
    # the resolved YAML reads back to the same configuration
    out = tmp_path / "config.yaml"
    out.write_text(dump_yaml(cfg))
    assert resolve_config([(str(out), read_yaml(str(out)))]) == cfg


@pytest.mark.parametrize("overrides, message", [
    (["OPTIM.LRR", "0.1"], "unknown config key OPTIM.LRR in the command line; did you mean OPTIM.LR"),
    (["OPTIM.LR", "fast"], "OPTIM.LR expects float"),
    (["OPTIM.LR"], "'OPTIM.LR' has no value"),
    (["TRAINER.COOP.N_CTX", "4.5"], "TRAINER.COOP.N_CTX expects int"),
])
def test_bad_overrides_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        resolve_config([("coop/vit_b16", load_recipe("coop/vit_b16"))], overrides=overrides)


def test_unknown_recipe_lists_the_recipes():
    with pytest.raises(ConfigError) as err:
        recipe_path("coop/vit_b16_ep51")
    assert "did you mean coop/vit_b16_ep50" in str(err.value).lower() and "coop/rn50_ep50" in str(err.value)
    with pytest.raises(ConfigError, match="maple/vit_b16_c2_ep5_batch4_2ctx"):
        recipe_path("nothing/here")


def test_unknown_method_and_undecidable_file(tmp_path):
    plain = tmp_path / "x.yaml"
    plain.write_text("OPTIM:\n  LR: 0.1\n")
    with pytest.raises(ConfigError, match="cannot tell the method"):
        resolve_config([(str(plain), read_yaml(str(plain)))])
    with pytest.raises(ConfigError, match="unknown method 'coopp'"):
        resolve_config([(str(plain), read_yaml(str(plain)))], method="coopp")
    assert resolve_config([(str(plain), read_yaml(str(plain)))], method="CoCoOp")["METHOD"] == "cocoop"


def test_deep_vision_learners_refuse_resnet():
    for name in ("maple/vit_b16_c2_ep5_batch4_2ctx", "promptsrc/vit_b16_c2_ep20_batch4_4+4ctx",
                 "vpt/vit_b16_c2_ep5_batch4_4", "rpp/vit_b16_ep5"):
        cfg = _recipe(name, **{"MODEL.BACKBONE.NAME": "RN50"})
        with pytest.raises(ConfigError, match="needs such a ViT backbone, and RN50 has a ResNet image tower"):
            check_backbone(cfg)
        # a timm trunk without a token sequence for prompts (ConvNeXt, ...) likewise, from open_clip's
        # config before any build; a timm ViT (EVA02, SigLIP) takes deep prompts (tests/test_timm_deep_prompts.py)
        cfg = _recipe(name, **{"MODEL.BACKBONE.NAME": "convnext_base"})
        with pytest.raises(ConfigError, match="convnext_base has a timm image tower.*ConvNeXt.*run on any tower"):
            check_backbone(cfg)
        assert check_backbone(_recipe(name, **{"MODEL.BACKBONE.NAME": "EVA02-B-16"}))[0] == "EVA02-B-16"
    assert check_backbone(_recipe("coop/vit_b16_ep50", **{"MODEL.BACKBONE.NAME": "convnext_base"}))[0] == "convnext_base"
    # text-prompt learners run the ResNet image tower as it is (tests/test_resnet.py)
    assert check_backbone(_recipe("coop/rn50_ep50")) == ("RN50", "openai")
    assert check_backbone(_recipe("coop/rn50_ep50", **{"MODEL.BACKBONE.NAME": "ViT-B-16"})) == ("ViT-B-16", "openai")
    assert open_clip_name("ViT-B/16") == "ViT-B-16" and open_clip_name("ViT-L/14@336px") == "ViT-L-14-336"


def test_dassl_constant_warmup_cosine():
    sched = schedule_from_config(_recipe("coop/vit_b16_ep50")["OPTIM"])
    assert sched.lr_at(0) == 1e-5
    assert sched.lr_at(1) == pytest.approx(0.002)
    assert sched.lr_at(49) == pytest.approx(7.885e-6, rel=1e-3)  # minhanh151/PRE's training logs
    # the same values as Dassl's ConstantWarmupScheduler over torch's CosineAnnealingLR, stepped per epoch
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.002)
    cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 50.0)
    torch_lrs = [1e-5, 0.002] + [None] * 48
    for e in range(2, 50):
        opt.step()  # no gradient: nothing moves
        cos.step()
        torch_lrs[e] = opt.param_groups[0]["lr"]
    for e in range(50):
        assert sched.lr_at(e) == pytest.approx(torch_lrs[e], rel=1e-9), e
    linear = EpochSchedule(0.1, 10, "cosine", warmup_epoch=2, warmup_type="linear", warmup_min_lr=1e-4)
    assert [linear.lr_at(e) for e in range(3)] == [1e-4, 0.05, 0.1]
    step = EpochSchedule(0.1, 10, "multi_step", stepsize=(3, 6), gamma=0.5)
    assert [step.lr_at(e) for e in (0, 3, 6)] == [0.1, 0.05, 0.025]


def test_optimizers():
    p = [torch.nn.Parameter(torch.zeros(2))]
    optim = dict(_recipe("coop/vit_b16")["OPTIM"])
    sgd = build_optimizer(p, optim)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.9 and sgd.defaults["weight_decay"] == 5e-4
    assert isinstance(build_optimizer(p, {**optim, "NAME": "adamw"}), torch.optim.AdamW)
    with pytest.raises(ConfigError, match="OPTIM.NAME must be one of"):
        build_optimizer(p, {**optim, "NAME": "lion"})
