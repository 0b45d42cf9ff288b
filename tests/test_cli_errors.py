"""The command line's error contract, driven through bad values, files and flags: every expected
failure is one line on stderr (``fastprompt <command>: error: ...`` or argparse's one-line usage
error), exit status 2, no traceback, and nothing left in the output directory.

A bug keeps its traceback: an exception other than the expected ones escapes ``cli.main`` and
fails the case.
"""
import os

import pytest

from fastprompt import cli

TINY = ["--model", "tiny", "--pretrained", "none", "--no-progress"]


def _train(data, out, *args):
    return ["train", "--recipe", "coop/vit_b16_ep50", "--data", data, "--dataset", "dtd", "--output-dir", out,
            *TINY, *args]


# (name, argv(data, out, tmp)) -- every one an expected failure
CASES = [
    ("unknown recipe", lambda d, o, t: ["train", "--recipe", "coop/vit_b16_ep5O", "--data", d, "--dataset", "dtd",
                                        "--output-dir", o, *TINY]),
    ("missing config file", lambda d, o, t: ["train", "--config", os.path.join(t, "nope.yaml"), "--data", d,
                                             "--dataset", "dtd", "--output-dir", o, *TINY]),
    ("config file that is not YAML", lambda d, o, t: ["train", "--config", _write(t, "bad.yaml", "a: [1, 2\n"),
                                                      "--data", d, "--dataset", "dtd", "--output-dir", o, *TINY]),
    ("config file with a python tag", lambda d, o, t: ["train", "--config",
                                                       _write(t, "tag.yaml", "OPTIM: !!python/object:os.system {}\n"),
                                                       "--data", d, "--dataset", "dtd", "--output-dir", o, *TINY]),
    ("missing data root", lambda d, o, t: _train(os.path.join(t, "nodata"), o)),
    ("unknown dataset", lambda d, o, t: _train(d, o)[:5] + ["dtdd"] + _train(d, o)[6:]),
    ("unknown config key", lambda d, o, t: _train(d, o, "OPTIM.LRR", "0.1")),
    ("value of the wrong type", lambda d, o, t: _train(d, o, "OPTIM.MAX_EPOCH", "many")),
    ("a key without its value", lambda d, o, t: _train(d, o, "OPTIM.LR")),
    ("zero epochs", lambda d, o, t: _train(d, o, "OPTIM.MAX_EPOCH", "0")),
    ("negative batch size", lambda d, o, t: _train(d, o, "DATALOADER.TRAIN_X.BATCH_SIZE", "-4")),
    ("negative learning rate", lambda d, o, t: _train(d, o, "OPTIM.LR", "-0.1")),
    ("checkpoint steps -1", lambda d, o, t: _train(d, o, "TRAIN.CHECKPOINT_STEPS", "-1")),
    ("unreadable fraction above 1", lambda d, o, t: _train(d, o, "DATASET.MAX_UNREADABLE", "2.0")),
    ("unknown method setting value", lambda d, o, t: _train(d, o, "TRAINER.COOP.CLASS_TOKEN_POSITION", "nowhere")),
    ("a device this machine lacks", lambda d, o, t: _train(d, o, "--device", "tpu:7")),
    ("unknown backbone", lambda d, o, t: _train(d, o)[:-len(TINY)] + ["--model", "ViT-Q-99", "--pretrained", "none"]),
    ("negative seed", lambda d, o, t: _train(d, o, "--seed", "-1")),
    ("unknown precision", lambda d, o, t: _train(d, o, "--precision", "fp8")),
    ("resume of nothing", lambda d, o, t: _train(d, o, "--resume")),
    ("resume and overwrite", lambda d, o, t: _train(d, o, "--resume", "--overwrite")),
    ("eval of a missing run", lambda d, o, t: ["eval", "--checkpoint", os.path.join(t, "norun"), "--data", d,
                                               "--dataset", "dtd"]),
    ("eval of a folder that is no run", lambda d, o, t: ["eval", "--checkpoint", t, "--data", d, "--dataset", "dtd"]),
    ("data check of a missing root", lambda d, o, t: ["data", "check", os.path.join(t, "nodata")]),
    ("fewshot of an unknown dataset", lambda d, o, t: ["data", "fewshot", "dtdd", d, "--shots", "1", "--seed", "1"]),
    ("pack of a missing tree", lambda d, o, t: ["data", "pack", os.path.join(t, "no21k"), o, "--no-progress"]),
    ("pretrain without data", lambda d, o, t: ["pretrain", "--recipe", "pomp/vit_b16_ep5", "--output-dir", o, *TINY]),
    ("pretrain of a method that does not pretrain",
     lambda d, o, t: ["pretrain", "--recipe", "coop/vit_b16_ep50", "--data", d, "--output-dir", o, *TINY]),
    ("run of an unknown method", lambda d, o, t: ["run", "--protocol", "fewshot", "--method", "coopp", "--data", d,
                                                  "--output-dir", o]),
    ("run without the data root", lambda d, o, t: ["run", "--protocol", "fewshot", "--method", "coop", "--data",
                                                   os.path.join(t, "nodata"), "--output-dir", o]),
    ("results of a missing folder", lambda d, o, t: ["results", os.path.join(t, "nogrid")]),
]


def _write(folder, name, text):
    path = os.path.join(folder, name)
    with open(path, "w") as f:
        f.write(text)
    return path


@pytest.mark.parametrize("name, argv", CASES, ids=[c[0] for c in CASES])
def test_an_expected_failure_is_one_line_and_exit_status_2(dtd_tree, tmp_path, capsys, name, argv):
    out = str(tmp_path / "out")
    try:
        status = cli.main(argv(dtd_tree, out, str(tmp_path)))
    except SystemExit as exit_:  # argparse's own usage errors
        status = exit_.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2, f"{name}: exit status {status}\n{err}"
    assert "Traceback" not in err and len(lines) >= 1, err
    assert lines[-1].startswith("fastprompt") and ": error: " in lines[-1], err
    assert not [line for line in lines if not line.startswith("fastprompt")], f"{name}: more than the error\n{err}"
    assert not os.path.isdir(out) or not os.listdir(out), f"{name}: left {os.listdir(out)} in the output directory"
