"""Datasets: CoOp's folder layouts (identical items, few-shot draws and base/new splits),
custom ImageFolder/CSV/JSON data, transforms, ``SyntheticShapes`` (no files), and ImageNet-21K-P
folders / WebDataset shards (``load_imagenet21k``, ``ShardDataset``, ``pack_folder``) and their
resumable training batches (``ShardBatchStream``).

    from fastprompt.data import load_dataset
    ds = load_dataset("dtd", "/data", shots=16, seed=1, subsample="base")
    ds.classnames, ds.train, ds.val, ds.test      # items with .path, .label, .classname
"""
from ..errors import DataError
from ..keyed_file import cache_dir
from .check import check_root, fewshot_record
from .dassl_pickle import load_datum_pickle
from .fewshot import fewshot_subset, sample_fewshot, split_by_label
from .imagenet21k import ImageNet21KDataset, load_imagenet21k
from .imagenet21k_classes import ClassTable, build_class_table, read_class_table, universe_wnids
from .images import ImageDataset, load_image, make_loader, skip_collate
from .items import Dataset, Item
from .listing import list_dirs
from .load import load_dataset
from .pack import pack_folder
from .registry import known_names
from .shard_stream import ShardBatchStream
from .shards import ShardDataset, count_samples, open_shards
from .subsample import subsample_classes
from .synthetic import (CLIP_MEAN, CLIP_STD, COLOURS, MAX_CLASSES, SHAPES, SyntheticShapes,
                        class_names, class_pairs, make_loaders)
from .transforms import test_transform, train_transform, transforms_for_model

__all__ = [
    "load_dataset", "known_names", "Dataset", "Item", "DataError",
    "sample_fewshot", "fewshot_subset", "split_by_label", "subsample_classes", "load_datum_pickle",
    "cache_dir", "list_dirs", "check_root", "fewshot_record",
    "ImageDataset", "load_image", "make_loader", "skip_collate",
    "train_transform", "test_transform", "transforms_for_model",
    "SyntheticShapes", "make_loaders", "class_names", "class_pairs", "CLIP_MEAN", "CLIP_STD",
    "COLOURS", "SHAPES", "MAX_CLASSES",
    "load_imagenet21k", "ImageNet21KDataset", "ClassTable", "build_class_table", "read_class_table",
    "universe_wnids", "pack_folder", "ShardDataset", "open_shards", "count_samples", "ShardBatchStream",
]
