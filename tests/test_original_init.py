"""The originals' initial prompts from a seed (issue 23): the fast replay (``fastprompt.replay.construction``,
the same draws on bare tensors) equals the literal one (``fastprompt.reference.original_init``, real
modules in the originals' structure) bit for bit — tensors and generator state — for every method,
on a ViT and a ResNet CLIP, for two seeds; the result loads into fastprompt's learners; the
context's dtype (PREC fp16) is honoured; and each bare-tensor replay of a torch module consumes
exactly what constructing that module consumes. All comparisons are exact: both sides run the same
CPU kernels on the same words, so no tolerance applies."""
import pytest
import torch
from torch import nn

import fastprompt
from fastprompt.learners.checkpoint import original_prompt_state
from fastprompt.reference.original_init import original_init_reference
from fastprompt.replay.construction import _pre_encoder, _Stream, original_init

NAMES = ["cat", "dog", "sea lion", "jack-o'-lantern", "Granny Smith"]

# (method, learner settings): random contexts (drawn, so the order shows) and contexts from words.
TEXT_CASES = [
    ("coop", dict(n_ctx=4)), ("coop", dict(n_ctx=3, csc=True)), ("coop", dict(ctx_init="a photo of a")),
    ("cocoop", dict(ctx_init="", n_ctx=4)), ("cocoop", dict()),
    ("kgcoop", dict(ctx_init="", n_ctx=4)), ("kgcoop", dict()),
    ("pre", dict(ctx_init="", n_ctx=4)), ("pre", dict(encoder="LSTM2", csc=True, ctx_init="", n_ctx=2)),
    ("pre", dict(encoder="MLP2", separate=True, layer_norm=True)),
    ("softcpt", dict(class_features=True, class_csc=True)), ("softcpt", dict(task_csc=True, task_n_ctx=2)),
    ("pomp", dict(num_sampled_classes=3)),
    ("tcp", dict(ctx_init="", n_ctx=4)), ("tcp", dict(ctx_init="a photo of a")),
    ("prograd", dict(template="a type of pet, a photo of a {}.")), ("prograd", dict(ctx_init=False, n_ctx=3, csc=True)),
]
VIT_CASES = [
    ("maple", dict(ctx_init="", prompt_depth=2)), ("maple", dict(prompt_depth=2)),
    ("vpt", dict(n_ctx=3, prompt_depth=2)), ("vpt", dict(n_ctx=2, prompt_depth=1)),
    ("promptsrc", dict(ctx_init="", prompt_depth_text=2, prompt_depth_vision=2, n_ctx_vision=3)),
    ("promptsrc", dict(n_ctx_text=2, prompt_depth_text=2, prompt_depth_vision=1)),
]
CASES = [("vit", *c) for c in TEXT_CASES + VIT_CASES] + [("resnet", *c) for c in TEXT_CASES]


def _case_id(case):
    kind, method, settings = case
    return f"{kind}-{method}-" + ",".join(f"{k}={v}" for k, v in settings.items())


@pytest.fixture(scope="module")
def models(tiny_model):
    """``{"vit": tiny open_clip ViT CLIP, "resnet": tiny open_clip ModifiedResNet CLIP}``."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    gen_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:  # a second block in one stage: the block without a downsample is covered too
        resnet = CLIP(48, CLIPVisionCfg(layers=(1, 2, 1, 1), width=16, image_size=32, head_width=16),
                      CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=2, layers=2))
    finally:
        torch.random.set_rng_state(gen_state)
    return {"vit": tiny_model, "resnet": fastprompt.models.frozen(resnet)}


def _classes(method):
    return {"pets": NAMES} if method == "softcpt" else NAMES


def _assert_same(a, b):
    (state_a, rng_a), (state_b, rng_b) = a, b
    assert sorted(state_a) == sorted(state_b)
    for name in state_a:
        assert state_a[name].dtype == state_b[name].dtype == torch.float32, name
        assert torch.equal(state_a[name], state_b[name]), f"{name} differs"
    assert torch.equal(rng_a, rng_b), "the generator ends elsewhere: the draws' count or order differs"


@pytest.mark.parametrize("seed,precision", [(1, "fp16"), (2, "fp32")])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_fast_replay_equals_the_reference_bit_for_bit(models, case, seed, precision):
    kind, method, settings = case
    kw = dict(seed=seed, precision=precision, n_classes=len(NAMES), **settings)
    reference = original_init_reference(method, models[kind], **kw)
    _assert_same(original_init(method, models[kind], **kw), reference)
    torch.manual_seed(seed)
    assert not torch.equal(reference[1], torch.get_rng_state()), "the construction drew nothing"


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_the_initial_state_loads_into_the_learner(models, case):
    kind, method, settings = case
    model = models[kind]
    state, _ = original_init(method, model, seed=3, precision="fp16", n_classes=len(NAMES), **settings)
    learner = fastprompt.learners.LEARNERS[method].from_model(model, _classes(method), **settings)
    learner.load_original_state_dict(state)
    expected = original_prompt_state(state)
    if method != "softcpt":
        expected = learner._map_original_names(expected)
    params = dict(learner.trainable_named_parameters())
    assert sorted(params) == sorted(expected)
    for name, value in expected.items():
        assert torch.equal(params[name].detach().float().cpu(), value), name


def test_the_originals_names(models):
    """The names are the originals' (what their checkpoints hold), not fastprompt's."""
    kw = dict(seed=1, precision="fp16", n_classes=len(NAMES))
    assert sorted(original_init("maple", models["vit"], prompt_depth=2, **kw)[0]) == [
        "prompt_learner.compound_prompt_projections.0.bias", "prompt_learner.compound_prompt_projections.0.weight",
        "prompt_learner.compound_prompts_text.0", "prompt_learner.ctx", "prompt_learner.proj.bias",
        "prompt_learner.proj.weight"]
    assert sorted(original_init("promptsrc", models["vit"], prompt_depth_text=2, prompt_depth_vision=2, **kw)[0]) == [
        "image_encoder.VPT", "image_encoder.transformer.resblocks.1.VPT_shallow", "prompt_learner.ctx",
        "text_encoder.transformer.resblocks.1.VPT_shallow"]
    assert sorted(original_init("cocoop", models["resnet"], **kw)[0]) == [
        "prompt_learner.ctx"] + [f"prompt_learner.meta_net.linear{i}.{p}" for i in (1, 2) for p in ("bias", "weight")]


def test_precision_fp16_draws_the_context_in_fp16(models):
    """PREC fp16 makes the context an fp16 draw (``normal_`` on a Half tensor: its values and, for a
    count not a multiple of 16, its word count are its own) and casts CoCoOp's meta-net after its
    fp32 draws: every such start is an fp16 number, and not the fp32 start."""
    kw = dict(seed=1, n_classes=len(NAMES), ctx_init="", n_ctx=4)
    half = original_init("cocoop", models["vit"], precision="fp16", **kw)[0]
    full = original_init("cocoop", models["vit"], precision="fp32", **kw)[0]
    for name in ("prompt_learner.ctx", "prompt_learner.meta_net.linear1.weight"):
        assert torch.equal(half[name].half().float(), half[name]), name
        assert not torch.equal(full[name].half().float(), full[name]), name
        assert not torch.equal(half[name], full[name]), name
    amp = original_init("cocoop", models["vit"], precision="amp", **kw)[0]
    assert all(torch.equal(amp[n], full[n]) for n in full)  # amp floats CLIP first: fp32 prompts


def test_the_replay_leaves_the_global_generator_alone(models):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    _, after_build = original_init("coop", models["vit"], seed=5, precision="fp16", n_classes=len(NAMES))
    assert torch.equal(torch.get_rng_state(), before)
    original_init_reference("coop", models["vit"], seed=5, precision="fp16", n_classes=len(NAMES))
    assert torch.equal(torch.get_rng_state(), after_build)  # the reference, like the original, moves it


# ---- each bare-tensor replay against the torch module the original constructs ----------------------
def _after(seed, build):
    torch.manual_seed(seed)
    made = build()
    return made, torch.get_rng_state()


@pytest.mark.parametrize("width,heads", [(64, 2), (96, 3), (40, 1)])
def test_multihead_attention_construction_is_out_proj_then_xavier_in_proj(width, heads):
    _, expected = _after(7, lambda: nn.MultiheadAttention(width, heads))
    stream = _Stream(7)
    stream.discard_attention(width)
    assert torch.equal(stream.generator.get_state(), expected)


def test_linear_conv_and_embedding_constructions_are_replayed():
    linear, expected = _after(8, lambda: nn.Linear(7, 5))
    stream = _Stream(8)
    weight, bias = stream.linear(5, 7)
    assert torch.equal(weight, linear.weight) and torch.equal(bias, linear.bias)
    assert torch.equal(stream.generator.get_state(), expected)
    for build, replay in ((lambda: nn.Conv2d(3, 8, 4, bias=False), lambda s: s.discard_layer(8, 3, 4, bias=False)),
                          (lambda: nn.Embedding(100, 17), lambda s: s.discard_normal(1700)),
                          (lambda: torch.randn(5), lambda s: s.discard_normal(5))):  # < 16: a spare is cached
        _, expected = _after(9, build)
        stream = _Stream(9)
        replay(stream)
        assert torch.equal(stream.generator.get_state(), expected)


@pytest.mark.parametrize("encoder,layers", [("LSTM1", 1), ("LSTM2", 2)])
def test_lstm_construction_is_replayed_in_registration_order(encoder, layers):
    lstm, expected = _after(10, lambda: nn.LSTM(16, 8, num_layers=layers, bidirectional=True, batch_first=True))
    cfg = fastprompt.learners.PREConfig(encoder=encoder)
    stream = _Stream(10)
    replayed = _pre_encoder(stream, cfg, 16, "")
    assert list(replayed) == [f"lstm_head.{n}" for n, _ in lstm.named_parameters()]
    for name, param in lstm.named_parameters():
        assert torch.equal(replayed[f"lstm_head.{name}"], param), name
    assert torch.equal(stream.generator.get_state(), expected)


# ---- what cannot be replayed is said ------------------------------------------------------------------
@pytest.mark.parametrize("method,kind,settings,message", [
    ("rpp", "vit", {}, "no original code"),
    ("maple", "resnet", {}, "ResNet"),
    ("coop", "vit", dict(init_std=0.05), "std 0.02"),
    ("kgcoop", "vit", dict(ctx_init="a sketch of a"), "a photo of a"),
])
def test_an_unreplayable_configuration_is_refused(models, method, kind, settings, message):
    for replay in (original_init, original_init_reference):
        with pytest.raises(ValueError, match=message):
            replay(method, models[kind], seed=1, precision="fp16", n_classes=len(NAMES), **settings)
    with pytest.raises(fastprompt.errors.ConfigError, match="PREC"):
        original_init("coop", models["vit"], seed=1, precision="bf16", n_classes=len(NAMES))
    with pytest.raises(fastprompt.errors.ConfigError, match="OpenAI-layout CLIP"):
        original_init("coop", nn.Linear(2, 2), seed=1, precision="fp16", n_classes=len(NAMES))


@pytest.mark.slow
@pytest.mark.parametrize("name,method", [("ViT-B-16", "coop"), ("ViT-B-16", "promptsrc"), ("RN50", "cocoop")])
def test_real_backbone_shapes(name, method):
    """ViT-B/16 (~212M words drawn by its construction) and RN50 (~180M): the same words, the same start."""
    model = fastprompt.models.random_clip(name)
    kw = dict(seed=1, precision="fp16", n_classes=10, ctx_init="")
    _assert_same(original_init(method, model, **kw), original_init_reference(method, model, **kw))
