"""SoftCPT's dataset classes as data: where each source of a multi-task set lives and how the
original reads it (kding1225/softcpt ``datasets/*.py``, on the Dassl it bundles in
``dist/Dassl.pytorch``).

What the original does, per source class (e.g. ``datasets/dtd.py``):

* folder ``<root>/<dataset_dir>``, images under ``image_dir``; the split is
  ``split_dk_<Name>.json``: ``{"train": rows, "val": rows, "test": rows, "meta": {...}}``, rows
  ``[path relative to image_dir, [label], [task]]`` (``OxfordPets.read_split``/``save_split`` in
  ``datasets/oxford_pets.py``; StanfordCars' paths are relative to the dataset folder), ``meta``
  with ``taskid2cname`` (one class list per task), ``taskid2tname``, ``taskid2desc`` (and
  ``taskid2type``/``taskid2metric``, which the reader ignores: the class attributes are used).
* When the split file is missing, the first run *generates* it (``generator`` below: a seeded
  random split drawn with Python's global ``random``) and writes it into the dataset folder,
  with the task name and description read from ``task_name.txt`` / ``task_desc.txt`` there.
  FGVCAircraft has no ``split_dk`` file: it always reads its text files and the two task files.
* ``rename``: class names replaced after reading (``update_cnames`` of Caltech101 and EuroSAT,
  applied to the meta's raw names on every run) or before saving (PlantVillage's
  ``process_class_names``: the meta holds the new names).
* ``metric``: the class attribute ``taskid2metric`` that the multi-task evaluator scores the
  task with (``overall_acc``: accuracy over the images; ``mean_acc``: mean of per-class
  accuracies); ``taskid2type`` is ``'sl'`` (single label) everywhere.

The multi-task sets (``datasets/general10.py``, ``plant6.py``, ``fashion20.py``) list their
sources in ``data_sources`` order, which is the task order. Plant6 imports OxfordFlowers but does
not list it: six tasks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from ...errors import DataError

__all__ = ["Source", "SOURCES", "MultiTaskSpec", "MULTITASK", "resolve_multitask", "is_multitask",
           "SPLIT_GENERATORS"]

# How a missing split_dk file is generated, by the original's reading code:
#   "folders"        DTD.read_and_split_data: sorted class folders, each shuffled, 50/20/30
#   "split_folders"  the same on each of images/{train,test,validation} (FruitVegetable, KaggleVegetable)
#   "pets"           annotations/{trainval,test}.txt, then OxfordPets.split_trainval (80/20 per class)
#   "sun397"         ClassName.txt + Training_01.txt / Testing_01.txt, then split_trainval
#   "ucf101"         ucfTrainTestlist/{classInd,trainlist01,testlist01}.txt, then split_trainval
#   "flowers"        imagelabels.mat + cat_to_name.json, 50/20/30 per label
#   "cars"           devkit/cars_train_annos.mat, cars_test_annos_withlabels.mat, devkit/cars_meta.mat
#   "aircraft"       no split file: images_variant_{train,val,test}.txt every run
#   "fashion20"      images/<task>/<class>/ + task_info.csv, shuffled per task, 50/20/30
SPLIT_GENERATORS = ("folders", "split_folders", "pets", "sun397", "ucf101", "flowers", "cars", "aircraft",
                    "fashion20")


@dataclass(frozen=True)
class Source:
    cls: str                        # the original class name, e.g. "DescribableTextures"
    folder: str                     # dataset_dir under the root
    image_dir: str                  # relative to the folder; "" = the folder (split paths' base)
    metric: str                     # "overall_acc" | "mean_acc"
    generator: str                  # one of SPLIT_GENERATORS
    split_name: Optional[str] = None   # split_dk_<split_name>.json; None: no split file (aircraft)
    coop: Optional[str] = None      # the CoOp dataset of the same tree (fastprompt.data.registry)
    ignored: Tuple[str, ...] = ()   # class folders the generator skips
    rename: Tuple[Tuple[str, str], ...] = ()
    rename_when: str = "read"       # "read": applied to the meta's names; "save": already in the meta
    needs: Tuple[str, ...] = ()     # what the generator reads, relative to the folder

    @property
    def split_file(self) -> Optional[str]:
        return f"split_dk_{self.split_name}.json" if self.split_name else None

    @property
    def renames(self) -> Dict[str, str]:
        return dict(self.rename)


# datasets/caltech101.py NEW_CNAMES
_CALTECH = (("airplanes", "airplane"), ("Faces", "face"), ("Leopards", "leopard"), ("Motorbikes", "motorbike"))
# datasets/eurosat.py NEW_CNAMES
_EUROSAT = (("AnnualCrop", "Annual Crop Land"), ("Forest", "Forest"),
            ("HerbaceousVegetation", "Herbaceous Vegetation Land"), ("Highway", "Highway or Road"),
            ("Industrial", "Industrial Buildings"), ("Pasture", "Pasture Land"),
            ("PermanentCrop", "Permanent Crop Land"), ("Residential", "Residential Buildings"),
            ("River", "River"), ("SeaLake", "Sea or Lake"))
# datasets/plant_village.py NEW_CNAMES
_PLANT_VILLAGE = (
    ("Apple___Apple_scab", "apple leaf with scab disease"),
    ("Grape___Esca_(Black_Measles)", "grape leaf with black measles"),
    ("Squash___Powdery_mildew", "squash with powdery mildew"),
    ("Apple___Black_rot", "apple leaf with black rot"),
    ("Grape___healthy", "healthy grape leaf"),
    ("Strawberry___healthy", "healthy strawberry leaf"),
    ("Apple___Cedar_apple_rust", "apple leaf with cedar apple rust"),
    ("Grape___Leaf_blight_(Isariopsis_Leaf_Spot)", "grape leaf with leaf blight"),
    ("Strawberry___Leaf_scorch", "strawberry leaf with scorch disease"),
    ("Apple___healthy", "healthy apple leaf"),
    ("Orange___Haunglongbing_(Citrus_greening)", "orange leaf with citrus greening disease"),
    ("Tomato___Bacterial_spot", "tomato leaf with bacterial spot"),
    ("Background_without_leaves", "background without leaves"),
    ("Peach___Bacterial_spot", "peach leaf with bacterial spot"),
    ("Tomato___Early_blight", "tomato leaf with early blight"),
    ("Blueberry___healthy", "healthy blueberry leaf"),
    ("Peach___healthy", "healthy peach leaf"),
    ("Tomato___healthy", "healthy tomato leaf"),
    ("Cherry___healthy", "healthy cherry leaf"),
    ("Pepper,_bell___Bacterial_spot", "pepper with bacterial spot"),
    ("Tomato___Late_blight", "tomato leaf with late blight"),
    ("Cherry___Powdery_mildew", "cherry leaf with powdery mildew"),
    ("Pepper,_bell___healthy", "healthy pepper leaf"),
    ("Tomato___Leaf_Mold", "tomato leaf with mold"),
    ("Corn___Cercospora_leaf_spot Gray_leaf_spot", "corn leaf with cercospora leaf spot or gray leaf spot"),
    ("Potato___Early_blight", "potato leaf with early blight"),
    ("Tomato___Septoria_leaf_spot", "tomato leaf with septoria leaf spot"),
    ("Corn___Common_rust", "corn leaf with common rust"),
    ("Potato___healthy", "healthy potato leaf"),
    ("Tomato___Spider_mites Two-spotted_spider_mite", "tomato leaf with spider mites or two-spotted spider mite"),
    ("Corn___healthy", "healthy corn leaf"),
    ("Potato___Late_blight", "potato leaf with late blight"),
    ("Tomato___Target_Spot", "tomato leaf with target spot"),
    ("Corn___Northern_Leaf_Blight", "corn leaf with northern leaf blight"),
    ("Raspberry___healthy", "healthy raspberry leaf"),
    ("Tomato___Tomato_mosaic_virus", "tomato leaf with tomato mosaic virus"),
    ("Grape___Black_rot", "grape leaf with black rot"),
    ("Soybean___healthy", "healthy soybean leaf"),
    ("Tomato___Tomato_Yellow_Leaf_Curl_Virus", "tomato leaf with tomato yellow leaf curl virus"),
)

_SPLITS3 = ("train/", "test/", "validation/")

SOURCES: Dict[str, Source] = {s.cls: s for s in [
    Source("Caltech101", "caltech-101", "101_ObjectCategories", "mean_acc", "folders", "Caltech101", "caltech-101",
           ignored=("BACKGROUND_Google", "Faces_easy"), rename=_CALTECH),
    Source("DescribableTextures", "dtd", "images", "overall_acc", "folders", "DescribableTextures", "dtd"),
    Source("EuroSAT", "eurosat", "2750", "overall_acc", "folders", "EuroSAT", "eurosat", rename=_EUROSAT),
    Source("FGVCAircraft", "fgvc_aircraft", "images", "mean_acc", "aircraft", None, "fgvc_aircraft",
           needs=("variants.txt", "images_variant_train.txt", "images_variant_val.txt",
                  "images_variant_test.txt")),
    Source("Food101", "food-101", "images", "overall_acc", "folders", "Food101", "food-101"),
    Source("OxfordFlowers", "oxford_flowers", "jpg", "mean_acc", "flowers", "OxfordFlowers", "oxford_flowers",
           needs=("imagelabels.mat", "cat_to_name.json")),
    Source("OxfordPets", "oxford_pets", "images", "mean_acc", "pets", "OxfordPets", "oxford_pets",
           needs=("annotations/trainval.txt", "annotations/test.txt")),
    Source("StanfordCars", "stanford_cars", "", "overall_acc", "cars", "StanfordCars", "stanford_cars",
           needs=("devkit/cars_train_annos.mat", "cars_test_annos_withlabels.mat", "devkit/cars_meta.mat")),
    Source("SUN397", "sun397", "SUN397", "overall_acc", "sun397", "SUN397", "sun397",
           needs=("ClassName.txt", "Training_01.txt", "Testing_01.txt")),
    Source("UCF101", "ucf101", "UCF-101-midframes", "overall_acc", "ucf101", "UCF101", "ucf101",
           needs=("ucfTrainTestlist/classInd.txt", "ucfTrainTestlist/trainlist01.txt",
                  "ucfTrainTestlist/testlist01.txt")),
    Source("FruitVegetable", "fruit_vegetable", "images", "overall_acc", "split_folders", "FruitVegetable",
           needs=tuple("images/" + s for s in _SPLITS3)),
    Source("KaggleFlower", "kaggle_flower_recognition", "flowers", "overall_acc", "folders", "kaggle_flower"),
    Source("KaggleMushroom", "kaggle_mushroom", "Mushrooms", "overall_acc", "folders", "KaggleMushroom"),
    Source("KaggleVegetable", "kaggle_vegetable", "images", "overall_acc", "split_folders", "KaggleVegetable",
           needs=tuple("images/" + s for s in _SPLITS3)),
    Source("PlantSeedlingV1", "PlantSeedlingV1", "Nonsegmented", "overall_acc", "folders", "PlantSeedlingV1"),
    Source("PlantVillage", "PlantVillage", "Plant_leave_diseases_dataset_without_augmentation", "overall_acc",
           "folders", "PlantVillage", rename=_PLANT_VILLAGE, rename_when="save"),
    # one source holding 20 tasks: task_info.csv names them (datasets/fashion20.py)
    Source("Fashion20", "fashion20", "images", "mean_acc", "fashion20", "Fashion20", needs=("task_info.csv",)),
]}


@dataclass(frozen=True)
class MultiTaskSpec:
    name: str                       # fastprompt's name, e.g. "general10"
    cls: str                        # the original class, e.g. "General10"
    folder: str                     # its own folder under the root (split_fewshot_mt/ lives there)
    sources: Tuple[str, ...]        # source class names, task order
    subsample_classes: bool = True  # Fashion20 asserts SUBSAMPLE_CLASSES == "all"
    task_subsets: Tuple[str, ...] = ("all", "base", "new", "taskN")
    aliases: Tuple[str, ...] = field(default=())


MULTITASK: Dict[str, MultiTaskSpec] = {m.name: m for m in [
    MultiTaskSpec("general10", "General10", "general10",
                  ("Caltech101", "DescribableTextures", "EuroSAT", "FGVCAircraft", "Food101", "OxfordFlowers",
                   "OxfordPets", "StanfordCars", "SUN397", "UCF101"), aliases=("general-10",)),
    MultiTaskSpec("plant6", "Plant6", "plant6",
                  ("FruitVegetable", "KaggleFlower", "KaggleMushroom", "KaggleVegetable", "PlantSeedlingV1",
                   "PlantVillage"), aliases=("plant-6",)),
    MultiTaskSpec("fashion20", "Fashion20", "fashion20", ("Fashion20",), subsample_classes=False,
                  task_subsets=("all", "taskN"), aliases=("fashion-20",)),
]}


def _key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


_BY_KEY = {_key(n): m for m in MULTITASK.values() for n in (m.name, m.cls) + m.aliases}


def is_multitask(name) -> bool:
    """``name`` is one of SoftCPT's multi-task sets (case, ``-`` and ``_`` ignored)."""
    return isinstance(name, str) and _key(name) in _BY_KEY


def resolve_multitask(name: str) -> MultiTaskSpec:
    spec = _BY_KEY.get(_key(name)) if isinstance(name, str) else None
    if spec is None:
        raise DataError(f"unknown multi-task dataset {name!r}; known: {', '.join(MULTITASK)}")
    return spec
