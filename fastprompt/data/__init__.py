"""Datasets: CoOp's folder layouts (identical items, few-shot draws and base/new splits),
custom ImageFolder/CSV/JSON data, transforms, ``SyntheticShapes`` (no files), and ImageNet-21K-P
folders / WebDataset shards (``load_imagenet21k``, ``ShardDataset``, ``pack_folder``) and their
resumable training batches (``ShardBatchStream``).

    from fastprompt.data import load_dataset
    ds = load_dataset("dtd", "/data", shots=16, seed=1, subsample="base")
    ds.classnames, ds.train, ds.val, ds.test      # items with .path, .label, .classname

Its names are imported on first use (:mod:`fastprompt.lazy`), so ``fastprompt data`` and
``fastprompt demo`` build their parsers without torch.
"""
from ..lazy import lazy_exports

_EXPORTS = {
    "..errors": ("DataError",),
    "..keyed_file": ("cache_dir",),
    ".check": ("check_root", "fewshot_record"),
    ".dassl_pickle": ("load_datum_pickle",),
    ".fewshot": ("fewshot_subset", "sample_fewshot", "split_by_label"),
    ".imagenet21k": ("ImageNet21KDataset", "load_imagenet21k"),
    ".imagenet21k_classes": ("ClassTable", "build_class_table", "read_class_table", "universe_wnids"),
    ".images": ("ImageDataset", "load_image", "make_loader", "skip_collate"),
    ".items": ("Dataset", "Item"),
    ".listing": ("list_dirs",),
    ".load": ("load_dataset",),
    ".pack": ("pack_folder",),
    ".registry": ("known_names",),
    ".shard_stream": ("ShardBatchStream",),
    ".shards": ("ShardDataset", "count_samples", "open_shards"),
    ".subsample": ("subsample_classes",),
    ".synthetic": ("CLIP_MEAN", "CLIP_STD", "SyntheticShapes", "class_names", "class_pairs", "make_loaders"),
    ".names": ("COLOURS", "MAX_CLASSES", "SHAPES"),
    ".transforms": ("test_transform", "train_transform", "transforms_for_model"),
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
