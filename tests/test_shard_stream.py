"""ShardBatchStream: equal epochs on every rank, exact resume (workers, epoch boundary, corrupt samples)."""
import io
import json
import os
import random
import shutil
import tarfile

import numpy as np
import pytest
import torch

from fastprompt.data import ShardDataset, pack_folder
from fastprompt.testing.fake_imagenet21k import make_imagenet21k
from fastprompt.data.shard_stream import ShardBatchStream

pytest.importorskip("webdataset")

BATCH = 16  # 360 samples: 22 batches per epoch of one process


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """9 shards of 40 samples (120 classes x 3 images)."""
    root = str(tmp_path_factory.mktemp("in21k"))
    make_imagenet21k(root, 120, 3)
    out = str(tmp_path_factory.mktemp("packed") / "shards")
    pack_folder(root, out, shots=3, seed=0, shard_size=40, progress=False)
    return out


def _augment(image):
    """[3, 8, 8] float image with a random flip (Python ``random``) and a random shift (torch RNG)."""
    x = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255
    if random.random() < 0.5:
        x = x.flip(-1)
    return x + 0.01 * torch.rand(1)


def _stream(path, workers=0, *, shuffle=True, **kwargs):
    dataset = ShardDataset(path, _augment, shuffle_shards=shuffle, shuffle_buffer=16, seed=3)
    return ShardBatchStream(dataset, kwargs.pop("batch_size", BATCH), num_workers=workers, seed=5, **kwargs)


def _take(stream, n, skipped=None):
    """The next ``n`` batches, epoch by epoch as a trainer takes them; ``skipped`` gets
    ``stream.skipped`` after each batch."""
    out = []
    while len(out) < n:
        stream.set_position(*stream.position)
        for batch in stream:
            out.append(batch)
            if skipped is not None:
                skipped.append(stream.skipped)
            if len(out) == n:
                break
    return out


def _resumed(path, workers, k, n, **kwargs):
    """Batches ``k..n-1`` of a stream stopped after ``k`` batches and resumed in a fresh one."""
    first = _stream(path, workers, **kwargs)
    _take(first, k)
    state = json.loads(json.dumps(first.state_dict()))  # as a checkpoint stores it
    first.close()
    second = _stream(path, workers, **kwargs)
    second.load_state_dict(state)
    second.set_position(*divmod(k, len(second)))
    return second, _take(second, n - k)


def _assert_same(batches, expected):
    assert len(batches) == len(expected)
    for (images, labels), (images_e, labels_e) in zip(batches, expected):
        assert torch.equal(labels, labels_e) and torch.equal(images, images_e)


def test_every_rank_takes_the_same_number_of_batches_per_epoch(shards, tmp_path):
    ranks = [_stream(shards, rank=r, world=2, batch_size=8) for r in range(2)]
    assert [len(ranks[0].dataset.shard_order(0, rank=r, world=2)) for r in range(2)] == [5, 4]  # unequal shares
    for stream in ranks:
        assert len(stream) == 360 // 16
        for epoch in range(2):
            stream.set_position(epoch, 0)
            sizes = [labels.shape[0] for _, labels in stream]
            assert sizes == [8] * len(stream)
        assert stream.position == (2, 0)
    unindexed = str(tmp_path / "unindexed")
    shutil.copytree(shards, unindexed)
    os.remove(os.path.join(unindexed, "shards.json"))
    stream = _stream(unindexed, rank=1, world=2, batch_size=8)
    assert stream.dataset.num_samples is None and len(stream) == len(ranks[1])  # counted from the tar headers


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_shard_mid_epoch_and_across_the_epoch_boundary(shards, workers):
    reference = _stream(shards, workers)
    expected = _take(reference, 30)
    assert len(reference) == 22 and not torch.equal(expected[0][1], expected[22][1])
    for k in (13, 25):  # odd: the worker whose turn it is changes; 25 is past the epoch boundary
        _, batches = _resumed(shards, workers, k, 30)
        _assert_same(batches, expected[k:])


def _damage(path, tmp_path):
    """A copy of the shard set whose shard-000002 has a junk image in its fourth sample."""
    out = str(tmp_path / "damaged")
    shutil.copytree(path, out)
    shard = os.path.join(out, "shard-000002.tar")
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(shard, "w") as tar:
        for m, data in members:
            if m.name.startswith("000002_00003.") and m.name.endswith(".jpg"):
                data = b"junk"
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    return out


def test_a_corrupt_sample_is_skipped_counted_and_resume_stays_aligned(shards, tmp_path):
    damaged = _damage(shards, tmp_path)
    reference = _stream(damaged, shuffle=False)
    skipped = []
    expected = _take(reference, 12, skipped)
    assert skipped[2] == 0 and skipped[8] == 1 and reference.dataset.skipped == 1  # met in shard 2, batches 4..8
    for k in (3, 9):  # before and after the corrupt sample
        stream, batches = _resumed(damaged, 0, k, 12, shuffle=False)
        _assert_same(batches, expected[k:])
        assert stream.skipped == 1 and stream.dataset.skipped == (1 if k == 3 else 0)  # not met again when skipped over


def test_mismatched_workers_or_world_are_refused(shards):
    saved = _stream(shards, 2).state_dict()
    with pytest.raises(ValueError, match=r"num_workers=2, this stream has num_workers=0.*resume with num_workers=2"):
        _stream(shards, 0).load_state_dict(saved)
    with pytest.raises(ValueError, match=r"saved shard stream state has 1 rank\(s\), this run has world size 2"):
        _stream(shards, 2, rank=1, world=2).load_state_dict([saved])
    with pytest.raises(ValueError, match=r"saved by rank 0 of 1, this is rank 0 of 2.*resume with 1 process"):
        _stream(shards, 2, world=2).load_state_dict(saved)
    with pytest.raises(ValueError, match=r"batch_size saved 16 now 8"):
        _stream(shards, 2, batch_size=8).load_state_dict(saved)
    with pytest.raises(ValueError, match=r"no shard stream state"):
        _stream(shards).load_state_dict(None)
    with pytest.raises(ValueError, match=r"trainer is at epoch 1 batch 3, the shard stream at epoch 0 batch 0"):
        _stream(shards).set_position(1, 3)


def test_skipping_to_the_saved_position_decodes_nothing(shards, monkeypatch):
    first = _stream(shards)
    _take(first, 13)
    state = first.state_dict()
    decoded = []
    real = ShardDataset.decode
    monkeypatch.setattr(ShardDataset, "decode", lambda self, *a, **k: decoded.append(1) or real(self, *a, **k))
    second = _stream(shards)
    second.load_state_dict([state])  # a gathered list works too
    second.set_position(0, 13)
    _take(second, 1)
    assert len(decoded) == BATCH  # the 13 * 16 samples before the position were read, not decoded
