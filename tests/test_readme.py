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

