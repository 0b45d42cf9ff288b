"""POMP's training input: Dassl's RandAugment2 and K augmented views per image (K_TRANSFORMS)."""
import io
import random

import numpy as np
import pytest
import torch
from PIL import Image

import fastprompt
import fastprompt.replay.randaugment as ra
from fastprompt.cli import main
from fastprompt.testing.fake_trees import make_split_dataset
from fastprompt.data.images import ImageDataset
from fastprompt.train.build import build_model, load_data
from fastprompt.train.config import resolve_config
from fastprompt.errors import ConfigError
from fastprompt.data.order import SeededSamples
from fastprompt.train.config import load_recipe
from fastprompt.train.state import load_state
from fastprompt.train.views import MultiView, flatten_views

RECIPE = "pomp/vit_b16_ep5_randaug2"
# Dassl's randaugment_list2 (KaiyangZhou/Dassl.pytorch dassl/data/transforms/randaugment.py)
DASSL_LIST2 = [("AutoContrast", 0, 1), ("Brightness", 0.1, 1.9), ("Color", 0.1, 1.9), ("Contrast", 0.1, 1.9),
               ("Equalize", 0, 1), ("Identity", 0, 1), ("Invert", 0, 1), ("Posterize", 4, 8), ("Rotate", -30, 30),
               ("Sharpness", 0.1, 1.9), ("ShearX", -0.3, 0.3), ("ShearY", -0.3, 0.3), ("Solarize", 0, 256),
               ("TranslateX", -0.3, 0.3), ("TranslateY", -0.3, 0.3)]


def _image(size=12):
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size, size + 2, 3), dtype=np.uint8))


def test_op_list_and_each_op_on_a_tiny_image():
    assert list(ra.RANDAUGMENT2_OPS) == DASSL_LIST2
    aug = ra.RandAugment2()
    assert (aug.n, aug.p) == (2, 0.6)
    img = _image()
    px = np.asarray(img).astype(int)
    for name, low, high in DASSL_LIST2:
        for value in (low, high * 0.999):
            out = ra.apply_op(name, img, value)
            assert out.size == img.size and out.mode == "RGB", name
    assert ra.apply_op("Identity", img, 0.5) is img
    assert (np.asarray(ra.apply_op("Invert", img, 0)) == 255 - px).all()
    assert (np.asarray(ra.apply_op("Posterize", img, 4.7)) == px & 0xF0).all()  # int(4.7) = 4 bits kept
    assert (np.asarray(ra.apply_op("Solarize", img, 0)) == 255 - px).all()  # threshold 0: every pixel
    assert (np.asarray(ra.apply_op("Brightness", img, 1.0)) == px).all()
    shifted = np.asarray(ra.apply_op("TranslateX", img, 0.25))  # 3.5 of 14 columns, either direction
    assert not (shifted == px).all() and (shifted == 0).all(axis=(0, 2)).sum() >= 3
    with pytest.raises(ValueError, match="unknown RandAugment2 op 'Cutout'"):
        ra.apply_op("Cutout", img, 0.1)


def test_randaugment2_is_seeded_by_python_random_and_follows_n_and_p(monkeypatch):
    img, aug = _image(), ra.RandAugment2()
    outs = []
    for seed in (5, 5, 6, 7, 8):
        random.seed(seed)
        outs.append(np.asarray(aug(img)))
    assert (outs[0] == outs[1]).all()
    assert any(not (o == outs[0]).all() for o in outs[2:])
    applied = []
    monkeypatch.setattr(ra, "apply_op", lambda name, im, value: applied.append((name, value)) or im)
    random.seed(0)
    for _ in range(600):
        aug(img)
    assert {name for name, _ in applied} == {name for name, _, _ in DASSL_LIST2}
    ranges = {name: (low, high) for name, low, high in DASSL_LIST2}
    assert all(ranges[n][0] <= v <= ranges[n][1] for n, v in applied)
    assert abs(len(applied) / 1200 - 0.6) < 0.05  # each of the n = 2 ops is kept with p = 0.6
    applied.clear()
    ra.RandAugment2(n=3, p=0.0)(img)
    ra.RandAugment2(n=0, p=1.0)(img)
    assert applied == []
    with pytest.raises(ValueError, match="INPUT.RANDAUGMENT_N"):
        ra.RandAugment2(n=-1)


def test_views_are_flattened_view_major_with_repeated_labels():
    b, k = 3, 4
    x = torch.tensor([[[b_ * 10 + k_] for k_ in range(k)] for b_ in range(b)], dtype=torch.float32)
    x = x.view(b, k, 1, 1, 1)
    flat, labels = flatten_views(x, torch.tensor([7, 8, 9]))
    assert flat.shape == (b * k, 1, 1, 1)
    assert flat.flatten().tolist() == [0, 10, 20, 1, 11, 21, 2, 12, 22, 3, 13, 23]  # all first views, then ...
    assert labels.tolist() == [7, 8, 9] * k
    four_d = torch.zeros(2, 3, 4, 4)
    assert flatten_views(four_d, torch.tensor([0, 1]))[0] is four_d
    with pytest.raises(ConfigError, match="K_TRANSFORMS must be an int >= 1"):
        MultiView(lambda im: im, 0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    buf = io.BytesIO()
    _image(24).save(buf, format="JPEG")  # noise, so that two augmented views differ
    make_split_dataset(str(root), "dtd", [(6, 2, 2)] * 4, image_bytes=buf.getvalue())
    return str(root)


def _cfg(data, *overrides):
    return resolve_config([(RECIPE, load_recipe(RECIPE))], overrides=list(overrides),
                          arguments={"DATASET.ROOT": data, "DATASET.NAME": "dtd", "SEED": 1,
                                     "MODEL.BACKBONE.NAME": "tiny", "MODEL.BACKBONE.TAG": "none"})


def test_the_recipe_builds_dassl_pipeline_with_k_seeded_views(data):
    cfg = _cfg(data)
    model = build_model(cfg, torch.device("cpu"))[0]
    dataset, train_tf, _ = load_data(cfg, model)
    assert isinstance(train_tf, MultiView) and train_tf.k == 4
    kinds = [type(t).__name__ for t in train_tf.transform.transforms]
    assert kinds == ["RandomResizedCrop", "RandomHorizontalFlip", "RandAugment2", "ToTensor", "Normalize"]
    assert train_tf.transform.transforms[2].n == cfg["INPUT"]["RANDAUGMENT_N"] == 2
    samples = SeededSamples(ImageDataset(dataset.train, train_tf), seed=1)
    views, _ = samples[(0, 3)]
    assert views.shape == (4, 3, 64, 64)
    assert not torch.equal(views[0], views[1])  # independent draws
    assert torch.equal(samples[(0, 3)][0], views) and not torch.equal(samples[(1, 3)][0], views)
    with pytest.raises(ConfigError, match="K_TRANSFORMS must be an int >= 1"):
        load_data(_cfg(data, "DATALOADER.K_TRANSFORMS", "0"), model)
    assert not isinstance(load_data(_cfg(data, "DATALOADER.K_TRANSFORMS", "1"), model)[1].transform, MultiView)


def test_pomp_randaug2_recipe_smoke_run(data, tmp_path, monkeypatch):
    seen = []
    loss = fastprompt.POMPLearner.loss

    def recording(self, images, labels):
        seen.append((images.shape, labels.clone()))
        return loss(self, images, labels)

    monkeypatch.setattr(fastprompt.POMPLearner, "loss", recording)
    out = tmp_path / "run"
    assert main(["train", "--recipe", RECIPE, "--data", data, "--dataset", "dtd", "--output-dir", str(out),
                 "--model", "tiny", "--pretrained", "none", "--no-progress", "OPTIM.MAX_EPOCH", "1",
                 "TRAINER.POMP.UPDATE_CLASS_NUM", "3", "DATALOADER.NUM_WORKERS", "0",
                 "DATALOADER.TRAIN_X.BATCH_SIZE", "8", "TRAIN.TENSORBOARD", "False"]) == 0
    assert len(seen) == 3  # 24 images, batches of 8
    shape, labels = seen[0]
    assert shape == (32, 3, 64, 64) and torch.equal(labels, labels[:8].repeat(4))  # 4 views of 8 images
    state = load_state(str(out / "state.pt"))
    assert state["finished"] and state["step"] == 3
    assert (out / "prompt.safetensors").is_file() and not (out / "eval.json").exists()  # the recipe's NO_TEST
