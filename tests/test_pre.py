"""PRE learner against the literal original code path (fastprompt.reference.pre)."""
import json
import warnings

import pytest
import torch

import fastprompt
from fastprompt.reference import ReferenceCoOp, ReferencePRE
from fastprompt.testing import (FP32, assert_changed, assert_close_rel, assert_gradient_flows,
                                random_images, tiny_clip)

CONFIGS = [
    dict(),                                           # paper scripts: "a photo of a", LSTM1, residual, shared
    dict(encoder="LSTM2"),
    dict(encoder="MLP1"),
    dict(encoder="MLP2"),                             # weight-tied MLP applied twice
    dict(residual=False),
    dict(encoder="MLP1", residual=False, ctx_init="", n_ctx=5),
    dict(ctx_init="", n_ctx=3, csc=True),             # LSTM over each class's own context sequence
    dict(ctx_init="", n_ctx=4, class_token_position="middle"),
    dict(ctx_init="", n_ctx=2, class_token_position="front", encoder="MLP2"),
    dict(ctx_init="itap of a"),                       # a word of two BPE tokens, as CoOp
]


def _pair(model, names, cfg):
    torch.manual_seed(0)
    reference = ReferencePRE(model, names, **cfg).eval()
    learner = fastprompt.PRELearner.from_model(model, names, **cfg).eval()
    learner.load_original_state_dict(reference.prompt_learner.state_dict())
    return learner, reference


def _reference_params(reference):
    pl = reference.prompt_learner
    if pl.separate_network:
        return [pl.ctx] + [p for i in range(pl.n_ctx) for p in pl.encoder_network[i].parameters()]
    return list(pl.parameters())


def _compare(learner, reference, images, labels, rtol=FP32.parity):
    assert_close_rel(learner(images), reference(images), rtol, "logits")
    loss, ref_loss = learner.loss(images, labels), reference.loss(images, labels)
    assert_close_rel(loss, ref_loss, rtol, "loss")
    named = learner.trainable_named_parameters()
    grads = torch.autograd.grad(loss, [p for _, p in named])
    ref_grads = torch.autograd.grad(ref_loss, _reference_params(reference))
    assert len(grads) == len(ref_grads)
    for (name, _), g, r in zip(named, grads, ref_grads):
        assert_close_rel(g, r, FP32.gradient_parity, f"grad {name}")
        # A separate encoder sees a length-1 sequence: its recurrent weights act on h0 = 0 only.
        if not (learner.config.separate and "weight_hh" in name):
            assert_gradient_flows(g, name)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
@pytest.mark.parametrize("model_fixture", ["tiny_model", "tiny_custom_model"])
def test_pre_matches_reference(cfg, model_fixture, classnames, request):
    model = request.getfixturevalue(model_fixture)
    learner, reference = _pair(model, classnames, cfg)
    _compare(learner, reference, random_images(3), torch.tensor([0, 3, 7]))


def test_state_dict_keys_are_the_original_prompt_learner(tiny_model, classnames):
    for cfg in (dict(), dict(encoder="MLP1")):
        learner, reference = _pair(tiny_model, classnames, cfg)
        ref_keys = set(reference.prompt_learner.state_dict()) - {"token_prefix", "token_suffix"}
        assert {n for n, _ in learner.trainable_named_parameters()} == ref_keys


def test_lstm_is_bidirectional_half_width_over_the_context_sequence(tiny_model, classnames):
    learner = fastprompt.PRELearner.from_model(tiny_model, classnames)
    lstm = learner.encoder_network.lstm_head
    width = learner.text_tower.width
    assert (lstm.input_size, lstm.hidden_size, lstm.num_layers, lstm.bidirectional) == (width, width // 2, 1, True)
    assert learner.ctx.shape == (4, width)  # "a photo of a"
    # one sequence of M tokens: token 0's output depends on token 3 (backward direction)
    ctx = learner.ctx.detach().clone().requires_grad_(True)
    out = learner.encoder_network(ctx)
    (g,) = torch.autograd.grad(out[0].sum(), ctx)
    assert_gradient_flows(g[3], "token 3 -> output 0")


def test_lstm2_dropout_matches_reference_in_train_mode(tiny_model, classnames):
    learner, reference = _pair(tiny_model, classnames, dict(encoder="LSTM2"))
    learner.train(), reference.train()
    torch.manual_seed(7)
    a = learner.encoded_ctx()
    torch.manual_seed(7)
    b = reference.prompt_learner.encoded_ctx()
    assert_close_rel(a, b, FP32.rounding, "encoded ctx (train mode)")
    torch.manual_seed(8)
    assert_changed(learner.encoded_ctx(), a, "encoded ctx under another dropout mask (LSTM2 dropout active in train mode)")
    learner.eval()
    assert torch.equal(learner.encoded_ctx(), learner.encoded_ctx())


def test_mlp_options_follow_their_formula(tiny_model, classnames):
    learner = fastprompt.PRELearner.from_model(tiny_model, classnames, encoder="MLP2", nonlinearity="tanh",
                                               layer_norm=True, bottleneck_size=8)
    lin1, act, lin2, ln = learner.encoder_network.module
    assert lin1.out_features == 8 and isinstance(act, torch.nn.Tanh)
    v = learner.ctx.detach()
    once = lambda x: ln(lin2(torch.tanh(lin1(x))))  # noqa: E731
    assert_close_rel(learner.encoded_ctx(), v + once(once(v)), FP32.rounding, "MLP2 with tanh + LayerNorm")


def test_single_context_token_works_where_the_original_fails(tiny_model, classnames):
    """The original squeezes the LSTM output: one context token cannot be added back. Not here."""
    reference = ReferencePRE(tiny_model, classnames, ctx_init="a")
    with pytest.raises(RuntimeError):
        reference(random_images(1))
    learner = fastprompt.PRELearner.from_model(tiny_model, classnames, ctx_init="a")
    encoded = learner.encoded_ctx().detach()
    coop = ReferenceCoOp(tiny_model, classnames, ctx_init="a")
    with torch.no_grad():
        coop.prompt_learner.ctx.copy_(encoded)
    assert_close_rel(learner(random_images(2)), coop(random_images(2)), FP32.parity, "logits with one context token")


def test_separate_encoders_are_trained_here_unlike_the_original(tiny_model, classnames):
    cfg = dict(separate=True)
    torch.manual_seed(0)
    reference = ReferencePRE(tiny_model, classnames, **cfg)
    # The original keeps the per-token encoders in a plain dict: not parameters, not saved.
    assert [n for n, _ in reference.prompt_learner.named_parameters()] == ["ctx"]
    assert set(reference.prompt_learner.state_dict()) == {"ctx", "token_prefix", "token_suffix"}
    learner = fastprompt.PRELearner.from_model(tiny_model, classnames, **cfg)
    with pytest.warns(UserWarning, match="SEPARATE=True"):
        learner.load_original_state_dict(reference.prompt_learner.state_dict())
    for i in range(reference.prompt_learner.n_ctx):
        learner.encoder_network[i].load_state_dict(reference.prompt_learner.encoder_network[i].state_dict())
    assert len(learner.encoder_network) == 4
    assert any(n.startswith("encoder_network.3.lstm_head") for n, _ in learner.trainable_named_parameters())
    _compare(learner, reference, random_images(2), torch.tensor([1, 5]))


def test_mlp2_original_checkpoint_lists_tied_tensors_twice(tiny_model, classnames):
    learner, reference = _pair(tiny_model, classnames, dict(encoder="MLP2"))
    state = reference.prompt_learner.state_dict()
    assert "encoder_network.module.3.weight" in state  # the tied copy of module.0
    assert [n for n, _ in learner.trainable_named_parameters()] == [
        "ctx", "encoder_network.module.0.weight", "encoder_network.module.0.bias",
        "encoder_network.module.2.weight", "encoder_network.module.2.bias"]
    state = {k: v.clone() for k, v in state.items()}
    state["encoder_network.module.3.weight"] += 1.0
    with pytest.raises(ValueError, match="tied"):
        learner.load_original_state_dict(state)


def test_save_and_load_pretrained_round_trip(tiny_model, classnames, tmp_path):
    learner = fastprompt.PRELearner.from_model(tiny_model, classnames, encoder="MLP1", separate=True)
    with torch.no_grad():
        for p in learner.trainable_parameters():
            p.add_(0.1)
    learner.save_pretrained(tmp_path / "pre")
    config = json.loads((tmp_path / "pre" / "fastprompt_config.json").read_text())
    assert config["method"] == "pre" and config["config"]["encoder"] == "MLP1" and config["config"]["separate"]
    loaded = fastprompt.PromptLearner.from_pretrained(tmp_path / "pre", model=tiny_model)
    assert type(loaded) is fastprompt.PRELearner
    images = random_images(2)
    assert torch.equal(loaded(images), learner(images))


def test_set_classnames_keeps_prompts_and_encoder(tiny_model, classnames):
    learner, _ = _pair(tiny_model, classnames, dict())
    with torch.no_grad():
        learner.encoder_network.lstm_head.weight_hh_l0.mul_(1.5)
    new = ["cat", "tabby_cat", "airplane"]
    learner.set_classnames(new)
    reference = ReferencePRE(tiny_model, new).eval()
    reference.prompt_learner.load_state_dict(
        {**reference.prompt_learner.state_dict(), **dict(learner.trainable_named_parameters())})
    assert_close_rel(learner(random_images(2)), reference(random_images(2)), FP32.parity, "logits after set_classnames")


def test_text_classifier_is_what_forward_uses(tiny_model, classnames):
    learner = fastprompt.PRELearner.from_model(tiny_model, classnames)
    images = random_images(2)
    w = learner.text_classifier()
    img = torch.nn.functional.normalize(tiny_model.encode_image(images), dim=-1)
    assert_close_rel(tiny_model.logit_scale.exp() * img @ w.t(), learner(images), FP32.parity, "logits")


@pytest.mark.parametrize("cfg,argument", [
    (dict(encoder="transformer"), "encoder"),
    (dict(nonlinearity="gelu"), "nonlinearity"),
    (dict(separate=True, csc=True, ctx_init=""), "separate"),
    (dict(ctx_init="", n_ctx=0), "n_ctx"),
    (dict(bottleneck_size=0), "bottleneck_size"),
    (dict(dropout=1.5), "dropout"),
    (dict(lstm_dropout=-0.1), "lstm_dropout"),
    (dict(class_token_position="left"), "class_token_position"),
])
def test_bad_config_is_a_clear_error(tiny_model, classnames, cfg, argument):
    with pytest.raises(ValueError, match=argument):
        fastprompt.PRELearner.from_model(tiny_model, classnames, **cfg)


def test_lstm_needs_an_even_text_width(classnames):
    odd = tiny_clip(seed=2, width=63, heads=3)
    with pytest.raises(ValueError, match="even text width"):
        fastprompt.PRELearner.from_model(odd, classnames)
    fastprompt.PRELearner.from_model(odd, classnames, encoder="MLP1")  # the MLP has no such constraint


@pytest.mark.slow
def test_vit_b16_pre_matches_reference(vit_b16):
    names = ["goldfish", "great white shark", "tiger shark", "hammerhead shark", "electric ray"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        learner, reference = _pair(vit_b16, names, dict())
    n_params = sum(p.numel() for p in learner.trainable_parameters())
    assert n_params == 4 * 512 + 2 * (4 * 256 * (512 + 256) + 8 * 256)  # ctx + BiLSTM (minhanh151/PRE, LSTM1 encoder)
    _compare(learner, reference, random_images(1, size=224), torch.tensor([4]))
