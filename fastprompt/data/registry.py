"""The datasets fastprompt knows by name: CoOp's folder names and dataset class names.

Each entry records what the original dataset class (KaiyangZhou/CoOp ``datasets/*.py``) reads:
its folder under the data root (Dassl's ``DATASET.ROOT``), the image folder that split paths are
relative to, the split file, the other files and folders it needs, and one line on where to get
them (CoOp ``DATASETS.md``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from ..errors import DataError

__all__ = ["Spec", "SPECS", "CUSTOM_KINDS", "resolve", "known_names"]


@dataclass(frozen=True)
class Spec:
    folder: str                      # CoOp folder name under the root, e.g. "oxford_pets"
    cls: str                         # original class name, e.g. "OxfordPets"
    family: str                      # "split" | "aircraft" | "imagenet" | "variant"
    image_dir: str                   # relative to the dataset folder ("" = the folder itself)
    split_file: Optional[str] = None  # split_zhou_*.json (split family)
    needs: Tuple[str, ...] = ()      # other required entries, relative; folders end with "/"
    download: str = ""               # one line: what to fetch (CoOp DATASETS.md)
    aliases: Tuple[str, ...] = ()
    folder_order: str = "sorted"     # variants: "sorted" folder names, or "index" (0..C-1)
    ignored: Tuple[str, ...] = ()    # variants: names skipped among the class folders

    @property
    def test_only(self) -> bool:
        return self.family == "variant"


_GDRIVE = "https://drive.google.com/file/d/{}/view"


def _split(folder, cls, image_dir, gdrive_id, download, needs=(), aliases=()):
    split_file = f"split_zhou_{cls}.json"
    return Spec(folder, cls, "split", image_dir, split_file, needs=tuple(needs), aliases=tuple(aliases),
                download=f"{download}; {split_file} from {_GDRIVE.format(gdrive_id)}")


_CLASSNAMES = "classnames.txt from " + _GDRIVE.format("1-61f_ol79pViBFDG_IDlUQSwoLcn2XXF")

SPECS: List[Spec] = [
    Spec("imagenet", "ImageNet", "imagenet", "images", needs=("images/train/", "images/val/", "classnames.txt"),
         download="ILSVRC-2012 train and val from https://image-net.org, extracted to imagenet/images/{train,val}/"
                  f"<wnid>/; {_CLASSNAMES}"),
    _split("caltech-101", "Caltech101", "101_ObjectCategories", "1hyarUivQE36mY6jSomru6Fjd-JzwcCzN",
           "101_ObjectCategories.tar.gz from http://www.vision.caltech.edu/Image_Datasets/Caltech101/",
           aliases=("caltech",)),
    _split("oxford_pets", "OxfordPets", "images", "1501r8Ber4nNKvmlFVQZ8SeUHTcdTTEqs",
           "images.tar.gz and annotations.tar.gz from https://www.robots.ox.ac.uk/~vgg/data/pets/",
           aliases=("pets",)),
    _split("stanford_cars", "StanfordCars", "", "1ObCFbaAgVu0I-k_Au-gIUcefirdAuizT",
           "cars_train.tgz, cars_test.tgz, car_devkit.tgz and cars_test_annos_withlabels.mat (Stanford Cars)",
           needs=("cars_train/", "cars_test/"), aliases=("cars",)),
    _split("oxford_flowers", "OxfordFlowers", "jpg", "1Pp0sRXzZFZq15zVOzKjKBu4A9i01nozT",
           "102flowers.tgz and imagelabels.mat from https://www.robots.ox.ac.uk/~vgg/data/flowers/102/",
           aliases=("flowers102", "flowers")),
    _split("food-101", "Food101", "images", "1QK0tGi096I0Ba6kggatX1ee6dJFIcEJl",
           "food-101.tar.gz from https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/"),
    Spec("fgvc_aircraft", "FGVCAircraft", "aircraft", "images",
         needs=("variants.txt", "images_variant_train.txt", "images_variant_val.txt", "images_variant_test.txt"),
         download="fgvc-aircraft-2013b.tar.gz from https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/ "
                  "(keep data/, renamed to fgvc_aircraft/)", aliases=("aircraft",)),
    _split("sun397", "SUN397", "SUN397", "1y2RD81BYuiyvebdN-JymPfyWYcd8_MUq",
           "SUN397.tar.gz from http://vision.princeton.edu/projects/2010/SUN/"),
    _split("dtd", "DescribableTextures", "images", "1u3_QfB467jqHgNXC00UIzbLZRQCg2S7x",
           "dtd-r1.0.1.tar.gz from https://www.robots.ox.ac.uk/~vgg/data/dtd/"),
    _split("eurosat", "EuroSAT", "2750", "1Ip7yaCWFi0eaOFUGga0lUdVi_DDQth1o",
           "EuroSAT.zip from http://madm.dfki.de/files/sentinel/EuroSAT.zip, extracted into eurosat/"),
    _split("ucf101", "UCF101", "UCF-101-midframes", "1I0S0q91hJfsV9Gf4xDIjgDq4AqBNJb1y",
           "UCF-101-midframes.zip from " + _GDRIVE.format("10Jqome3vtUA2keJkNanAiFpgbyC9Hc2O")),
    Spec("imagenetv2", "ImageNetV2", "variant", "imagenetv2-matched-frequency-format-val", needs=("classnames.txt",),
         folder_order="index",
         download="imagenetv2-matched-frequency.tar.gz from https://github.com/modestyachts/ImageNetV2; "
                  "copy imagenet/classnames.txt"),
    Spec("imagenet-sketch", "ImageNetSketch", "variant", "images", needs=("classnames.txt",),
         download="ImageNet-Sketch from https://github.com/HaohanWang/ImageNet-Sketch, extracted to "
                  "imagenet-sketch/images/; copy imagenet/classnames.txt"),
    Spec("imagenet-adversarial", "ImageNetA", "variant", "imagenet-a", needs=("classnames.txt",),
         ignored=("README.txt",), aliases=("imagenet-a",),
         download="imagenet-a.tar from https://github.com/hendrycks/natural-adv-examples; copy imagenet/classnames.txt"),
    Spec("imagenet-rendition", "ImageNetR", "variant", "imagenet-r", needs=("classnames.txt",),
         ignored=("README.txt",), aliases=("imagenet-r",),
         download="imagenet-r.tar from https://github.com/hendrycks/imagenet-r; copy imagenet/classnames.txt"),
]

CUSTOM_KINDS = ("imagefolder", "csv", "json")


def _key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


_BY_KEY: Dict[str, Spec] = {}
for _spec in SPECS:
    for _n in (_spec.folder, _spec.cls) + _spec.aliases:
        _BY_KEY[_key(_n)] = _spec


def known_names() -> List[str]:
    """Every accepted dataset name: CoOp folder names, SoftCPT's multi-task sets, custom kinds."""
    from .softcpt.sources import MULTITASK

    return [s.folder for s in SPECS] + list(MULTITASK) + list(CUSTOM_KINDS)


def resolve(name: str) -> Optional[Spec]:
    """The spec for a CoOp folder or class name (case, ``-`` and ``_`` ignored); ``None`` for a
    custom kind; :class:`DataError` listing the known names otherwise."""
    if not isinstance(name, str):
        raise DataError(f"dataset name must be a string, got {name!r}")
    if _key(name) in CUSTOM_KINDS:
        return None
    spec = _BY_KEY.get(_key(name))
    if spec is None:
        from .softcpt.sources import MULTITASK

        names = ", ".join(f"{s.folder} ({s.cls})" for s in SPECS)
        multi = ", ".join(f"{m.name} ({m.cls})" for m in MULTITASK.values())
        raise DataError(f"unknown dataset {name!r}; known: {names}; SoftCPT multi-task: {multi}; "
                        f"custom data: {', '.join(CUSTOM_KINDS)}")
    return spec
