"""The planned epochs are the original loader's, batch for batch and pixel for pixel (fastprompt.replay).

The oracle is fastprompt.reference.dassl_loader: a real DataLoader with RandomSampler over a
Dassl-style DatasetWrapper running the real torchvision transforms on the global streams. The
plan (fastprompt.replay.loader_stream) sees only the images' sizes and the stream states at the
start of the first epoch; its batches, recorded crops and flips, end-of-epoch streams, and the
pixels ReplayedBatches makes from its keys must all equal the reference's exactly, epoch after
epoch, with 0 and 2 workers, 1 and 2 views, with and without RandAugment2.
"""
import os
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from fastprompt.data.items import Item
from fastprompt.data.transforms import train_transform
from fastprompt.errors import ConfigError, DataError, TrainError
from fastprompt.reference import dassl_loader as ref
from fastprompt.replay.batches import ReplayedBatches
from fastprompt.replay.draw_counts import AugmentDraws
from fastprompt.replay.image_sizes import read_image_sizes
from fastprompt.replay.loader_stream import (SAMPLER_DISTRIBUTED, SAMPLER_GLOBAL, SAMPLER_SEEDED, OriginalEpochPlan,
                                             pomp_negative_draws, softcpt_class_sample_draws)
from fastprompt.replay.randaugment import RandAugment2
from fastprompt.replay.streams import Streams, capture, installed
from fastprompt.train.views import MultiView, with_randaugment2

OUT = 12  # output side: small, so each epoch is quick; the draws do not depend on it
MEAN, STD = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)
# (width, height): tiny, square, wide and tall beyond the crop's ratio range (several attempts or the
# centre fallback), ordinary
SIZES = [(400, 20), (20, 400), (37, 53), (64, 48), (5, 7), (1, 1), (120, 90), (90, 120), (33, 33), (250, 30),
         (16, 200), (80, 80), (45, 17)]


@pytest.fixture(autouse=True)
def _keep_global_streams():
    with installed(capture()):
        yield


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    root = tmp_path_factory.mktemp("sizes")
    rng = np.random.default_rng(0)
    out = []
    for i, (w, h) in enumerate(SIZES):
        path = os.path.join(root, f"img_{i:02d}.png")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        out.append(Item(path, i % 4, f"class {i % 4}"))
    return out


def _transforms(k, randaugment):
    """(fastprompt's transform as the Trainer builds it, the reference's Dassl transform, its record list)."""
    ours = train_transform(OUT, MEAN, STD)
    if randaugment:
        ours = with_randaugment2(ours, 2)
    if k > 1:
        ours = MultiView(ours, k)
    drawn = []
    theirs = ref.dassl_train_transform(OUT, MEAN, STD, randaugment=RandAugment2(2) if randaugment else None,
                                       drawn=drawn)
    return ours, theirs, drawn


def _start(seed):
    """Streams of a seeded run after some model construction (G moved on, P too)."""
    torch.manual_seed(seed)
    random.seed(seed)
    torch.empty(1000).normal_()
    random.random()
    return capture()


def _reference_images(batch, k):
    return torch.stack(batch["img"], 1) if k > 1 else batch["img"]


def _compare_epochs(items, *, batch_size, workers, k=1, randaugment=False, epochs=3, sampler=SAMPLER_SEEDED,
                    sampler_class=torch.utils.data.RandomSampler, step=None, ref_step=None, evaluation=False,
                    slices=1, epoch_sampler=None):
    ours, theirs, drawn = _transforms(k, randaugment)
    dataset = ref.DatasetWrapper(items, theirs, drawn, k_tfm=k)
    sizes = read_image_sizes([it.path for it in items])
    replayed = ReplayedBatches(items, ours)
    # the validation loader of TEST.FINAL_MODEL best_val: the test transform draws nothing
    val = ref.DatasetWrapper(items, T.Compose([T.Resize((OUT, OUT)), T.ToTensor()]), []) if evaluation else None
    streams = _start(7)
    for epoch in range(epochs):
        plan = OriginalEpochPlan(streams, sizes, batch_size, AugmentDraws.from_transform(ours), num_workers=workers,
                                 sampler=sampler, step_draws=step, evaluation_draw=evaluation, slices=slices,
                                 epoch=epoch)
        if epoch_sampler is not None:  # a sampler that the trainer re-seeds per epoch (set_epoch)
            sampler_class = epoch_sampler(epoch)
        batches = ref.dassl_epoch(dataset, batch_size, workers, sampler_class=sampler_class, step=ref_step,
                                  val_dataset=val)
        assert len(plan) == len(batches), f"epoch {epoch}: batch count"
        for planned, batch in zip(plan.batches, batches):
            assert list(planned.items) == batch["index"].tolist(), f"epoch {epoch} batch {planned.index}: items"
            recorded = [[(("crop", v.crop), ("flip", v.flip)) for v in views] for views in planned.draws]
            assert [[tuple(d[i:i + 2]) for i in range(0, len(d), 2)] for d in batch["drawn"]] == recorded
            parts = [replayed[planned.key(r)].checked() for r in range(slices)]
            images = torch.cat([p[0] for p in parts])
            assert torch.equal(images, _reference_images(batch, k)), f"epoch {epoch} batch {planned.index}: pixels"
            assert torch.equal(torch.cat([p[1] for p in parts]), batch["label"])
        end = capture()
        assert torch.equal(plan.end.torch, end.torch), f"epoch {epoch}: G at the end of the epoch"
        assert plan.end.python == end.python, f"epoch {epoch}: Python random at the end of the epoch"
        streams = plan.end
    return plan


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("randaugment", [False, True])
def test_batches_draws_pixels_and_streams_equal_the_reference(items, workers, k, randaugment):
    _compare_epochs(items, batch_size=4, workers=workers, k=k, randaugment=randaugment)


@pytest.mark.parametrize("n, batch_size", [(5, 8), (8, 8), (13, 4)])  # n < batch, n = batch, n % batch != 0
@pytest.mark.parametrize("workers", [0, 2])
def test_drop_last_cases(items, n, batch_size, workers):
    plan = _compare_epochs(items[:n], batch_size=batch_size, workers=workers, epochs=2)
    assert [len(b.items) for b in plan.batches] == ([n] if n <= batch_size else [batch_size] * (n // batch_size))


@pytest.mark.parametrize("workers", [0, 2])
def test_torch_18_sampler_draws_the_permutation_from_the_global_stream(items, workers):
    _compare_epochs(items, batch_size=4, workers=workers, sampler=SAMPLER_GLOBAL,
                    sampler_class=ref.RandomSamplerTorch18)
    seeded = OriginalEpochPlan(_start(7), read_image_sizes([it.path for it in items]), 4,
                               AugmentDraws.from_transform(train_transform(OUT)), num_workers=0)
    torch18 = OriginalEpochPlan(_start(7), read_image_sizes([it.path for it in items]), 4,
                                AugmentDraws.from_transform(train_transform(OUT)), num_workers=0,
                                sampler=SAMPLER_GLOBAL)
    assert seeded.permutation.tolist() != torch18.permutation.tolist()


@pytest.mark.parametrize("workers", [0, 2])
def test_pomps_distributed_sampler_orders_by_epoch_alone(items, workers):
    """POMP's configs use Dassl's DistributedSampler: torch's, seeded 0 + epoch, drawing nothing from G
    (only the loader's base seed does), so the order does not depend on the run's seed."""
    _compare_epochs(items, batch_size=4, workers=workers, sampler=SAMPLER_DISTRIBUTED,
                    epoch_sampler=ref.distributed_sampler)
    sizes, draws = read_image_sizes([it.path for it in items]), AugmentDraws.from_transform(train_transform(OUT))
    a, b = (OriginalEpochPlan(_start(seed), sizes, 4, draws, num_workers=0, sampler=SAMPLER_DISTRIBUTED)
            for seed in (7, 8))
    assert a.permutation.tolist() == b.permutation.tolist() and a.base_seed != b.base_seed


@pytest.mark.parametrize("workers", [0, 2])
def test_step_draws_and_the_evaluation_draw(items, workers):
    _compare_epochs(items, batch_size=4, workers=workers, randaugment=True, step=pomp_negative_draws(21),
                    ref_step=ref.pomp_step_draws(21), evaluation=True, epochs=2)
    # SoftCPT: tasks of 3, 5 and 4 classes; an item is positive for one class of one task (-1 elsewhere)
    num_classes = [3, 5, 4]
    ranges = [(0, 3), (3, 8), (8, 12)]
    rows, positives = [], []
    for i in range(len(items)):
        task = i % 3
        start, end = ranges[task]
        row = torch.full((12,), -1)
        row[start:end] = 0
        row[start + i % (end - start)] = 1
        rows.append(row)
        positives.append([start + i % (end - start)])
    _compare_epochs(items, batch_size=4, workers=workers, step=softcpt_class_sample_draws(ranges, positives, 0.5),
                    ref_step=ref.softcpt_step_draws(rows, num_classes, 0.5), epochs=2)
    assert softcpt_class_sample_draws(ranges, positives, 0.0) is None  # the original draws nothing at rate 0


def test_step_states_are_where_the_trainer_draws(items):
    """A learner drawing from a generator at ``batch.step`` gets the original's per-step draw."""
    sizes = read_image_sizes([it.path for it in items])
    plan = OriginalEpochPlan(_start(3), sizes, 4, AugmentDraws.from_transform(train_transform(OUT)), num_workers=0,
                             step_draws=pomp_negative_draws(21))
    ours, theirs, drawn = _transforms(1, False)
    negatives = []
    torch.set_rng_state(_start(3).torch)
    ref.dassl_epoch(ref.DatasetWrapper(items, theirs, drawn), 4, 0,
                    step=lambda batch: negatives.append(torch.randperm(21)))
    for batch, expected in zip(plan.batches, negatives):
        assert torch.equal(torch.randperm(21, generator=torch.Generator().set_state(batch.step)), expected)


@pytest.mark.parametrize("workers", [0, 2])
def test_ranks_take_equal_slices_of_the_global_batch(items, workers):
    """Two processes' slices, concatenated, are the one-process original's batch, pixels included."""
    plan = _compare_epochs(items, batch_size=4, workers=workers, k=2, randaugment=True, slices=2, epochs=2)
    for batch in plan.batches:
        assert batch.key(0).items + batch.key(1).items == batch.items and len(batch.key(1).items) == 2
        assert batch.key(0).end is batch.key(1).start
    assert [k.index for k in plan.keys(rank=1, start=1)] == [1, 2]
    with pytest.raises(ValueError, match="rank 2 out of range"):
        plan.batches[0].key(2)


def test_plans_refuse_what_they_cannot_replay(items):
    sizes = read_image_sizes([it.path for it in items])
    draws = AugmentDraws.from_transform(train_transform(OUT))
    with pytest.raises(ConfigError, match="cannot be split into 3 equal per-process slices"):
        OriginalEpochPlan(_start(1), sizes, 4, draws, num_workers=0, slices=3)
    with pytest.raises(ConfigError, match="cannot be split into 2"):
        OriginalEpochPlan(_start(1), sizes[:3], 4, draws, num_workers=0, slices=2)  # one partial batch
    with pytest.raises(DataError, match="training split is empty"):
        OriginalEpochPlan(_start(1), [], 4, draws, num_workers=0)
    with pytest.raises(ConfigError, match="unknown sampler behaviour"):
        OriginalEpochPlan(_start(1), sizes, 4, draws, num_workers=0, sampler="torch1.6")
    with pytest.raises(ConfigError, match="NUM_WORKERS must be an int >= 0"):
        OriginalEpochPlan(_start(1), sizes, 4, draws, num_workers=-1)


def test_a_replay_that_draws_differently_or_meets_an_unreadable_image_stops(items, tmp_path):
    sizes = read_image_sizes([it.path for it in items])
    plan = OriginalEpochPlan(_start(1), sizes, 4, AugmentDraws.from_transform(train_transform(OUT)), num_workers=0)
    key = plan.batches[0].key()
    # a transform drawing once more per image than the plan (another torchvision would do the same)
    extra = T.Compose([T.RandomHorizontalFlip()] + list(train_transform(OUT).transforms))
    with pytest.raises(TrainError, match=r"batch 1 of epoch 1: .* \(torchvision .*, torch .*\)"):
        ReplayedBatches(items, extra)[key].checked()
    before = capture()
    images, labels = ReplayedBatches(items, train_transform(OUT))[key].checked()
    assert capture().same_as(before)  # the caller's streams are untouched by a replay
    assert images.shape == (4, 3, OUT, OUT) and labels.tolist() == [items[i].label for i in key.items]
    broken = tmp_path / "broken.png"
    data = open(items[key.items[1]].path, "rb").read()
    broken.write_bytes(data[:len(data) // 2])  # the header reads, the pixels do not
    bad = list(items)
    bad[key.items[1]] = Item(str(broken), 0, "class 0")
    assert read_image_sizes([str(broken)]) == [sizes[key.items[1]]]
    replayed = ReplayedBatches(bad, train_transform(OUT))[key]
    assert replayed.images is None and capture().same_as(before)
    with pytest.raises(DataError, match=r"batch 1 of epoch 1: training image .*broken.png cannot be read"):
        replayed.checked()
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty.jpg cannot be read .*cannot skip an image"):
        read_image_sizes([str(tmp_path / "empty.jpg")])


def test_streams_seeded_is_a_workers_start():
    torch.manual_seed(123)
    random.seed(123)
    assert Streams.seeded(123).same_as(capture())


@pytest.mark.parametrize("our_workers", [0, 2])
def test_keys_load_through_a_dataloader_with_any_number_of_our_workers(items, our_workers):
    """How the run loads them: DataLoader(replayed, sampler=keys, batch_size=None), its own workers
    unrelated to the original's (here 8); the pixels are those of the in-process replay."""
    ours, _, _ = _transforms(2, True)
    sizes = read_image_sizes([it.path for it in items])
    plan = OriginalEpochPlan(_start(5), sizes, 4, AugmentDraws.from_transform(ours), num_workers=8)
    replayed = ReplayedBatches(items, ours)
    keys = plan.keys(rank=0, start=1)  # resuming at the second batch
    loader = torch.utils.data.DataLoader(replayed, sampler=keys, batch_size=None, num_workers=our_workers,
                                         generator=torch.Generator().manual_seed(0))
    before = capture()
    loaded = [batch.checked() for batch in loader]
    assert capture().same_as(before)  # neither loading nor replaying moved the caller's streams
    assert len(loaded) == len(plan) - 1
    for (images, labels), key in zip(loaded, keys):
        expected = replayed[key].checked()
        assert torch.equal(images, expected[0]) and torch.equal(labels, expected[1])
        assert images.shape == (4, 2, 3, OUT, OUT)
