"""A literal re-implementation of the CoOp/Dassl data path, as the test oracle for
``fastprompt.data``.

It keeps the original structure on purpose: Dassl's ``set_random_seed`` (global ``random``,
``numpy`` and ``torch`` seeds), ``DatasetBase.split_dataset_by_label`` (a ``defaultdict``) and
``generate_fewshot_dataset`` drawing from the *global* ``random`` module
(KaiyangZhou/Dassl.pytorch ``dassl/data/datasets/base_dataset.py``, ``dassl/utils/tools.py``),
CoOp's train-then-val draw with ``min(K, 4)`` val shots and ``OxfordPets.subsample_classes``
(KaiyangZhou/CoOp ``datasets/oxford_pets.py``), and Dassl's ``get_lab2cname``. Records are any
objects with ``label`` (and ``classname``) attributes. It mutates the global random state.
"""
import math
import random
from collections import defaultdict

import numpy as np
import torch

__all__ = ["set_random_seed", "split_dataset_by_label", "generate_fewshot_dataset", "coop_fewshot",
           "subsample_classes", "get_lab2cname"]


def set_random_seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def split_dataset_by_label(data_source):
    output = defaultdict(list)
    for item in data_source:
        output[item.label].append(item)
    return output


def generate_fewshot_dataset(*data_sources, num_shots=-1, repeat=False):
    if num_shots < 1:
        if len(data_sources) == 1:
            return data_sources[0]
        return data_sources
    output = []
    for data_source in data_sources:
        tracker = split_dataset_by_label(data_source)
        dataset = []
        for label, items in tracker.items():
            if len(items) >= num_shots:
                sampled_items = random.sample(items, num_shots)
            else:
                if repeat:
                    sampled_items = random.choices(items, k=num_shots)
                else:
                    sampled_items = items
            dataset.extend(sampled_items)
        output.append(dataset)
    if len(output) == 1:
        return output[0]
    return output


def coop_fewshot(train, val, num_shots, seed, imagenet=False):
    """What CoOp's ``train.py`` + a dataset class draw: seed, train K shots, val min(K, 4)."""
    set_random_seed(seed)
    if num_shots >= 1:
        train = generate_fewshot_dataset(train, num_shots=num_shots)
        if not imagenet:
            val = generate_fewshot_dataset(val, num_shots=min(num_shots, 4))
    return train, val


def subsample_classes(*args, subsample="all", make=None):
    """``make(item, new_label)`` builds the relabelled record (Dassl builds a new ``Datum``)."""
    assert subsample in ["all", "base", "new"]
    if subsample == "all":
        return args
    dataset = args[0]
    labels = set()
    for item in dataset:
        labels.add(item.label)
    labels = list(labels)
    labels.sort()
    n = len(labels)
    m = math.ceil(n / 2)
    if subsample == "base":
        selected = labels[:m]
    else:
        selected = labels[m:]
    relabeler = {y: y_new for y_new, y in enumerate(selected)}
    output = []
    for dataset in args:
        dataset_new = []
        for item in dataset:
            if item.label not in selected:
                continue
            dataset_new.append(make(item, relabeler[item.label]))
        output.append(dataset_new)
    return output


def get_lab2cname(data_source):
    container = set()
    for item in data_source:
        container.add((item.label, item.classname))
    mapping = {label: classname for label, classname in container}
    labels = list(mapping.keys())
    labels.sort()
    classnames = [mapping[label] for label in labels]
    return mapping, classnames
