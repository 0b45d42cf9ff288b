"""DePT (CoOp + DePT, KgCoOp + DePT) against the literal original code path (fastprompt.reference.dept)."""
import json

import pytest
import torch

import fastprompt
from fastprompt.reference import ReferenceDePTCoCoOp, ReferenceDePTCoOp, ReferenceDePTKgCoOp, ReferenceDePTMaPLe
from fastprompt.testing import FP32, assert_close_rel, random_images

LEARNERS = {"coop": (fastprompt.CoOpDePTLearner, ReferenceDePTCoOp),
            "kgcoop": (fastprompt.KgCoOpDePTLearner, ReferenceDePTKgCoOp),
            "cocoop": (fastprompt.CoCoOpDePTLearner, ReferenceDePTCoCoOp),
            "maple": (fastprompt.MaPLeDePTLearner, ReferenceDePTMaPLe)}


def _perturb(module, seed=1):
    """Move every trainable tensor of the reference off its init (FiLM's ones/zeros would hide a
    transposed scale/bias or a missing FiLM)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.startswith(("prompt_learner.ctx", "prompt_learner.meta_net", "prompt_learner.proj",
                                "prompt_learner.compound", "film_lp_", "linear_probe_proj.")):
                p.add_(0.1 * torch.randn(p.shape, generator=g))


def _reference_param(reference, name):
    head = name.startswith(("film_lp_", "linear_probe_proj."))
    return dict(reference.named_parameters())[name if head else "prompt_learner." + name]


def _pair(kind, model, classnames, cfg=None, ref_cfg=None, **ref_path):
    learner_cls, reference_cls = LEARNERS[kind]
    torch.manual_seed(0)
    reference = reference_cls(model, classnames, **{**(ref_cfg or {}), **ref_path})
    _perturb(reference)
    learner = learner_cls.from_model(model, classnames, **(cfg or {}))
    learner.load_original_state_dict(reference.state_dict())  # the whole CustomCLIP, as DePT saves it
    return learner, reference


def compare_step(learner, reference, images, labels):
    terms = learner.loss_terms(images, labels)
    ref_loss = reference.loss(images, labels)
    assert_close_rel(terms["total"], ref_loss, FP32.parity, "loss")
    names = [n for n, _ in learner.trainable_named_parameters()]
    grads = torch.autograd.grad(terms["total"], [p for _, p in learner.trainable_named_parameters()])
    ref_grads = torch.autograd.grad(ref_loss, [_reference_param(reference, n) for n in names])
    for name, g, r in zip(names, grads, ref_grads):
        assert_close_rel(g, r, FP32.gradient_parity, f"grad {name}")
    assert_close_rel(learner(images), reference.logits(images), FP32.parity, "evaluation logits")
    return terms


CASES = [
    ("coop", "tiny_model", dict(n_ctx=4), dict(n_ctx=4)),
    ("coop", "tiny_model", dict(ctx_init="a photo of a", lp_type="similarity"),
     dict(ctx_init="a photo of a", lp_type="similarity")),
    ("coop", "tiny_custom_model", dict(n_ctx=3, test_time_fusion=False, lp_weight=0.4),
     dict(n_ctx=3, test_time_fusion=False, lp_weight=0.4)),
    ("coop", "tiny_model", dict(n_ctx=2, film=False), dict(n_ctx=2, film=False)),
    ("kgcoop", "tiny_model", dict(), dict()),
    ("kgcoop", "tiny_custom_model", dict(template="EuroSAT", w=8.0),
     dict(template="a centered satellite photo of {}.", w=8.0)),
    ("kgcoop", "tiny_model", dict(ctx_init="", n_ctx=3, lp_type="similarity"),
     dict(ctx_init=False, n_ctx=3, lp_type="similarity")),
    ("cocoop", "tiny_model", dict(), dict()),
    ("cocoop", "tiny_custom_model", dict(ctx_init="", n_ctx=2, test_time_fusion=False),
     dict(ctx_init="", n_ctx=2, test_time_fusion=False)),
    ("maple", "tiny_model", dict(prompt_depth=2), dict(prompt_depth=2)),
    ("maple", "tiny_custom_model", dict(prompt_depth=1, n_ctx=3, lp_type="similarity"),
     dict(prompt_depth=1, n_ctx=3, lp_type="similarity")),
]


@pytest.mark.parametrize("kind,model_fixture,cfg,ref_cfg", CASES, ids=[f"{k}-{m}-{c}" for k, m, c, _ in CASES])
def test_dept_matches_reference(kind, model_fixture, cfg, ref_cfg, classnames, request):
    model = request.getfixturevalue(model_fixture)
    learner, reference = _pair(kind, model, classnames, cfg, ref_cfg, subsample_classes="base")
    terms = compare_step(learner, reference, random_images(3), torch.tensor([0, 3, 7]))
    assert set(terms) >= {"ce", "ce_head", "total"}
    if kind == "kgcoop":
        assert_close_rel(terms["total"], 0.3 * terms["ce"] + 0.7 * terms["ce_head"] + learner.config.w
                         * terms["consistency"], FP32.rounding, "kgcoop total")


@pytest.mark.parametrize("kind", ["coop", "kgcoop", "cocoop", "maple"])
def test_new_classes_use_the_cosine_head_only(kind, tiny_model, classnames):
    """Base-to-new: the new classes' logits are the original's "new" path (no FiLM, no linear head)."""
    cfg = dict(prompt_depth=2) if kind == "maple" else {}
    learner, _ = _pair(kind, tiny_model, classnames, cfg, cfg, subsample_classes="base")
    new = ["cat", "tabby_cat", "airplane"]
    learner.set_classnames(new)
    reference = LEARNERS[kind][1](tiny_model, new, subsample_classes="new", **cfg)
    reference.prompt_learner.load_state_dict({k: v for k, v in learner.prompt_state_dict().items()
                                              if not k.startswith(("film_lp_", "linear_probe_proj."))}, strict=False)
    images = random_images(2)
    assert learner.head_rows() is None
    assert_close_rel(learner(images), reference.logits(images), FP32.parity, "new-class logits")
    with pytest.raises(ValueError, match="head's classes"):
        learner.loss(images, torch.tensor([0, 1]))


def test_a_subset_of_the_head_classes_takes_the_fused_path(tiny_model, classnames):
    """ImageNet-A/R: the original trims the head to the target's classes (``is_reserves``) and fuses."""
    learner, reference = _pair("coop", tiny_model, classnames, subsample_classes="all", dataset="ImageNet")
    keep = [1, 4, 5]
    subset = [classnames[i] for i in keep]
    target = ReferenceDePTCoOp(tiny_model, subset, subsample_classes="all", dataset="ImageNetA")
    state = reference.state_dict()
    state["linear_probe_proj.weight"] = state["linear_probe_proj.weight"][keep]
    state["linear_probe_proj.bias"] = state["linear_probe_proj.bias"][keep]
    target.load_state_dict({k: v for k, v in state.items() if "token_" not in k}, strict=False)
    learner.set_classnames(subset)
    images = random_images(2)
    assert_close_rel(learner(images), target.logits(images), FP32.parity, "ImageNet-A logits")


def test_only_the_prompt_and_head_train(tiny_model, classnames):
    learner, reference = _pair("kgcoop", tiny_model, classnames, subsample_classes="base")
    names = [n for n, _ in learner.trainable_named_parameters()]
    assert names == ["ctx", "film_lp_img.scale", "film_lp_img.bias", "film_lp_text.scale", "film_lp_text.bias",
                     "linear_probe_proj.weight", "linear_probe_proj.bias"]
    state = reference.state_dict()
    # DePT's KgCoOp checkpoint carries KgCoOp's never-trained leftovers (bias_vectors, meta_net twice,
    # adapter) and the frozen towers: all ignored; anything else is an error
    assert {"prompt_learner.bias_vectors", "image_encoder.conv1.weight", "logit_scale"} <= set(state)
    learner.load_original_state_dict({"state_dict": {**state, "adapter.fc.0.weight": torch.zeros(1)}, "epoch": 10})
    with pytest.raises(ValueError, match="unexpected.*extra"):
        learner.load_original_state_dict({**state, "extra": torch.zeros(1)})


@pytest.mark.parametrize("kind", ["coop", "kgcoop", "cocoop"])
def test_save_load_keeps_the_head_classes(kind, tiny_model, classnames, tmp_path):
    learner, reference = _pair(kind, tiny_model, classnames, subsample_classes="base")
    learner.set_classnames(["cat", "airplane"])
    learner.save_pretrained(tmp_path / "dept")
    saved = json.loads((tmp_path / "dept" / "fastprompt_config.json").read_text())
    assert saved["method"] == f"{kind}_dept"
    assert saved["config"]["head_classnames"] == [n.replace("_", " ") for n in classnames]
    loaded = fastprompt.PromptLearner.from_pretrained(tmp_path / "dept", model=tiny_model, classnames=classnames)
    assert type(loaded) is LEARNERS[kind][0]
    images = random_images(2)
    assert_close_rel(loaded(images), reference.logits(images), FP32.parity, "reloaded logits")


@pytest.mark.parametrize("kind,cfg,argument", [("coop", dict(lp_type="mlp"), "lp_type"),
                                               ("coop", dict(lp_weight=1.5), "lp_weight"),
                                               ("cocoop", dict(lp_type="similarity"), "original fails")])
def test_bad_config_is_a_clear_error(tiny_model, classnames, kind, cfg, argument):
    with pytest.raises(ValueError, match=argument):
        LEARNERS[kind][0].from_model(tiny_model, classnames, **cfg)


def test_precomputed_features_are_refused(tiny_model, classnames):
    learner = fastprompt.CoOpDePTLearner.from_model(tiny_model, classnames, n_ctx=2)
    assert not learner.frozen_image_side
    features = fastprompt.ImageFeatures(torch.randn(2, learner.text_tower.embed_dim))
    with pytest.raises(ValueError, match="ImageFeatures"):
        learner(features)


# ---- the run layer ---------------------------------------------------------------------------------
def test_staged_learning_rates_are_depts():
    """trainers/optim.py with train.py's defaults: the head at 6.5 * LR, the prompt at LR; the constant
    warm-up rate is every group's (Dassl's ConstantWarmupScheduler)."""
    from fastprompt.train.config import load_recipe, resolve_config
    from fastprompt.train.schedule import param_groups, schedule_from_config

    recipe = "kgcoop_dept/vit_b16_ep10_ctxv1_bs4_lr35"
    cfg = resolve_config([(recipe, load_recipe(recipe))])
    named = [(n, torch.nn.Parameter(torch.zeros(1))) for n in
             ("ctx", "film_lp_img.scale", "film_lp_text.bias", "linear_probe_proj.weight")]
    groups = param_groups(named, cfg["OPTIM"])
    assert [len(g["params"]) for g in groups] == [1, 3] and [g["lr_mult"] for g in groups] == [1.0, 6.5]
    schedule = schedule_from_config(cfg["OPTIM"])
    assert schedule.lr_at(0, 6.5) == schedule.lr_at(0) == 1e-5
    assert (schedule.lr_at(1), schedule.lr_at(1, 6.5)) == pytest.approx((0.0035, 0.02275))
    assert param_groups(named, {**cfg["OPTIM"], "STAGED_LR": False}) == [p for _, p in named]


@pytest.mark.parametrize("recipe", ["coop_dept/vit_b16_ep10_bs4_lr35", "kgcoop_dept/vit_b16_ep10_ctxv1_bs4_lr35",
                                    "cocoop_dept/vit_b16_c4_ep10_batch1_ctxv1",
                                    "maple_dept/vit_b16_c2_ep10_batch4_2ctx"])
def test_recipe_trains_and_evaluates_through_the_cli(recipe, tmp_path, capsys):
    from fastprompt.cli import main
    from fastprompt.testing.fake_trees import make_split_dataset, tiny_jpeg

    make_split_dataset(str(tmp_path / "data"), "dtd", [(6, 2, 2)] * 4, image_bytes=tiny_jpeg(16))
    out, data = tmp_path / "run", str(tmp_path / "data")
    assert main(["train", "--recipe", recipe, "--data", data, "--dataset", "dtd", "--output-dir", str(out),
                 "--model", "tiny", "--pretrained", "none", "--no-progress", "--subsample", "base",
                 "OPTIM.MAX_EPOCH", "2", "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "DATALOADER.NUM_WORKERS", "0",
                 "TRAIN.TENSORBOARD", "False", *(["TRAINER.MAPLE.PROMPT_DEPTH", "2"] if "maple" in recipe else [])
                 ]) == 0
    assert json.loads((out / "eval.json").read_text())["total"] == 4  # 2 base classes x 2 test images
    assert "initial prompts: original" in (out / "log.txt").read_text()  # the original's start, replayed
    groups = torch.load(out / "state.pt", weights_only=True)["optimizer"]["param_groups"]
    # the last epoch (1 of 2, after the constant warm-up): cosine at t=0, the head at 6.5x the prompt's rate
    assert [(g["lr_mult"], len(g["params"])) for g in groups] == [(1.0, len(groups[0]["params"])), (6.5, 6)]
    assert groups[1]["lr"] == pytest.approx(6.5 * groups[0]["lr"]) and groups[0]["lr"] > 1e-5
    saved = json.loads((out / "fastprompt_config.json").read_text())
    assert saved["method"] == recipe.split("/")[0] and len(saved["config"]["head_classnames"]) == 2
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out), "--data", data, "--dataset", "dtd", "--subsample", "new"]) == 0
    assert json.loads(capsys.readouterr().out)["total"] == 4


@pytest.mark.parametrize("kind,cfg", [("coop", dict(n_ctx=4)), ("kgcoop", {}), ("cocoop", {}),
                                      ("maple", dict(prompt_depth=2))])
def test_the_originals_start_is_the_base_learners_then_the_head(kind, cfg, tiny_model, classnames):
    """Same seed, same run: DePT's CustomCLIP builds the base learner's CustomCLIP first (its CLIP and
    prompt draws), then FiLM (no draw) and ``nn.Linear(E, C).type(dtype)`` from the global stream."""
    from fastprompt.reference.original_init import original_init_reference
    from fastprompt.replay.construction import original_init

    kw = dict(seed=3, precision="fp16", n_classes=len(classnames))
    base, rng = original_init_reference(kind, tiny_model, **kw, **cfg)
    width = tiny_model.text_projection.shape[1]
    with torch.random.fork_rng(devices=[]):
        torch.set_rng_state(rng)
        head = torch.nn.Linear(width, len(classnames)).type(torch.float16)
        after = torch.get_rng_state()
    state, rng_after = original_init(f"{kind}_dept", tiny_model, **kw, **cfg)
    assert torch.equal(rng_after, after)
    assert all(torch.equal(state[k], v) for k, v in base.items())
    assert torch.equal(state["linear_probe_proj.weight"], head.weight.float())
    assert torch.equal(state["linear_probe_proj.bias"], head.bias.float())
    assert torch.equal(state["film_lp_img.scale"], torch.ones(width))
    learner = LEARNERS[kind][0].from_model(tiny_model, classnames, **cfg)
    learner.load_original_state_dict(state)  # every trainable tensor named, nothing left over
