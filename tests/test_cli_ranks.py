"""Under torchrun every rank runs the command, and rank 0 alone prints its summary: ``fastprompt
train``'s accuracy line, ``pretrain``'s transfer and "pretraining done" lines, ``run``'s counts and
results table; ``eval`` scores each rank's share of the test set, and rank 0 alone writes the JSON
and prints it (JSON and "written to" once), with one process's metrics.

The rank is torchrun's ``RANK``: a run shuts its process group down before the summary, so the
group would call every rank rank 0.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from fastprompt import cli
from fastprompt.folder_lock import FolderLock

TINY = ["--model", "tiny", "--pretrained", "none", "--no-progress", "--workers", "0"]
# one short epoch of CoOp on the 4-class dtd tree (tests/train_job.py's settings)
SHORT = ["OPTIM.MAX_EPOCH", "1", "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "TRAINER.COOP.N_CTX", "4",
         "TRAIN.TENSORBOARD", "False"]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}


def _torchrun(*argv, target=("-m", "fastprompt.cli"), ok=True, launcher=()):
    """``torchrun --nproc_per_node 2 [LAUNCHER] -m fastprompt.cli ARGV`` on 2 CPU processes (gloo)."""
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           *launcher, *target, *argv], env=ENV, capture_output=True, text=True, timeout=300)
    assert (proc.returncode == 0) == ok, proc.stdout + proc.stderr
    return proc


def test_train_and_eval_print_their_summary_once_on_two_ranks(dtd_tree, tmp_path):
    run = str(tmp_path / "run")
    proc = _torchrun("train", "--recipe", "coop/vit_b16_ep50", "--data", dtd_tree, "--dataset", "dtd",
                     "--output-dir", run, "--seed", "3", *TINY, *SHORT)
    assert proc.stdout.count("test accuracy ") == 1, proc.stdout
    proc = _torchrun("eval", "--checkpoint", run, "--data", dtd_tree, "--dataset", "dtd")
    assert proc.stdout.count('"accuracy"') == 1, proc.stdout
    assert proc.stderr.count("written to ") == 1, proc.stderr


# ``fastprompt eval`` with two spies, one line each on stdout: how many images this rank scored
# (``predict``) and which file it wrote (``write_json``, the JSON's only writer)
SPY = textwrap.dedent("""
    import os, sys
    import fastprompt.train.evaluate as evaluate, fastprompt.train.state as state
    rank, predict, write_json = os.environ.get("RANK", "0"), evaluate.predict, state.write_json
    def scored(*args, **kwargs):
        preds, labels = predict(*args, **kwargs)
        print(f"rank {rank} scored {len(labels)}", flush=True)
        return preds, labels
    def wrote(path, obj):
        print(f"rank {rank} wrote {os.path.basename(path)}", flush=True)
        write_json(path, obj)
    evaluate.predict, state.write_json = scored, wrote
    from fastprompt.cli import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.fixture(scope="module")
def odd_run(tmp_path_factory):
    """``(data root, run directory)``: a finished 1-epoch CoOp run of the tiny CLIP on a dtd tree of
    9 test images (3 + 2 + 2 + 2), a size 2 ranks do not divide."""
    from fastprompt.testing.fake_trees import make_split_dataset, tiny_jpeg
    from fastprompt.train.run import train_run

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import train_job

    root = tmp_path_factory.mktemp("odd")
    make_split_dataset(str(root / "data"), "dtd", [(6, 2, 3)] + [(6, 2, 2)] * 3, image_bytes=tiny_jpeg(16))
    train_run(train_job.config(str(root / "data"), ["OPTIM.MAX_EPOCH", "1"]), str(root / "run"), progress=False)
    return str(root / "data"), str(root / "run")


def _spy_eval(tmp_path, run, data, ranks):
    """``fastprompt eval`` of ``run`` (batch 1) in one process or under torchrun on 2 ranks:
    ``(stdout, stderr, the JSON it wrote)``; the JSON is removed after reading."""
    spy = tmp_path / "spy_eval.py"
    spy.write_text(SPY)
    argv = ["eval", "--checkpoint", run, "--data", data, "--dataset", "dtd", "--batch-size", "1"]
    if ranks == 1:
        proc = subprocess.run([sys.executable, str(spy), *argv], env=ENV, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    else:
        proc = _torchrun(*argv, target=(str(spy),))
    path = os.path.join(run, "eval_dtd_all.json")
    with open(path, encoding="utf-8") as f:
        written = json.load(f)
    os.unlink(path)
    return proc.stdout, proc.stderr, written


def test_eval_on_two_ranks_scores_a_share_each_and_equals_one_process(odd_run, tmp_path):
    """9 test images: rank 0 scores 5 (items 0, 2, ..., 8), rank 1 scores 4, none twice, none left out;
    rank 0 writes the JSON and prints the summary once, and every metric is one process's. Batch 1 in
    both runs: each image's logits come from the same computation however the split is shared, so
    the comparison is exact (it tests the sharing and gathering, not CPU rounding)."""
    data, run = odd_run
    out, err, one = _spy_eval(tmp_path, run, data, ranks=1)
    assert sorted(line for line in out.splitlines() if line.startswith("rank ")) == [
        "rank 0 scored 9", "rank 0 wrote eval_dtd_all.json"], out
    out, err, two = _spy_eval(tmp_path, run, data, ranks=2)
    assert sorted(line for line in out.splitlines() if line.startswith("rank ")) == [
        "rank 0 scored 5", "rank 0 wrote eval_dtd_all.json", "rank 1 scored 4"], out + err
    assert out.count('"accuracy"') == 1 and err.count("written to ") == 1, out + err
    assert one["total"] == 9 and one["unreadable"] == 0
    assert set(two) == set(one)
    for key in one:
        assert two[key] == one[key], key


def test_an_eval_refused_on_rank_0_stops_every_rank_with_a_line_each(odd_run, tmp_path):
    """The run directory is locked by another job: rank 0, the only rank that takes the lock, is
    refused with status 2, and rank 1 stops too instead of waiting for rank 0's predictions; each
    rank's stderr (torchrun's --log-dir) is its one line. (torchrun ends the ranks still running
    once one has exited, so rank 1's own status may be SIGTERM's.)"""
    data, run = odd_run
    logs = tmp_path / "logs"
    with FolderLock(run, "fastprompt train"):
        proc = _torchrun("eval", "--checkpoint", run, "--data", data, "--dataset", "dtd", ok=False,
                         launcher=("--log-dir", str(logs), "--redirects", "2"))
    said = [[path.read_text() for path in logs.glob(f"*/attempt_*/{rank}/stderr.log")] for rank in (0, 1)]
    assert [len(said[0]), len(said[1])] == [1, 1], said
    (rank0,), (rank1,) = said
    assert rank0.startswith("fastprompt eval: error: ") and rank0.count("\n") == 1, rank0
    assert "is in use by fastprompt train" in rank0, rank0
    assert rank1 == rank0.replace("error: ", "error: stopped because rank 0 failed: ", 1), rank1
    assert "exitcode  : 2" in proc.stderr, proc.stderr
    assert not os.path.exists(os.path.join(run, "eval_dtd_all.json"))


def _pretrain(monkeypatch, tmp_path, rank):
    """``fastprompt pretrain`` as rank ``rank`` of a torchrun launch, its run replaced by a result."""
    import fastprompt.pretrain.run

    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setattr(fastprompt.pretrain.run, "pretrain_run", lambda cfg, out, **kw: {
        "objective": "full", "transfer": {"imagenet": {"accuracy": 12.5}}})
    return cli.main(["pretrain", "--recipe", "pomp/vit_b16_ep5", "--data", str(tmp_path), "--output-dir",
                     str(tmp_path / "run"), *TINY])


def test_pretrain_summary_on_rank_0_only(monkeypatch, tmp_path, capsys):
    assert _pretrain(monkeypatch, tmp_path, 1) == 0
    assert capsys.readouterr().out == ""
    assert _pretrain(monkeypatch, tmp_path, 0) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ["transfer imagenet: accuracy 12.50%",
                   f"pretraining done (full objective); run directory {tmp_path / 'run'}"]


def _run(monkeypatch, tmp_path, rank):
    """``fastprompt run`` as rank ``rank`` of a torchrun launch, its grid replaced by its counts."""
    import fastprompt.protocols.grid

    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setattr(fastprompt.protocols.grid, "run_grid", lambda *a, **kw: {"trained": 1})
    return cli.main(["run", "--protocol", "fewshot", "--method", "coop", "--data", str(tmp_path),
                     "--output-dir", str(tmp_path / "grid"), "--no-plot"])


def test_run_summary_and_tables_on_rank_0_only(monkeypatch, tmp_path, capsys):
    assert _run(monkeypatch, tmp_path, 1) == 0
    assert capsys.readouterr() == ("", "")
    # rank 0 goes on to the table: of no finished run here, which it says (status 1)
    assert _run(monkeypatch, tmp_path, 0) == 1
    err = capsys.readouterr().err
    assert "fastprompt run: 1 trained" in err and "no finished runs" in err


def test_a_grid_job_is_said_and_evaluated_by_rank_0_alone(monkeypatch, tmp_path, capsys):
    """Between the runs of a grid no process group is alive, so every rank used to take itself for
    rank 0: each said "training ..." and evaluated the prompts into the same file."""
    import fastprompt.protocols.grid as grid

    evaluated = []
    monkeypatch.setattr(grid, "train_run", lambda *a, **kw: None)
    monkeypatch.setattr(grid, "evaluate_checkpoint", lambda run_dir, root, dataset, subsample, **kw:
                        evaluated.append((dataset, subsample)))
    job = grid.Job(str(tmp_path / "run"), "dtd", 1, 1, "coop/vit_b16_ep50", (), "base",
                   (("dtd", "base"), ("dtd", "new")))
    for rank, expected in ((1, []), (0, [("dtd", "base"), ("dtd", "new")])):
        monkeypatch.setenv("RANK", str(rank))
        assert grid.run_job(job, {}, str(tmp_path)) == "trained"
        assert evaluated == expected
        assert ("training " in capsys.readouterr().err) == (rank == 0)
