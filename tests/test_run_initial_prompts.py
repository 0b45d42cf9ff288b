"""A run starts from the original's initial prompts for its seed (issue 23, part 1).

``build_learner`` replays the original's construction (:func:`fastprompt.replay.construction.original_init`,
itself held bit for bit to the module-building reference in ``tests/test_original_init.py``), loads
the result into the learner and leaves torch's global generator where the original's stands after
its ``build_model``; a method or setting with no original to replay keeps fastprompt's own draw and
says so in the run's log.
"""
import pytest
import torch

import fastprompt.testing
from fastprompt.train.build import build_learner, set_random_seed
from fastprompt.train.config import load_recipe, resolve_config
from fastprompt.train.methods import METHODS
from fastprompt.train.model_keys import TINY_CLIP_KWARGS
from fastprompt.replay.construction import original_init

TINY = {"MODEL.BACKBONE.NAME": "tiny", "MODEL.BACKBONE.TAG": "none"}
CLASSES = ["cat", "dog", "bird"]
# one shipped recipe per replayed method, at depths the tiny CLIP (4 text, 2 vision layers) has
RECIPES = {
    "coop/vit_b16_ep50": (), "coop/vit_b16_ctxv1": (),
    "cocoop/vit_b16_c4_ep10_batch1_ctxv1": (), "kgcoop/vit_b16_ep100_ctxv1": (),
    "maple/vit_b16_c2_ep5_batch4_2ctx": ("TRAINER.MAPLE.PROMPT_DEPTH", "2"),
    "vpt/vit_b16_c2_ep5_batch4_4": ("TRAINER.VPT.PROMPT_DEPTH_VISION", "2"),
    "promptsrc/vit_b16_c2_ep20_batch4_4+4ctx": ("TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT", "2",
                                                "TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION", "2"),
    "pre/vit_b16_ep50_ctxv1": (), "pomp/vit_b16_ep5": (), "tcp/vit_b16_ep100_ctxv1": (),
}


def _build(recipe, overrides, seed):
    cfg = resolve_config([(recipe, load_recipe(recipe))], arguments={**TINY, "SEED": seed},
                         overrides=list(overrides))
    model = fastprompt.testing.tiny_clip(seed, **TINY_CLIP_KWARGS)
    set_random_seed(seed)
    learner = build_learner(cfg, model, None, CLASSES, "dtd", None, "tiny", None)
    return cfg, model, learner


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_a_run_starts_from_the_originals_prompts_and_stream(recipe):
    cfg, model, learner = _build(recipe, RECIPES[recipe], seed=3)
    assert learner.initial_prompts == "original"
    after_build = torch.get_rng_state()
    section = cfg["TRAINER"][METHODS[cfg["METHOD"]].section]
    expected = type(learner).from_model(model, CLASSES, **_settings(learner))
    state, rng = original_init(cfg["METHOD"], model, seed=3, precision=str(section["PREC"]), n_classes=len(CLASSES),
                               **_settings(learner))
    expected.load_original_state_dict(state)
    assert torch.equal(after_build, rng)  # the loader's first draw comes from the original's position
    mine, theirs = learner.prompt_state_dict(), expected.prompt_state_dict()
    assert mine.keys() == theirs.keys()
    for name in mine:
        assert torch.equal(mine[name], theirs[name]), name
    # and not what the same seed draws right away (what fastprompt did before)
    set_random_seed(3)
    plain = type(learner).from_model(model, CLASSES, **_settings(learner)).prompt_state_dict()
    assert any(not torch.equal(plain[n], mine[n]) for n in mine if plain[n].dtype.is_floating_point)


def _settings(learner):
    import dataclasses

    return {f.name: getattr(learner.config, f.name) for f in dataclasses.fields(learner.config)
            if f.name not in ("frozen_image_precision", "seed")}


def test_two_seeds_start_apart_and_one_seed_twice_alike():
    a = _build("coop/vit_b16_ep50", (), seed=1)[2].prompt_state_dict()
    b = _build("coop/vit_b16_ep50", (), seed=1)[2].prompt_state_dict()
    c = _build("coop/vit_b16_ep50", (), seed=2)[2].prompt_state_dict()
    assert torch.equal(a["ctx"], b["ctx"]) and not torch.equal(a["ctx"], c["ctx"])


def test_a_method_without_original_code_keeps_its_own_draw_and_says_so():
    _, _, learner = _build("rpp/vit_b16_ep5", ("TRAINER.RPP.DEPTH", "2"), seed=1)
    assert learner.initial_prompts.startswith("fastprompt's own") and "rpp" in learner.initial_prompts
