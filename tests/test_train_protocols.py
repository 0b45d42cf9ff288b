"""``fastprompt run`` / ``fastprompt results`` on a generated CoOp tree with the tiny random CLIP: the
base-to-novel table (HM of the seed-averaged accuracies), skipping finished runs, resuming an
interrupted one, the table read back by ``results``, and the bad inputs."""
import csv
import io
import json
import os
import random

import pytest

from fastprompt.cli import main
from fastprompt.testing.fake_trees import make_split_dataset, tiny_jpeg
from fastprompt.data.registry import resolve
from fastprompt.errors import ConfigError
from fastprompt.protocols.grid import run_grid
from fastprompt.train.startup import run_status
from fastprompt.protocols.tables import harmonic_mean

# 1 epoch; 3 base classes x 6 images in batches of 4 = 5 steps, a resumable state after each
FAST = ["OPTIM.MAX_EPOCH", "1", "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "DATALOADER.NUM_WORKERS", "0",
        "TRAIN.TENSORBOARD", "False", "TRAIN.CHECKPOINT_STEPS", "1", "OPTIM.WARMUP_EPOCH", "-1"]
TINY = ["--model", "tiny", "--pretrained", "none"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("data"))
    make_split_dataset(root, "dtd", [(6, 1, 5)] * 6)
    # one random colour per image, so that a random CLIP's accuracies differ between seeds
    rng = random.Random(0)
    image_dir = os.path.join(root, "dtd", resolve("dtd").image_dir)
    for folder, _, files in os.walk(image_dir):
        for name in files:
            with open(os.path.join(folder, name), "wb") as f:
                f.write(tiny_jpeg(16, tuple(rng.randrange(256) for _ in range(3))))
    return root


def _run(data, out, *extra, seeds=("1", "2"), opts=FAST):
    return main(["run", "--protocol", "base2new", "--method", "coop", "--data", data, "--datasets", "dtd",
                 "--seeds", *seeds, "--output-dir", str(out), *TINY, *extra, *opts])


@pytest.fixture(scope="module")
def grid(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("grid")
    assert _run(data, out) == 0
    return out


def _seed_dir(out, seed):
    return out / "base2new" / "coop" / "dtd" / "shots16" / f"seed{seed}"


def _csv(path):
    return list(csv.DictReader(io.StringIO(path.read_text())))


def test_base2new_table_hm_of_seed_averages(grid):
    base = [json.loads((_seed_dir(grid, s) / "eval.json").read_text())["accuracy"] for s in (1, 2)]
    novel = [json.loads((_seed_dir(grid, s) / "eval_dtd_new.json").read_text())["accuracy"] for s in (1, 2)]
    assert [json.loads((_seed_dir(grid, s) / "eval.json").read_text())["total"] for s in (1, 2)] == [15, 15]
    (row,) = _csv(grid / "results" / "base2new_coop.csv")
    mb, mn = sum(base) / 2, sum(novel) / 2
    assert row["dataset"] == "dtd" and row["base_seeds"] == "1;2"
    assert float(row["base"]) == pytest.approx(mb, abs=0.006)
    assert float(row["base_std"]) == pytest.approx(abs(base[0] - base[1]) / 2, abs=0.006)  # np.std
    assert float(row["novel"]) == pytest.approx(mn, abs=0.006)
    assert float(row["hm"]) == pytest.approx(harmonic_mean(mb, mn), abs=0.006)
    per_seed_hm = sum(harmonic_mean(b, n) for b, n in zip(base, novel)) / 2
    if abs(per_seed_hm - harmonic_mean(mb, mn)) > 0.01:  # the data make them differ: HM of the means it is
        assert float(row["hm"]) != pytest.approx(per_seed_hm, abs=0.006)
    md = (grid / "results" / "base2new_coop.md").read_text()
    assert "| DTD | " in md and "Published: CoCoOp paper (CVPR 2022), Table 1" in md
    assert "covers 11 datasets" in md  # one dataset: the published 11-dataset average is not beside it
    pytest.importorskip("matplotlib")
    assert (grid / "results" / "base2new_coop.png").stat().st_size > 1000


def test_rerun_skips_finished_runs(grid, data, capsys):
    watched = [_seed_dir(grid, s) / f for s in (1, 2) for f in ("state.pt", "eval.json", "eval_dtd_new.json")]
    before = [p.stat().st_mtime_ns for p in watched]
    capsys.readouterr()
    assert _run(data, grid) == 0
    err = capsys.readouterr().err
    assert "2 skipped (finished)" in err and "training" not in err
    assert [p.stat().st_mtime_ns for p in watched] == before


def test_interrupted_run_is_resumed_to_the_same_prompts(grid, data, tmp_path, capsys):
    from safetensors.torch import load_file

    class Stop(Exception):
        pass

    def stop_at_step_2(event, trainer, info):
        if event == "step" and info["step"] == 2:
            raise Stop

    out = tmp_path / "grid"
    with pytest.raises(Stop):
        run_grid("base2new", "coop", data, str(out), datasets=["dtd"], seeds=[1],
                 arguments={"MODEL.BACKBONE.NAME": "tiny", "MODEL.BACKBONE.TAG": "none"}, opts=FAST,
                 callbacks=[stop_at_step_2])
    assert run_status(str(_seed_dir(out, 1))) == "partial"
    capsys.readouterr()
    assert _run(data, out, seeds=("1",)) == 0
    err = capsys.readouterr().err
    assert "resuming" in err and "resumed from" in err and "batch 2, step 2" in err
    a = load_file(str(_seed_dir(out, 1) / "prompt.safetensors"))
    b = load_file(str(_seed_dir(grid, 1) / "prompt.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)  # bit-identical to the uninterrupted run


def test_results_reproduces_the_table(grid, capsys):
    written = {name: (grid / "results" / name).read_text() for name in ("base2new_coop.csv", "base2new_coop.md")}
    for name in written:
        (grid / "results" / name).unlink()
    capsys.readouterr()
    assert main(["results", str(grid), "--no-plot"]) == 0
    out = capsys.readouterr().out
    assert {name: (grid / "results" / name).read_text() for name in written} == written
    assert written["base2new_coop.md"] in out


def test_bad_inputs(grid, data, tmp_path, capsys):
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as exc:
        main(["run", "--protocol", "zeroshot", "--method", "coop", "--data", data])
    assert exc.value.code == 2 and "invalid choice: 'zeroshot'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"unknown protocol 'zeroshot' \(known: base2new, fewshot"):
        run_grid("zeroshot", "coop", data, str(out))
    common = ["--protocol", "base2new", "--output-dir", str(out), *TINY]
    cases = [
        (["--method", "coops", "--data", data], "unknown method 'coops' for fastprompt run (known: coop, cocoop"),
        (["--method", "coop", "--data", data, "--datasets", "dtd", "eurosat"],
         f"1 dataset(s) of the grid are not there; eurosat: missing {os.path.join(data, 'eurosat')}"),
        (["--method", "coop", "--data", data, "--datasets", "textures"], "unknown dataset 'textures'"),
        (["--method", "coop", "--data", str(tmp_path / "nowhere")], "no such folder"),
        (["--method", "coop", "--data", data, "--shots", "4", "16"], "base2new trains with one shot count"),
    ]
    for argv, message in cases:
        assert main(["run", *common, *argv, *FAST]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("fastprompt run: error: ") and message in err, err
    assert not out.exists()  # nothing was created for a grid that could not start
    # a grid directory holding runs of another configuration is never mixed into the table
    before = (_seed_dir(grid, 1) / "state.pt").stat().st_mtime_ns
    assert _run(data, grid, opts=FAST + ["OPTIM.LR", "0.01"]) == 2
    err = capsys.readouterr().err
    assert "OPTIM.LR: run 0.002, now 0.01" in err and "pass another --output-dir" in err
    assert (_seed_dir(grid, 1) / "state.pt").stat().st_mtime_ns == before
    assert main(["results", str(tmp_path / "nowhere")]) == 2
    assert "no such directory" in capsys.readouterr().err
