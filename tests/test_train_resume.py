"""Kill -9 and resume: a resumed run ends with the prompts of an uninterrupted one, bit for bit."""
import importlib.util
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from fastprompt.testing.fake_trees import make_split_dataset, tiny_jpeg
from fastprompt.train.records import read_metrics
from fastprompt.train.run import train_run
from fastprompt.train.state import load_state

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_job  # noqa: E402

JOB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_job.py")


def _start(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.Popen([sys.executable, JOB, *map(str, args)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _finish(proc, expect_kill=False):
    out, _ = proc.communicate(timeout=300)
    if expect_kill:
        assert proc.returncode == -signal.SIGKILL, out
    else:
        assert proc.returncode == 0, out
    return out


def _prompts(run_dir):
    return load_file(os.path.join(run_dir, "prompt.safetensors"))


def _in_process(data, run_dir, resume=False):
    """The job in this process, on one thread like the killed ones (same float summation order)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_run(train_job.config(str(data)), str(run_dir), resume=resume, progress=False)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("resume")
    data = base / "data"
    make_split_dataset(str(data), "dtd", [(6, 2, 2)] * 4, image_bytes=tiny_jpeg(16))
    full, mid, edge = base / "full", base / "mid", base / "edge"
    killed = [_start(data, mid, "--kill-at-step", 9), _start(data, edge, "--kill-after-epoch", 1)]
    _in_process(data, full)  # while the two others run
    for proc in killed:
        _finish(proc, expect_kill=True)
    killed_states = {name: load_state(str(base / name / "state.pt")) for name in ("mid", "edge")}
    _in_process(data, mid, resume=True)
    _in_process(data, edge, resume=True)
    return {"full": full, "mid": mid, "edge": edge, "killed": killed_states}


def test_kill_mid_epoch_then_resume_is_bit_identical(runs):
    state = runs["killed"]["mid"]
    # killed after step 9 (epoch 2, batch 3); the last state is that of step 8 (epoch 2, batch 2)
    assert (state["epoch"], state["batch"], state["step"], state["finished"]) == (1, 2, 8, False)
    full, mid = _prompts(runs["full"]), _prompts(runs["mid"])
    assert full.keys() == mid.keys()
    for name in full:
        assert torch.equal(full[name], mid[name]), name
    assert load_state(str(runs["mid"] / "state.pt"))["finished"]
    steps = {r["step"]: r["loss"] for r in read_metrics(str(runs["mid"] / "metrics.jsonl")) if r["kind"] == "step"}
    ref = {r["step"]: r["loss"] for r in read_metrics(str(runs["full"] / "metrics.jsonl")) if r["kind"] == "step"}
    assert steps == ref  # the resumed run's records (later lines win) are the uninterrupted run's


def test_kill_at_epoch_boundary_then_resume_is_bit_identical(runs):
    state = runs["killed"]["edge"]
    assert (state["epoch"], state["batch"], state["step"]) == (1, 0, 6)
    full, edge = _prompts(runs["full"]), _prompts(runs["edge"])
    for name in full:
        assert torch.equal(full[name], edge[name]), name


def test_run_directory_contents(runs):
    names = set(os.listdir(runs["full"]))
    assert {"config.yaml", "env.txt", "log.txt", "metrics.jsonl", "state.pt", "prompt.safetensors",
            "fastprompt_config.json", "eval.json"} <= names
    if importlib.util.find_spec("matplotlib") is not None:  # the plot is an optional extra (".[train]")
        assert "curves.png" in names
    else:
        assert "curves.png" not in names
        assert "curves.png not written: matplotlib is not installed" in (runs["full"] / "log.txt").read_text()
    assert not [n for n in names if n.startswith(".tmp-")]
    state = torch.load(runs["full"] / "state.pt", weights_only=True)
    assert state["finished"] and state["step"] == 12 and set(state["rng"]) >= {"python", "numpy", "torch"}
    kinds = {r["kind"] for r in read_metrics(str(runs["full"] / "metrics.jsonl"))}
    assert kinds == {"step", "epoch", "eval"}


def test_kill_mid_epoch_then_resume_on_two_original_workers_streams(tmp_path):
    """The original's streams with its ``DATALOADER.NUM_WORKERS 2`` (each batch's crops and flips
    from worker ``b % 2``'s stream): killed after step 9, resumed from the step-8 state (the epoch's
    start streams saved in it, the plan rebuilt, the loader restarted at batch 3), it ends with the
    prompts and step losses of an uninterrupted run, bit for bit."""
    data = tmp_path / "data"
    make_split_dataset(str(data), "dtd", [(6, 2, 2)] * 4, image_bytes=tiny_jpeg(16))
    two = ["--set", "DATALOADER.NUM_WORKERS", "2"]
    killed = _start(data, tmp_path / "mid", "--kill-at-step", 9, *two)
    full = _start(data, tmp_path / "full", *two)
    _finish(killed, expect_kill=True)
    _finish(full)
    state = load_state(str(tmp_path / "mid" / "state.pt"))
    assert (state["epoch"], state["batch"], state["step"]) == (1, 2, 8)
    assert state["stream"][0]["epoch"] == 1  # epoch 2's start streams, from which its plan is rebuilt
    _finish(_start(data, tmp_path / "mid", "--resume", *two))
    log = (tmp_path / "full" / "log.txt").read_text()
    assert "training order: the original's (Dassl's RandomSampler as in torch>=1.9, the streams of its " \
           "DATALOADER.NUM_WORKERS 2;" in log
    full_prompts, mid = _prompts(tmp_path / "full"), _prompts(tmp_path / "mid")
    for name in full_prompts:
        assert torch.equal(full_prompts[name], mid[name]), name
    steps = {r["step"]: r["loss"] for r in read_metrics(str(tmp_path / "mid" / "metrics.jsonl")) if r["kind"] == "step"}
    ref = {r["step"]: r["loss"] for r in read_metrics(str(tmp_path / "full" / "metrics.jsonl")) if r["kind"] == "step"}
    assert steps == ref and len(ref) == 12
    # the worker streams decide the augmentations: the same run on the original's NUM_WORKERS 0 differs
    _finish(_start(data, tmp_path / "zero"))
    zero = {r["step"]: r["loss"] for r in read_metrics(str(tmp_path / "zero" / "metrics.jsonl")) if r["kind"] == "step"}
    assert zero != ref


def test_resuming_with_another_original_worker_count_is_refused(tmp_path):
    """DATALOADER.NUM_WORKERS names the original's worker streams, which decide every later batch's
    augmentations: --resume with another value would continue a different run, so it is refused
    (it used to be free, when it only set fastprompt's loader processes)."""
    from fastprompt.errors import TrainError

    data = tmp_path / "data"
    make_split_dataset(str(data), "dtd", [(6, 2, 2)] * 4, image_bytes=tiny_jpeg(16))
    train_run(train_job.config(str(data), ["OPTIM.MAX_EPOCH", "1"]), str(tmp_path / "run"), progress=False)
    with pytest.raises(TrainError, match=r"DATALOADER.NUM_WORKERS: run 0, now 2"):
        train_run(train_job.config(str(data), ["OPTIM.MAX_EPOCH", "1", "DATALOADER.NUM_WORKERS", "2"]),
                  str(tmp_path / "run"), resume=True, progress=False)
