"""ProGrad learner against the literal original code path (fastprompt.reference.ReferenceProGrad)."""
import pytest
import torch

import fastprompt
from fastprompt.learners.prograd import project_gradient
from fastprompt.reference import ReferenceProGrad
from fastprompt.reference.prograd import prograd_project
from fastprompt.testing import FP32, assert_close_rel, random_images


def _perturb(t, seed=1, scale=0.05):
    with torch.no_grad():
        t.add_(scale * torch.randn(t.shape, generator=torch.Generator().manual_seed(seed)))


def compare_step(learner, reference, images, labels):
    """Logits, both losses and the projected gradient of ``ctx`` against the original's step."""
    terms = learner.loss_terms(images, labels)
    ref = reference.backward(images, labels)
    assert_close_rel(terms["logits"], ref["logits"], FP32.parity, "logits")
    assert_close_rel(terms["zs_logits"], ref["zs_logits"], FP32.parity, "zero-shot logits")
    assert_close_rel(terms["ce"], ref["xe"], FP32.parity, "cross entropy")
    assert_close_rel(terms["kl"], ref["kl"], FP32.parity, "soft-target term")
    learner.ctx.grad = None
    loss = learner.loss(images, labels)
    assert_close_rel(loss, ref["xe"], FP32.parity, "loss() value = ce")
    loss.backward()
    assert_close_rel(learner.ctx.grad, reference.prompt_learner.ctx.grad, FP32.gradient_parity, "projected grad ctx")
    return terms


CASES = [
    # the comma template: 8 words, 9 tokens (the last "a" stays frozen text), 8 zero rows
    (dict(template="OxfordPets"), dict(template="a type of pet, a photo of a {}.")),
    (dict(template="EuroSAT", T=2.0, lambda_=0.8), dict(template="a centered satellite photo of {}.", T=2.0,
                                                         lambda_=0.8)),
    (dict(ctx_init=False, n_ctx=3), dict(ctx_init=False, n_ctx=3)),
    (dict(ctx_init=False, n_ctx=2, csc=True), dict(ctx_init=False, n_ctx=2, csc=True)),
    (dict(template="Food101", class_token_position="front"), dict(template="a type of food, a photo of {}.",
                                                                  class_token_position="front")),
]


@pytest.mark.parametrize("cfg,ref_cfg", CASES, ids=[str(c) for c, _ in CASES])
@pytest.mark.parametrize("model_fixture", ["tiny_model", "tiny_custom_model"])
def test_prograd_matches_reference(model_fixture, cfg, ref_cfg, classnames, request):
    model = request.getfixturevalue(model_fixture)
    torch.manual_seed(0)
    reference = ReferenceProGrad(model, classnames, **ref_cfg)
    learner = fastprompt.ProGradLearner.from_model(model, classnames, **cfg)
    # the original's start (zeros + template words) is the learner's own
    assert_close_rel(learner.ctx, reference.prompt_learner.ctx, 0.0, "initial ctx") if cfg.get("ctx_init", True) \
        else None
    _perturb(reference.prompt_learner.ctx)
    learner.load_original_state_dict(reference.prompt_learner.state_dict())
    assert_close_rel(learner.zs_text_features, reference.zs_text_features, FP32.parity, "zero-shot features")
    labels = torch.tensor([0, 3, 7, 1])
    compare_step(learner, reference, random_images(4), labels)


def test_the_projection_fires_and_matches_when_the_gradients_conflict(tiny_model, classnames):
    """Labels against the zero-shot prediction: the two gradients disagree, the projection is used."""
    torch.manual_seed(0)
    reference = ReferenceProGrad(tiny_model, classnames, template="a type of pet, a photo of a {}.")
    learner = fastprompt.ProGradLearner.from_model(tiny_model, classnames, template="OxfordPets")
    _perturb(reference.prompt_learner.ctx, scale=0.5)
    learner.load_original_state_dict(reference.prompt_learner.state_dict())
    images = random_images(6, seed=3)
    conflicts = 0
    for shift in range(1, len(classnames)):
        with torch.no_grad():
            zs = learner.loss_terms(images, torch.zeros(6, dtype=torch.long))["zs_logits"]
        labels = (zs.argmax(-1) + shift) % len(classnames)
        terms = learner.loss_terms(images, labels)
        params = learner.trainable_parameters()
        (a,) = torch.autograd.grad(terms["ce"], params, retain_graph=True)
        (b,) = torch.autograd.grad(terms["kl"], params)
        if torch.dot(a.flatten(), b.flatten()) < 0:
            conflicts += 1
            compare_step(learner, reference, images, labels)
            g = learner.ctx.grad
            assert abs(float(torch.dot(g.flatten(), b.flatten()))) < 1e-4 * float(g.norm() * b.norm())
            assert not torch.allclose(g, a)
    assert conflicts, "no label shift made the gradients conflict"


def test_projection_quirks():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    assert torch.allclose(project_gradient(a, b, 1.0), torch.tensor([0.5, 0.5]))  # orthogonal to b
    assert torch.allclose(project_gradient(a, -b, 1.0), a)  # agreeing: unchanged
    assert torch.equal(project_gradient(a, torch.zeros(2), 1.0), a)  # NaN cosine: unchanged
    assert torch.allclose(project_gradient(a, b, 0.5), torch.tensor([0.75, 0.25]))
    # the reference's literal projection on the same numbers
    p = torch.nn.Parameter(torch.zeros(2))
    prograd_project([p], (p * a).sum(), (p * b).sum(), 1.0)
    assert torch.allclose(p.grad, torch.tensor([0.5, 0.5]))


def test_comma_template_context_layout(tiny_model, classnames):
    learner = fastprompt.ProGradLearner.from_model(tiny_model, classnames, template="OxfordPets")
    assert learner.ctx.shape[0] == 16
    assert torch.count_nonzero(learner.ctx[:8].abs().sum(-1)) == 0  # 16 - 8 words of zeros
    assert torch.count_nonzero(learner.ctx[8:].abs().sum(-1)) == 8
    assert learner.template.text == "X X X X X X X X a type of pet, a photo of a"
    with pytest.raises(ValueError, match="middle"):
        fastprompt.ProGradLearner.from_model(tiny_model, classnames, class_token_position="middle")
    with pytest.raises(ValueError, match="n_ctx"):
        fastprompt.ProGradLearner.from_model(tiny_model, classnames, template="OxfordPets", n_ctx=4)


def test_checkpoint_round_trip_and_original_layout(tiny_model, classnames, tmp_path):
    learner = fastprompt.ProGradLearner.from_model(tiny_model, classnames, template="EuroSAT", lambda_=0.8)
    _perturb(learner.ctx)
    learner.save_pretrained(str(tmp_path))
    again = fastprompt.ProGradLearner.from_pretrained(str(tmp_path), model=tiny_model)
    assert torch.equal(again.ctx, learner.ctx) and again.config.lambda_ == 0.8
    assert again.config.template == "EuroSAT"
    assert torch.equal(again.zs_text_features, learner.zs_text_features)
    # the original's Dassl checkpoint: prompt_learner/model.pth.tar-N holding state_dict and epoch
    reference = ReferenceProGrad(tiny_model, classnames, template="a centered satellite photo of {}.")
    _perturb(reference.prompt_learner.ctx, seed=4)
    saved = {"state_dict": reference.prompt_learner.state_dict(), "epoch": 100}
    assert set(saved["state_dict"]) == {"ctx", "token_prefix", "token_suffix"}
    path = tmp_path / "model.pth.tar-100"
    torch.save(saved, path)
    learner.load_original_state_dict(str(path))
    assert torch.equal(learner.ctx, reference.prompt_learner.ctx)


def test_set_classnames_keeps_prompts_and_rebuilds_targets(tiny_model, classnames):
    learner = fastprompt.ProGradLearner.from_model(tiny_model, classnames[:4])
    ctx = learner.ctx.detach().clone()
    learner.set_classnames(classnames[4:])
    assert torch.equal(learner.ctx, ctx)
    assert learner.zs_text_features.shape[0] == len(classnames) - 4
    assert learner(random_images(2)).shape == (2, len(classnames) - 4)


def test_without_autograd_the_loss_is_the_cross_entropy(tiny_model, classnames):
    learner = fastprompt.ProGradLearner.from_model(tiny_model, classnames)
    images, labels = random_images(2), torch.tensor([0, 1])
    with torch.no_grad():
        loss = learner.loss(images, labels)
        assert torch.equal(loss, learner.loss_terms(images, labels)["ce"])


# ---- the run layer -------------------------------------------------------------------------------
FAST = ["OPTIM.MAX_EPOCH", "2", "DATALOADER.TRAIN_X.BATCH_SIZE", "8", "DATALOADER.NUM_WORKERS", "0",
        "TRAIN.TENSORBOARD", "False"]


@pytest.mark.parametrize("recipe", ["prograd/rn50", "prograd/rn50_ep100", "prograd/rn50_ep50"])
def test_every_recipe_resolves_to_the_originals_values(recipe):
    from fastprompt.train.build import learner_kwargs
    from fastprompt.train.config import flatten, load_recipe, resolve_config

    cfg = resolve_config([(recipe, load_recipe(recipe))], overrides=["LOSS.LAMBDA", "0.8"])
    assert cfg["METHOD"] == "prograd" and cfg["LOSS"]["NAME"] == "prograd"
    assert cfg["OPTIM"]["MAX_EPOCH"] == {"prograd/rn50": 200, "prograd/rn50_ep100": 100}.get(recipe, 50)
    kwargs = learner_kwargs("prograd", cfg["TRAINER"]["COOP"], "OxfordPets", flatten(cfg))
    assert kwargs == dict(n_ctx=16, csc=False, ctx_init=True, class_token_position="end", T=1.0, lambda_=0.8,
                          template="OxfordPets")


def test_loss_keys_are_prograds_only():
    from fastprompt.errors import ConfigError
    from fastprompt.train.config import load_recipe, resolve_config

    with pytest.raises(ConfigError, match=r"LOSS\.T 2\.0 has no effect: LOSS is ProGrad's section"):
        resolve_config([("coop/rn50", load_recipe("coop/rn50"))], overrides=["LOSS.T", "2.0"])
    with pytest.raises(ConfigError, match=r"LOSS\.NAME 'kd' is not supported"):
        resolve_config([("prograd/rn50", load_recipe("prograd/rn50"))], overrides=["LOSS.NAME", "kd"])
    resolve_config([("prograd/rn50", load_recipe("prograd/rn50"))], overrides=["LOSS.GM", "True"])  # inert


def test_recipe_trains_and_evaluates_through_the_cli(tmp_path, capsys):
    import json

    from fastprompt.cli import main
    from fastprompt.testing.fake_trees import make_split_dataset, tiny_jpeg

    data = tmp_path / "data"
    make_split_dataset(str(data), "dtd", [(6, 2, 2)] * 4, image_bytes=tiny_jpeg(16))
    out = tmp_path / "run"
    assert main(["train", "--recipe", "prograd/rn50_ep50", "--data", str(data), "--dataset", "dtd", "--output-dir",
                 str(out), "--model", "tiny", "--pretrained", "none", "--no-progress", "--seed", "1", *FAST,
                 "LOSS.LAMBDA", "0.8"]) == 0
    assert json.loads((out / "eval.json").read_text())["total"] == 8
    config = json.loads((out / "fastprompt_config.json").read_text())
    assert config["method"] == "prograd" and config["config"]["lambda_"] == 0.8
    assert config["config"]["template"] == "DescribableTextures"  # ProGrad's "a texture of {}."
    assert "initial prompts: original" in (out / "log.txt").read_text()
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out), "--data", str(data), "--dataset", "dtd", "--subsample",
                 "new"]) == 0
    assert json.loads(capsys.readouterr().out)["total"] == 4


def test_protocols_follow_the_original_scripts(tmp_path):
    from fastprompt.protocols.grid import plan

    fewshot = {(j.dataset, j.shots): j for j in plan("fewshot", "prograd", str(tmp_path), ["dtd", "caltech101"],
                                                     seeds=[1])}
    assert fewshot["dtd", 1].recipe == "prograd/rn50_ep50" and fewshot["dtd", 4].recipe == "prograd/rn50_ep100"
    assert fewshot["dtd", 16].recipe == "prograd/rn50"
    assert ("LOSS.LAMBDA", 0.8) in fewshot["dtd", 8].overrides and ("LOSS.LAMBDA", 1.0) in fewshot["dtd", 4].overrides
    assert ("LOSS.LAMBDA", 1.0) in fewshot["caltech-101", 16].overrides
    b2n = plan("base2new", "prograd", str(tmp_path), ["dtd", "imagenet"], seeds=[1])
    assert [(j.recipe, j.shots) for j in b2n] == [("prograd/rn50_ep100", 4), ("prograd/rn50_ep50", 4)]
    dg = plan("dg", "prograd", str(tmp_path), seeds=[1])
    assert [(j.dataset, j.recipe, j.shots) for j in dg] == [("imagenet", "prograd/rn50_ep50", 4)]


def test_the_step_benchmark_case_takes_the_same_step_on_both_sides():
    import os
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from bench.steps.step_cases import CASES, build_pair, pair_steps

    spec = CASES["prograd"].sized(classes=6, images=3)
    pair = build_pair(spec, "tiny", torch.device("cpu"))
    fast, ref = pair_steps(spec, pair)
    before = pair.learner.ctx.detach().clone()
    fast(), ref()
    moved = pair.learner.ctx.detach() - before
    assert float(moved.abs().max()) > 0
    assert_close_rel(moved, pair.reference.prompt_learner.ctx.detach() - before, FP32.gradient_parity,
                     "the step's change of ctx")


def test_a_run_written_before_the_loss_section_existed_still_resumes(tmp_path, capsys):
    import yaml

    from fastprompt.cli import main
    from fastprompt.testing.fake_trees import make_split_dataset, tiny_jpeg

    data = tmp_path / "data"
    make_split_dataset(str(data), "dtd", [(6, 2, 2)] * 4, image_bytes=tiny_jpeg(16))
    out = tmp_path / "run"
    args = ["train", "--recipe", "coop/vit_b16_ep50", "--data", str(data), "--dataset", "dtd", "--output-dir", str(out),
            "--model", "tiny", "--pretrained", "none", "--no-progress", "--seed", "1", *FAST, "TRAINER.COOP.N_CTX", "4"]
    assert main(args + ["TRAIN.MAX_STEPS", "2"]) == 0
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    del cfg["LOSS"]  # as fastprompt wrote it before ProGrad
    (out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    capsys.readouterr()
    assert main(args + ["TRAIN.MAX_STEPS", "2", "--resume"]) == 0, capsys.readouterr().err
