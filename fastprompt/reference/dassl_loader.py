"""A literal re-implementation of one training epoch of Dassl's data loader, as the test oracle
for :mod:`fastprompt.replay` (issue 23: the original's batches and augmentation draws).

It keeps the original structure on purpose and runs the real machinery, so every random number
is drawn by the code that drew it in the original runs:

* Dassl's ``build_transform`` training branch (KaiyangZhou/Dassl.pytorch
  ``dassl/data/transforms/transforms.py``): ``RandomResizedCrop(size, scale, interpolation)`` ->
  ``RandomHorizontalFlip()`` -> [``RandAugment2(n)``] -> ``ToTensor()`` -> ``Normalize``. The crop
  and flip are torchvision's own, subclassed only to record what they drew (the crop wraps
  ``get_params``; the flip peeks at its ``torch.rand(1)`` and puts the state back);
* Dassl's ``DatasetWrapper.__getitem__`` / ``_transform_image`` (``dassl/data/data_manager.py``):
  ``read_image`` (``Image.open(path).convert("RGB")``, ``dassl/utils/tools.py``), then the
  transform applied ``k_tfm`` (``DATALOADER.K_TRANSFORMS``) times to the same image, a list of
  tensors when ``k_tfm > 1``;
* ``build_data_loader``: a real ``torch.utils.data.DataLoader(dataset, batch_size,
  sampler=RandomSampler(dataset), num_workers, drop_last=is_train and len(data) >= batch_size)``
  (``dassl/data/samplers.py`` builds ``RandomSampler(data_source)``). :class:`RandomSamplerTorch18`
  is torch 1.7 - 1.8's ``RandomSampler.__iter__``, which drew the permutation from the global
  stream (pytorch issue #52568);
* ``TrainerX.run_epoch`` (``dassl/engine/trainer.py``): ``for batch in loader`` then the step; the
  trainers' per-step draws are :func:`pomp_step_draws` (amazon-science/prompt-pretraining
  ``trainers/pomp.py``, ``negative_sampling``) and :func:`softcpt_step_draws`
  (kding1225/softcpt ``trainers/mtcoop.py``, ``compute_text_features_subsample``);
  ``after_epoch`` under ``TEST.FINAL_MODEL best_val`` iterates the validation loader.

The one addition is a collate function that leaves the recorded draws as a per-sample list (the
default one would transpose them); it draws nothing. Everything reads and advances the global
torch and ``random`` streams: set them before calling :func:`dassl_epoch`.
"""
import math

import torch
from PIL import Image
from torch.utils.data import (DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler, SequentialSampler,
                              default_collate)
from torchvision import transforms as T

__all__ = ["read_image", "RecordingRandomResizedCrop", "RecordingRandomHorizontalFlip", "dassl_train_transform",
           "DatasetWrapper", "RandomSamplerTorch18", "distributed_sampler", "dassl_epoch", "pomp_step_draws", "softcpt_step_draws"]


def read_image(path):
    return Image.open(path).convert("RGB")


class RecordingRandomResizedCrop(T.RandomResizedCrop):
    """torchvision's ``RandomResizedCrop``; appends ``("crop", (i, j, h, w))`` to ``self.drawn``."""

    def get_params(self, img, scale, ratio):  # forward calls self.get_params(img, self.scale, self.ratio)
        params = T.RandomResizedCrop.get_params(img, scale, ratio)
        self.drawn.append(("crop", tuple(params)))
        return params


class RecordingRandomHorizontalFlip(T.RandomHorizontalFlip):
    """torchvision's ``RandomHorizontalFlip``; appends ``("flip", flipped)`` to ``self.drawn``."""

    def forward(self, img):
        state = torch.get_rng_state()
        flipped = bool(torch.rand(1) < self.p)
        torch.set_rng_state(state)  # the real forward below makes the draw
        self.drawn.append(("flip", flipped))
        return super().forward(img)


def dassl_train_transform(size, mean, std, interpolation=T.InterpolationMode.BICUBIC, scale=(0.08, 1.0),
                          randaugment=None, drawn=None):
    """Dassl's training transform; ``randaugment``: a RandAugment2 instance or None; ``drawn``: the
    list the crop and flip record into."""
    crop = RecordingRandomResizedCrop((size, size), scale=scale, interpolation=interpolation)
    flip = RecordingRandomHorizontalFlip()
    crop.drawn = flip.drawn = drawn if drawn is not None else []
    tfm_train = [crop, flip]
    if randaugment is not None:
        tfm_train += [randaugment]
    tfm_train += [T.ToTensor(), T.Normalize(mean=mean, std=std)]
    return T.Compose(tfm_train)


class DatasetWrapper(Dataset):
    """``data_source``: records with ``path`` and ``label``; ``transform`` built by
    :func:`dassl_train_transform` with ``drawn``."""

    def __init__(self, data_source, transform, drawn, k_tfm=1):
        self.data_source = data_source
        self.transform = transform
        self.drawn = drawn
        self.k_tfm = k_tfm

    def __len__(self):
        return len(self.data_source)

    def __getitem__(self, idx):
        item = self.data_source[idx]
        output = {"label": item.label, "impath": item.path, "index": idx}
        img0 = read_image(item.path)
        del self.drawn[:]
        output["img"] = self._transform_image(self.transform, img0)
        output["drawn"] = list(self.drawn)
        return output

    def _transform_image(self, tfm, img0):
        img_list = []
        for k in range(self.k_tfm):
            img_list.append(tfm(img0))
        img = img_list
        if len(img) == 1:
            img = img[0]
        return img


class RandomSamplerTorch18(Sampler):
    """torch 1.7 - 1.8 ``RandomSampler`` without replacement (the only way Dassl builds it)."""

    def __init__(self, data_source, generator=None):
        self.data_source = data_source
        self.generator = generator

    def __iter__(self):
        n = len(self.data_source)
        if self.generator is None:
            generator = torch.Generator()
            generator.manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()))
        else:
            generator = self.generator
        yield from torch.randperm(n, generator=self.generator).tolist()

    def __len__(self):
        return len(self.data_source)


def _collate(batch):
    out = default_collate([{k: v for k, v in b.items() if k != "drawn"} for b in batch])
    out["drawn"] = [b["drawn"] for b in batch]
    return out


def distributed_sampler(epoch):
    """Dassl's ``DistributedSampler`` in POMP's one-process run, as a ``sampler_class`` for
    :func:`dassl_epoch`: torch's own ``DistributedSampler(shuffle=True, seed=0)`` of one replica,
    after the trainer's ``sampler.set_epoch(epoch)`` (amazon-science/prompt-pretraining
    ``trainers/pomp.py`` ``before_epoch``)."""
    def build(dataset):
        sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=0)
        sampler.set_epoch(epoch)
        return sampler

    return build


def dassl_epoch(dataset, batch_size, num_workers, sampler_class=RandomSampler, step=None, val_dataset=None):
    """One epoch: the list of batches as the loader gave them (``index``, ``label``, ``img``,
    ``drawn``); ``step(batch)`` after each; ``val_dataset``: then the validation loader is run
    after the epoch (``TEST.FINAL_MODEL best_val``)."""
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler_class(dataset), num_workers=num_workers,
                        drop_last=len(dataset) >= batch_size, collate_fn=_collate)
    batches = []
    for batch in loader:
        batches.append(batch)
        if step is not None:
            step(batch)
    if val_dataset is not None:
        val_loader = DataLoader(val_dataset, batch_size=batch_size, sampler=SequentialSampler(val_dataset),
                                num_workers=num_workers, drop_last=False, collate_fn=_collate)
        for _ in val_loader:
            pass
    return batches


def pomp_step_draws(train_n_cls):
    """POMP's ``negative_sampling`` (mode ``random``): ``perm = torch.randperm(neg_index.size(0))``."""
    def step(batch):
        label_all = torch.arange(0, train_n_cls)
        torch.randperm(label_all.size(0))
    return step


def softcpt_step_draws(label_of_index, num_classes, cls_sample_rate):
    """SoftCPT's ``compute_text_features_subsample`` draws for the batch's label matrix rows
    (``label_of_index[i]``: item ``i``'s row, 1 = positive, 0 = negative, -1 = another task's)."""
    def _choose(x, rate):
        k = math.ceil(len(x) * rate)
        perm = torch.randperm(len(x))[:k]
        return x[perm]

    def step(batch):
        label = torch.stack([label_of_index[int(i)] for i in batch["index"]])
        cc = 0
        for i, c in enumerate(num_classes):
            cur_label = label[:, cc:cc + c]
            mask = (cur_label == 1).any(dim=0)
            idx_neg = torch.where(~mask)[0]
            _choose(idx_neg, cls_sample_rate)
            cc += c
    return step
