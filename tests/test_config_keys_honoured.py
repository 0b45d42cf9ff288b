"""No config key is silently ignored: each is read, refused unless at fastprompt's value, or documented
as having no effect (fastprompt.train.key_audit); the model's keys (input size, normalisation) and
the deep prompts' depths are checked against the backbone, with the key and the value to set."""
import os
import re

import pytest

from fastprompt import cli
from fastprompt.errors import ConfigError
from fastprompt.train.build import build_learner, build_transforms
from fastprompt.train.config import _defaults_for, flatten, list_recipes, load_recipe, read_yaml, resolve_config
from fastprompt.train.defaults import base_defaults
from fastprompt.train.key_audit import BASE, audit_table
from fastprompt.train.methods import METHODS
from fastprompt.train.model_keys import TINY_CLIP_KWARGS

TINY = {"MODEL.BACKBONE.NAME": "tiny", "MODEL.BACKBONE.TAG": "none"}
RECIPE = "coop/vit_b16_ep50"


def _resolve(recipe=RECIPE, *overrides, **arguments):
    return resolve_config([(recipe, load_recipe(recipe))], arguments=arguments or None, overrides=list(overrides))


def _cli(data, out, capsys, *args, recipe=RECIPE):
    """``(exit status, stderr lines)`` of ``fastprompt train`` on the tiny model."""
    status = cli.main(["train", "--recipe", recipe, "--data", data, "--dataset", "dtd", "--output-dir", out,
                       "--model", "tiny", "--pretrained", "none", "--no-progress", *args])
    return status, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


# ---- the table covers every key ------------------------------------------------------------------
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_key_of_a_method_run_has_an_entry(method):
    keys = set(flatten(_defaults_for(method)))
    missing = sorted(keys - set(audit_table(method)))
    assert not missing, f"keys with no entry in fastprompt.train.key_audit: {missing}"
    assert all(audit_table(method)[k].note for k in keys)


def test_the_table_names_only_existing_keys():
    assert set(BASE) == set(flatten(base_defaults()))


# ---- refused unless at fastprompt's value ----------------------------------------------------------
def _other(value):
    """A value of the same type as ``value`` and different from it."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 7
    if isinstance(value, float):
        return value + 0.25
    if isinstance(value, str):
        return value + "Other"
    return [3]  # an item in an empty sequence default (HIDDEN_LAYERS: ints; the domains: see below)


FIXED = sorted(k for k, e in BASE.items() if e.kind == "fixed")


@pytest.mark.parametrize("key", FIXED)
def test_a_refused_key_at_another_value_is_a_config_error_naming_it(key):
    default = flatten(base_defaults())[key]
    value = ["photo"] if BASE[key].element is str else _other(default)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.") + " .*is not supported"):
        _resolve(RECIPE, key, repr(value), **TINY)


@pytest.mark.parametrize("method", sorted(m for m, s in METHODS.items() if s.fixed))
def test_a_method_setting_fastprompt_does_not_implement_is_refused(method):
    spec = METHODS[method]
    for key, value in spec.fixed.items():
        name = f"TRAINER.{spec.section}.{key}"
        with pytest.raises(ConfigError, match=name.replace(".", r"\.")):
            resolve_config([], method=method, overrides=[name, repr(_other(value))])


def test_another_methods_setting_is_refused_unless_at_its_default():
    with pytest.raises(ConfigError, match=r"TRAINER\.MAPLE\.N_CTX 4 has no effect.*TRAINER\.COOP"):
        _resolve(RECIPE, "TRAINER.MAPLE.N_CTX", "4")
    assert _resolve(RECIPE, "TRAINER.MAPLE.N_CTX", "2")["METHOD"] == "coop"  # MaPLe's default: nothing to refuse
    # PRE's own configs set TRAINER.COOP.CTX_INIT, which its trainer never reads (documented, accepted)
    assert _resolve("pre/vit_b16_ctxv1")["TRAINER"]["COOP"]["CTX_INIT"] == "a photo of a"


@pytest.mark.parametrize("name", list_recipes())
def test_every_shipped_recipe_loads(name):
    cfg = _resolve(name)
    assert cfg["METHOD"] == name.split("/")[0]


def test_a_key_only_pretrain_reads_is_refused_by_train(dtd_tree, tmp_path, capsys):
    out = str(tmp_path / "out")
    status, lines = _cli(dtd_tree, out, capsys, "DATASET.SHARDS", "/somewhere")
    assert status == 2 and len(lines) == 1, lines
    assert "DATASET.SHARDS" in lines[0] and "fastprompt pretrain only" in lines[0]
    assert not os.path.isdir(out) or not os.listdir(out)


# ---- INPUT.SIZE and the other model keys -----------------------------------------------------------
@pytest.mark.parametrize("size, message", [
    ("(32, 32)", r"INPUT\.SIZE \[32, 32\] is not the input size of tiny, which takes 64x64 .*\(64, 64\)"),
    ("(64, 'a')", r"INPUT\.SIZE expects a list of 2 int values, got \(64, 'a'\)"),
    ("(64,)", r"INPUT\.SIZE expects a list of 2 int"),
    ("64", r"INPUT\.SIZE expects tuple"),
])
def test_an_input_size_that_is_not_the_models_is_one_line(dtd_tree, tmp_path, capsys, size, message):
    out = str(tmp_path / "out")
    status, lines = _cli(dtd_tree, out, capsys, "INPUT.SIZE", size)
    assert status == 2 and len(lines) == 1, lines
    assert lines[0].startswith("fastprompt train: error: ")
    assert re.search(message, lines[0]), lines[0]
    assert not os.path.isdir(out) or not os.listdir(out)


def test_the_input_size_follows_a_backbone_given_after_it():
    # the recipe's [224, 224] came with its ViT-B/16: --model tiny replaces both
    assert _resolve(RECIPE, **TINY)["INPUT"]["SIZE"] == (64, 64)
    assert _resolve(RECIPE, "INPUT.SIZE", "(64, 64)", **TINY)["INPUT"]["SIZE"] == (64, 64)
    assert _resolve(RECIPE)["INPUT"]["SIZE"] == (224, 224)
    with pytest.raises(ConfigError, match=r"INPUT\.SIZE \[336, 336\] is not the input size of ViT-B-16.*224x224"):
        _resolve(RECIPE, "INPUT.SIZE", "(336, 336)")
    assert _resolve(RECIPE, **{"MODEL.BACKBONE.NAME": "ViT-L/14@336px"})["INPUT"]["SIZE"] == (336, 336)


def test_a_file_that_names_the_backbone_and_another_size_is_refused(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text('METHOD: coop\nMODEL:\n  BACKBONE:\n    NAME: tiny\n    TAG: none\nINPUT:\n  SIZE: (224, 224)\n')
    with pytest.raises(ConfigError, match=r"INPUT\.SIZE \[224, 224\] is not the input size of tiny"):
        resolve_config([(str(path), read_yaml(str(path)))])


@pytest.mark.parametrize("key, value", [("INPUT.PIXEL_MEAN", "[0.5, 0.5, 0.5]"), ("INPUT.PIXEL_STD", "[0.5, 0.5, 0.5]"),
                                        ("INPUT.INTERPOLATION", "bilinear")])
def test_normalisation_other_than_the_models_is_refused_once_the_model_is_built(key, value):
    import fastprompt.testing

    model = fastprompt.testing.tiny_clip(1, **TINY_CLIP_KWARGS)
    build_transforms(_resolve(RECIPE, **TINY), model)  # the recipe's CLIP statistics are the model's
    with pytest.raises(ConfigError, match=key.replace(".", r"\.") + r" .*is not the preprocessing of tiny"):
        build_transforms(_resolve(RECIPE, key, value, **TINY), model)


# ---- deep prompts deeper than the model ------------------------------------------------------------
DEPTHS = [  # recipe, extra overrides, the key, the largest value the tiny model allows (text 4, vision 2 layers)
    ("maple/vit_b16_c2_ep5_batch4_2ctx", (), "TRAINER.MAPLE.PROMPT_DEPTH", 2),
    ("promptsrc/vit_b16_c2_ep20_batch4_4+4ctx", ("TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT", "4"),
     "TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION", 2),
    ("promptsrc/vit_b16_c2_ep20_batch4_4+4ctx", ("TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION", "2"),
     "TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT", 4),
    ("vpt/vit_b16_c2_ep5_batch4_4", (), "TRAINER.VPT.PROMPT_DEPTH_VISION", 2),
    ("rpp/vit_b16_ep5", (), "TRAINER.RPP.DEPTH", 2),
    ("rpp/vit_b16_ep5", ("TRAINER.RPP.BRANCHES", "text"), "TRAINER.RPP.DEPTH", 4),
    ("rpp/vit_b16_ep5", ("TRAINER.RPP.BRANCHES", "vision"), "TRAINER.RPP.DEPTH", 2),
]


@pytest.mark.parametrize("recipe, extra, key, limit", DEPTHS)
def test_a_deep_prompt_deeper_than_the_model_names_the_key_and_the_limit(dtd_tree, tmp_path, capsys, recipe, extra,
                                                                        key, limit):
    out = str(tmp_path / "out")
    status, lines = _cli(dtd_tree, out, capsys, *extra, recipe=recipe)
    assert status == 2 and len(lines) == 1, lines
    assert f"set {key} {limit} or less" in lines[0], lines[0]
    # at the limit the configuration resolves (nothing is clamped: the value stays as given)
    cfg = _resolve(recipe, *extra, key, str(limit), **TINY)
    assert flatten(cfg)[key] == limit


def test_the_built_models_depth_is_checked_too():
    """A backbone open_clip's config cannot describe before it is built (hf-hub:) is checked on the model."""
    import fastprompt.testing

    model = fastprompt.testing.tiny_clip(1, **TINY_CLIP_KWARGS)
    cfg = _resolve("maple/vit_b16_c2_ep5_batch4_2ctx", "TRAINER.MAPLE.PROMPT_DEPTH", "2", **TINY)
    cfg["TRAINER"]["MAPLE"]["PROMPT_DEPTH"] = 3
    with pytest.raises(ConfigError, match=r"set TRAINER\.MAPLE\.PROMPT_DEPTH 2 or less"):
        build_learner(cfg, model, None, ["a", "b"], "dtd", None, "tiny", None)
