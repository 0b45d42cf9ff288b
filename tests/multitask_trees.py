"""Generated trees for SoftCPT's multi-task datasets (tests only), and the original's algorithms
re-stated literally (global ``random``, as kding1225/softcpt ``datasets/dtd.py`` and
``datasets/fashion20.py`` run them) to check fastprompt's first-run split against."""
from __future__ import annotations

import json
import os
import pickle
import random
import sys
import types

from fastprompt.data.registry import resolve
from fastprompt.data.softcpt.sources import SOURCES
from fastprompt.testing.fake_trees import make_aircraft, make_split_dataset, tiny_jpeg

JPEG = tiny_jpeg()
GENERAL10_COOP = ["caltech-101", "dtd", "eurosat", "fgvc_aircraft", "food-101", "oxford_flowers", "oxford_pets",
                  "stanford_cars", "sun397", "ucf101"]


def write(path, data=JPEG):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)


def task_files(root, cls, name=None, desc=None):
    d = os.path.join(root, SOURCES[cls].folder)
    write(os.path.join(d, "task_name.txt"), (name or f"{cls} task") + "\n")
    write(os.path.join(d, "task_desc.txt"), (desc or f"classify {cls} images") + "\n")


def class_folders(image_dir, classes, per_class):
    """``image_dir/<class>/img_<i>.jpg``; files created in a shuffled order."""
    for c, name in enumerate(classes):
        n = per_class[c] if isinstance(per_class, (list, tuple)) else per_class
        files = [f"img_{i:03d}.jpg" for i in range(n)]
        random.Random(c).shuffle(files)
        for f in files:
            write(os.path.join(image_dir, name, f))


def coop_general10(root, sizes):
    """CoOp's trees of General-10's sources: split_zhou files (and FGVC's text files)."""
    for name in GENERAL10_COOP:
        if name == "fgvc_aircraft":
            make_aircraft(root, sizes)
        else:
            make_split_dataset(root, name, sizes, classnames=[f"{name} class {c}" for c in range(len(sizes))])


def split_dk_from_coop(root, cls, task_name, desc, drop_zhou=False):
    """Write the original's split_dk file with the rows of the CoOp split there (same items, same order)."""
    source = SOURCES[cls]
    spec = resolve(source.coop)
    d = os.path.join(root, source.folder)
    with open(os.path.join(d, spec.split_file)) as f:
        zhou = json.load(f)
    names = {}
    for rows in zhou.values():
        for _, label, cname in rows:
            names[label] = cname
    split = {k: [[p, [label], [0]] for p, label, _ in zhou[k]] for k in ("train", "val", "test")}
    split["meta"] = {"taskid2cname": [[names[i] for i in range(len(names))]], "taskid2desc": [desc],
                     "taskid2tname": [task_name], "taskid2type": ["sl"], "taskid2metric": [source.metric]}
    write(os.path.join(d, source.split_file), json.dumps(split))
    if drop_zhou:
        os.remove(os.path.join(d, spec.split_file))
    return split


def original_folder_split(image_dir, seed=1, ignored=()):
    """``DTD.read_and_split_data`` after ``set_random_seed(seed)`` (``None``: go on with the
    global stream as it is), literally."""
    if seed is not None:
        random.seed(seed)
    categories = sorted(c for c in os.listdir(image_dir) if not c.startswith(".") and c not in ignored)
    train, val, test = [], [], []
    for label, category in enumerate(categories):
        cdir = os.path.join(image_dir, category)
        images = [os.path.join(cdir, im) for im in os.listdir(cdir) if not im.startswith(".")]
        random.shuffle(images)
        n = len(images)
        n_train, n_val = round(n * 0.5), round(n * 0.2)
        train += [(im, label) for im in images[:n_train]]
        val += [(im, label) for im in images[n_train:n_train + n_val]]
        test += [(im, label) for im in images[n_train + n_val:]]
    return train, val, test, categories


def tree_files(root):
    out = set()
    for folder, _, files in os.walk(root):
        out.update(os.path.join(folder, f) for f in files)
    return out


def install_fake_dassl(monkeypatch):
    """Stand-ins of SoftCPT's bundled ``dassl.data.datasets.base_dataset.DatumMT`` and ``Datum``."""
    mod = types.ModuleType("dassl.data.datasets.base_dataset")

    class DatumMT:
        def __init__(self, impath="", label=(), domain=0, task=(), box=None):
            self._impath, self._label, self._domain, self._task, self._box = impath, label, domain, task, box

    class Datum:
        def __init__(self, impath="", label=0, domain=0, classname=""):
            self._impath, self._label, self._domain, self._classname = impath, label, domain, classname

    for cls in (DatumMT, Datum):
        cls.__module__, cls.__qualname__ = mod.__name__, cls.__name__
        setattr(mod, cls.__name__, cls)
    for name in ("dassl", "dassl.data", "dassl.data.datasets"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    return DatumMT, Datum


def dump(obj, path, protocol=pickle.HIGHEST_PROTOCOL):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def raw_pets_sun_ucf(root, per_class=5):
    """The raw files OxfordPets, SUN397 and UCF101 split on a first run (annotations, partition
    lists), for three classes each; ``per_class`` train+val images and two test images a class."""
    pets = os.path.join(root, "oxford_pets")
    breeds = [("Abyssinian", 1), ("great_pyrenees", 2), ("Bengal", 1)]
    lines = {"trainval.txt": [], "test.txt": []}
    for label, (breed, species) in enumerate(breeds, 1):
        for part, n in (("trainval.txt", per_class), ("test.txt", 2)):
            for i in range(n):
                name = f"{breed}_{i + (100 if part == 'test.txt' else 1)}"
                lines[part].append(f"{name} {label} {species} 1")
                write(os.path.join(pets, "images", name + ".jpg"))
    for part, ls in lines.items():
        write(os.path.join(pets, "annotations", part), "\n".join(ls) + "\n")
    sun = os.path.join(root, "sun397")
    classes = ["/a/abbey", "/a/apartment_building/outdoor", "/b/bedroom"]
    write(os.path.join(sun, "ClassName.txt"), "\n".join(classes) + "\n")
    for part, n in (("Training_01.txt", per_class), ("Testing_01.txt", 2)):
        ls = [f"{c}/sun_{part[:4]}{k}_{i}.jpg" for i in range(n) for k, c in enumerate(classes)]
        for rel in ls:
            write(os.path.join(sun, "SUN397", rel[1:]))
        write(os.path.join(sun, part), "\n".join(ls) + "\n")
    ucf = os.path.join(root, "ucf101")
    actions = ["ApplyEyeMakeup", "BandMarching", "YoYo"]
    write(os.path.join(ucf, "ucfTrainTestlist", "classInd.txt"),
          "".join(f"{i} {a}\n" for i, a in enumerate(actions, 1)))
    for part, n in (("trainlist01.txt", per_class), ("testlist01.txt", 2)):
        ls = []
        for i, a in enumerate(actions, 1):
            for g in range(n):
                ls.append(f"{a}/v_{a}_g{g:02d}_{part[:4]}.avi" + (f" {i}" if part.startswith("train") else ""))
                renamed = "_".join(__import__("re").findall("[A-Z][^A-Z]*", a))
                write(os.path.join(ucf, "UCF-101-midframes", renamed, f"v_{a}_g{g:02d}_{part[:4]}.jpg"))
        write(os.path.join(ucf, "ucfTrainTestlist", part), "\n".join(ls) + "\n")


def original_split_trainval(trainval, seed=1):
    """``OxfordPets.split_trainval`` after ``set_random_seed(seed)``, literally: ``trainval`` is
    ``[(path, label), ...]``."""
    random.seed(seed)
    tracker = {}
    for idx, (_, label) in enumerate(trainval):
        tracker.setdefault(label, []).append(idx)
    train, val = [], []
    for idxs in tracker.values():
        n_val = round(len(idxs) * 0.2)
        random.shuffle(idxs)
        for n, idx in enumerate(idxs):
            (val if n < n_val else train).append(trainval[idx])
    return train, val


def make_fashion20(root, n_tasks=20):
    """Fashion-20's layout: ``images/<task>/<class>/`` and ``task_info.csv`` (two classes a task)."""
    d = os.path.join(root, "fashion20")
    lines = ["id\ttask\tnote\tlabels"]
    for t in range(n_tasks):
        lines.append(f"{t}\tgarment type {t}\tx\tshirt {t}, skirt {t}")
        for c, n in enumerate((4, 5 + t % 2)):
            for i in range(n):
                write(os.path.join(d, "images", str(t), str(c), f"im{t}_{c}_{i}.jpg"))
    write(os.path.join(d, "task_info.csv"), "\n".join(lines) + "\n")


PLANT_VILLAGE = ["Apple___Apple_scab", "Corn___healthy", "Tomato___Leaf_Mold"]


def make_plant6(root, with_task_files=True):
    """Plant-6's six sources as folders of class folders (and three sources' task files)."""
    for cls in ("KaggleFlower", "KaggleMushroom", "PlantSeedlingV1", "PlantVillage"):
        s = SOURCES[cls]
        classes = PLANT_VILLAGE if cls == "PlantVillage" else ["b class", "a class", "c class"]
        class_folders(os.path.join(root, s.folder, s.image_dir), classes, [5, 4, 7])
    for cls in ("FruitVegetable", "KaggleVegetable"):
        s = SOURCES[cls]
        for split in ("train", "test", "validation"):
            class_folders(os.path.join(root, s.folder, s.image_dir, split), ["apple", "kiwi"], [4, 6])
    if with_task_files:
        for cls in ("FruitVegetable", "KaggleFlower", "KaggleMushroom"):
            task_files(root, cls)


# ------------------------------------------------------------------ the .mat sources (need scipy)

def make_flowers_mat(root, labels, names):
    """OxfordFlowers' raw files as the original reads them: ``jpg/image_<i+1:05d>.jpg`` for the
    i-th entry of ``labels`` (1-based class ids, the download's order), ``imagelabels.mat`` with
    a 1 x N ``labels`` array, ``cat_to_name.json`` mapping ``"<id>"`` to a name."""
    import numpy as np
    from scipy.io import savemat

    d = os.path.join(root, "oxford_flowers")
    for i in range(len(labels)):
        write(os.path.join(d, "jpg", f"image_{i + 1:05d}.jpg"))
    os.makedirs(d, exist_ok=True)
    savemat(os.path.join(d, "imagelabels.mat"), {"labels": np.array([labels], dtype=np.uint8)})
    write(os.path.join(d, "cat_to_name.json"), json.dumps({str(k): n for k, n in names.items()}))


def _cars_annotations(labels, first):
    """A 1 x N struct array with the fields of the Stanford Cars devkit's annotation files
    (bounding box, 1-based ``class``, ``fname``)."""
    import numpy as np

    fields = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")
    annos = np.zeros((1, len(labels)), dtype=[(f, "O") for f in fields])
    for i, label in enumerate(labels):
        box = [np.array([[v]], dtype=np.uint16) for v in (1, 2, 30, 40)]
        annos[0, i] = (*box, np.array([[label]], dtype=np.uint8), f"{first + i:05d}.jpg")
    return annos


def make_cars_mat(root, train_labels, test_labels, class_names):
    """StanfordCars' raw files: ``devkit/cars_train_annos.mat``, ``cars_test_annos_withlabels.mat``
    (``annotations``), ``devkit/cars_meta.mat`` (``class_names``, a 1 x K cell of "make model
    year" strings), images under ``cars_train/`` and ``cars_test/`` (1-based labels)."""
    import numpy as np
    from scipy.io import savemat

    d = os.path.join(root, "stanford_cars")
    os.makedirs(os.path.join(d, "devkit"), exist_ok=True)
    for folder, labels, mat in (("cars_train", train_labels, "devkit/cars_train_annos.mat"),
                                ("cars_test", test_labels, "cars_test_annos_withlabels.mat")):
        for i in range(len(labels)):
            write(os.path.join(d, folder, f"{i + 1:05d}.jpg"))
        savemat(os.path.join(d, mat), {"annotations": _cars_annotations(labels, 1)})
    cell = np.empty((1, len(class_names)), dtype=object)
    cell[0, :] = class_names
    savemat(os.path.join(d, "devkit", "cars_meta.mat"), {"class_names": cell})


def original_flowers_read(dataset_dir, seed=1):
    """``OxfordFlowers.read_data`` after ``set_random_seed(seed)``, literally: items are
    ``(impath, [label], [0])``; returns ``train, val, test, [[classnames]]``."""
    from collections import defaultdict
    from scipy.io import loadmat

    random.seed(seed)
    image_dir = os.path.join(dataset_dir, "jpg")
    tracker = defaultdict(list)
    label_file = loadmat(os.path.join(dataset_dir, "imagelabels.mat"))["labels"][0]
    for i, label in enumerate(label_file):
        imname = f"image_{str(i + 1).zfill(5)}.jpg"
        tracker[int(label)].append(os.path.join(image_dir, imname))
    with open(os.path.join(dataset_dir, "cat_to_name.json")) as f:
        lab2cname = json.load(f)
    train, val, test, M = [], [], [], {}
    for label, impaths in tracker.items():
        random.shuffle(impaths)
        n_total = len(impaths)
        n_train, n_val = round(n_total * 0.5), round(n_total * 0.2)
        assert n_train > 0 and n_val > 0 and n_total - n_train - n_val > 0
        train.extend((im, [label - 1], [0]) for im in impaths[:n_train])
        val.extend((im, [label - 1], [0]) for im in impaths[n_train:n_train + n_val])
        test.extend((im, [label - 1], [0]) for im in impaths[n_train + n_val:])
        M[label] = lab2cname[str(label)]
    return train, val, test, [[M[k] for k in sorted(M)]]


def original_cars_read(dataset_dir, seed=1):
    """``StanfordCars.__init__``'s first run after ``set_random_seed(seed)``, literally: both
    ``read_data`` calls, then ``OxfordPets.split_trainval``; items are ``(impath, [label], [0])``."""
    from scipy.io import loadmat

    random.seed(seed)

    def read_data(image_dir, anno_file, meta_file):
        anno_file = loadmat(anno_file)["annotations"][0]
        meta_file = loadmat(meta_file)["class_names"][0]
        items, M = [], {}
        for i in range(len(anno_file)):
            impath = os.path.join(dataset_dir, image_dir, anno_file[i]["fname"][0])
            label = int(anno_file[i]["class"][0, 0]) - 1
            names = meta_file[label][0].split(" ")
            names.insert(0, names.pop(-1))
            items.append((impath, [label], [0]))
            M[label] = " ".join(names)
        return items, [[M[k] for k in sorted(M)]]

    meta = os.path.join(dataset_dir, "devkit", "cars_meta.mat")
    trainval, classnames = read_data("cars_train", os.path.join(dataset_dir, "devkit", "cars_train_annos.mat"), meta)
    test, _ = read_data("cars_test", os.path.join(dataset_dir, "cars_test_annos_withlabels.mat"), meta)
    tracker = {}
    for idx, (_, label, task) in enumerate(trainval):
        for t, lab in zip(task, label):
            tracker.setdefault((t, lab), []).append(idx)
    train, val = [], []
    for idxs in tracker.values():
        n_val = round(len(idxs) * 0.2)
        assert n_val > 0
        random.shuffle(idxs)
        for n, idx in enumerate(idxs):
            (val if n < n_val else train).append(trainval[idx])
    return train, val, test, classnames


def original_save_split(train, val, test, meta, path_prefix):
    """What ``OxfordPets.save_split`` writes (``impath.replace(path_prefix, "")``, a leading ``/``
    dropped), read back as JSON."""
    def extract(items):
        out = []
        for impath, label, task in items:
            impath = impath.replace(path_prefix, "")
            out.append((impath[1:] if impath.startswith("/") else impath, label, task))
        return out
    return json.loads(json.dumps({"train": extract(train), "val": extract(val), "test": extract(test), "meta": meta}))
