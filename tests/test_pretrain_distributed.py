"""``fastprompt pretrain`` under torchrun (2 CPU processes, gloo): class-sharded full-vocabulary text
equals one process, and a killed shard-streamed run resumes bit for bit."""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from fastprompt import testing
from fastprompt.pretrain.run import pretrain_run
from fastprompt.train.records import read_metrics
from fastprompt.train.state import load_state

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pretrain_job  # noqa: E402

pytest.importorskip("webdataset")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return pretrain_job.make_data(str(tmp_path_factory.mktemp("pretrain_ddp")))


def _torchrun(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             pretrain_job.__file__, *map(str, args)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _wait(proc, killed=False):
    out, _ = proc.communicate(timeout=300)
    assert (proc.returncode != 0) if killed else (proc.returncode == 0), out
    return out


def _prompts(run):
    return load_file(os.path.join(run, "prompt.safetensors"))


def test_class_sharded_full_vocabulary_on_two_processes_equals_one(data, tmp_path):
    two, one = str(tmp_path / "two"), str(tmp_path / "one")
    proc = _torchrun("data", data["root"], two, "TRAIN.OBJECTIVE", "full")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # meanwhile, one process with the whole global batch
        cfg = pretrain_job.config("pomp/vit_b16_ep5", "TRAIN.OBJECTIVE", "full", **{"DATASET.ROOT": data["root"]})
        pretrain_run(cfg, one, progress=False)
    finally:
        torch.set_num_threads(threads)
    _wait(proc)
    with open(os.path.join(two, "pretrain.json")) as f:
        record = json.load(f)
    assert record["objective"] == "full" and record["world_size"] == 2
    assert "split over the ranks" in open(os.path.join(two, "log.txt")).read()
    a, b = _prompts(two), _prompts(one)
    for name in b:  # each rank averages half a batch: equal to fp32 rounding of the gradient mean
        testing.assert_close_rel(a[name], b[name], 1e-4, name)
    steps = [r["loss"] for r in read_metrics(os.path.join(two, "metrics.jsonl")) if r["kind"] == "step"]
    ref = [r["loss"] for r in read_metrics(os.path.join(one, "metrics.jsonl")) if r["kind"] == "step"]
    assert len(steps) == len(ref) == 30 and max(abs(x - y) for x, y in zip(steps, ref)) < 1e-4


def test_killed_two_process_shard_run_resumes_bit_identical(data, tmp_path):
    full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
    runs = [_torchrun("shards", data["shards"], full), _torchrun("shards", data["shards"], cut, "--kill-at-step", 5)]
    _wait(runs[0])
    _wait(runs[1], killed=True)
    state = load_state(os.path.join(cut, "state.pt"))
    assert state["step"] == 5 and [s["rank"] for s in state["stream"]] == [0, 1]  # every rank's position
    _wait(_torchrun("shards", data["shards"], cut, "--resume"))
    a, b = _prompts(full), _prompts(cut)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
