"""Class-sharded text encoding: two gloo ranks, each encoding half of 37 classes, give the loss and
the (rank-averaged) prompt gradients of one process on the whole batch; the slicing; the fallback."""
import os
import subprocess
import sys

import pytest
import torch

import fastprompt
from fastprompt.learners.class_sharding import all_gather_rows, full_text_features, shard_bounds
from fastprompt.testing import FP32, assert_close_rel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import class_sharding_job as job  # noqa: E402


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """``[rank0, rank1]`` results of the job, and the one-process reference of every case."""
    out = tmp_path_factory.mktemp("class_sharding")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             job.__file__, str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    clip = job.model()  # the reference runs meanwhile
    images, labels = job.batch()
    reference = {}
    for case in job.CASES:
        learner = job.build(case, clip)
        loss = learner.loss(images, labels)
        loss.backward()
        reference[case] = {"loss": loss.detach(), "grads": {n: p.grad for n, p in learner.trainable_named_parameters()}}
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]
    return ranks, reference


@pytest.mark.parametrize("case", sorted(job.CASES))
def test_two_sharded_ranks_equal_one_process_on_the_whole_batch(two_ranks, case):
    ranks, reference = two_ranks
    ref = reference[case]
    for rank, result in enumerate(ranks):
        got = result[case]
        assert_close_rel(got["loss"], ref["loss"], FP32.parity, f"{case} loss (rank {rank})")
        assert sorted(got["grads"]) == sorted(ref["grads"])
        for name, grad in ref["grads"].items():
            if grad is None:  # RPP's query prompts of a layer whose prompt outputs are discarded
                assert got["grads"][name] is None, f"{case} {name}: a gradient where one process has none"
                continue
            assert_close_rel(got["grads"][name], grad, FP32.gradient_parity, f"{case} {name}.grad (rank {rank})")
    text_grads = [g for n, g in ref["grads"].items() if g is not None and n.startswith(("ctx", "text_"))]
    assert text_grads and all(g.abs().max() > 0 for g in text_grads), "the text prompts must be exercised"


@pytest.mark.parametrize("case", sorted(job.CASES))
def test_each_rank_encodes_only_its_slice_of_the_classes(two_ranks, case):
    ranks, _ = two_ranks
    # ceil(37 / 2) = 19 classes on rank 0, the other 18 on rank 1: one encoding each, never all 37
    assert [r[case]["encoded"] for r in ranks] == [[19], [18]]


def test_a_rank_with_no_rows_still_takes_part_in_both_collectives(two_ranks):
    ranks, _ = two_ranks
    for r in ranks:  # both ranks see rank 0's row
        assert torch.equal(r["n_below_world"]["gathered"], torch.tensor([[1.0, 2.0, 3.0]]))
    # rank 0's row receives the upstream gradients of both ranks (1 + 2); rank 1 owns no row
    assert torch.equal(ranks[0]["n_below_world"]["grad"], torch.full((1, 3), 3.0))
    assert torch.equal(ranks[1]["n_below_world"]["grad"], torch.zeros(1, 3))


@pytest.mark.parametrize("n_rows, world, expected", [
    (37, 2, [(0, 19), (19, 37)]),
    (8, 4, [(0, 2), (2, 4), (4, 6), (6, 8)]),
    (5, 4, [(0, 2), (2, 4), (4, 5), (5, 5)]),   # rounding leaves the last rank empty
    (2, 5, [(0, 1), (1, 2), (2, 2), (2, 2), (2, 2)]),  # N < W
    (0, 3, [(0, 0)] * 3),
    (7, 1, [(0, 7)]),
])
def test_shard_bounds_are_contiguous_ceil_sized_slices(n_rows, world, expected):
    bounds = shard_bounds(n_rows, world)
    assert bounds == expected
    # padding every slice to the first one's size puts all padding at the end of the gathered rows
    per_rank = bounds[0][1] - bounds[0][0]
    gathered = [r * per_rank + i for r, (a, b) in enumerate(bounds) for i in range(b - a)]
    assert gathered == list(range(n_rows))


def test_shard_bounds_reject_bad_sizes():
    with pytest.raises(ValueError, match="world_size must be >= 1"):
        shard_bounds(4, 0)
    with pytest.raises(ValueError, match="n_rows must be >= 0"):
        shard_bounds(-1, 2)


def test_without_a_process_group_sharding_changes_nothing(tiny_model, classnames):
    learner = fastprompt.POMPLearner.from_model(tiny_model, classnames, mode="full")
    assert learner.shard_classes is False  # off by default
    learner.shard_classes = True
    assert torch.equal(full_text_features(learner), learner.text_features())
    rows = torch.randn(3, 4)
    assert all_gather_rows(rows, 3) is rows
    with pytest.raises(ValueError, match="one process holds all 5 rows, got 3"):
        all_gather_rows(rows, 5)
