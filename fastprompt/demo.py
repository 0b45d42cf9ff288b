"""``fastprompt demo``: train a prompt learner on the embedded synthetic shapes, no data and no weights.

Trains RPP (default), CoOp or CoCoOp with :class:`fastprompt.train.Trainer` on coloured shapes
generated on the fly (:mod:`fastprompt.data.synthetic`), reports held-out accuracy before and
after, and times a training step against the literal reference implementation
(``fastprompt.reference``). With the default tiny random-weight CLIP it runs offline on CPU in
well under two minutes; ``--model ViT-B-16 --pretrained openai`` uses real weights. One
command's whole flow (its options and their checks, the model, training, evaluation and the timed
comparison) is kept in this one file.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import deque
from typing import List

from .cli_args import nonnegative_int, positive_float, positive_int, unit_float

__all__ = ["add_demo_parser", "run_demo", "DemoError"]

METHODS = ("rpp", "coop", "cocoop")
# Per-method context defaults, as in the CoOp / CoCoOp papers' main settings.
DEFAULT_CTX = {"rpp": (4, ""), "coop": (16, ""), "cocoop": (4, "a photo of a")}
RPP_MAX_DEPTH = 9  # RPPConfig's default depth, capped by the towers of small models
# The demo's default model: a tiny random-weight CLIP (fastprompt.models.tiny_clip) at 64 px.
# Sized so the default run (training + comparison) takes seconds on a 2-core CPU; a 4-layer,
# 128-wide text tower learns noticeably better than the 2-layer default of tiny_clip.
TINY_CLIP_KWARGS = dict(image_size=64, patch_size=16, width=128, layers=4, heads=4,
                        vision_width=96, vision_layers=2, vision_heads=3, embed_dim=48)
TEST_PER_CLASS = 25
TEST_SEED_OFFSET = 1_000_003
WINDOW = 20          # steps in the running loss of the progress bar and the final train loss
TIMED_STEPS = 7      # timed steps per implementation (after one warm-up step)


class DemoError(Exception):
    """An error the demo reports as one line (no traceback) with exit status 2."""


def add_demo_parser(subparsers) -> None:
    """Add ``demo`` to a subparsers object."""
    from .data.names import MAX_CLASSES

    demo = subparsers.add_parser(
        "demo", help="train RPP/CoOp/CoCoOp on synthetic shapes and compare speed with the reference",
        description=(
            "Train a prompt learner on the embedded synthetic shapes dataset (generated on the "
            "fly, no files), print held-out accuracy before and after training, and time a "
            "training step of fastprompt against the literal reference implementation. By "
            "default the model is a tiny random-weight CLIP, so everything runs offline on CPU."))
    demo.add_argument("--method", choices=METHODS, default="rpp", help="prompt learner (default: rpp)")
    demo.add_argument("--model", metavar="NAME", default=None,
                      help="open_clip architecture, e.g. ViT-B-16 (default: a tiny random-weight CLIP)")
    demo.add_argument("--pretrained", metavar="TAG", default=None,
                      help="open_clip pretrained tag for --model, e.g. openai (downloaded once into the cache), "
                           "a checkpoint file, or 'none' for random weights")
    demo.add_argument("--steps", type=positive_int, default=300, help="training steps (default: 300)")
    demo.add_argument("--batch-size", type=positive_int, default=16, help="batch size (default: 16)")
    demo.add_argument("--n-classes", type=positive_int, default=8,
                      help=f"number of synthetic classes, 2 to {MAX_CLASSES} (default: 8)")
    demo.add_argument("--shots", type=positive_int, default=16,
                      help="training images per class (default: 16)")
    demo.add_argument("--noise", type=unit_float, default=None,
                      help="background noise of the synthetic images, 0 (plain grey) to 1 (default: 1 "
                           "with pretrained weights, 0 with random weights, whose features cannot "
                           "see the shapes through the noise)")
    demo.add_argument("--n-ctx", type=positive_int, default=None,
                      help="context length (default: 16 for coop, 4 for cocoop; ignored with a "
                           "non-empty --ctx-init, whose word count sets it)")
    demo.add_argument("--ctx-init", default=None,
                      help="context initialisation words (default: random for coop, "
                           "'a photo of a' for cocoop); '' for random")
    demo.add_argument("--csc", action="store_true",
                      help="coop only: class-specific context (needs random init, i.e. no --ctx-init)")
    demo.add_argument("--lr", type=positive_float, default=0.002, help="SGD learning rate (default: 0.002)")
    demo.add_argument("--seed", type=nonnegative_int, default=0, help="random seed (default: 0)")
    demo.add_argument("--no-compare", action="store_true",
                      help="skip the step-time comparison with fastprompt.reference")
    demo.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    demo.set_defaults(func=run_demo, check=_check_demo_args, command_parser=demo)


def _check_demo_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Cross-argument checks; ``parser.error`` prints one line and exits with status 2."""
    from .data.names import MAX_CLASSES

    if not 2 <= args.n_classes <= MAX_CLASSES:
        parser.error(f"--n-classes must be between 2 and {MAX_CLASSES}, got {args.n_classes}")
    if args.csc and args.method != "coop":
        parser.error("--csc applies to --method coop only")
    if args.csc and args.ctx_init:
        parser.error("--csc needs a random context init: drop --ctx-init (or pass --ctx-init '')")
    if args.pretrained is not None and args.model is None:
        parser.error("--pretrained needs --model NAME")
    if args.model is not None:
        if args.pretrained is None:
            parser.error(f"--model {args.model} needs --pretrained TAG (e.g. openai), "
                         "or --pretrained none for random weights")
        if not args.model.startswith(("hf-hub:", "local-dir:")):
            import open_clip

            if args.model not in open_clip.list_models():
                parser.error(f"unknown open_clip model {args.model!r} (see open_clip.list_models())")
    import torch

    try:
        device = torch.device(args.device)
    except (RuntimeError, ValueError):
        parser.error(f"invalid --device {args.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available")
    if device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        parser.error(f"--device {args.device}: MPS is not available")


# --------------------------------------------------------------------------------------------
# demo
# --------------------------------------------------------------------------------------------

def _say(text: str = "") -> None:
    print(text, flush=True)


def _ctx_settings(args) -> tuple:
    n_ctx, ctx_init = DEFAULT_CTX[args.method]
    if args.ctx_init is not None:
        ctx_init = args.ctx_init
    if args.n_ctx is not None:
        n_ctx = args.n_ctx
    if ctx_init:
        n_ctx = len(ctx_init.replace("_", " ").split(" "))
    return n_ctx, ctx_init


def _learner_class(method: str):
    from .learners import LEARNERS

    return LEARNERS[method]


def _model_image_cfg(model):
    """(image_size, mean, std) the model expects, from open_clip's preprocess config."""
    from open_clip.model import get_model_preprocess_cfg

    from .data.synthetic import CLIP_MEAN, CLIP_STD

    cfg = get_model_preprocess_cfg(model)
    size = cfg.get("size", getattr(getattr(model, "visual", model), "image_size", 224))
    if isinstance(size, (tuple, list)):
        if len(set(size)) != 1:
            raise DemoError(f"non-square image size {tuple(size)} is not supported by the demo")
        size = size[0]
    return int(size), tuple(cfg.get("mean") or CLIP_MEAN), tuple(cfg.get("std") or CLIP_STD)


def _build(args, classnames: List[str]):
    """Returns ``(learner, model, description)``."""
    import torch

    from . import models

    cls = _learner_class(args.method)
    n_ctx, ctx_init = _ctx_settings(args)
    kwargs = dict(n_ctx=n_ctx, ctx_init=ctx_init)
    if args.csc:
        kwargs["csc"] = True
    torch.manual_seed(args.seed)  # random context init
    if args.model is None:
        model = models.tiny_clip(args.seed, **TINY_CLIP_KWARGS)
        k = TINY_CLIP_KWARGS
        desc = (f"tiny random-weight CLIP ({k['image_size']}px, patch {k['patch_size']}, text "
                f"{k['layers']}x{k['width']}, vision {k['vision_layers']}x{k['vision_width']})")
        return cls.from_model(model, classnames, **kwargs, **_method_kwargs(args.method, model)), model, desc
    if args.pretrained.lower() == "none":
        try:
            model = models.random_clip(args.model, seed=args.seed)
        except Exception as exc:  # noqa: BLE001 - open_clip raises several types
            raise DemoError(f"cannot build {args.model}: {exc}") from None
        learner = cls.from_model(model, classnames, **kwargs, **_method_kwargs(args.method, model))
        return learner, model, f"{args.model} (random weights)"
    try:
        learner = cls.from_open_clip(args.model, args.pretrained, classnames, **kwargs)
    except Exception as exc:  # noqa: BLE001 - e.g. weights not available offline
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DemoError(f"cannot load {args.model} ({args.pretrained}): {msg}") from None
    return learner, learner.clip, f"{args.model} ({args.pretrained})"


def _method_kwargs(method: str, model) -> dict:
    """Settings that depend on the model: RPP's prompt depth fits small towers."""
    if method != "rpp":
        return {}
    layers = min(len(model.transformer.resblocks), len(model.visual.transformer.resblocks))
    return {"depth": min(RPP_MAX_DEPTH, layers)}


def _build_reference(method: str, learner, model, classnames, n_ctx: int, ctx_init: str, csc: bool = False):
    from . import reference

    if method == "coop":
        return reference.ReferenceCoOp(model, classnames, n_ctx=n_ctx, ctx_init=ctx_init, csc=csc)
    if method == "cocoop":
        return reference.ReferenceCoCoOp(model, classnames, n_ctx=n_ctx, ctx_init=ctx_init)
    # The literal teacher would encode every template prompt at full length; it is checked
    # against the fast one in the tests, so the timing reuses the fast teacher's class features.
    return reference.ReferenceRPP(model, classnames, depth=learner.config.depth, n_ctx=n_ctx, ctx_init=ctx_init,
                                  teacher_text_features=learner.teacher.class_features)


def _sgd(params, lr: float):
    import torch

    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)


def _train(args, learner, train_x, train_y, batch: int, device):
    """``args.steps`` SGD steps (momentum 0.9, weight decay 5e-4, constant ``args.lr``) of the
    learner's full objective with :class:`fastprompt.train.Trainer`, shuffled batches of
    ``batch``; returns the last ``WINDOW`` losses and the seconds it took."""
    from tqdm import tqdm
    from torch.utils.data import TensorDataset

    from .data.order import EpochBatches
    from .train import EpochSchedule, Trainer, TrainSettings, TrainError
    from .train.records import RunRecords

    per_epoch = len(EpochBatches(len(train_x), batch, args.seed))
    epochs = -(-args.steps // per_epoch)
    settings = TrainSettings(max_epoch=epochs, batch_size=batch, seed=args.seed, max_steps=args.steps,
                             no_test=True, tensorboard=False, progress=False)
    optim = {"NAME": "sgd", "LR": args.lr, "MOMENTUM": 0.9, "WEIGHT_DECAY": 5e-4, "SGD_DAMPNING": 0,
             "SGD_NESTEROV": False}
    schedule = EpochSchedule(args.lr, epochs, "single_step")  # no decay within the run: a constant lr
    losses = deque(maxlen=WINDOW)
    with tqdm(total=args.steps, desc=f"training {args.method}", unit="step", file=sys.stderr,
              dynamic_ncols=True, leave=True) as bar:
        def progress(event, trainer, info):
            if event == "step":
                losses.append(info["loss"])
                bar.set_postfix(loss=f"{sum(losses) / len(losses):.3f}", refresh=False)
                bar.update(1)

        trainer = Trainer(learner, TensorDataset(train_x, train_y), settings, optim, schedule, device=device,
                          callbacks=[progress], records=RunRecords(None, enabled=False, echo=False))
        t_train = time.perf_counter()
        try:
            trainer.fit()  # the method's full objective (RPP: CE + teacher KL)
        except TrainError as exc:
            raise DemoError(f"training diverged: {exc}") from None
    return losses, time.perf_counter() - t_train


def _evaluate(learner, images, labels, batch_size: int, device) -> float:
    import torch

    learner.train(False)
    correct = 0
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].to(device)
            y = labels[start:start + batch_size].to(device)
            correct += int((learner(x).argmax(dim=-1) == y).sum())
    return correct / len(images)


def _time_steps(runs, images, labels, lr: float, device) -> List[float]:
    """Median ms of ``TIMED_STEPS`` SGD steps (forward + backward + step) per ``(loss_fn, params)``.

    One untimed warm-up step each, then the implementations alternate step by step, so a change
    of machine load during the measurement affects all of them alike.
    """
    import torch

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    optimizers = [_sgd(params, lr) for _, params in runs]
    times: List[List[float]] = [[] for _ in runs]
    for i in range(TIMED_STEPS + 1):
        for (loss_fn, _), opt, record in zip(runs, optimizers, times):
            sync()
            start = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss_fn(images, labels).backward()
            opt.step()
            sync()
            if i > 0:
                record.append((time.perf_counter() - start) * 1e3)
    return [statistics.median(record) for record in times]


def run_demo(args: argparse.Namespace) -> int:
    import torch

    from .data.synthetic import SyntheticShapes, class_names

    device = torch.device(args.device)
    n_ctx, ctx_init = _ctx_settings(args)
    classnames = class_names(args.n_classes)

    t0 = time.perf_counter()
    learner, model, desc = _build(args, classnames)
    learner = learner.to(device)
    size, mean, std = _model_image_cfg(model)
    random_weights = args.model is None or args.pretrained.lower() == "none"
    noise = args.noise if args.noise is not None else (0.0 if random_weights else 1.0)
    data_kw = dict(image_size=size, noise=noise, mean=mean, std=std)
    train = SyntheticShapes(args.n_classes, n_per_class=args.shots, seed=args.seed, **data_kw)
    test = SyntheticShapes(args.n_classes, n_per_class=TEST_PER_CLASS,
                           seed=args.seed + TEST_SEED_OFFSET, **data_kw)
    train_x, train_y = train.tensors()
    test_x, test_y = test.tensors()

    ctx_desc = f"ctx_init={ctx_init!r}" if ctx_init else "random context"
    if args.csc:
        ctx_desc += ", class-specific"
    _say(f"fastprompt demo: {args.method} on {desc}, device {device}")
    _say(f"data: synthetic shapes, {args.n_classes} classes ({', '.join(classnames[:4])}"
         f"{', ...' if args.n_classes > 4 else ''}), {size}px, {args.shots} shots/class for training, "
         f"{TEST_PER_CLASS}/class held out, background noise {noise:g}")
    _say(f"prompt: n_ctx={n_ctx}, {ctx_desc}")
    params = learner.trainable_parameters()
    learner.print_trainable_parameters()
    sys.stdout.flush()

    acc_before = _evaluate(learner, test_x, test_y, max(args.batch_size, 64), device)
    _say(f"held-out accuracy before training: {acc_before:.1%}")

    # training: the Trainer of fastprompt train (fastprompt.train.Trainer), data in memory
    batch = min(args.batch_size, len(train_x))
    losses, train_s = _train(args, learner, train_x, train_y, batch, device)
    acc_train = _evaluate(learner, train_x, train_y, max(args.batch_size, 64), device)

    acc_after = _evaluate(learner, test_x, test_y, max(args.batch_size, 64), device)
    _say(f"trained {args.steps} steps in {train_s:.1f} s ({train_s / args.steps * 1e3:.1f} ms/step)")
    _say(f"final train loss: {sum(losses) / len(losses):.4f} (mean of last {len(losses)} steps), "
         f"train accuracy {acc_train:.1%}")
    _say(f"held-out accuracy: {acc_before:.1%} before -> {acc_after:.1%} after training "
         f"(chance {1 / args.n_classes:.1%})")

    if not args.no_compare:
        torch.manual_seed(args.seed)
        ref = _build_reference(args.method, learner, model, classnames, n_ctx, ctx_init, args.csc).to(device)
        ref_params = [p for p in ref.prompt_learner.parameters() if p.requires_grad]
        x, y = train_x[:batch].to(device), train_y[:batch].to(device)
        learner.train(True)
        ref.train(True)
        fast_ms, ref_ms = _time_steps([(learner.loss, params), (ref.loss, ref_params)], x, y, args.lr, device)
        _say(f"fastprompt step: {fast_ms:.1f} ms, reference step: {ref_ms:.1f} ms, "
             f"speed-up: {ref_ms / fast_ms:.2f}\u00d7  (batch {batch}, median of {TIMED_STEPS} steps)")
    _say(f"done in {time.perf_counter() - t0:.1f} s")
    return 0


# --------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------
