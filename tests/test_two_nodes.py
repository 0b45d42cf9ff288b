"""Two torchrun "nodes" train the prompts of one process: ``--nnodes 2``, one process each, as two
machines would run it.

Two ``torchrun --nnodes 2 --nproc_per_node 1 --node-rank K --rdzv-backend c10d --rdzv-endpoint
127.0.0.1:PORT`` launches start together; node 0 hosts the rendezvous store (``is_host``), both
meet there over the loopback address, form a 2-process gloo group and train CoOp with the global
batch split between them. Both are given the same ``--output-dir``: on one machine the two nodes
share its file system, as the nodes of a cluster share a run's network folder, and the global rank
0 alone writes the run (which node gets rank 0 is the rendezvous's choice, so neither may write
anything else). The reference is one process with the same global batch.
"""
import os
import socket
import subprocess
import sys

from safetensors.torch import load_file

from fastprompt import testing
from fastprompt.train.records import read_metrics

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_job  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
# tests/train_job.py's CoOp settings on the tiny random CLIP (learning rate 0.05 from the first step:
# the prompts move far more than the tolerance below), one epoch of 6 global batches of 4
TRAIN = ["train", "--recipe", "coop/vit_b16_ep50", "--dataset", "dtd", "--seed", "3", "--model", "tiny",
         "--pretrained", "none", "--no-progress", *train_job.OVERRIDES, "OPTIM.MAX_EPOCH", "1",
         "TRAIN.TENSORBOARD", "False"]


def _free_port() -> int:
    """A TCP port of the loopback address that nothing listens on now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_nodes(argv):
    """``(returncode, output)`` of each node, both launched at once on a free rendezvous port.

    The port is free when picked but another process may take it before node 0 listens there:
    then node 0 cannot host the store, and the pair is launched again on another port."""
    for attempt in range(3):
        port = _free_port()
        procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
                                   "--nproc-per-node", "1", "--node-rank", str(node), "--rdzv-backend", "c10d",
                                   "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "two-nodes",
                                   "--rdzv-conf", f"is_host={int(node == 0)}", "--local-addr", "127.0.0.1",
                                   "-m", "fastprompt.cli", *argv],
                                  env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for node in (0, 1)]
        done = [(p.communicate(timeout=240)[0], p.returncode) for p in procs]
        if "EADDRINUSE" not in done[0][0] and "address already in use" not in done[0][0].lower():
            return [(rc, out) for out, rc in done]
    raise AssertionError(f"no free rendezvous port in 3 tries:\n{done[0][0]}")


def test_two_nodes_equal_one_process(dtd_tree, tmp_path):
    run, one = str(tmp_path / "nodes"), str(tmp_path / "one")
    for rc, out in _two_nodes([*TRAIN, "--data", dtd_tree, "--output-dir", run]):
        assert rc == 0, out
    proc = subprocess.run([sys.executable, "-m", "fastprompt.cli", *TRAIN, "--data", dtd_tree, "--output-dir", one],
                          env=ENV, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    nodes, ref = load_file(os.path.join(run, "prompt.safetensors")), load_file(os.path.join(one, "prompt.safetensors"))
    assert set(nodes) == set(ref)
    for name in ref:  # tests/test_train_distributed.py's tolerance: each rank averages half a batch
        testing.assert_close_rel(nodes[name], ref[name], 1e-4, name)
    steps = [r for r in read_metrics(os.path.join(run, "metrics.jsonl")) if r["kind"] == "step"]
    ref_steps = [r for r in read_metrics(os.path.join(one, "metrics.jsonl")) if r["kind"] == "step"]
    assert [r["step"] for r in steps] == [r["step"] for r in ref_steps] == list(range(1, 7))
    for a, b in zip(steps, ref_steps):
        assert abs(a["loss"] - b["loss"]) < 1e-4
    # the run directory is one run's, written once: one log line per test, one run's files
    assert open(os.path.join(run, "log.txt"), encoding="utf-8").read().count("test: accuracy") == 1
    assert "2 process(es)" in open(os.path.join(run, "log.txt"), encoding="utf-8").read()
