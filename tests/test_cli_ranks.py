"""Under torchrun every rank runs the command, and rank 0 alone prints its summary: ``fastprompt
train``'s accuracy line, ``pretrain``'s transfer and "pretraining done" lines, ``run``'s counts and
results table; ``eval``, one process's work, runs on rank 0 alone (JSON and "written to" once).

The rank is torchrun's ``RANK``: a run shuts its process group down before the summary, so the
group would call every rank rank 0.
"""
import os
import subprocess
import sys

from fastprompt import cli

TINY = ["--model", "tiny", "--pretrained", "none", "--no-progress", "--workers", "0"]
# one short epoch of CoOp on the 4-class dtd tree (tests/train_job.py's settings)
SHORT = ["OPTIM.MAX_EPOCH", "1", "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "TRAINER.COOP.N_CTX", "4",
         "TRAIN.TENSORBOARD", "False"]


def _torchrun(*argv):
    """``torchrun --nproc_per_node 2 -m fastprompt.cli ARGV`` on 2 CPU processes (gloo)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "fastprompt.cli", *argv], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_train_and_eval_print_their_summary_once_on_two_ranks(dtd_tree, tmp_path):
    run = str(tmp_path / "run")
    proc = _torchrun("train", "--recipe", "coop/vit_b16_ep50", "--data", dtd_tree, "--dataset", "dtd",
                     "--output-dir", run, "--seed", "3", *TINY, *SHORT)
    assert proc.stdout.count("test accuracy ") == 1, proc.stdout
    proc = _torchrun("eval", "--checkpoint", run, "--data", dtd_tree, "--dataset", "dtd")
    assert proc.stdout.count('"accuracy"') == 1, proc.stdout
    assert proc.stderr.count("written to ") == 1, proc.stderr


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
