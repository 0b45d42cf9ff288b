"""TCP learner against the literal original code path (fastprompt.reference.ReferenceTCP)."""
import json

import pytest
import torch
import torch.nn.functional as F

import fastprompt
from fastprompt.models import tiny_clip
from fastprompt.reference import ReferenceTCP
from fastprompt.testing import FP32, assert_close_rel, assert_gradient_flows, perturb_trainable, random_images

PETS = dict(template="X X X X {}, a type of pet.", teacher_template="a photo of a {}, a type of pet.")
PARAMS = ("ctx", "meta_net.linear1.weight", "meta_net.linear1.bias", "meta_net.linear2.weight",
          "meta_net.linear2.bias")


@pytest.fixture(scope="module")
def nine_layer_model():
    """Nine text blocks: the original's insertion at block 8 (the last one)."""
    return tiny_clip(seed=3, layers=9)


def _pair(model, classnames, cfg, ref_cfg):
    torch.manual_seed(0)
    reference = ReferenceTCP(model, classnames, **ref_cfg)
    perturb_trainable(reference.prompt_learner)
    learner = fastprompt.TCPLearner.from_model(model, classnames, **cfg)
    learner.load_original_state_dict(reference.prompt_learner.state_dict())  # ctx, meta_net, token_prefix/suffix
    return learner, reference


def compare_step(learner, reference, images, labels, rtol=FP32.parity, dead=()):
    """``dead``: parameters off the loss's path (the context when the tokens replace it before block 0)."""
    terms = learner.loss_terms(images, labels)
    ref_logits, score = reference.forward_with_score(images)
    assert_close_rel(learner(images), ref_logits, rtol, "logits")
    assert_close_rel(terms["consistency"], score, rtol, "consistency score")
    ref_loss = reference.loss(images, labels)
    assert_close_rel(terms["total"], ref_loss, rtol, "loss")
    assert_close_rel(learner.loss(images, labels), ref_loss, rtol, "loss()")
    params = dict(learner.trainable_named_parameters())
    ref_params = dict(reference.prompt_learner.named_parameters())
    assert sorted(params) == sorted(PARAMS)
    grads = torch.autograd.grad(terms["total"], [params[n] for n in PARAMS])
    ref_grads = torch.autograd.grad(ref_loss, [ref_params[n] for n in PARAMS])
    for name, g, r in zip(PARAMS, grads, ref_grads):
        if name in dead:
            assert not g.any() and not r.any(), name
            continue
        assert_gradient_flows(g, name)
        assert_close_rel(g, r, FP32.gradient_parity, f"grad {name}")


CASES = [
    ("tiny_model", dict(insert_layer=1), dict(insert_layer=1)),
    ("tiny_model", dict(insert_layer=0, template="OxfordPets"), dict(insert_layer=0, **PETS)),
    ("tiny_model", dict(insert_layer=1, ctx_init="a photo of a", template="UCF101"),
     dict(insert_layer=1, ctx_init=True, template="a photo of a person doing {}.",
          teacher_template="a photo of a person doing {}.")),
    ("tiny_model", dict(insert_layer=1, n_ctx=2, template="EuroSAT"),
     dict(insert_layer=1, n_ctx=2, template="X X X X {}.", teacher_template="a centered satellite photo of {}.")),
    ("tiny_custom_model", dict(insert_layer=1, template="FGVCAircraft"),
     dict(insert_layer=1, template="X X X X {}, a type of aircraft.", teacher_template="a photo of an aircraft {}.")),
    ("nine_layer_model", dict(template="StanfordCars", insert_layer=8), dict(template="X X X X {}, a type of car",
                                                             teacher_template="a photo of a {}.")),
]


@pytest.mark.parametrize("model_fixture,cfg,ref_cfg", CASES, ids=[f"{m}-{c}" for m, c, _ in CASES])
def test_tcp_matches_reference(model_fixture, cfg, ref_cfg, classnames, request):
    model = request.getfixturevalue(model_fixture)
    learner, reference = _pair(model, classnames, cfg, ref_cfg)
    assert_close_rel(learner.clip_text_features, reference.prompt_learner.text_features, FP32.parity,
                     "class embeddings")
    dead = ("ctx",) if cfg.get("insert_layer") == 0 and cfg.get("n_ctx", 4) <= 4 else ()
    compare_step(learner, reference, random_images(3), torch.tensor([0, 3, 7]), dead=dead)


def test_config_weight_and_mix_weight_change_nothing(tiny_model, classnames):
    """The W handed to the text encoder is overwritten by the block's fixed 1.0; the loss weight is 8."""
    images, labels = random_images(2), torch.tensor([1, 4])
    _, reference = _pair(tiny_model, classnames, dict(insert_layer=1), dict(insert_layer=1))
    base = reference.loss(images, labels)
    reference.weight = 0.25
    assert torch.equal(reference.loss(images, labels), base)
    learner = fastprompt.TCPLearner.from_model(tiny_model, classnames, insert_layer=1)
    perturb_trainable(learner)
    terms = learner.loss_terms(images, labels)
    assert_close_rel(terms["total"], terms["ce"] + 8.0 * terms["consistency"], FP32.rounding, "total")


def test_the_default_block_is_two_thirds_of_the_depth(tiny_model, nine_layer_model, vit_b16, classnames):
    assert fastprompt.TCPLearner.from_model(vit_b16, classnames).insert_layer == 8  # the original's, of 12
    assert fastprompt.TCPLearner.from_model(nine_layer_model, classnames).insert_layer == 6
    assert fastprompt.TCPLearner.from_model(tiny_model, classnames).insert_layer == 1


def test_class_tokens_enter_only_at_the_insert_layer(tiny_model, classnames):
    """The tokens replace rows 1..4 before block insert_layer: another layer gives other features."""
    learner = fastprompt.TCPLearner.from_model(tiny_model, classnames, insert_layer=1)
    perturb_trainable(learner)
    at_0 = fastprompt.TCPLearner.from_model(tiny_model, classnames, insert_layer=0)
    at_0.load_prompt_state_dict(learner.prompt_state_dict())
    with torch.no_grad():
        assert not torch.allclose(learner.text_features(), at_0.text_features(), atol=1e-4)


def test_original_checkpoint_layout_loads(tiny_model, classnames, tmp_path):
    """A Dassl checkpoint of the original's prompt_learner: ctx, meta_net, token_prefix/suffix."""
    _, reference = _pair(tiny_model, classnames, dict(insert_layer=1), dict(insert_layer=1))
    state = {k: v.clone() for k, v in reference.prompt_learner.state_dict().items()}
    assert set(state) == set(PARAMS) | {"token_prefix", "token_suffix"}
    path = tmp_path / "model.pth.tar-50"
    torch.save({"state_dict": state, "epoch": 50, "optimizer": None}, path)
    learner = fastprompt.TCPLearner.from_model(tiny_model, classnames, insert_layer=1)
    learner.load_original_state_dict(str(path))
    images = random_images(2)
    assert_close_rel(learner(images), reference(images), FP32.parity, "logits after loading")
    with pytest.raises(ValueError, match="unexpected.*adapter"):
        learner.load_original_state_dict({**state, "adapter.fc.0.weight": torch.zeros(1)})


def test_save_load_and_set_classnames(tiny_model, classnames, tmp_path):
    learner = fastprompt.TCPLearner.from_model(tiny_model, classnames, template="OxfordPets", insert_layer=1)
    perturb_trainable(learner)
    learner.save_pretrained(tmp_path / "tcp")
    config = json.loads((tmp_path / "tcp" / "fastprompt_config.json").read_text())
    assert config["method"] == "tcp" and config["config"]["template"] == "OxfordPets"
    loaded = fastprompt.PromptLearner.from_pretrained(tmp_path / "tcp", model=tiny_model)
    assert type(loaded) is fastprompt.TCPLearner
    images = random_images(2)
    assert torch.equal(loaded(images), learner(images))
    new = ["cat", "tabby_cat", "airplane"]
    loaded.set_classnames(new)  # base-to-novel: new class embeddings, new tokens, same meta-net
    assert loaded.clip_text_features.shape[0] == 3
    torch.manual_seed(0)
    reference = ReferenceTCP(tiny_model, new, insert_layer=1, **PETS)
    reference.prompt_learner.load_state_dict(
        {**reference.prompt_learner.state_dict(), **learner.prompt_state_dict()})
    compare_step(loaded, reference, images, torch.tensor([0, 2]))
    W = loaded.text_classifier()
    assert_close_rel(100 * loaded.image_features(images) @ W.t() * loaded.logit_scale / 100, loaded(images),
                     FP32.parity, "text_classifier")


@pytest.mark.parametrize("cfg,argument", [
    (dict(csc=True), "csc"),
    (dict(insert_layer=2), "insert_layer=2"),
    (dict(insert_layer=-1), "insert_layer must"),
    (dict(consistency_weight=-1.0), "consistency_weight"),
    (dict(template="a photo of a dog"), "template"),
    (dict(template="X {}.", insert_layer=1), "class-aware tokens replace positions"),
])
def test_bad_config_is_a_clear_error(tiny_model, classnames, cfg, argument):
    with pytest.raises(ValueError, match=argument):
        fastprompt.TCPLearner.from_model(tiny_model, classnames, **cfg)


@pytest.mark.slow
def test_vit_b16_tcp_matches_reference(vit_b16):
    names = ["goldfish", "great white shark", "tiger shark", "hammerhead shark"]
    learner, reference = _pair(vit_b16, names, dict(), dict())
    images, labels = random_images(1, size=224), torch.tensor([3])
    terms = learner.loss_terms(images, labels)
    ref_logits, score = reference.forward_with_score(images)
    assert_close_rel(terms["total"], F.cross_entropy(ref_logits, labels) + 8.0 * score, FP32.parity, "loss")


# ---- the run layer ---------------------------------------------------------------------------------
FAST = ["OPTIM.MAX_EPOCH", "2", "DATALOADER.TRAIN_X.BATCH_SIZE", "8", "DATALOADER.NUM_WORKERS", "0",
        "TRAIN.TENSORBOARD", "False"]  # two epochs of 3 batches


@pytest.fixture(scope="module")
def tree(dtd_tree):
    return dtd_tree


def _train(tree, out, *extra):
    from fastprompt.cli import main

    return main(["train", "--recipe", "tcp/vit_b16_ep100_ctxv1", "--data", tree, "--dataset", "dtd", "--output-dir",
                 str(out), "--model", "tiny", "--pretrained", "none", "--no-progress", *FAST, *extra])


def test_recipe_trains_and_evaluates_through_the_cli(tree, tmp_path, capsys):
    from fastprompt.cli import main
    from fastprompt.train.config import load_recipe

    recipe = load_recipe("tcp/vit_b16_ep100_ctxv1")
    assert recipe["OPTIM"]["ADAM_EPS"] == 0.001 and recipe["TRAINER"]["COOP"]["INSERT_LAYER"] == -1
    out = tmp_path / "tcp"
    assert _train(tree, out) == 0
    config = (out / "config.yaml").read_text()
    assert "METHOD: tcp" in config and "INSERT_LAYER: -1" in config and "ADAM_EPS: 0.001" in config
    assert json.loads((out / "eval.json").read_text())["total"] == 8
    assert "initial prompts: original" in (out / "log.txt").read_text()  # the original's draws for the seed
    learner = fastprompt.PromptLearner.from_pretrained(str(out), model=tiny_clip(0, **_tiny_kwargs()))
    assert type(learner) is fastprompt.TCPLearner and learner.config.template == "DescribableTextures"
    assert learner.insert_layer == 2  # two thirds of the tiny model's 4 text blocks
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out), "--data", tree, "--dataset", "dtd", "--subsample", "new"]) == 0
    assert json.loads(capsys.readouterr().out)["total"] == 4


def _tiny_kwargs():
    from fastprompt.train.model_keys import TINY_CLIP_KWARGS

    return TINY_CLIP_KWARGS


def test_the_originals_block_8_on_a_shallower_tower_is_one_line(tree, tmp_path, capsys):
    assert _train(tree, tmp_path / "deep", "TRAINER.COOP.INSERT_LAYER", "8") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "insert_layer=8" in err and "4 blocks" in err
    assert _train(tree, tmp_path / "csc", "TRAINER.COOP.CSC", "True") == 2
    assert "TRAINER.COOP.CSC" in capsys.readouterr().err


def test_adam_eps_is_honoured():
    from fastprompt.train.config import load_recipe, resolve_config
    from fastprompt.train.schedule import build_optimizer

    cfg = resolve_config([("tcp/vit_b16_ep100_ctxv1", load_recipe("tcp/vit_b16_ep100_ctxv1"))])
    optimizer = build_optimizer([torch.nn.Parameter(torch.zeros(2))], cfg["OPTIM"])
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.param_groups[0]["eps"] == 1e-3
    cfg = resolve_config([], method="coop")
    assert build_optimizer([torch.nn.Parameter(torch.zeros(2))], {**cfg["OPTIM"], "NAME": "adam"}) \
        .param_groups[0]["eps"] == 1e-8  # Dassl's (torch's) default elsewhere


def test_the_prefix_is_encoded_once_before_the_insert_layer(tiny_model, classnames):
    """``regroup``: one shared [SOT][ctx] prefix up to the insert layer, then one copy per class, gives
    what one prefix group per class at every layer gives (the layout without the saving)."""
    learner = fastprompt.TCPLearner.from_model(tiny_model, classnames, insert_layer=1)
    perturb_trainable(learner)
    assert learner.plan.n_groups == 1 and learner.class_plan.n_groups == len(classnames)
    overrides = [None, learner.class_tokens()]
    with torch.no_grad():
        per_class = learner.text_tower.encode(learner.class_plan, learner.ctx, prefix_overrides=overrides,
                                              override_start=1)
        assert_close_rel(learner.text_features(), per_class, FP32.parity, "shared prefix, then per class")
        subset = learner.text_features(torch.tensor([4, 1, 1]))
        assert_close_rel(subset, per_class[torch.tensor([4, 1, 1])], FP32.parity, "class_indices")
    with pytest.raises(ValueError, match="one-group plan"):
        learner.text_tower.encode(learner.class_plan, learner.ctx, regroup=(1, learner.class_plan))
