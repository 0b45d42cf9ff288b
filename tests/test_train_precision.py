"""Trainer paths: gradient accumulation, bf16 autocast, fp16 autocast + GradScaler, unsupported precisions."""
import contextlib
import os
import sys
import warnings

import pytest
import torch

from fastprompt.cli import main
from fastprompt.testing.fake_trees import make_split_dataset, tiny_jpeg
from fastprompt.errors import ConfigError
from fastprompt.data.order import EpochBatches
from fastprompt.train.precision import autocast_supported, resolve_precision
from fastprompt.train.schedule import build_optimizer
from fastprompt.train.state import load_state

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_helpers import SGD, prompts, tensor_trainer, tensors, tiny_learner  # noqa: E402

CPU = torch.device("cpu")


def _assert_fp32_close(actual, expected):
    for name in expected:
        err = (actual[name] - expected[name]).abs().max().item()
        assert err <= 1e-6 * (1 + expected[name].abs().max().item()), (name, err)


def test_accumulated_micro_batches_equal_one_big_batch():
    x, y = tensors(16)
    init = prompts(tiny_learner())
    big = tiny_learner()
    tensor_trainer(big, x, y, batch_size=8).fit()  # 2 steps of 8
    small = tiny_learner()
    trainer = tensor_trainer(small, x, y, batch_size=4, grad_accum_steps=2)  # 2 steps of 2 x 4
    trainer.fit()
    assert trainer.step == 2
    a, b = prompts(small), prompts(big)
    assert (b["ctx"] - init["ctx"]).abs().max() > 1e-4  # the steps moved the prompts
    _assert_fp32_close(a, b)


def test_a_short_last_group_is_the_mean_of_its_batches():
    # 3 batches of 4 with 2 accumulated: step 1 = batches 1-2 (8 images), step 2 = batch 3 alone
    x, y = tensors(12)
    learner = tiny_learner()
    trainer = tensor_trainer(learner, x, y, batch_size=4, grad_accum_steps=2)
    trainer.fit()
    assert trainer.step == 2
    ref = tiny_learner()
    params = [p for _, p in ref.trainable_named_parameters()]
    opt = build_optimizer(params, SGD)
    order = [i for _, i in sum(EpochBatches(12, 4, seed=0).batches(0), [])]
    for chunk in (order[:8], order[8:]):
        opt.zero_grad()
        ref.loss(x[chunk], y[chunk]).backward()
        opt.step()
    _assert_fp32_close(prompts(learner), prompts(ref))


def _first_loss(precision):
    """The loss of the first step in ``precision``; checks that the step trained fp32 prompts (fp16: the
    GradScaler may skip it, see below)."""
    losses = []
    x, y = tensors(8)
    learner = tiny_learner()
    before = prompts(learner)
    tensor_trainer(learner, x, y, batch_size=8, precision=precision, max_steps=1,
                   callbacks=[lambda event, t, info: losses.append(info["loss"]) if event == "step" else None]).fit()
    after = prompts(learner)
    assert all(p.dtype == torch.float32 for p in after.values())  # the prompts stay fp32
    assert precision == "fp16" or (after["ctx"] - before["ctx"]).abs().max() > 1e-5  # and the step moved them
    return losses[0]


# Relative tolerances of the loss against fp32 on the same prompts and batch: bf16 keeps 8 bits of
# mantissa (relative rounding 2^-9 ~ 0.2% per op), fp16 10 bits (2^-11 ~ 0.05% per op); a few ops in
# a row stay well within 1% and 0.5%. Measured on this model: ~2e-4 for both.
BF16_RTOL, FP16_RTOL = 1e-2, 5e-3


def test_bf16_autocast_runs_on_cpu_within_bf16_tolerance():
    fp32, bf16 = _first_loss("fp32"), _first_loss("bf16")
    assert bf16 != fp32  # autocast was in effect
    assert abs(bf16 - fp32) <= BF16_RTOL * abs(fp32), (bf16, fp32)


@pytest.mark.skipif(not autocast_supported("cpu", "fp16"), reason="this PyTorch has no fp16 autocast on CPU")
def test_fp16_with_grad_scaler_on_cpu(tmp_path):
    fp32, fp16 = _first_loss("fp32"), _first_loss("fp16")
    assert fp16 != fp32 and abs(fp16 - fp32) <= FP16_RTOL * abs(fp32), (fp16, fp32)
    # GradScaler's contract: a step whose fp16 gradients overflow is skipped and the scale halved
    x, y = tensors(24)
    learner = tiny_learner()
    seen = [(prompts(learner), 65536.0)]  # (prompts, loss scale) before the first step, then after each

    def record(event, t, info):
        if event == "step":
            seen.append((prompts(learner), t.precision.scaler.get_scale()))

    trainer = tensor_trainer(learner, x, y, batch_size=4, precision="fp16", run_dir=str(tmp_path / "run"),
                             callbacks=[record])
    trainer.fit()
    skipped = [scale < seen[i][1] for i, (_, scale) in enumerate(seen[1:])]
    moved = [not torch.equal(p["ctx"], seen[i][0]["ctx"]) for i, (p, _) in enumerate(seen[1:])]
    assert moved == [not s for s in skipped] and any(moved), (skipped, moved)
    saved = load_state(str(tmp_path / "run" / "state.pt"))["scaler"]
    assert saved["scale"] == seen[-1][1]
    again = tensor_trainer(tiny_learner(), x, y, batch_size=4, precision="fp16", run_dir=str(tmp_path / "run"))
    again.resume()
    assert again.precision.scaler.get_scale() == seen[-1][1]  # the scaler resumes too


@contextlib.contextmanager
def _no_autocast(device_type, dtype=None, **kwargs):
    # what PyTorch < 2.3 does for fp16 on CPU: a warning, and the region runs in fp32
    warnings.warn("In CPU autocast, but the target dtype is not supported. Disabling autocast.")
    yield


def test_an_unsupported_precision_is_refused_before_the_run_starts(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch, "autocast", _no_autocast)
    with pytest.raises(ConfigError, match=r"TRAIN.PRECISION fp16: PyTorch .* cannot train with fp16 autocast and a "
                                          r"GradScaler on cpu; use fp32"):
        resolve_precision("fp16", None, CPU)
    assert resolve_precision("", "fp16", CPU)[0] == "fp32"  # an original's PREC fp16 on a CPU: fp32, as before
    data = tmp_path / "data"
    make_split_dataset(str(data), "dtd", [(2, 0, 1)] * 2, image_bytes=tiny_jpeg(16))
    out = tmp_path / "run"
    assert main(["train", "--recipe", "coop/vit_b16_ep50", "--data", str(data), "--dataset", "dtd", "--output-dir",
                 str(out), "--model", "tiny", "--pretrained", "none", "--precision", "bf16", "--no-progress"]) == 2
    assert "TRAIN.PRECISION bf16: PyTorch" in capsys.readouterr().err
    assert not out.exists() or not os.listdir(out)  # nothing written: a rerun needs no --overwrite
