"""``fastprompt train`` / ``fastprompt eval`` on a generated tree with the tiny random CLIP, and the
bad inputs: each a clear error naming the file or value, nothing overwritten."""
import json
import os

import pytest

from fastprompt.cli import main
from fastprompt.testing.fake_trees import make_split_dataset, tiny_jpeg

FAST = ["OPTIM.MAX_EPOCH", "2", "DATALOADER.TRAIN_X.BATCH_SIZE", "8", "DATALOADER.NUM_WORKERS", "0",
        "TRAIN.TENSORBOARD", "False"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_split_dataset(str(root), "dtd", [(6, 2, 2)] * 4, image_bytes=tiny_jpeg(16))
    return str(root)


def _train(data, out, *extra, recipe="coop/vit_b16_ep50", opts=FAST):
    return main(["train", "--recipe", recipe, "--data", data, "--dataset", "dtd", "--output-dir", str(out),
                 "--model", "tiny", "--pretrained", "none", "--no-progress", *extra, *opts])


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "coop"
    assert _train(data, out, "--seed", "2", opts=FAST + ["TRAINER.COOP.N_CTX", "4"]) == 0
    return out


def _snapshot(folder):
    return {name: os.path.getmtime(os.path.join(folder, name)) for name in os.listdir(folder)}


def test_train_then_eval(run, data, capsys):
    assert json.loads((run / "eval.json").read_text())["total"] == 8
    assert "N_CTX: 4" in (run / "config.yaml").read_text()
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--data", data, "--dataset", "dtd", "--subsample", "new"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["subsample"], result["total"]) == ("new", 4) and 0 <= result["macro_f1"] <= 100
    assert (run / "eval_dtd_new.json").is_file()


def test_a_failed_eval_of_a_run_is_written_to_its_log(run, data, capsys):
    """The CLI's contract: an expected failure is one line on stderr and in the run's log.txt."""
    before = (run / "log.txt").read_text()
    assert main(["eval", "--checkpoint", str(run), "--data", data, "--dataset", "eurosat"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fastprompt eval: error: ") and "\n" not in err
    added = (run / "log.txt").read_text()[len(before):]
    assert added.count("\n") == 1 and added.rstrip().endswith(err)


def test_existing_run_is_never_reused_silently(run, data, capsys):
    before = _snapshot(run)
    assert _train(data, run) == 2
    err = capsys.readouterr().err
    assert f"{run} already holds a finished run" in err and "--resume" in err and "--overwrite" in err
    assert _snapshot(run) == before
    # --resume of a finished run: nothing to do, its result is reported
    assert _train(data, run, "--resume", "--seed", "2", opts=FAST + ["TRAINER.COOP.N_CTX", "4"]) == 0
    assert _snapshot(run) == before


def test_resume_with_another_method_or_backbone_is_refused(run, data, capsys):
    before = _snapshot(run)
    assert _train(data, run, "--resume", recipe="maple/vit_b16_c2_ep5_batch4_2ctx") == 2
    assert "METHOD: run 'coop', now 'maple'" in capsys.readouterr().err
    assert main(["train", "--recipe", "coop/vit_b16_ep50", "--data", data, "--dataset", "dtd", "--output-dir",
                 str(run), "--model", "ViT-B-32", "--pretrained", "none", "--resume", "--seed", "2", *FAST,
                 "TRAINER.COOP.N_CTX", "4"]) == 2
    assert "MODEL.BACKBONE.NAME: run 'tiny', now 'ViT-B-32'" in capsys.readouterr().err
    assert _snapshot(run) == before


def test_eval_of_a_checkpoint_from_another_method(run, data, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    for name in ("config.yaml", "prompt.safetensors", "fastprompt_config.json"):
        (other / name).write_bytes((run / name).read_bytes())
    cfg = (other / "config.yaml").read_text().replace("METHOD: coop", "METHOD: kgcoop")
    (other / "config.yaml").write_text(cfg)
    assert main(["eval", "--checkpoint", str(other), "--data", data, "--dataset", "dtd"]) == 2
    assert "holds 'coop' prompts but config.yaml is a 'kgcoop' run" in capsys.readouterr().err


def test_missing_data_root(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(str(tmp_path / "nowhere"), out) == 2
    err = capsys.readouterr().err
    assert "DescribableTextures not found: no folder" in err and str(tmp_path / "nowhere") in err
    assert not out.exists() or not os.listdir(out)


def test_unwritable_output_dir(data, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert _train(data, blocker / "run") == 2
    assert f"cannot write to the output directory {blocker / 'run'}" in capsys.readouterr().err
    assert blocker.read_text() == "x"


def test_unknown_recipe_lists_recipes(data, tmp_path, capsys):
    assert _train(data, tmp_path / "r", recipe="coop/vit_b16_ep5000") == 2
    err = capsys.readouterr().err
    assert "no recipe named 'coop/vit_b16_ep5000'" in err and "coop/vit_b16_ep50" in err
    assert not (tmp_path / "r").exists()


def test_list_recipes(capsys):
    assert main(["train", "--list-recipes"]) == 0
    assert "promptsrc/vit_b16_c2_ep20_batch4_4+4ctx" in capsys.readouterr().out.split()


def test_deep_vision_on_resnet_is_refused(data, tmp_path, capsys):
    assert main(["train", "--recipe", "maple/vit_b16_c2_ep5_batch4_2ctx", "--data", data, "--dataset", "dtd",
                 "--output-dir", str(tmp_path / "r"), "--model", "RN50", "--pretrained", "none"]) == 2
    assert "maple prompts the layers of open_clip's vision transformer: it needs such a ViT backbone" in capsys.readouterr().err


def test_options_after_the_overrides_are_options(data, tmp_path):
    """``--output-dir`` written after ``KEY VALUE`` pairs was swallowed as an override pair, and
    the command said ``--output-dir DIR is required``."""
    from fastprompt.cli import build_parser
    from fastprompt.cli_args import options_among_overrides

    out = tmp_path / "late"
    assert main(["train", "--recipe", "coop/vit_b16_ep50", "--data", data, "--dataset", "dtd", "--model", "tiny",
                 *FAST[:2], "--pretrained", "none", "TRAINER.COOP.N_CTX", "4", "--output-dir", str(out),
                 "--seed=5", *FAST[2:], "--no-progress"]) == 0
    config = (out / "config.yaml").read_text()
    assert "SEED: 5" in config and "N_CTX: 4" in config and "MAX_EPOCH: 2" in config
    args = build_parser().parse_args(["train", "--recipe", "r", "OPTIM.LR", "--output-dir", "TRAIN.X", "-1"])
    options_among_overrides(args, args.command_parser)  # a value is never taken for an option
    assert args.opts == ["OPTIM.LR", "--output-dir", "TRAIN.X", "-1"] and args.output_dir is None


def test_weights_that_cannot_be_fetched_are_one_line_naming_the_cli_way_out(data, tmp_path, monkeypatch, capsys):
    """``PretrainedNotAvailableError`` escaped ``train`` as a traceback (rc 1), and its text told a
    command-line user to pass ``pretrained=None``."""
    from fastprompt.learners import pretrained as loading

    monkeypatch.setattr(loading.WeightsSource, "cached_file", lambda self: None)
    monkeypatch.setattr(loading, "hub_offline", lambda: True)
    assert main(["train", "--recipe", "coop/vit_b16_ep50", "--data", data, "--dataset", "dtd", "--output-dir",
                 str(tmp_path / "run"), "--model", "ViT-B-32", "--pretrained", "openai", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fastprompt train: error: pretrained weights 'ViT-B-32'/'openai'")
    assert "--pretrained none" in err[0]
    assert not (tmp_path / "run").exists() or not os.listdir(tmp_path / "run"), "the failed start left files"


@pytest.mark.parametrize("device, message", [
    ("tpu:7", "'tpu:7' is not a torch device"),
    ("cuda", "no CUDA device is available here"),
])
def test_a_device_this_machine_lacks_is_one_line(data, tmp_path, capsys, device, message):
    if device == "cuda" and __import__("torch").cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    assert _train(data, tmp_path / "run", "--device", device) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith("fastprompt train: error: TRAIN.DEVICE"), err


def test_an_empty_image_batch_is_a_clear_error(tiny_model):
    import torch

    import fastprompt

    for cls in (fastprompt.CoOpLearner, fastprompt.CoCoOpLearner):
        with pytest.raises(ValueError, match=r"with B >= 1, got an empty batch \(0, 3, 32, 32\)"):
            cls.from_model(tiny_model, ["cat", "dog"])(torch.zeros(0, 3, 32, 32))


def test_ctrl_c_says_how_to_resume_and_the_resume_cleans_up(data, tmp_path, monkeypatch, capsys):
    """Ctrl-C left no line in log.txt and did not say how to go on; the ``.tmp-*`` files a kill
    leaves mid-write were never removed."""
    import fastprompt

    out = tmp_path / "run"
    calls, loss = [0], fastprompt.CoOpLearner.loss

    def interrupted_at_the_third_batch(self, images, labels):
        calls[0] += 1
        if calls[0] == 3:
            raise KeyboardInterrupt
        return loss(self, images, labels)

    monkeypatch.setattr(fastprompt.CoOpLearner, "loss", interrupted_at_the_third_batch)
    assert _train(data, out, opts=FAST + ["TRAIN.CHECKPOINT_STEPS", "1"]) == 130
    err = capsys.readouterr().err
    assert f"{out} keeps its last checkpoint: rerun the same command with --resume" in err
    assert "interrupted; the last checkpoint" in (out / "log.txt").read_text()
    (out / ".tmp-k9x2-state.pt").write_bytes(b"half a file")
    assert _train(data, out, "--resume", opts=FAST + ["TRAIN.CHECKPOINT_STEPS", "1"]) == 0
    assert not [name for name in os.listdir(out) if name.startswith(".tmp-")]


def test_the_records_say_what_they_hold(run):
    """A step's ``loss`` was the epoch's running mean without saying so, and per-class accuracy was
    keyed by label index."""
    from fastprompt.train.records import read_metrics

    steps = [r for r in read_metrics(str(run / "metrics.jsonl")) if r["kind"] == "step"]
    assert all({"loss", "epoch_mean_loss"} <= set(r) for r in steps)
    first_of_epoch = [r for r in steps if r["batch"] == 1]
    assert all(r["loss"] == r["epoch_mean_loss"] for r in first_of_epoch)  # one batch: the two agree
    assert any(r["loss"] != r["epoch_mean_loss"] for r in steps)
    result = json.loads((run / "eval.json").read_text())
    assert set(result["per_class_accuracy"]) <= {"class 0", "class 1", "class 2", "class 3"}
    assert result["unreadable"] == 0


def test_rpp_on_a_resnet_names_the_text_only_way(data, tmp_path, capsys):
    """RPP prompts the vision layers by default, but with ``BRANCHES text`` any image tower serves:
    the refusal used to say only "use a ViT"."""
    from fastprompt.train.build import check_backbone
    from fastprompt.train.config import load_recipe, resolve_config

    assert main(["train", "--recipe", "rpp/vit_b16_ep5", "--data", data, "--dataset", "dtd",
                 "--output-dir", str(tmp_path / "r"), "--model", "RN50", "--pretrained", "none"]) == 2
    assert "or prompt only the text (TRAINER.RPP.BRANCHES text)" in capsys.readouterr().err
    cfg = resolve_config([("rpp/vit_b16_ep5", load_recipe("rpp/vit_b16_ep5"))],
                         arguments={"MODEL.BACKBONE.NAME": "RN50", "MODEL.BACKBONE.TAG": "none"},
                         overrides=["TRAINER.RPP.BRANCHES", "text"])
    assert check_backbone(cfg) == ("RN50", "none")
