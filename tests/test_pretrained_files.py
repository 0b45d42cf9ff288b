"""A ``pretrained`` path that is not a checkpoint of the model, and a ``from_pretrained`` path that is
not a prompt checkpoint: each one line naming the path and what is wrong (a ``ValueError`` in
Python; ``fastprompt train``/``eval`` exit 2 with it), never torch's or open_clip's traceback.

The model is a tiny open_clip architecture registered here (open_clip's own config format), so the
whole loading path runs: ``open_clip.create_model(name, pretrained=path)``.
"""
import json
import os

import pytest
import torch

import fastprompt
from fastprompt import cli
from fastprompt.errors import PretrainedFileError

ARCH = "fp-weights-tiny"
TINY = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32,
                                        "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
OTHER = {**TINY, "embed_dim": 48}  # another architecture: two projections of another width


class Pickled:
    """An object a weights-only load refuses."""


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """``ARCH`` registered with open_clip, a good weights file of it, and a folder for bad ones."""
    import open_clip
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("weights")
    for name, config in ((ARCH, TINY), (ARCH + "-other", OTHER)):
        (folder / f"{name}.json").write_text(json.dumps(config))
        open_clip.add_model_config(folder / f"{name}.json")
    torch.manual_seed(0)
    good = open_clip.create_model(ARCH, pretrained=None).state_dict()
    other = open_clip.create_model(ARCH + "-other", pretrained=None).state_dict()
    torch.save(good, folder / "good.pt")
    data = (folder / "good.pt").read_bytes()
    bad = {"text.pt": b"hello, I am not a checkpoint\n", "empty.pt": b"", "truncated.pt": data[:len(data) // 2]}
    for name, content in bad.items():
        (folder / name).write_bytes(content)
    save_file({k: v.contiguous() for k, v in other.items()}, str(folder / "other.safetensors"))
    save_file({k: v.contiguous() for k, v in good.items()}, str(folder / "safetensors-named.pt"))
    torch.save({"state_dict": {"a": Pickled()}}, folder / "pickled.pt")
    torch.save(torch.zeros(3), folder / "tensor.pt")
    (folder / "a-folder").mkdir()
    return folder


# (file, error type, what the message says)
BAD = [
    ("text.pt", PretrainedFileError, r"it is not a torch or safetensors file \(it begins b'hello, I am not '\)"),
    ("empty.pt", PretrainedFileError, r"the file is empty \(0 bytes\)"),
    ("truncated.pt", PretrainedFileError, r"the torch file is damaged or truncated .*failed finding central directory"),
    ("other.safetensors", PretrainedFileError,
     rf"its tensors are not those of '{ARCH}' .* 2 have another shape \(text_projection \[32, 48\] vs \[32, 32\]"),
    ("safetensors-named.pt", PretrainedFileError, r"it is a safetensors file but its name says torch.*rename it to end "
                                                  r"in \.safetensors"),
    ("pickled.pt", PretrainedFileError, r"pickled Python objects, which a weights-only load refuses"),
    ("tensor.pt", PretrainedFileError, r"it holds a Tensor, not a state dict"),
    ("a-folder", PretrainedFileError, r"is a folder, not a weights file"),
    ("missing.pt", FileNotFoundError, r"pretrained checkpoint file not found"),
]


@pytest.mark.parametrize("name, kind, message", BAD, ids=[b[0] for b in BAD])
def test_a_pretrained_path_that_is_no_checkpoint_of_the_model_is_one_clear_error(weights, name, kind, message):
    path = str(weights / name)
    with pytest.raises(kind, match=message) as caught:
        fastprompt.CoOpLearner.from_open_clip(ARCH, path, ["cat", "dog"], n_ctx=2)
    text = str(caught.value)
    assert len(text.splitlines()) == 1 and path in text, text
    if kind is PretrainedFileError:
        assert isinstance(caught.value, ValueError) and "--pretrained none" in text


def test_a_good_weights_file_still_loads_and_a_failure_that_is_not_the_files_keeps_its_traceback(weights,
                                                                                              monkeypatch):
    import open_clip

    learner = fastprompt.CoOpLearner.from_open_clip(ARCH, str(weights / "good.pt"), ["cat", "dog"], n_ctx=2)
    good = torch.load(weights / "good.pt", weights_only=True)
    assert all(torch.equal(v, good[k]) for k, v in learner.clip.state_dict().items())

    def broken(*args, **kwargs):
        raise RuntimeError("a bug inside open_clip")

    monkeypatch.setattr(open_clip, "create_model", broken)
    with pytest.raises(RuntimeError, match="a bug inside open_clip"):  # the file is fine: not explained away
        fastprompt.CoOpLearner.from_open_clip(ARCH, str(weights / "good.pt"), ["cat", "dog"], n_ctx=2)


def _one_error_line(status, err, *needles):
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2 and "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("fastprompt ") and ": error: " in lines[0], err
    assert all(n in lines[0] for n in needles), err


@pytest.mark.parametrize("name", ["text.pt", "truncated.pt", "other.safetensors", "a-folder", "missing.pt"])
def test_train_with_a_bad_pretrained_path_is_one_line_and_exit_status_2(weights, dtd_tree, tmp_path, capsys, name):
    path = str(weights / name)
    out = tmp_path / "run"
    status = cli.main(["train", "--recipe", "coop/vit_b16_ep50", "--data", dtd_tree, "--dataset", "dtd",
                       "--output-dir", str(out), "--model", ARCH, "--pretrained", path, "--no-progress"])
    _one_error_line(status, capsys.readouterr().err, path)
    assert not out.exists() or not os.listdir(out), "nothing is written before the model is built"


def test_eval_of_a_run_whose_weights_file_was_damaged_is_one_line(weights, dtd_tree, tmp_path, capsys):
    """The run records its weights file; eval builds the model from it again."""
    path = tmp_path / "weights.pt"
    path.write_bytes((weights / "good.pt").read_bytes())
    run = tmp_path / "run"
    assert cli.main(["train", "--recipe", "coop/vit_b16_ep50", "--data", dtd_tree, "--dataset", "dtd",
                     "--output-dir", str(run), "--model", ARCH, "--pretrained", str(path), "--no-progress",
                     "OPTIM.MAX_EPOCH", "1", "TRAIN.TENSORBOARD", "False"]) == 0
    capsys.readouterr()
    path.write_bytes((weights / "truncated.pt").read_bytes())
    status = cli.main(["eval", "--checkpoint", str(run), "--data", dtd_tree, "--dataset", "dtd"])
    _one_error_line(status, capsys.readouterr().err, str(path), "damaged or truncated")


@pytest.fixture
def saved(tmp_path):
    learner = fastprompt.CoOpLearner.from_model(fastprompt.testing.tiny_clip(0), ["cat", "dog"], n_ctx=2)
    learner.save_pretrained(str(tmp_path / "prompts"))
    return learner, tmp_path / "prompts"


def _damage(folder, name, content):
    (folder / name).write_bytes(content)
    return str(folder)


# (what is passed to from_pretrained, error type, what the message says)
NOT_CHECKPOINTS = [
    ("the prompt file itself", lambda d: str(d / "prompt.safetensors"), ValueError,
     r"is a file, not a fastprompt checkpoint folder: pass the folder that holds it"),
    ("a text file", lambda d: _damage(d.parent, "notes.txt", b"hi") + "/notes.txt", ValueError,
     r"is a file, not a fastprompt checkpoint folder: pass the folder that save_pretrained wrote"),
    ("a folder without its config", lambda d: str(d.parent), FileNotFoundError,
     r"is not a fastprompt checkpoint: fastprompt_config.json is missing"),
    ("corrupt prompts", lambda d: _damage(d, "prompt.safetensors", b"\x00" * 7), ValueError,
     r"cannot read .*prompt.safetensors \(corrupt or truncated\?\)"),
    ("truncated prompts", lambda d: _damage(d, "prompt.safetensors", (d / "prompt.safetensors").read_bytes()[:-9]),
     ValueError, r"cannot read .*prompt.safetensors \(corrupt or truncated\?\)"),
    ("corrupt config", lambda d: _damage(d, "fastprompt_config.json", b"{not json"), ValueError,
     r"cannot read .*fastprompt_config.json: Expecting property name"),
]


@pytest.mark.parametrize("what, path, kind, message", NOT_CHECKPOINTS, ids=[n[0] for n in NOT_CHECKPOINTS])
def test_from_pretrained_of_something_that_is_no_checkpoint_is_one_line(saved, what, path, kind, message):
    learner, folder = saved
    with pytest.raises(kind, match=message) as caught:
        fastprompt.CoOpLearner.from_pretrained(path(folder), model=learner.clip)
    assert len(str(caught.value).splitlines()) == 1, str(caught.value)
