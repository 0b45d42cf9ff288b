"""CoOp / CoCoOp learners against the literal original code paths in fastprompt.reference."""
import json
import os

import pytest
import torch

import fastprompt
from fastprompt.reference import ReferenceCoCoOp, ReferenceCoOp
from fastprompt.testing import FP32, assert_close_rel, random_images, tiny_clip

COOP_CONFIGS = [
    dict(n_ctx=4),
    dict(n_ctx=16),
    dict(ctx_init="a photo of a"),
    dict(ctx_init="itap of a"),  # a word of two BPE tokens: context = first 3 tokens, as in the original
    dict(n_ctx=4, csc=True),
    dict(n_ctx=4, class_token_position="middle"),
    dict(n_ctx=5, class_token_position="front"),
    dict(n_ctx=3, csc=True, class_token_position="middle"),
]


def _compare_step(learner, reference, images, labels, params, ref_params, rtol=FP32.parity):
    logits = learner(images)
    ref_logits = reference(images)
    assert_close_rel(logits, ref_logits, rtol, "logits")
    loss, ref_loss = learner.loss(images, labels), reference.loss(images, labels)
    assert_close_rel(loss, ref_loss, rtol, "loss")
    grads = torch.autograd.grad(loss, params)
    ref_grads = torch.autograd.grad(ref_loss, ref_params)
    for (name, g), r in zip(grads_named(params, grads), ref_grads):
        assert_close_rel(g, r, FP32.gradient_parity, f"grad {name}")


def grads_named(params, grads):
    return [(i, g) for i, g in enumerate(grads)]


@pytest.mark.parametrize("cfg", COOP_CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("model_fixture", ["tiny_model", "tiny_custom_model"])
def test_coop_matches_reference(cfg, model_fixture, classnames, request):
    model = request.getfixturevalue(model_fixture)
    torch.manual_seed(0)
    reference = ReferenceCoOp(model, classnames, **cfg)
    learner = fastprompt.CoOpLearner.from_model(model, classnames, **cfg)
    learner.load_original_state_dict(reference.prompt_learner.state_dict())
    images, labels = random_images(3), torch.tensor([0, 3, 7])
    _compare_step(learner, reference, images, labels, [learner.ctx], [reference.prompt_learner.ctx])


@pytest.mark.parametrize("cfg", [dict(), dict(ctx_init="", n_ctx=3)], ids=["ctx_init", "random"])
@pytest.mark.parametrize("model_fixture", ["tiny_model", "tiny_custom_model"])
def test_cocoop_matches_reference(cfg, model_fixture, classnames, request):
    model = request.getfixturevalue(model_fixture)
    torch.manual_seed(0)
    reference = ReferenceCoCoOp(model, classnames, **cfg)
    learner = fastprompt.CoCoOpLearner.from_model(model, classnames, **cfg)
    learner.load_original_state_dict({"prompt_learner." + k: v for k, v in reference.prompt_learner.state_dict().items()})
    images, labels = random_images(3), torch.tensor([1, 1, 6])
    params = [learner.ctx] + list(learner.meta_net.parameters())
    ref_params = [reference.prompt_learner.ctx] + list(reference.prompt_learner.meta_net.parameters())
    _compare_step(learner, reference, images, labels, params, ref_params)


def test_cocoop_batch_is_one_text_pass_equal_to_per_image(tiny_model, classnames):
    learner = fastprompt.CoCoOpLearner.from_model(tiny_model, classnames)
    images = random_images(4)
    together = learner(images)
    apart = torch.cat([learner(images[i:i + 1]) for i in range(4)])
    # Batched vs one image at a time: the batch composition changes GEMM blocking and so float32
    # summation order (measured up to 7e-7 relative); 1e-5, the suite's float32 parity bound (FP32.parity).
    assert_close_rel(together, apart, FP32.parity, "logits")


def test_text_classifier_is_what_forward_uses(tiny_model, classnames):
    learner = fastprompt.CoOpLearner.from_model(tiny_model, classnames, n_ctx=4)
    images = random_images(2)
    w = learner.text_classifier()
    assert w.shape == (len(classnames), tiny_model.text_projection.shape[1]) and not w.requires_grad
    img = torch.nn.functional.normalize(tiny_model.encode_image(images), dim=-1)
    assert_close_rel(tiny_model.logit_scale.exp() * img @ w.t(), learner(images), FP32.parity, "logits")
    cocoop = fastprompt.CoCoOpLearner.from_model(tiny_model, classnames)
    assert cocoop.text_classifier(images).shape == (2, len(classnames), w.shape[1])


def test_set_classnames_keeps_prompts(tiny_model, classnames):
    learner = fastprompt.CoOpLearner.from_model(tiny_model, classnames, n_ctx=4)
    ctx = learner.ctx.detach().clone()
    learner.set_classnames(["cat", "tabby_cat", "airplane"])
    assert learner.classnames == ["cat", "tabby cat", "airplane"]
    assert learner(random_images(2)).shape == (2, 3)
    assert torch.equal(learner.ctx.detach(), ctx)
    reference = ReferenceCoOp(tiny_model, ["cat", "tabby_cat", "airplane"], n_ctx=4)
    with torch.no_grad():
        reference.prompt_learner.ctx.copy_(ctx)
    assert_close_rel(learner(random_images(2)), reference(random_images(2)), FP32.parity, "logits after set_classnames")


def test_class_specific_context_cannot_change_class_count(tiny_model, classnames):
    learner = fastprompt.CoOpLearner.from_model(tiny_model, classnames, n_ctx=2, csc=True)
    with pytest.raises(ValueError, match="class-specific"):
        learner.set_classnames(["a", "b"])


def test_save_and_load_pretrained_round_trip(tiny_model, classnames, tmp_path):
    learner = fastprompt.CoCoOpLearner.from_model(tiny_model, classnames, n_ctx=2, ctx_init="")
    with torch.no_grad():
        learner.ctx.add_(1.0)
    learner.save_pretrained(tmp_path / "ckpt")
    files = sorted(os.listdir(tmp_path / "ckpt"))
    assert files == ["fastprompt_config.json", "prompt.safetensors"]  # no temporary files left behind
    config = json.loads((tmp_path / "ckpt" / "fastprompt_config.json").read_text())
    assert config["method"] == "cocoop" and config["config"]["n_ctx"] == 2
    loaded = fastprompt.CoCoOpLearner.from_pretrained(tmp_path / "ckpt", model=tiny_model)
    images = random_images(2)
    assert torch.equal(loaded(images), learner(images))
    generic = fastprompt.PromptLearner.from_pretrained(tmp_path / "ckpt", model=tiny_model)
    assert type(generic) is fastprompt.CoCoOpLearner
    with pytest.raises(ValueError, match="CoCoOpLearner.from_pretrained"):
        fastprompt.CoOpLearner.from_pretrained(tmp_path / "ckpt", model=tiny_model)


def test_checkpoint_errors_are_clear(tiny_model, classnames, tmp_path):
    with pytest.raises(FileNotFoundError, match="no prompt checkpoint"):
        fastprompt.CoOpLearner.from_pretrained(tmp_path / "missing", model=tiny_model)
    learner = fastprompt.CoOpLearner.from_model(tiny_model, classnames, n_ctx=4)
    learner.save_pretrained(tmp_path / "ok")
    (tmp_path / "ok" / "prompt.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="corrupt or truncated"):
        fastprompt.CoOpLearner.from_pretrained(tmp_path / "ok", model=tiny_model)
    learner.save_pretrained(tmp_path / "ok2")
    with pytest.raises(ValueError, match="shape"):
        fastprompt.CoOpLearner.from_pretrained(tmp_path / "ok2", model=tiny_model, n_ctx=8)
    with pytest.raises(ValueError, match="missing"):
        learner.load_original_state_dict({"prompt_learner.context": torch.zeros(4, 64)})
    torch.save({"state_dict": {"ctx": torch.zeros(4, 64)}, "epoch": 3}, tmp_path / "model.pth.tar-3")
    learner.load_original_state_dict(str(tmp_path / "model.pth.tar-3"))  # a Dassl checkpoint path
    assert torch.all(learner.ctx == 0)
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        learner.load_original_state_dict(str(tmp_path / "broken.pth"))


def test_original_fp16_checkpoint_loads_into_fp32_prompts(tiny_model, classnames):
    reference = ReferenceCoOp(tiny_model, classnames, ctx_init="a photo of a")
    state = {k: v.half() for k, v in reference.prompt_learner.state_dict().items()}
    learner = fastprompt.CoOpLearner.from_model(tiny_model, classnames, ctx_init="a photo of a")
    learner.load_original_state_dict(state)
    assert learner.ctx.dtype == torch.float32
    assert torch.equal(learner.ctx.detach(), state["ctx"].float())


@pytest.mark.parametrize("cfg,argument", [
    (dict(n_ctx=0), "n_ctx"),
    (dict(class_token_position="left"), "class_token_position"),
    (dict(backend="warp"), "backend"),
])
def test_bad_config_is_a_clear_error(tiny_model, classnames, cfg, argument):
    with pytest.raises(ValueError, match=argument):
        fastprompt.CoOpLearner.from_model(tiny_model, classnames, **cfg)


@pytest.mark.parametrize("names,message", [([], "empty"), (["ok", ""], r"classnames\[1\]"), ("dog", "single string")])
def test_bad_classnames_are_a_clear_error(tiny_model, names, message):
    with pytest.raises(ValueError, match=message):
        fastprompt.CoOpLearner.from_model(tiny_model, names)


def test_trainable_parameters_and_summary(tiny_model, classnames, capsys):
    learner = fastprompt.CoCoOpLearner.from_model(tiny_model, classnames)
    names = [n for n, _ in learner.trainable_named_parameters()]
    assert names == ["ctx", "meta_net.linear1.weight", "meta_net.linear1.bias", "meta_net.linear2.weight",
                     "meta_net.linear2.bias"]
    assert all(not p.requires_grad for p in tiny_model.parameters())
    learner.print_trainable_parameters()
    out = capsys.readouterr().out
    n_trainable = sum(p.numel() for p in learner.trainable_parameters())
    assert f"trainable params: {n_trainable:,}" in out and "trainable%" in out


def test_from_open_clip_errors_without_network(monkeypatch):
    from fastprompt.learners import pretrained as loading

    with pytest.raises(ValueError, match="unknown open_clip model"):
        fastprompt.CoOpLearner.from_open_clip("ViT-Q-99", None, ["a"])
    with pytest.raises(ValueError, match="unknown pretrained tag"):
        fastprompt.CoOpLearner.from_open_clip("ViT-B-16", "not-a-tag", ["a"])
    monkeypatch.setattr(loading, "hub_offline", lambda: True)
    with pytest.raises(fastprompt.PretrainedNotAvailableError, match="not available: the Hugging Face Hub is offline"):
        fastprompt.CoOpLearner.from_open_clip("ViT-B-16", "openai", ["a"], cache_dir="/nonexistent-cache")


def test_from_open_clip_loads_a_local_checkpoint_file(tmp_path, classnames):
    """The real loading path: an open_clip model config plus a weights file written here."""
    import open_clip

    config = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32,
                                              "patch_size": 16},
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (tmp_path / "fp-tiny-test.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "fp-tiny-test.json")
    torch.manual_seed(0)
    source = open_clip.create_model("fp-tiny-test", pretrained=None)
    torch.save(source.state_dict(), tmp_path / "weights.pt")
    learner = fastprompt.CoOpLearner.from_open_clip("fp-tiny-test", str(tmp_path / "weights.pt"), classnames, n_ctx=2)
    for (name, a), b in zip(learner.clip.state_dict().items(), source.state_dict().values()):
        assert torch.equal(a, b), name
    assert learner.model_name == "fp-tiny-test"


@pytest.mark.slow
def test_vit_b16_coop_and_cocoop_match_reference(vit_b16):
    names = ["goldfish", "great white shark", "tiger shark", "hammerhead shark", "electric ray"]
    images, labels = random_images(2, size=224), torch.tensor([1, 4])
    torch.manual_seed(0)
    ref = ReferenceCoOp(vit_b16, names, n_ctx=16)
    learner = fastprompt.CoOpLearner.from_model(vit_b16, names, n_ctx=16)
    learner.load_original_state_dict(ref.prompt_learner.state_dict())
    _compare_step(learner, ref, images, labels, [learner.ctx], [ref.prompt_learner.ctx])
    ref = ReferenceCoCoOp(vit_b16, names)
    learner = fastprompt.CoCoOpLearner.from_model(vit_b16, names)
    learner.load_original_state_dict(ref.prompt_learner.state_dict())
    params = [learner.ctx] + list(learner.meta_net.parameters())
    ref_params = [ref.prompt_learner.ctx] + list(ref.prompt_learner.meta_net.parameters())
    _compare_step(learner, ref, images, labels, params, ref_params)


# Settings that let each learner be built on the 2-layer tiny model (depths) without a teacher.
TINY_SETTINGS = {"maple": dict(prompt_depth=2), "vpt": dict(prompt_depth=2),
                 "promptsrc": dict(prompt_depth_text=2, prompt_depth_vision=2), "rpp": dict(depth=2, kl_weight=0.0),
                 "maple_dept": dict(prompt_depth=2),
                 "promptkd": dict(prompt_depth_vision=2, teacher_prompt_depth=2, teacher=tiny_clip(seed=3))}


@pytest.mark.parametrize("method", sorted(fastprompt.learners.LEARNERS))
def test_every_learner_refuses_a_class_name_the_context_would_cut(tiny_model, method):
    """The tokenizer cuts a too-long prompt and writes EOT into slot 77: the class name would vanish."""
    cls = fastprompt.learners.LEARNERS[method]
    long_name = "very " * 80 + "long dog"
    names = ["cat", long_name]
    classes = {"pets": names} if method == "softcpt" else names
    with pytest.raises(ValueError, match=r"class 'very very .* long dog' is \d+ tokens long .* context length is 77"):
        cls.from_model(tiny_model, classes, **TINY_SETTINGS.get(method, {}))
    short = ["cat", "dog"]
    learner = cls.from_model(tiny_model, {"pets": short} if method == "softcpt" else short,
                             **TINY_SETTINGS.get(method, {}))
    with pytest.raises(ValueError, match="long dog"):
        learner.set_classnames(names)  # the same contract for every learner


def test_coop_context_that_pushes_the_class_out_is_refused(tiny_model):
    with pytest.raises(ValueError, match=r"class 'dog' is 79 tokens long .* context length is 77"):
        fastprompt.CoOpLearner.from_model(tiny_model, ["dog", "cat"], n_ctx=75)


@pytest.mark.parametrize("method", ["coop", "cocoop", "maple", "promptsrc", "rpp", "softcpt", "kgcoop", "pre"])
@pytest.mark.parametrize("n_ctx", [76, 10 ** 7])
def test_a_context_longer_than_the_text_tower_is_refused_before_it_is_made(tiny_model, method, n_ctx):
    """A checkpoint's config with n_ctx = 10^7 used to allocate gigabytes (minutes) before the
    77-token check; the bound is now checked first."""
    key = {"promptsrc": "n_ctx_text"}.get(method, "n_ctx")
    settings = {**TINY_SETTINGS.get(method, {}), key: n_ctx}
    if method in ("cocoop", "kgcoop", "pre"):
        settings["ctx_init"] = ""  # their default phrase sets the context's length instead
    classes = {"pets": ["dog", "cat"]} if method == "softcpt" else ["dog", "cat"]
    with pytest.raises(ValueError, match=rf"n_ctx={n_ctx} cannot fit the text tower's context length 77"):
        fastprompt.learners.LEARNERS[method].from_model(tiny_model, classes, **settings)


def test_a_prompt_that_fits_exactly_is_accepted(tiny_model):
    """[SOT] + 73 context + "dog" + "." + [EOT] = 77: EOT in the last slot, nothing cut."""
    learner = fastprompt.CoOpLearner.from_model(tiny_model, ["dog", "cat"], n_ctx=73)
    assert learner.plan.eot_positions.tolist() == [76, 76]
    W = learner.text_classifier()
    assert (W[0] - W[1]).abs().max() > 1e-3  # the class tokens reach the classifier


@pytest.mark.parametrize("method", sorted(fastprompt.learners.LEARNERS))
@pytest.mark.parametrize("names, message", [
    (["cat"], r"1 class\(es\) \['cat'\]: a classifier needs at least two"),
    (["Cat", "dog", "cat"], r"identical: 'Cat' \(class 0\) and 'cat' \(class 2\)"),
    (["sea_lion", "sea  lion", "otter"], r"'sea_lion' \(class 0\) and 'sea  lion' \(class 1\)"),
])
def test_every_learner_refuses_classes_it_cannot_tell_apart(tiny_model, method, names, message):
    """One class "trains" to 100%; two names CLIP's tokenizer reads as one (lowercased, whitespace
    collapsed, ``_`` a space) give identical logit columns. Both were accepted silently."""
    cls = fastprompt.learners.LEARNERS[method]
    wrap = (lambda n: {"pets": n}) if method == "softcpt" else (lambda n: n)
    with pytest.raises(ValueError, match=message):
        cls.from_model(tiny_model, wrap(names), **TINY_SETTINGS.get(method, {}))
    learner = cls.from_model(tiny_model, wrap(["cat", "dog"]), **TINY_SETTINGS.get(method, {}))
    with pytest.raises(ValueError, match=message):
        learner.set_classnames(names)
    assert learner.classnames == ["cat", "dog"], "a refused class list leaves the learner as it was"


@pytest.mark.parametrize("method", sorted(set(fastprompt.learners.LEARNERS) - {"softcpt"}))
@pytest.mark.parametrize("labels, message", [
    (torch.tensor([0, -100]), r"in \[0, 2\) \(2 classes\), got \[-100\] \(cross-entropy would skip -100 silently\)"),
    (torch.tensor([-100, -100]), r"got \[-100\]"),
    (torch.tensor([1, 2]), r"in \[0, 2\) \(2 classes\), got \[2\]"),
    (torch.tensor([0.0, 1.0]), r"int64 tensor .* shape \[2\] .* got torch.float32"),
    (torch.tensor([True, False]), r"got torch.bool"),
    (torch.tensor([0, 1], dtype=torch.int32), r"got torch.int32"),
    (torch.tensor([0, 1, 1]), r"shape \[2\] .* got torch.int64 of shape \[3\]"),
    ([0, 1], r"got list"),
])
def test_every_loss_refuses_labels_it_would_misread(tiny_model, method, labels, message):
    """One check before every loss: int64 ``[B]`` in ``[0, C)``. Cross-entropy alone dropped a -100
    label silently (its ignore_index) and gave NaN when all were -100."""
    settings = {**TINY_SETTINGS, "pomp": dict(num_sampled_classes=2)}.get(method, {})
    learner = fastprompt.learners.LEARNERS[method].from_model(tiny_model, ["cat", "dog"], **settings)
    images = random_images(2)
    with pytest.raises(ValueError, match=message):
        learner.loss(images, labels)
    assert torch.isfinite(learner.loss(images, torch.tensor([1, 0])))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_prompts_are_refused_on_load(tiny_model, tmp_path, bad):
    """A NaN or inf in ``prompt.safetensors`` or in an original state dict made every logit
    non-finite without a word; now the tensor is named and nothing is copied."""
    from safetensors.torch import load_file, save_file

    learner = fastprompt.CoOpLearner.from_model(tiny_model, ["cat", "dog"], n_ctx=4)
    learner.save_pretrained(str(tmp_path))
    tensors = load_file(str(tmp_path / "prompt.safetensors"))
    name = next(iter(tensors))
    tensors[name][0, 1] = bad
    save_file(tensors, str(tmp_path / "prompt.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=rf"'{name}' holds 1 non-finite value\(s\)"):
        fastprompt.CoOpLearner.from_pretrained(str(tmp_path), model=tiny_model)
    before = {n: p.detach().clone() for n, p in learner.trainable_named_parameters()}
    with pytest.raises(ValueError, match="non-finite"):
        learner.load_original_state_dict({"ctx": tensors[name]})
    for n, p in learner.trainable_named_parameters():
        assert torch.equal(p, before[n]), "a refused state changed the prompts"


@pytest.mark.parametrize("change, message", [
    (lambda c: c.update(method=["coop"]), r"'method' must be a string"),
    (lambda c: c["config"].update(n_ctx="4"), r"'n_ctx' must be <class 'int'>, got '4'"),
    (lambda c: c["config"].update(ctx_init=5), r"'ctx_init' must be <class 'str'>, got 5"),
    (lambda c: c["config"].update(unknown_knob=1), r"'unknown_knob' is not a CoOpConfig setting"),
    (lambda c: c.update(config=[1, 2]), r"'config' must be a JSON object"),
])
def test_a_checkpoint_config_of_the_wrong_types_is_refused_naming_the_key(tiny_model, tmp_path, change, message):
    """A list ``method``, a string ``n_ctx`` or an int ``ctx_init`` in fastprompt_config.json ended
    in a TypeError or AttributeError deep inside the learner."""
    import json

    fastprompt.CoOpLearner.from_model(tiny_model, ["cat", "dog"], n_ctx=4).save_pretrained(str(tmp_path))
    path = tmp_path / "fastprompt_config.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message):
        fastprompt.PromptLearner.from_pretrained(str(tmp_path), model=tiny_model)


def test_a_checkpoint_config_nested_too_deeply_is_a_value_error(tiny_model, tmp_path):
    fastprompt.CoOpLearner.from_model(tiny_model, ["cat", "dog"], n_ctx=4).save_pretrained(str(tmp_path))
    deep = "[" * 100000 + "]" * 100000
    (tmp_path / "fastprompt_config.json").write_text('{"method": "coop", "config": ' + deep + "}")
    with pytest.raises(ValueError, match="nested too deeply"):
        fastprompt.CoOpLearner.from_pretrained(str(tmp_path), model=tiny_model)
