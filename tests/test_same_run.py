"""Same seed, same run (issue 23): ``fastprompt train`` takes the original's first steps.

For CoOp, CoCoOp, MaPLe, KgCoOp, POMP, PromptSRC, VPT-deep, PRE, ProGrad and SoftCPT (with and without its
class sampling), with the original's ``DATALOADER.NUM_WORKERS`` 0 and 2, the first three steps of a
fastprompt run are compared with a reference run made of the literal pieces of the original
(PromptSRC also over two whole epochs with its Gaussian prompt aggregation):

* the reference learner (``fastprompt.reference``) started from the original's construction
  (``original_init_reference``: real modules built in the original's order) and torch's global
  generator where that construction leaves it, Python's ``random`` at ``random.seed(SEED)``;
* fed by a real ``DataLoader`` + ``RandomSampler`` + Dassl ``DatasetWrapper`` with Dassl's
  training transform (``fastprompt.reference.dassl_loader``), which draws every crop, flip and
  sampler seed from the global streams as the original does — POMP's negative classes and SoftCPT's
  sampled classes too, drawn by the reference learner itself from the global stream between batches;
* stepped with Dassl's ``build_optimizer`` SGD at the learning rate fastprompt's schedule gives the
  first epoch.

The batches (item order, per step) must be identical, and the losses equal within
``FP32.parity``: the pixels and prompts are the same, only the float summation order may differ
(fastprompt's learners batch what the references loop over). The training images have many sizes,
some far outside the crop's aspect ratio range, so the random crop needs several attempts (or falls
back to its centre crop) and the draw counts differ from image to image.
"""
import inspect
import io
import math
import random

import pytest
import torch
from PIL import Image
from torch.utils.data import RandomSampler
from torchvision import transforms as T

from fastprompt import models
from fastprompt.data.registry import resolve
from fastprompt.data.transforms import model_preprocess
from fastprompt.reference import (ReferenceCoCoOp, ReferenceCoOp, ReferenceKgCoOp, ReferenceMaPLe, ReferencePOMP,
                                  ReferencePRE, ReferenceProGrad, ReferencePromptSRC, ReferenceSoftCPT, ReferenceVPT)
from fastprompt.errors import ConfigError
from fastprompt.reference.dassl_loader import DatasetWrapper, RandomSamplerTorch18, dassl_epoch, dassl_train_transform
from fastprompt.reference.original_init import original_init_reference
from fastprompt.templates import DATASET_TEMPLATES, PROGRAD_TEMPLATES
from fastprompt.testing import FP32
from fastprompt.testing.fake_trees import make_split_dataset
from fastprompt.train.build import load_split
from fastprompt.train.config import load_recipe, resolve_config
from fastprompt.train.gpa import gaussian_epoch_weights
from fastprompt.train.methods import METHODS, learner_kwargs
from fastprompt.train.model_keys import TINY_CLIP_KWARGS
from fastprompt.train.records import read_metrics
from fastprompt.train.run import train_run
from fastprompt.train.schedule import schedule_from_config

SEED = 2
STEPS = 3
# one shipped recipe per method, at depths the tiny CLIP (4 text, 2 vision layers) has
CASES = {
    "coop": ("coop/vit_b16_ep50", ["TRAINER.COOP.PREC", "fp32", "TRAINER.COOP.N_CTX", "4"]),
    "cocoop": ("cocoop/vit_b16_c4_ep10_batch1_ctxv1", []),
    "maple": ("maple/vit_b16_c2_ep5_batch4_2ctx", ["TRAINER.MAPLE.PROMPT_DEPTH", "2"]),
    "kgcoop": ("kgcoop/vit_b16_ep100_ctxv1", []),
    "pomp": ("pomp/vit_b16_ep5", ["TRAINER.POMP.UPDATE_CLASS_NUM", "3"]),
    # deep prompts in both towers (text 3 of 4 layers, vision 2 of 2); GPA: see the two-epoch test
    "promptsrc": ("promptsrc/vit_b16_c2_ep20_batch4_4+4ctx",
                  ["TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION", "2", "TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT", "3"]),
    # VPT-deep: the vision prompts are drawn inside CLIP's construction (after conv1, then per block)
    "vpt": ("vpt/vit_b16_c2_ep5_batch4_4", ["TRAINER.VPT.PROMPT_DEPTH_VISION", "2"]),
    # the shipped recipe's SEPARATE False (the original never trains SEPARATE True's encoders: learners/pre.py)
    "pre": ("pre/vit_b16_ep50", ["TRAINER.PRE.N_CTX", "4"]),
    # one dataset = one task (SoftCPT-NATA)
    "softcpt": ("softcpt/vit_b16_ep50", []),
    # two CLIP builds before the context (zeros + DTD's "a texture of"); the step is the projected gradient
    "prograd": ("prograd/rn50_ep50", ["TRAINER.COOP.PREC", "fp32"]),
    # no shipped recipe samples classes: class features on (CSC) and half the negative classes, each
    # step's randperm drawn through the learner's step_generator where the original draws from G
    "softcpt_sampled": ("softcpt/vit_b16_ep50", ["TRAINER.MTCOOP.CSC", "True", "TRAINER.MTCOOP.CLASS_N_CTX", "4",
                                                 "TRAINER.MTCOOP.CLS_SAMPLE_RATE", "0.5"]),
}
REFERENCES = {"coop": ReferenceCoOp, "cocoop": ReferenceCoCoOp, "maple": ReferenceMaPLe, "kgcoop": ReferenceKgCoOp,
              "pomp": ReferencePOMP, "promptsrc": ReferencePromptSRC, "vpt": ReferenceVPT, "pre": ReferencePRE,
              "softcpt": ReferenceSoftCPT, "prograd": ReferenceProGrad}
COMMON = ["OPTIM.MAX_EPOCH", "2", "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "TRAIN.MAX_STEPS", str(STEPS),
          "TRAIN.PRINT_FREQ", "1", "OPTIM.WARMUP_EPOCH", "0", "TEST.NO_TEST", "True"]
# (width, height): square, small, and far too wide or tall for the crop's 3/4..4/3 ratios
SIZES = [(16, 16), (40, 12), (12, 40), (33, 21), (7, 50), (64, 9), (23, 29), (50, 50), (19, 8), (9, 27)]


def _jpeg(size, rng):
    img = Image.frombytes("RGB", size, bytes(rng.randrange(256) for _ in range(size[0] * size[1] * 3)))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("same_run") / "data"
    split = make_split_dataset(str(root), "dtd", [(6, 1, 1)] * 4)
    rng = random.Random(0)
    image_dir = root / "dtd" / "images"
    for i, (rel, _, _) in enumerate(split["train"]):  # every training image its own size and pixels
        (image_dir / rel).write_bytes(_jpeg(SIZES[i % len(SIZES)], rng))
    return str(root)


def _cfg(case, data, workers, more=()):
    recipe, extra = CASES[case]
    return resolve_config([(recipe, load_recipe(recipe))],
                          arguments={"DATASET.ROOT": data, "DATASET.NAME": "dtd", "SEED": SEED,
                                     "MODEL.BACKBONE.NAME": "tiny", "MODEL.BACKBONE.TAG": "none",
                                     "TRAIN.TENSORBOARD": False},
                          overrides=COMMON + ["DATALOADER.NUM_WORKERS", str(workers)] + extra + list(more))


def _fastprompt_run(cfg, run_dir, on_event=None):
    """``(losses of the first steps, item paths of each step's global batch)`` of ``fastprompt train``;
    ``on_event(trainer)`` at every trainer event."""
    batches = []

    def seen(event, trainer, info):
        if on_event is not None:
            on_event(trainer)
        if event == "step":
            source = trainer.batches
            batches.append([source.items[i].path for i in source.global_items(info["batch"] - 1)])

    train_run(cfg, run_dir, callbacks=[seen], progress=False)
    losses = [r["loss"] for r in read_metrics(f"{run_dir}/metrics.jsonl") if r["kind"] == "step"]
    return losses, batches


class _Done(Exception):
    pass


# SoftCPT's learner keywords that the reference (the original's names) spells otherwise
_SOFTCPT_NAMES = {"class_token_position": "token_position", "class_features": "csc",
                  "class_feature_token_position": "class_token_position"}


def _reference_learner(method, model, dataset, settings):
    """The reference learner of ``method`` with the run's settings, under the original's keywords."""
    ref_cls = REFERENCES[method]
    if method == "softcpt":  # one dataset is one task, named as fastprompt's run names it
        settings = {_SOFTCPT_NAMES.get(k, k): v for k, v in settings.items()}
    accepted = inspect.signature(ref_cls).parameters
    ref_kwargs = {k: v for k, v in settings.items() if k in accepted}
    if method == "kgcoop":  # the learner takes the dataset's class name, the reference the phrase itself
        ref_kwargs["template"] = DATASET_TEMPLATES[settings["template"]]
    if method == "prograd":  # the original indexes its own CUSTOM_TEMPLATES by the dataset
        ref_kwargs["template"] = PROGRAD_TEMPLATES[settings["template"]]
    if method == "softcpt":
        return ref_cls(model, [dataset.name], [dataset.classnames], **ref_kwargs)
    return ref_cls(model, dataset.classnames, **ref_kwargs)


def _reference_run(cfg, workers, sampler_class=RandomSampler, epochs=1, steps=STEPS, epoch_end=None):
    """The same steps with the original's pieces (see the module docstring); ``epochs`` > 1: whole
    epochs, each after Dassl's ``after_epoch`` (a validation loader under ``best_val``);
    ``epoch_end({original name: trainable tensor})`` after each of them."""
    method = cfg["METHOD"]
    section = cfg["TRAINER"][METHODS[method].section]
    dataset = load_split(cfg)
    model = models.tiny_clip(SEED, **TINY_CLIP_KWARGS)
    settings = learner_kwargs(method, section, resolve("dtd").cls)
    ref = _reference_learner(method, model, dataset, settings)
    state, g = original_init_reference(method, model, seed=SEED, precision=str(section["PREC"]),
                                       n_classes=len(dataset.classnames), **settings)
    missing, unexpected = ref.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    named, optimizer, transform, drawn = original_step_pieces(cfg, model, ref, state)
    p, o = model_preprocess(model), cfg["OPTIM"]  # the later epochs' test transform and learning rates
    wrapped = DatasetWrapper(dataset.train, transform, drawn, k_tfm=int(cfg["DATALOADER"]["K_TRANSFORMS"]))
    losses, batches = [], []

    def labels_of(batch):
        if method == "softcpt":  # the fork's DatasetWrapper: a label matrix, 0 in the sample's task, 1 at its class
            return torch.nn.functional.one_hot(batch["label"], len(dataset.classnames))
        return batch["label"]

    step = dassl_step(ref, optimizer, labels_of, steps, losses, batches, projected=method == "prograd")

    torch.set_rng_state(g)  # the original's G after its build_model; P after random.seed (all images: no draw)
    random.seed(SEED)
    batch_size = int(cfg["DATALOADER"]["TRAIN_X"]["BATCH_SIZE"])
    if epochs == 1:
        with pytest.raises(_Done):
            dassl_epoch(wrapped, batch_size, workers, sampler_class=sampler_class, step=step)
        return losses, batches
    # Dassl's test transform draws nothing: only the validation loader's own iter() reaches G
    val = DatasetWrapper(dataset.val, T.Compose([T.Resize(p["size"]), T.CenterCrop(p["size"]), T.ToTensor()]), [])
    best_val = cfg["TEST"]["FINAL_MODEL"] == "best_val" and not cfg["TEST"]["NO_TEST"]
    for epoch in range(epochs):
        for group in optimizer.param_groups:
            group["lr"] = schedule_from_config(o).lr_at(epoch)
        dassl_epoch(wrapped, batch_size, workers, sampler_class=sampler_class, step=step,
                    val_dataset=val if best_val else None)
        if epoch_end is not None:
            epoch_end({n: named[n] for n in sorted(state) if n in named})
    return losses, batches


def original_step_pieces(cfg, model, ref, state):
    """``(named parameters, optimizer, transform, drawn)`` of a reference run: the original's
    trainable tensors (``state``'s names) of ``ref`` in Dassl's SGD at the first epoch's learning
    rate, and Dassl's training transform recording its draws into ``drawn``."""
    named = dict(ref.named_parameters())
    params = [named[n] for n in sorted(state) if n in named]
    assert params, "the reference has none of the original's trainable tensors"
    for p in params:
        p.requires_grad_(True)
    o = cfg["OPTIM"]
    optimizer = torch.optim.SGD(params, lr=schedule_from_config(o).lr_at(0), momentum=o["MOMENTUM"],
                                weight_decay=o["WEIGHT_DECAY"], dampening=o["SGD_DAMPNING"],
                                nesterov=o["SGD_NESTEROV"])
    p = model_preprocess(model)
    drawn = []
    transform = dassl_train_transform(p["size"], p["mean"], p["std"], T.InterpolationMode(p["interpolation"]),
                                      tuple(cfg["INPUT"]["RRCROP_SCALE"]), drawn=drawn)
    return named, optimizer, transform, drawn


def dassl_step(ref, optimizer, labels_of, steps, losses, batches, projected=False):
    """Dassl's ``forward_backward`` of ``ref`` (zero_grad, loss on ``labels_of(batch)``, backward,
    step), recording each step's loss and image paths; raises ``_Done`` after ``steps`` steps.
    ``projected``: ProGrad's forward_backward (its own backward passes write the projected
    gradient; the logged loss is the cross-entropy)."""
    def step(batch):
        optimizer.zero_grad()
        if projected:
            loss = ref.backward(batch["img"], labels_of(batch))["xe"]
        else:
            loss = ref.loss(batch["img"], labels_of(batch))
            loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        batches.append(list(batch["impath"]))
        if len(losses) == steps:
            raise _Done

    return step


def _both(cfg, run_dir, workers, sampler_class=RandomSampler):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # both runs sum alike where they compute alike
    try:
        return _fastprompt_run(cfg, run_dir), _reference_run(cfg, workers, sampler_class)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("case", sorted(CASES))
def test_first_steps_are_the_originals(case, workers, data, tmp_path):
    (losses, batches), (ref_losses, ref_batches) = _both(_cfg(case, data, workers), str(tmp_path / "run"), workers)
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "initial prompts: original" in log
    assert f"training order: the original's (Dassl's RandomSampler as in torch>=1.9, the streams of its " \
           f"DATALOADER.NUM_WORKERS {workers};" in log
    assert batches == ref_batches  # the same images in the same order, step by step
    assert len(losses) == len(ref_losses) == STEPS
    for i, (a, b) in enumerate(zip(losses, ref_losses)):
        assert abs(a - b) <= FP32.parity * max(1.0, abs(b)), (case, workers, i + 1, a, b)
    if case == "promptsrc":  # TRAIN.MAX_STEPS ends the run in epoch 1: there is no aggregate to apply
        assert "(GPA) is not applied: TRAIN.MAX_STEPS ended the run after 0 of 2 epochs" in log


def test_the_torch_1_8_sampler_is_replayed_when_named(data, tmp_path):
    """torch 1.7 - 1.8's RandomSampler took its permutation from the global stream (pytorch #52568):
    DATALOADER.TRAIN_X.TORCH_SAMPLER torch1.7-1.8 gives the batches of a CoOp run on that torch."""
    cfg = _cfg("coop", data, 0, ["DATALOADER.TRAIN_X.TORCH_SAMPLER", "torch1.7-1.8"])
    (losses, batches), (ref_losses, ref_batches) = _both(cfg, str(tmp_path / "run"), 0, RandomSamplerTorch18)
    assert "RandomSampler as in torch1.7-1.8" in (tmp_path / "run" / "log.txt").read_text()
    assert batches == ref_batches
    for a, b in zip(losses, ref_losses):
        assert abs(a - b) <= FP32.parity * max(1.0, abs(b))
    assert batches != _both(_cfg("coop", data, 0), str(tmp_path / "seeded"), 0)[0][1]  # another order


@pytest.mark.parametrize("more, message", [
    (["DATALOADER.TRAIN_X.TORCH_SAMPLER", "torch2"], r"DATALOADER.TRAIN_X.TORCH_SAMPLER must be one of"),
    # P after the original's few-shot draws is not tracked: RandAugment2 on the main process is refused
    (["DATASET.NUM_SHOTS", "2", "INPUT.TRANSFORMS", "['random_resized_crop', 'random_flip', 'randaugment2', "
      "'normalize']"], r"randaugment2 with the original's DATALOADER.NUM_WORKERS 0 .*DATALOADER.OWN_ORDER True"),
])
def test_what_the_replay_cannot_follow_is_refused_before_anything_is_written(data, tmp_path, more, message):
    with pytest.raises(ConfigError, match=message):
        train_run(_cfg("coop", data, 0, more), str(tmp_path / "run"), progress=False)
    assert not (tmp_path / "run").exists() or not list((tmp_path / "run").iterdir())


@pytest.mark.parametrize("workers", [0, 2])
def test_later_epochs_continue_the_originals_streams(data, tmp_path, workers):
    """Two whole epochs of CoOp under ``TEST.FINAL_MODEL best_val`` (Dassl's validation loader after
    each epoch draws its base seed from G): every step's batch and loss is the original's, so epoch 2
    starts where the original's epoch 1 left every stream."""
    _two_epochs_are_the_originals(_cfg("coop", data, workers, ["TRAIN.MAX_STEPS", "0", "TEST.NO_TEST", "False",
                                                               "TEST.FINAL_MODEL", "best_val", "OPTIM.LR", "0.01"]),
                                  str(tmp_path / "run"), workers)


def _two_epochs_are_the_originals(cfg, run_dir, workers, on_event=None, epoch_end=None):
    """Train two whole epochs both ways (``on_event`` / ``epoch_end``: as in :func:`_fastprompt_run`
    and :func:`_reference_run`) and check that every step's batch and loss is the reference's."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        losses, batches = _fastprompt_run(cfg, run_dir, on_event=on_event)
        ref_losses, ref_batches = _reference_run(cfg, workers, epochs=2, steps=-1, epoch_end=epoch_end)
    finally:
        torch.set_num_threads(threads)
    assert len(batches) == len(ref_batches) == 12  # 24 images, batches of 4, two epochs
    assert batches == ref_batches
    for i, (a, b) in enumerate(zip(losses, ref_losses)):
        assert abs(a - b) <= FP32.parity * max(1.0, abs(b)), (cfg["METHOD"], workers, i + 1, a, b)


@pytest.mark.parametrize("workers", [0, 2])
def test_promptsrc_gpa_leaves_the_originals_streams_alone(data, tmp_path, workers):
    """Two whole epochs of PromptSRC: GPA aggregates the prompts after each epoch's last step and
    draws nothing (the original's ``forward_backward`` deep-copies and weights the state dict), so
    epoch 2 takes the original's batches and losses too; the run ends on the GPA of the original's
    epoch-end prompts. ``GPA_MEAN 1, GPA_STD 1`` weigh epochs 1 and 2 about .62 / .38 (the recipe's
    N(15, 1) over 2 epochs would give epoch 1 a weight of 1e-6: the aggregate would be epoch 2's).
    The original's config keys are integers (yacs refuses 1.5)."""
    cfg = _cfg("promptsrc", data, workers, ["TRAIN.MAX_STEPS", "0", "TRAINER.PROMPTSRC.GPA_MEAN", "1",
                                            "TRAINER.PROMPTSRC.GPA_STD", "1"])
    trainers, ref_epoch_ends = [], []
    _two_epochs_are_the_originals(
        cfg, str(tmp_path / "run"), workers, on_event=trainers.append,
        epoch_end=lambda named: ref_epoch_ends.append({n: p.detach().clone() for n, p in named.items()}))
    assert "applied the epoch aggregation of the prompts (GPA)" in (tmp_path / "run" / "log.txt").read_text()
    learner = trainers[-1].learner
    weights = gaussian_epoch_weights(2, 1.0, 1.0)
    assert weights == pytest.approx([1 / (1 + math.exp(-0.5)), 1 / (1 + math.exp(0.5))])  # pdf at 0 and 1 std
    ref_gpa = {n: sum(w * end[n] for w, end in zip(weights, ref_epoch_ends)) for n in ref_epoch_ends[0]}
    # the aggregate is no epoch's prompts: a run that skipped GPA would fail below
    assert max(float((ref_gpa[n] - ref_epoch_ends[1][n]).abs().max()) for n in ref_gpa) > 100 * FP32.parity
    final = {n: p.detach().cpu().clone() for n, p in learner.trainable_named_parameters()}
    learner.load_original_state_dict(ref_gpa)  # the reference's aggregate under the learner's names
    expected = dict(learner.trainable_named_parameters())
    assert set(expected) == set(final)
    for name, tensor in final.items():
        # 12 SGD steps whose losses agree to FP32 parity: the prompts agree to it too
        torch.testing.assert_close(tensor, expected[name].detach().cpu(), rtol=FP32.parity, atol=FP32.parity,
                                   msg=lambda m: f"{name}: {m}")
