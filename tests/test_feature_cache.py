"""The frozen-feature cache: features computed once stand in for the images exactly.

* every text-prompt learner: ``loss(frozen_features(x), y) == loss(x, y)`` with equal gradients;
  the learners that prompt the image tower refuse features;
* the trainer: a run on cached features (deterministic images, or fixed seeded views of a random
  transform, K views per sample) ends with the prompts and the evaluation of the run that
  computes every image, within ``FP32.parity``; a random transform without fixed views is refused;
* disk: a table written once is loaded by the next cache (no image forward), and changing an image
  file, the transform or the model computes a new one; unreadable images are dropped as the
  loader drops them;
* the whole ``fastprompt train`` run with ``TRAIN.FEATURE_CACHE`` gives the prompts and the test
  result of the run without it, and refuses random augmentation with the alternatives.
"""
import json
import os

import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

import fastprompt
from fastprompt.data.images import ImageDataset
from fastprompt.data.items import Item
from fastprompt.learners.image_features import ImageFeatures
from fastprompt.testing import FP32, max_rel_error, perturb_trainable, random_images, tiny_clip
from fastprompt.train import EpochSchedule, Trainer, TrainSettings
from fastprompt.features.cache import FeatureCache
from fastprompt.features.fixed_views import FixedViews, view_choices
from fastprompt.data.order import SeededSamples
from fastprompt.train.records import RunRecords

NAMES = ["red circle", "blue_square", "green triangle", "yellow star", "dog", "sea lion"]
# Text-prompt learners on the tiny model (RPP: text branch, with its zero-shot teacher).
TEXT_PROMPT = {"coop": dict(n_ctx=4), "kgcoop": {}, "pre": {}, "pomp": dict(num_sampled_classes=4), "cocoop": {},
               "softcpt": {}, "rpp": dict(branches="text", depth=2)}
PROMPTED = {"maple": dict(prompt_depth=2), "vpt": dict(prompt_depth=2),
            "promptsrc": dict(prompt_depth_text=2, prompt_depth_vision=2), "rpp": dict(depth=2, kl_weight=0.0)}
SGD = {"NAME": "sgd", "LR": 0.05, "MOMENTUM": 0.9, "WEIGHT_DECAY": 5e-4, "SGD_DAMPNING": 0, "SGD_NESTEROV": False}


def _learner(method, model, **extra):
    cls = fastprompt.learners.LEARNERS[method]
    classes = {"shapes": NAMES[:4], "animals": NAMES[4:]} if method == "softcpt" else NAMES
    torch.manual_seed(0)
    learner = cls.from_model(model, classes, **{**TEXT_PROMPT.get(method, {}), **extra})
    perturb_trainable(learner)
    return learner


@pytest.mark.parametrize("method", sorted(TEXT_PROMPT))
def test_frozen_features_stand_in_for_images(tiny_model, method):
    learner = _learner(method, tiny_model)
    assert learner.frozen_image_side
    images, labels = random_images(4, 32), torch.tensor([0, 1, 2, 5])
    features = learner.frozen_features(images)
    assert isinstance(features, ImageFeatures) and tuple(features.shape) == (4, learner.vision_tower.output_dim)
    params = learner.trainable_parameters()
    torch.manual_seed(1)  # POMP draws its negatives from the global RNG: the same draw both times
    loss = learner.loss(images, labels)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    torch.manual_seed(1)
    cached = learner.loss(features, labels)
    cached_grads = torch.autograd.grad(cached, params, allow_unused=True)
    assert max_rel_error(cached, loss) <= FP32.parity
    for g, c in zip(grads, cached_grads):
        assert (g is None) == (c is None)
        if g is not None:
            assert max_rel_error(c, g) <= FP32.parity
    assert max_rel_error(learner(features), learner(images)) <= FP32.parity


@pytest.mark.parametrize("method", sorted(PROMPTED))
def test_learners_that_prompt_the_image_tower_refuse_features(tiny_model, method):
    learner = fastprompt.learners.LEARNERS[method].from_model(tiny_model, NAMES, **PROMPTED[method])
    assert not learner.frozen_image_side
    with pytest.raises(ValueError, match="prompts the image tower, so its image features change with every step"):
        learner.frozen_features(random_images(2, 32))
    fake = ImageFeatures(torch.randn(2, learner.vision_tower.output_dim))
    with pytest.raises(ValueError, match="precomputed ImageFeatures cannot stand in for its images"):
        learner.loss(fake, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="cannot be cached"):
        FeatureCache(learner, torch.device("cpu"))


def test_rpp_with_its_own_teacher_model_is_not_frozen(tiny_model):
    other = tiny_clip(5)
    learner = fastprompt.RPPLearner.from_model(tiny_model, NAMES, branches="text", depth=2, teacher=other)
    assert not learner.frozen_image_side  # the teacher would need the images themselves


# ---- the trainer ---------------------------------------------------------------------------------

class NoisyImages(Dataset):
    """Tensor images under random augmentation (a flip and noise drawn from the global RNG)."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        x = self.images[i]
        if float(torch.rand(())) < 0.5:
            x = x.flip(-1)
        return x + 0.1 * torch.randn_like(x), int(self.labels[i])


def _data(n=24, seed=1):
    return random_images(n, 32, seed=seed), torch.arange(n) % len(NAMES)


def _trainer(learner, data, *, epochs=3, val=None, cache=None, train_cached=False, seed=0):
    settings = TrainSettings(max_epoch=epochs, batch_size=4, seed=seed, no_test=val is None, tensorboard=False,
                             progress=False, test_batch_size=5, eval_freq=1 if val is not None else 0)
    batches = cache.train_batches(data, 4, seed) if train_cached else None
    return Trainer(learner, data, settings, SGD, EpochSchedule(0.05, epochs, "single_step"),
                   records=RunRecords(None, enabled=False, echo=False), val_data=val, test_data=val,
                   n_classes=len(NAMES), batches=batches, feature_cache=cache)


def _prompts(learner):
    return {n: p.detach().clone() for n, p in learner.trainable_named_parameters()}


def _same_prompts(a, b):
    for name in a:
        assert max_rel_error(b[name], a[name]) <= FP32.parity, name


@pytest.mark.parametrize("method", ["coop", "cocoop"])
def test_cached_training_ends_with_the_prompts_of_the_uncached_run(tiny_model, method):
    images, labels = _data()
    val = TensorDataset(*_data(11, seed=2))
    plain = _learner(method, tiny_model)
    result = _trainer(plain, TensorDataset(images, labels), val=val).fit()
    cached = _learner(method, tiny_model)
    cache = FeatureCache(cached, torch.device("cpu"), batch_size=7)
    cached_result = _trainer(cached, TensorDataset(images, labels), val=val, cache=cache, train_cached=True).fit()
    _same_prompts(_prompts(plain), _prompts(cached))
    assert (cached_result["correct"], cached_result["total"]) == (result["correct"], result["total"]) == \
        (cached_result["correct"], 11)


@pytest.mark.parametrize("views,k", [(3, 1), (4, 2)])
def test_fixed_views_train_the_same_cached_or_rendered(tiny_model, views, k):
    images, labels = _data()
    plain = _learner("coop", tiny_model)
    _trainer(plain, FixedViews(NoisyImages(images, labels), 0, views, k)).fit()
    cached = _learner("coop", tiny_model)
    cache = FeatureCache(cached, torch.device("cpu"), batch_size=10)
    data = FixedViews(NoisyImages(images, labels), 0, views, k)
    _trainer(cached, data, cache=cache, train_cached=True).fit()
    _same_prompts(_prompts(plain), _prompts(cached))
    assert cache.table(data, "train").features.shape[:2] == (24, views)  # each view computed once


def test_fixed_views_are_fixed_and_chosen_per_epoch():
    images, labels = _data(6)
    data = FixedViews(NoisyImages(images, labels), 3, 4, k=2)
    seeded = SeededSamples(data, 3)
    for epoch, index in [(0, 1), (5, 1), (2, 4)]:
        picks = view_choices(3, epoch, index, 4, 2)
        sample, label = seeded[(epoch, index)]
        assert torch.equal(sample, torch.stack([data.view(v, index)[0] for v in picks])) and label == labels[index]
    assert torch.equal(data.view(2, 0)[0], data.view(2, 0)[0])      # a view is the same whenever computed
    assert not torch.equal(data.view(1, 0)[0], data.view(2, 0)[0])  # and views differ
    assert len({tuple(view_choices(3, e, 0, 4, 2)) for e in range(12)}) > 1


def test_a_random_transform_is_refused_without_fixed_views(tiny_model):
    learner = _learner("coop", tiny_model)
    cache = FeatureCache(learner, torch.device("cpu"))
    batches = cache.train_batches(NoisyImages(*_data(8)), 4, 0)
    with pytest.raises(ValueError, match=r"image 0 comes out differently under two seeds: .* random augmentation.*"
                                         r"TRAIN.FEATURE_CACHE_VIEWS"):
        next(iter(batches))


def test_features_are_cached_once_for_every_epoch_and_evaluation(tiny_model, monkeypatch):
    images, labels = _data(12)
    learner = _learner("coop", tiny_model)
    calls = []
    encode = learner.encode_image
    monkeypatch.setattr(learner, "encode_image", lambda x, *a: (calls.append(len(x)) if not isinstance(
        x, ImageFeatures) else None) or encode(x, *a))
    cache = FeatureCache(learner, torch.device("cpu"), batch_size=5)
    val = TensorDataset(*_data(7, seed=2))
    _trainer(learner, TensorDataset(images, labels), epochs=4, val=val, cache=cache, train_cached=True).fit()
    assert sorted(calls) == sorted([5, 5, 2] + [5, 2])  # 12 training images and 7 val images, once each


# ---- disk ------------------------------------------------------------------------------------------

def _jpegs(folder, n, seed=0):
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        path = os.path.join(folder, f"img_{i}.jpg")
        pixels = (torch.rand(16, 16, 3, generator=gen) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(path)
        items.append(Item(path, i % len(NAMES), NAMES[i % len(NAMES)]))
    return items


def _test_tf():
    from fastprompt.data.transforms import test_transform

    return test_transform(32)


def test_a_table_on_disk_is_reused_and_keyed_by_images_transform_and_model(tiny_model, tmp_path, monkeypatch):
    items = _jpegs(str(tmp_path / "images"), 9)
    folder = str(tmp_path / "cache")
    learner = _learner("coop", tiny_model)
    first = FeatureCache(learner, torch.device("cpu"), folder=folder).table(ImageDataset(items, _test_tf()))
    files = os.listdir(folder)
    assert len(files) == 1 and files[0].endswith(".safetensors")
    assert torch.equal(first.labels, torch.tensor([i % len(NAMES) for i in range(9)])) and bool(first.valid.all())

    # the next run loads it without one image forward
    monkeypatch.setattr(learner, "encode_image", lambda *a: pytest.fail("the table was computed again"))
    again = FeatureCache(learner, torch.device("cpu"), folder=folder).table(ImageDataset(items, _test_tf()))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    monkeypatch.undo()

    # another image file, transform or model: another key
    _jpegs(str(tmp_path / "images"), 1, seed=9)
    FeatureCache(learner, torch.device("cpu"), folder=folder).table(ImageDataset(items, _test_tf()))
    from fastprompt.data.transforms import test_transform
    FeatureCache(learner, torch.device("cpu"), folder=folder).table(ImageDataset(items, test_transform(32, mean=(0.5,) * 3)))
    other = _learner("coop", tiny_clip(3))
    FeatureCache(other, torch.device("cpu"), folder=folder).table(ImageDataset(items, _test_tf()))
    assert len(os.listdir(folder)) == 4


def test_data_without_files_cannot_go_to_disk(tiny_model, tmp_path):
    cache = FeatureCache(_learner("coop", tiny_model), torch.device("cpu"), folder=str(tmp_path))
    with pytest.raises(ValueError, match="TensorDataset has no image files to key its features by"):
        cache.table(TensorDataset(*_data(4)))


def test_unreadable_images_are_dropped_as_the_loader_drops_them(tiny_model, tmp_path):
    items = _jpegs(str(tmp_path), 12)
    with open(items[3].path, "wb") as f:
        f.write(b"not a jpeg")
    plain = _learner("coop", tiny_model)
    _trainer(plain, ImageDataset(items, _test_tf()), epochs=2).fit()
    cached = _learner("coop", tiny_model)
    cache = FeatureCache(cached, torch.device("cpu"))
    data = ImageDataset(items, _test_tf())
    _trainer(cached, data, epochs=2, cache=cache, train_cached=True).fit()
    _same_prompts(_prompts(plain), _prompts(cached))
    table = cache.table(data)
    assert not bool(table.valid[3]) and int(table.valid.sum()) == 11


# ---- the whole run -------------------------------------------------------------------------------

FAST = ["OPTIM.MAX_EPOCH", "2", "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "DATALOADER.NUM_WORKERS", "0",
        "TRAIN.TENSORBOARD", "False", "TRAINER.COOP.N_CTX", "4"]
NORMALIZE = ["INPUT.TRANSFORMS", "['normalize']"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from PIL import Image

    from fastprompt.testing.fake_trees import make_split_dataset

    root = tmp_path_factory.mktemp("data")
    split = make_split_dataset(str(root), "dtd", [(6, 1, 2)] * 4)
    gen = torch.Generator().manual_seed(0)
    for rows in split.values():  # distinct images, so a feature read from the wrong row shows
        for rel, _, _ in rows:
            pixels = (torch.rand(24, 20, 3, generator=gen) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(os.path.join(str(root), "dtd", "images", rel))
    return str(root)


def _run(data_root, out, *extra):
    from fastprompt.cli import main

    return main(["train", "--recipe", "coop/vit_b16_ep50", "--data", data_root, "--dataset", "dtd", "--output-dir",
                 str(out), "--model", "tiny", "--pretrained", "none", "--no-progress", "--seed", "1", *FAST, *extra])


def _outcome(run_dir):
    from safetensors.torch import load_file

    return load_file(os.path.join(run_dir, "prompt.safetensors")), json.loads((run_dir / "eval.json").read_text())


def _same_run(a, b):
    (pa, ea), (pb, eb) = _outcome(a), _outcome(b)
    _same_prompts(pa, pb)
    assert (ea["correct"], ea["total"]) == (eb["correct"], eb["total"])


# fastprompt's own order, which a cached run (TRAIN.FEATURE_CACHE all) keeps: the run to compare it with
OWN_ORDER = ["DATALOADER.OWN_ORDER", "True"]


def test_a_run_with_the_feature_cache_equals_the_run_without(data_root, tmp_path):
    # a cached run keeps the cache's own order (no augmentation to replay): compare with that order
    assert _run(data_root, tmp_path / "plain", *NORMALIZE, *OWN_ORDER) == 0
    assert _run(data_root, tmp_path / "cached", *NORMALIZE, "TRAIN.FEATURE_CACHE", "all") == 0
    _same_run(tmp_path / "plain", tmp_path / "cached")
    log = (tmp_path / "cached" / "log.txt").read_text()
    assert "feature cache: train features of 24 images x 1 views computed" in log
    assert "image side: feature cache all (in memory)" in log
    assert "training order: the feature cache's own order" in log


def test_a_run_on_fixed_views_is_the_same_cached_on_disk_or_rendered(data_root, tmp_path):
    views = ["TRAIN.FEATURE_CACHE_VIEWS", "2"]
    disk = ["TRAIN.FEATURE_CACHE", "all", "TRAIN.FEATURE_CACHE_DIR", str(tmp_path / "features")]
    assert _run(data_root, tmp_path / "rendered", *views) == 0
    assert _run(data_root, tmp_path / "cached", *views, *disk) == 0
    _same_run(tmp_path / "rendered", tmp_path / "cached")
    assert len(os.listdir(tmp_path / "features")) == 2  # the training views and the test split
    assert _run(data_root, tmp_path / "again", *views, *disk) == 0
    _same_run(tmp_path / "rendered", tmp_path / "again")
    assert "train features of 24 images x 2 views loaded from" in (tmp_path / "again" / "log.txt").read_text()


def test_random_augmentation_is_refused_and_eval_only_caching_is_not(data_root, tmp_path, capsys):
    assert _run(data_root, tmp_path / "refused", "TRAIN.FEATURE_CACHE", "all") == 2
    err = capsys.readouterr().err
    assert "TRAIN.FEATURE_CACHE all computes one feature per training image" in err
    assert "TRAIN.FEATURE_CACHE_VIEWS" in err and "TRAIN.FEATURE_CACHE eval" in err
    assert not os.path.exists(tmp_path / "refused" / "config.yaml")
    assert _run(data_root, tmp_path / "augmented") == 0
    assert _run(data_root, tmp_path / "eval_cached", "TRAIN.FEATURE_CACHE", "eval") == 0
    _same_run(tmp_path / "augmented", tmp_path / "eval_cached")


def test_a_method_that_prompts_the_image_tower_is_refused(data_root, tmp_path, capsys):
    from fastprompt.cli import main

    code = main(["train", "--recipe", "maple/vit_b16_c2_ep5_batch4_2ctx", "--data",
                 data_root, "--dataset", "dtd", "--output-dir", str(tmp_path / "maple"), "--model", "tiny",
                 "--pretrained", "none", "--no-progress", *NORMALIZE, "TRAIN.FEATURE_CACHE", "all"])
    assert code == 2
    assert "maple prompts the image tower, so its image features change with every step" in capsys.readouterr().err


def test_two_processes_fill_the_cache_together(data_root, tmp_path):
    """torchrun, 2 CPU processes: each rank computes half of the views and the slices are gathered;
    the run ends with the prompts of one process that computes every image each step."""
    import subprocess
    import sys

    from safetensors.torch import load_file

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import train_job

    normalize = ["INPUT.TRANSFORMS", "['normalize']"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             train_job.__file__, data_root, str(tmp_path / "ddp"), "--set", *normalize,
                             "--set", "TRAIN.FEATURE_CACHE", "all"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    from fastprompt.train.run import train_run

    train_run(train_job.config(data_root, normalize + OWN_ORDER), str(tmp_path / "one"), progress=False)  # meanwhile
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    two, one = load_file(tmp_path / "ddp" / "prompt.safetensors"), load_file(tmp_path / "one" / "prompt.safetensors")
    for name in one:  # as tests/test_train_distributed.py: each rank averages half a batch
        assert max_rel_error(two[name], one[name]) <= 1e-4, name
    log = (tmp_path / "ddp" / "log.txt").read_text()
    assert "feature cache: train features of 24 images x 1 views computed" in log
    assert json.loads((tmp_path / "ddp" / "eval.json").read_text())["total"] == 8
