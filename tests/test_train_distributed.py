"""torchrun: 2 CPU processes (gloo) with the global batch split between them train the prompts of
one process with the whole batch (to fp32 rounding: each rank averages half a batch)."""
import os
import subprocess
import sys

from safetensors.torch import load_file

from fastprompt import testing
from fastprompt.testing.fake_trees import make_split_dataset, tiny_jpeg
from fastprompt.train.records import read_metrics
from fastprompt.train.run import train_run

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_job  # noqa: E402


def test_two_processes_equal_one(tmp_path):
    data = tmp_path / "data"
    make_split_dataset(str(data), "dtd", [(6, 2, 2)] * 4, image_bytes=tiny_jpeg(16))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             train_job.__file__, str(data), str(tmp_path / "ddp")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    train_run(train_job.config(str(data)), str(tmp_path / "one"), progress=False)  # meanwhile
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    two, one = load_file(tmp_path / "ddp" / "prompt.safetensors"), load_file(tmp_path / "one" / "prompt.safetensors")
    for name in one:
        testing.assert_close_rel(two[name], one[name], 1e-4, name)
    # rank 0 alone wrote the records; the logged loss is the global batch's, evaluation covers the whole split
    steps = [r for r in read_metrics(str(tmp_path / "ddp" / "metrics.jsonl")) if r["kind"] == "step"]
    ref = [r for r in read_metrics(str(tmp_path / "one" / "metrics.jsonl")) if r["kind"] == "step"]
    assert [r["step"] for r in steps] == [r["step"] for r in ref] == list(range(1, 13))
    for a, b in zip(steps, ref):
        assert abs(a["loss"] - b["loss"]) < 1e-4
    evals = [r for r in read_metrics(str(tmp_path / "ddp" / "metrics.jsonl")) if r["kind"] == "eval"]
    assert evals[-1]["total"] == 8
    assert (tmp_path / "ddp" / "log.txt").read_text().count("test: accuracy") == 1


def test_a_non_finite_loss_on_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    """Rank 1's loss turns NaN at its 3rd batch: both ranks stop at that step's gradient reduction
    with the step number (the other rank is told, instead of waiting forever for a rank that left)."""
    data = tmp_path / "data"
    make_split_dataset(str(data), "dtd", [(6, 2, 2)] * 4, image_bytes=tiny_jpeg(16))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           train_job.__file__, str(data), str(tmp_path / "ddp"), "--nan-at-call", "3"], env=env,
                          capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "non-finite loss (nan) at batch 3 of this rank, step 3" in out
    assert "non-finite loss on another rank, step 3" in out
    assert "non-finite loss on another rank, step 3" in (tmp_path / "ddp" / "log.txt").read_text()

