"""Convergence side by side: the trainer drives fastprompt's CoOp and the literal reference CoOp
(``fastprompt.reference``, CoOp's own code path) over 24 steps of the same batches, schedule and
SGD; the two loss curves and the final prompts agree to fp32 rounding."""
import torch
from torch import nn

from fastprompt import CoOpLearner, testing
from fastprompt.data import ImageDataset, load_dataset
from fastprompt.testing.fake_trees import make_split_dataset, tiny_jpeg
from fastprompt.data.transforms import transforms_for_model
from fastprompt.reference import ReferenceCoOp
from fastprompt.train import EpochSchedule, Trainer, TrainSettings
from fastprompt.train.defaults import base_defaults

CLASSNAMES = ["red thing", "green thing", "blue thing", "grey thing"]
COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (128, 128, 128)]


class ReferenceAsLearner(nn.Module):
    """The reference model behind the learner API the trainer uses."""

    def __init__(self, ref):
        super().__init__()
        self.ref = ref

    def forward(self, images):
        return self.ref(images)

    def loss(self, images, labels):
        return self.ref.loss(images, labels)

    def trainable_named_parameters(self):
        return [("ctx", self.ref.prompt_learner.ctx)]

    def load_prompt_state(self, tensors, source=""):
        with torch.no_grad():
            self.ref.prompt_learner.ctx.copy_(tensors["ctx"])

    def save_pretrained(self, directory):
        pass


def _data(tmp_path):
    for c, colour in enumerate(COLOURS):  # one colour per class, so the prompts have something to learn
        make_split_dataset(str(tmp_path / f"part{c}"), "dtd", [(0, 0, 0)] * c + [(6, 1, 1)],
                           image_bytes=tiny_jpeg(16, colour), classnames=CLASSNAMES[:c + 1])
    import json
    import shutil

    merged = {"train": [], "val": [], "test": []}
    dst = tmp_path / "root" / "dtd"
    for c in range(4):
        src = tmp_path / f"part{c}" / "dtd"
        split = json.loads((src / "split_zhou_DescribableTextures.json").read_text())
        for part in merged:
            merged[part] += [row for row in split[part] if row[1] == c]
        shutil.copytree(src / "images", dst / "images", dirs_exist_ok=True)
    (dst / "split_zhou_DescribableTextures.json").write_text(json.dumps(merged))
    return load_dataset("dtd", str(tmp_path / "root"))


def _train(learner, train_data):
    optim = dict(base_defaults()["OPTIM"], NAME="sgd", LR=0.02)
    settings = TrainSettings(max_epoch=4, batch_size=4, seed=5, progress=False, tensorboard=False)
    losses = []
    trainer = Trainer(learner, train_data, settings, optim, EpochSchedule(0.02, 4, warmup_epoch=1,
                                                                           warmup_type="constant"),
                      callbacks=[lambda event, t, info: losses.append(info["loss"]) if event == "step" else None])
    trainer.fit()
    return losses, trainer.step


def test_loss_curve_matches_reference(tmp_path):
    model = testing.tiny_clip(0, image_size=32, patch_size=8)
    ds = _data(tmp_path)
    assert ds.classnames == CLASSNAMES and len(ds.train) == 24
    train_tf, _ = transforms_for_model(model)
    torch.manual_seed(0)
    fast = CoOpLearner.from_model(model, ds.classnames, n_ctx=4)
    ref = ReferenceCoOp(model, ds.classnames, n_ctx=4)
    with torch.no_grad():
        ref.prompt_learner.ctx.copy_(fast.ctx)
    fast_losses, steps = _train(fast, ImageDataset(ds.train, train_tf))
    ref_losses, _ = _train(ReferenceAsLearner(ref), ImageDataset(ds.train, train_tf))
    assert steps == 24 and len(fast_losses) == len(ref_losses) == 24
    for i, (a, b) in enumerate(zip(fast_losses, ref_losses)):
        assert abs(a - b) <= 1e-5 * max(1.0, abs(b)), (i, a, b)
    testing.assert_close_rel(fast.ctx.detach(), ref.prompt_learner.ctx.detach(), 1e-5, "ctx after 24 steps")
    assert fast_losses[-1] < fast_losses[0]  # it learned something
