"""Trainer overhead: a ``fastprompt.train.Trainer`` step vs the learner's own step, data in memory.

The shapes of ``bench_step.py``'s ``coop`` case (CoOp, 16 context tokens, 100 ImageNet classes,
4 images, random-weight ViT-B-16 by default). "Own step": ``zero_grad``, ``learner.loss``,
``backward``, ``SGD.step`` on fixed tensors, as ``bench_step.py`` times it. "Trainer step":
the same learner trained by the ``Trainer`` from an in-memory ``TensorDataset`` (per-sample
seeded keys, collate, the loss check, records every 10 batches, the progress bar off, the
epoch-end checkpoint into a temporary run directory), timed between consecutive ``"step"``
callbacks. The two alternate step by step (the callback runs one own step after each trainer step)
so that a change of machine load affects both alike; medians.

    python bench/steps/bench_trainer.py                     # CPU, 2 threads, ViT-B-16
    python bench/steps/bench_trainer.py --model ViT-B-32 --steps 20 --device cuda
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)  # run as a script: ``bench`` imports from the repository root
from bench.harness.timing import median, setup_threads, synchronize  # noqa: E402  (first: sets OMP_WAIT_POLICY)

import torch  # noqa: E402
from torch.utils.data import TensorDataset  # noqa: E402

from bench.steps.step_cases import imagenet_classnames, random_batch  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-B-16")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=12, help="timed steps of each kind (default 12)")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--classes", type=int, default=100)
    a = ap.parse_args(argv)
    setup_threads(a.threads)
    device = torch.device(a.device)

    import fastprompt
    from fastprompt import testing
    from fastprompt.train import EpochSchedule, Trainer, TrainSettings
    from fastprompt.train.defaults import base_defaults

    model = testing.random_clip(a.model, seed=0).to(device)
    learner = fastprompt.CoOpLearner.from_model(model, imagenet_classnames(a.classes), n_ctx=16).to(device)
    images, labels = random_batch(model, a.images, a.classes, device=device)
    params = learner.trainable_parameters()
    sgd = torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=5e-4)

    def own_block(n):
        out = []
        for _ in range(n):
            synchronize(device)
            t = time.perf_counter()
            sgd.zero_grad(set_to_none=True)
            learner.loss(images, labels).backward()
            sgd.step()
            synchronize(device)
            out.append(time.perf_counter() - t)
        return out

    # one epoch of the same images over and over: the trainer's batches differ only in order. After
    # each trainer step the callback times one own step, so the two alternate step by step.
    n_steps = a.steps + 1
    pool = TensorDataset(images.cpu().repeat(n_steps, 1, 1, 1), labels.cpu().repeat(n_steps))
    optim = dict(base_defaults()["OPTIM"], NAME="sgd", LR=1e-3)
    own, via, resumed_at = [], [], []

    def interleave(event, trainer, info):
        if event != "step":
            return
        synchronize(device)
        if resumed_at:
            via.append(time.perf_counter() - resumed_at[-1])
        own.extend(own_block(1))
        resumed_at.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        settings = TrainSettings(max_epoch=1, batch_size=a.images, progress=False, tensorboard=False, no_test=True)
        trainer = Trainer(learner, pool, settings, optim, EpochSchedule(1e-3, 1), device=device,
                          run_dir=os.path.join(tmp, "run"), callbacks=[interleave])
        trainer.fit()
        trainer.records.close()
    own = own[1:]  # the first own step warms up its optimizer
    m_own, m_via = median(own), median(via)
    print(f"{a.model} CoOp, {a.images} images x {a.classes} classes, {a.threads} threads on {device}: "
          f"own step {m_own * 1e3:.1f} ms, trainer step {m_via * 1e3:.1f} ms, overhead "
          f"{(m_via / m_own - 1) * 100:+.1f}% (medians of {len(own)} / {len(via)} steps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
