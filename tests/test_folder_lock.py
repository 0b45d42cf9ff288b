"""One job per folder: a run directory (train, pretrain, eval into a run), a grid folder (run) and a
shard folder (data pack) are locked for the life of the job that writes into them.

Before the lock, two ``fastprompt train`` started together on one ``--output-dir`` both exited 0
and left one run's config beside both runs' interleaved logs: the emptiness check and the first
write were a race. The lock is taken before the check; the kernel drops it when its holder dies,
``kill -9`` included.
"""
import json
import os
import signal
import subprocess
import sys

import pytest

from fastprompt.errors import FolderInUseError, TrainError
from fastprompt.folder_lock import LOCK_FILE, FolderLock
from fastprompt.testing.fake_trees import tiny_jpeg
from fastprompt.train.records import read_metrics
from fastprompt.train.run import evaluate_checkpoint, train_run

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_job  # noqa: E402  (CoOp, tiny CLIP, 2 epochs of 6 batches of 4)

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
# Holds the lock on argv[1] until killed; says so on stdout once it holds it.
HOLDER = ("import sys, time; from fastprompt.folder_lock import FolderLock; "
          "lock = FolderLock(sys.argv[1], 'fastprompt train'); lock.acquire(); print('held', flush=True); "
          "time.sleep(600)")


@pytest.fixture(scope="module")
def data(dtd_tree):
    return dtd_tree


@pytest.fixture
def holder(tmp_path):
    """A process holding the lock of ``tmp_path / "run"``; killed (-9) at the end if still alive."""
    folder = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], env=ENV, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield folder, proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_a_second_lock_is_refused_naming_the_holder(tmp_path):
    with FolderLock(str(tmp_path), "fastprompt train"):
        with pytest.raises(FolderInUseError) as err:
            FolderLock(str(tmp_path), "fastprompt eval").acquire()
        message = str(err.value)
        assert "fastprompt train" in message and f"pid {os.getpid()}" in message and str(tmp_path) in message
    assert not (tmp_path / LOCK_FILE).exists(), "a released lock leaves nothing behind"
    with FolderLock(str(tmp_path), "fastprompt eval"):  # free again
        pass


def test_a_killed_holder_frees_the_folder_at_once(holder):
    folder, proc = holder
    with pytest.raises(FolderInUseError, match=f"pid {proc.pid} on "):
        FolderLock(str(folder), "fastprompt train").acquire()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (folder / LOCK_FILE).exists(), "kill -9 left the file (no clean-up ran)"
    with FolderLock(str(folder), "fastprompt train") as lock:  # yet the folder is free
        assert json.loads((folder / LOCK_FILE).read_text())["pid"] == os.getpid() and lock.held


def test_train_and_eval_are_refused_while_another_job_holds_the_run(data, holder):
    folder, proc = holder
    with pytest.raises(FolderInUseError, match=f"in use by fastprompt train \\(pid {proc.pid}"):
        train_run(train_job.config(data), str(folder), progress=False)
    assert os.listdir(folder) == [LOCK_FILE], "the refused run wrote nothing"
    (folder / "config.yaml").write_text("METHOD: coop\n")
    with pytest.raises(FolderInUseError):
        evaluate_checkpoint(str(folder), data, "dtd")


def test_a_failed_start_releases_the_run_directory(data, tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(TrainError, match="nothing to resume"):
        train_run(train_job.config(data), str(run_dir), resume=True, progress=False)
    assert not (run_dir / LOCK_FILE).exists()
    with FolderLock(str(run_dir), "fastprompt train"):  # nobody holds it any more
        pass


def test_two_train_commands_started_together_leave_one_run(data, tmp_path):
    """The case that used to pass silently: both exited 0 and the directory mixed the two runs."""
    run_dir = tmp_path / "run"
    overrides = [t for pair in zip(train_job.OVERRIDES[::2], train_job.OVERRIDES[1::2]) for t in pair]

    def command(seed):
        return [sys.executable, "-m", "fastprompt.cli", "train", "--recipe", "coop/vit_b16_ep50", "--data", data,
                "--dataset", "dtd", "--model", "tiny", "--pretrained", "none", "--seed", str(seed),
                "--output-dir", str(run_dir), "--no-progress", *overrides, "OPTIM.MAX_EPOCH", "1"]

    procs = [subprocess.Popen(command(seed), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for seed in (1, 2)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    results = [(p.returncode, err) for p, err in zip(procs, errors)]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    seed_won = (1, 2)[[code for code, _ in results].index(0)]
    refusal = [err for code, err in results if code == 2][0].strip().splitlines()
    assert len(refusal) == 1 and ("is in use by" in refusal[0] or "already holds" in refusal[0]), refusal
    assert f"SEED: {seed_won}" in (run_dir / "config.yaml").read_text()
    steps = [m for m in read_metrics(str(run_dir / "metrics.jsonl")) if m["kind"] == "step"]
    assert [m["step"] for m in steps] == sorted({m["step"] for m in steps}), "two runs' records interleaved"


def test_data_pack_into_a_folder_in_use_is_one_line_and_rc_2(tmp_path, holder, capsys):
    from fastprompt import cli

    folder, proc = holder
    src = tmp_path / "tree"
    (src / "n00000001").mkdir(parents=True)
    (src / "n00000001" / "a.JPEG").write_bytes(tiny_jpeg(16))
    assert cli.main(["data", "pack", str(src), str(folder), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"pid {proc.pid}" in err[0] and err[0].startswith("fastprompt data pack: error:"), err


def test_a_grid_folder_in_use_is_refused(data, holder):
    from fastprompt.protocols.grid import run_grid

    folder, _ = holder
    with pytest.raises(FolderInUseError):
        run_grid("fewshot", "coop", data, str(folder), datasets=["dtd"], seeds=[1], shots=[1],
                 arguments={"MODEL.BACKBONE.NAME": "tiny", "MODEL.BACKBONE.TAG": "none"})
    assert os.listdir(folder) == [LOCK_FILE]

