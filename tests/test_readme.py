"""README.md's usage example runs as written: data loading, training, evaluation, checkpoints.

The example downloads ViT-B-16 weights, which this machine cannot; here ``from_open_clip`` builds
a seeded tiny CLIP instead (the download path itself is tested in test_pretrained_loading.py),
and ``data_root`` points at a generated image folder. Everything else is the README's code.
"""
import re
from pathlib import Path

from PIL import Image

import fastprompt
from fastprompt.testing import tiny_clip

README = Path(__file__).resolve().parent.parent / "README.md"


def _usage_example() -> str:
    text = README.read_text(encoding="utf-8")
    usage = text[text.index("## Usage"):]
    return re.search(r"```python\n(.*?)```", usage, re.S).group(1)


def _image_tree(root: Path, classes=("cat", "dog", "otter"), per_class=6) -> None:
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (48 + 4 * i, 40), (60 * c, 20 * i, 90)).save(root / name / f"{i}.jpg")


def test_the_usage_example_trains_evaluates_and_reloads(tmp_path, monkeypatch, capsys):
    code = _usage_example()
    assert 'from_open_clip("ViT-B-16", "openai"' in code
    _image_tree(tmp_path / "images")
    code, n = re.subn(r'^data_root = .*$', f'data_root = {str(tmp_path / "images")!r}', code, flags=re.M)
    assert n == 1, "the example must set data_root on one line"

    def tiny_from_open_clip(cls, name, pretrained, classnames, **cfg):
        learner = cls.from_model(tiny_clip(seed=0), classnames, **cfg)
        learner.model_name, learner.pretrained = name, pretrained
        return learner

    monkeypatch.setattr(fastprompt.CoOpLearner, "from_open_clip", classmethod(tiny_from_open_clip))
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, str(README), "exec"), namespace)
    out = capsys.readouterr().out
    assert "trainable params" in out and re.search(r"test accuracy \d+\.\d%", out)
    assert (tmp_path / "prompts" / "coop" / "prompt.safetensors").exists()
    assert namespace["learner"].classnames == ["zebra", "okapi"]
    assert namespace["W"].shape == (3, 48)



# ---- links and paths: README.md and bench/README.md point at things that exist -------------------

REPO = README.parent
DOCS = [README, REPO / "bench" / "README.md"]


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _outside_code(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


def test_relative_links_and_their_anchors_exist():
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", _outside_code(text)):
            if re.match(r"[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (doc.parent / path).resolve() if path else doc
            assert dest.exists(), f"{doc.name}: link to a missing file: {target}"
            if anchor:
                headings = re.findall(r"^#+ (.*)$", _outside_code(dest.read_text(encoding="utf-8")), re.M)
                assert anchor in {_slug(h) for h in headings}, f"{doc.name}: no heading for #{anchor} in {dest.name}"


def test_every_bench_path_named_exists():
    for doc in DOCS:
        for path in set(re.findall(r"\bbench/[\w/]+\.(?:py|sh)\b", doc.read_text(encoding="utf-8"))):
            assert (REPO / path).exists(), f"{doc.name} names {path}, which does not exist"


def test_ci_takes_the_quick_start_test_command():
    lines = README.read_text(encoding="utf-8").splitlines()
    first = next(line for line in lines if re.match(r'^pip install -e "\.\[test\]" && ', line))
    assert first.startswith('pip install -e ".[test]" && python -m pytest -q')
    assert lines.index(first) < lines.index("## How it fits together") < lines.index("## Usage")
