"""Task names and descriptions for SoftCPT's sources when the dataset folder has neither the
original's ``split_dk_<Name>.json`` (whose ``meta`` carries them) nor ``task_name.txt`` /
``task_desc.txt`` (which its first run reads).

The original repository (kding1225/softcpt) ships neither file, and its code holds no default:
the strings below are fastprompt's own, not the paper's wording. A dataset loaded with them says
so (``TaskInfo.names_source == "fastprompt table"``), and a run that must reproduce the
published numbers should put the authors' ``task_name.txt`` / ``task_desc.txt`` (or their
``split_dk`` files) into the dataset folders instead. SoftCPT's meta-network reads the task name
(``trainers/mtcoop.py``: the prompt ``"X X ... X <task name>."``), so the names matter for
training; the descriptions are recorded only. Fashion-20 needs no entry: its ``task_info.csv``
is part of its download.
"""
from __future__ import annotations

from typing import Dict, Tuple

__all__ = ["TASK_TABLE", "TABLE_SOURCE"]

TABLE_SOURCE = "fastprompt table"

# source class -> (task name, task description)
TASK_TABLE: Dict[str, Tuple[str, str]] = {
    "Caltech101": ("object recognition", "recognize the category of the common object in the photo"),
    "DescribableTextures": ("texture recognition", "recognize the kind of texture in the photo"),
    "EuroSAT": ("satellite land use recognition", "recognize the land use or land cover in the satellite photo"),
    "FGVCAircraft": ("aircraft model recognition", "recognize the model variant of the aircraft in the photo"),
    "Food101": ("food recognition", "recognize the kind of food in the photo"),
    "OxfordFlowers": ("flower recognition", "recognize the species of the flower in the photo"),
    "OxfordPets": ("pet breed recognition", "recognize the breed of the cat or dog in the photo"),
    "StanfordCars": ("car model recognition", "recognize the make, model and year of the car in the photo"),
    "SUN397": ("scene recognition", "recognize the kind of scene in the photo"),
    "UCF101": ("action recognition", "recognize the human action in the video frame"),
    "FruitVegetable": ("fruit and vegetable recognition", "recognize the fruit or vegetable in the photo"),
    "KaggleFlower": ("flower recognition", "recognize the kind of flower in the photo"),
    "KaggleMushroom": ("mushroom recognition", "recognize the genus of the mushroom in the photo"),
    "KaggleVegetable": ("vegetable recognition", "recognize the vegetable in the photo"),
    "PlantSeedlingV1": ("plant seedling recognition", "recognize the species of the plant seedling in the photo"),
    "PlantVillage": ("plant disease recognition", "recognize the plant and its disease from the leaf in the photo"),
}
