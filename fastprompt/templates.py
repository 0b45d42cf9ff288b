"""Hand-crafted prompt templates used by the methods' frozen text targets.

* :data:`IMAGENET_TEMPLATES` — the 60 ImageNet templates PromptSRC averages over for its frozen
  text targets (muzairkhattak/PromptSRC @ bb95c77 ``trainers/imagenet_templates.py``; a subset of
  the CLIP prompt-engineering notebook's list, in that file's order).
* :data:`DATASET_TEMPLATES` — one template per dataset (``CUSTOM_TEMPLATES`` in
  htyao89/KgCoOp @ c43ccc3 ``KgCoOp/trainers/kgcoop.py``, the same table as CoOp's zero-shot
  ``trainers/zsclip.py``), used by KgCoOp's hand-crafted class embeddings.
* :data:`TCP_TEMPLATES` / :data:`TCP_TEACHER_TEMPLATES` — TCP's learnable prompts and frozen
  class-embedding prompts per dataset (``CUSTOM_TEMPLATES`` / ``CUSTOM_TEMPLATES_ori`` in
  htyao89/Textual-based_Class-aware_prompt_tuning @ bd97bec ``trainers/tcp.py``). In a learnable
  prompt the first four tokens after ``[SOT]`` ("X X X X", or "a photo of a") are replaced by the
  context, whatever they are.
* :data:`PROGRAD_TEMPLATES` — ProGrad's own ``CUSTOM_TEMPLATES`` (BeierZhu/Prompt-align @ 1b76203
  ``ProGrad.public/trainers/prograd.py``; "a type of pet, a photo of a {}." where KgCoOp has
  "a photo of a {}, a type of pet."), its zero-shot targets and its initial context.

Templates are format strings with one ``{}`` for the class name (``_`` already replaced by
spaces).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

__all__ = ["IMAGENET_TEMPLATES", "DATASET_TEMPLATES", "PROGRAD_TEMPLATES", "TCP_TEMPLATES",
           "TCP_TEACHER_TEMPLATES", "NAMED_TEMPLATES", "TemplateSpec", "resolve_template", "resolve_templates",
           "check_templates", "class_list_problem"]

TemplateSpec = Union[str, Sequence[Union[str, Callable[[str], str]]]]
NAMED_TEMPLATES = ("simple", "openai", "single")  # the zero-shot ensembles :func:`resolve_templates` names

IMAGENET_TEMPLATES: Tuple[str, ...] = (
    'a photo of a {}.',
    'a bad photo of a {}.',
    'a photo of many {}.',
    'a sculpture of a {}.',
    'a photo of the hard to see {}.',
    'a low resolution photo of the {}.',
    'a rendering of a {}.',
    'graffiti of a {}.',
    'a bad photo of the {}.',
    'a cropped photo of the {}.',
    'a tattoo of a {}.',
    'the embroidered {}.',
    'a photo of a hard to see {}.',
    'a bright photo of a {}.',
    'a photo of a clean {}.',
    'a photo of a dirty {}.',
    'a dark photo of the {}.',
    'a drawing of a {}.',
    'a photo of my {}.',
    'the plastic {}.',
    'a photo of the cool {}.',
    'a close-up photo of a {}.',
    'a black and white photo of the {}.',
    'a painting of the {}.',
    'a painting of a {}.',
    'a pixelated photo of the {}.',
    'a sculpture of the {}.',
    'a bright photo of the {}.',
    'a cropped photo of a {}.',
    'a plastic {}.',
    'a photo of the dirty {}.',
    'a jpeg corrupted photo of a {}.',
    'a blurry photo of the {}.',
    'a photo of the {}.',
    'a good photo of the {}.',
    'a rendering of the {}.',
    'a {} in a video game.',
    'a photo of one {}.',
    'a doodle of a {}.',
    'a close-up photo of the {}.',
    'the origami {}.',
    'the {} in a video game.',
    'a sketch of a {}.',
    'a doodle of the {}.',
    'a origami {}.',
    'a low resolution photo of a {}.',
    'the toy {}.',
    'a rendition of the {}.',
    'a photo of the clean {}.',
    'a photo of a large {}.',
    'a rendition of a {}.',
    'a photo of a nice {}.',
    'a photo of a weird {}.',
    'a blurry photo of a {}.',
    'a cartoon {}.',
    'art of a {}.',
    'a sketch of the {}.',
    'a embroidered {}.',
    'a pixelated photo of a {}.',
    'itap of the {}.',
)

DATASET_TEMPLATES: Dict[str, str] = {
    "OxfordPets": "a photo of a {}, a type of pet.",
    "OxfordFlowers": "a photo of a {}, a type of flower.",
    "FGVCAircraft": "a photo of a {}, a type of aircraft.",
    "DescribableTextures": "a photo of a {}, a type of texture.",
    "EuroSAT": "a centered satellite photo of {}.",
    "StanfordCars": "a photo of a {}.",
    "Food101": "a photo of {}, a type of food.",
    "SUN397": "a photo of a {}.",
    "Caltech101": "a photo of a {}.",
    "UCF101": "a photo of a person doing {}.",
    "ImageNet": "a photo of a {}.",
    "ImageNetSketch": "a photo of a {}.",
    "ImageNetV2": "a photo of a {}.",
    "ImageNetA": "a photo of a {}.",
    "ImageNetR": "a photo of a {}.",
}

TCP_TEMPLATES: Dict[str, str] = {
    "OxfordPets": "X X X X {}, a type of pet.",
    "OxfordFlowers": "X X X X {}, a type of flower.",
    "FGVCAircraft": "X X X X {}, a type of aircraft.",
    "DescribableTextures": "X X X X {} texture.",
    "EuroSAT": "X X X X {}.",
    "StanfordCars": "X X X X {}, a type of car",  # no final "." in the original
    "Food101": "X X X X {}, a type of food.",
    "SUN397": "X X X X {}.",
    "Caltech101": "X X X X {}.",
    # the context replaces "a photo of a": the hand-crafted prompts of these
    **{name: DATASET_TEMPLATES[name] for name in ("UCF101", "ImageNet", "ImageNetSketch", "ImageNetV2", "ImageNetA",
                                                  "ImageNetR")},
}

TCP_TEACHER_TEMPLATES: Dict[str, str] = {
    **DATASET_TEMPLATES,
    "FGVCAircraft": "a photo of an aircraft {}.",
    "Food101": "a photo of a {}, a type of food.",
}

PROGRAD_TEMPLATES: Dict[str, str] = {
    **DATASET_TEMPLATES,  # the other ten entries are the same
    "OxfordPets": "a type of pet, a photo of a {}.",
    "OxfordFlowers": "a type of flower, a photo of a {}.",
    "FGVCAircraft": "a type of aircraft, a photo of a {}.",
    "DescribableTextures": "a texture of {}.",
    "Food101": "a type of food, a photo of {}.",
}


def check_templates(templates: Sequence[str], argument: str = "templates") -> Tuple[str, ...]:
    """Validate a list of templates (each a string with exactly one ``{}``); returns a tuple."""
    if isinstance(templates, str):
        raise ValueError(f"{argument} must be a list of template strings, got a single string")
    templates = tuple(templates)
    if not templates:
        raise ValueError(f"{argument} is empty: give at least one template with a '{{}}' for the class name")
    for i, t in enumerate(templates):
        if not isinstance(t, str) or t.count("{}") != 1:
            raise ValueError(f"{argument}[{i}] must be a string with exactly one '{{}}' for the class name, got {t!r}")
    return templates


def resolve_template(template: str, argument: str = "template", table: Optional[Dict[str, str]] = None) -> str:
    """A template string (one ``{}``) or a dataset name of ``table`` (default :data:`DATASET_TEMPLATES`)
    -> the template."""
    table = DATASET_TEMPLATES if table is None else table
    if isinstance(template, str) and template in table:
        return table[template]
    if not isinstance(template, str) or template.count("{}") != 1:
        raise ValueError(f"{argument} must be a format string with exactly one '{{}}' for the class name or one of "
                         f"the dataset names {sorted(table)}, got {template!r}")
    return template


def resolve_templates(templates: TemplateSpec, argument: str = "templates") -> List[Callable[[str], str]]:
    """Template callables from a name or a list of ``"{}"`` strings / callables.

    Names: ``"simple"`` — the 7-template subset of CLIP's ImageNet ensemble
    (``open_clip.zero_shot_metadata.SIMPLE_IMAGENET_TEMPLATES``); ``"openai"`` — the full 80
    (``OPENAI_IMAGENET_TEMPLATES``); ``"single"`` — ``"a photo of a {}."``.
    """
    if isinstance(templates, str):
        from open_clip import zero_shot_metadata as meta

        if templates == "simple":
            return list(meta.SIMPLE_IMAGENET_TEMPLATES)
        if templates == "openai":
            return list(meta.OPENAI_IMAGENET_TEMPLATES)
        if templates == "single":
            return [lambda c: f"a photo of a {c}."]
        raise ValueError(f"{argument} must be one of {NAMED_TEMPLATES} or a list of templates containing '{{}}', "
                         f"got {templates!r}")
    out = []
    for i, t in enumerate(list(templates)):
        if isinstance(t, str):
            if "{}" not in t:
                raise ValueError(f"{argument}[{i}] must contain '{{}}' where the class name goes, got {t!r}")
            out.append(t.format)
        elif callable(t):
            out.append(t)
        else:
            raise ValueError(f"{argument}[{i}] must be a '{{}}' string or a callable, got {type(t).__name__}")
    if not out:
        raise ValueError(f"{argument} is empty: give at least one template")
    return out


def class_list_problem(names: Sequence[str]) -> Optional[str]:
    """Why ``names`` cannot be a classifier's classes, or ``None``: fewer than two (with one, every
    image is predicted as it: accuracy is always 100%), or two names that CLIP's tokenizer reads as
    one — it lowercases and collapses whitespace, and the prompt learners put ``_`` as a space —
    which would get identical prompts, so identical logits."""
    names = list(names)
    if len(names) < 2:
        return (f"has {len(names)} class(es) {names!r}: a classifier needs at least two (with one, every image is "
                "predicted as it and accuracy is always 100%)")
    first: Dict[str, int] = {}
    same = []
    for j, name in enumerate(names):
        key = " ".join(name.replace("_", " ").lower().split())
        if key in first:
            same.append(f"{names[first[key]]!r} (class {first[key]}) and {name!r} (class {j})")
        first.setdefault(key, j)
    if same:
        return (f"holds names that CLIP's tokenizer reads as one class (lowercased, _ as a space), so their logits "
                f"would be identical: {'; '.join(same[:5])}{'; ...' if len(same) > 5 else ''}; rename or merge them")
    return None
