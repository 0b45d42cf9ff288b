"""Host reads of tensor values (device syncs on a GPU) in a warm training step, and the op's value
checks that avoid them: ranges declared when a plan is built, one read per direct call otherwise."""
import pytest
import torch

import fastprompt
from fastprompt.ops import declare_index_range, prompt_attention
from fastprompt.ops.validation import declared_index_range
from fastprompt.testing import random_images
from fastprompt.towers.text_plan import TextPlan

from host_reads import HostReads


@pytest.mark.parametrize("method", ["coop", "cocoop"])
def test_a_warm_training_step_reads_the_host_not_once(method, tiny_model, classnames):
    """Before: every attention call read group / seqlens back twice each (28 reads in a warm
    ViT-B/16 CoOp step, 52 in CoCoOp; 8 and 12 with this 2-layer model). Now the text plan's
    ranges are declared once, and so is the vision tower's per-batch class-token group map."""
    cls = {"coop": fastprompt.CoOpLearner, "cocoop": fastprompt.CoCoOpLearner}[method]
    learner = cls.from_model(tiny_model, classnames, backend="eager")
    images, labels = random_images(2), torch.tensor([3, 5])
    for _ in range(2):  # the second step is warm: plans built and cached
        with HostReads() as reads:
            learner.loss(images, labels).backward()
    # on CPU tensors alone each attention call reads one sum to see whether its inputs hold NaN or inf
    # (fastprompt/ops/masked_exactness.py); on a GPU that check is skipped without a read (below)
    assert not reads.on_gpu, reads.where


def test_the_cpu_only_finiteness_check_reads_nothing_for_other_devices():
    from fastprompt.ops.masked_exactness import has_nonfinite
    from fastprompt.ops.validation import AttentionArgs

    q = torch.empty(2, 5, 2, 8, device="meta")
    args = AttentionArgs(q, q, q, None, None, None, False, None, 8 ** -0.5)
    with HostReads() as reads:
        assert has_nonfinite(args) is False
    assert reads.total == 0, reads.where


def _case(n=4, seq_len=6, n_groups=3):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(n, seq_len, 2, 8, generator=gen) for _ in range(3))
    pk, pv = (torch.randn(n_groups, 3, 2, 8, generator=gen) for _ in range(2))
    return q, k, v, pk, pv


def test_declared_ranges_cost_no_read_and_undeclared_ones_one_read_per_call():
    q, k, v, pk, pv = _case()
    group, seqlens = torch.tensor([0, 2, 1, 2]), torch.tensor([6, 3, 0, 5])
    with HostReads() as reads:
        prompt_attention(q, k, v, pk, pv, group=group, seqlens=seqlens, causal=True)
    assert sum(reads.on_gpu.values()) == 1, reads.where  # both tensors in one transfer
    declare_index_range(group, 0, 2)
    declare_index_range(seqlens, 0, 6)
    with HostReads() as reads:
        out, _ = prompt_attention(q, k, v, pk, pv, group=group, seqlens=seqlens, causal=True)
    assert not reads.on_gpu, reads.where
    ref, _ = prompt_attention(q, k, v, pk, pv, group=group.clone(), seqlens=seqlens.clone(), causal=True)
    assert torch.equal(out, ref)


def test_a_declared_range_is_still_checked_and_void_after_an_in_place_change():
    q, k, v, pk, pv = _case()
    group = declare_index_range(torch.tensor([0, 2, 1, 2]), 0, 2)
    with pytest.raises(ValueError, match=r"group values must lie in \[0, G\) = \[0, 2\)"):
        prompt_attention(q, k, v, pk[:2], pv[:2], group=group)  # the declared max 2 is out of range for G = 2
    group[1] = 7  # in place: the declaration no longer holds, so the values are read again
    assert declared_index_range(group) is None
    with pytest.raises(ValueError, match=r"got values in \[0, 7\]"):
        prompt_attention(q, k, v, pk, pv, group=group)
    seqlens = declare_index_range(torch.tensor([6, 3, 0, 5]), 0, 6)
    seqlens.add_(1)
    with pytest.raises(ValueError, match=r"seqlens values must lie in \[0, L\] = \[0, 6\], got values in \[1, 7\]"):
        prompt_attention(q, k, v, seqlens=seqlens)


def test_declare_index_range_rejects_what_cannot_be_an_index():
    with pytest.raises(ValueError, match="integer tensor"):
        declare_index_range(torch.zeros(3), 0, 1)
    with pytest.raises(ValueError, match="lo = 2 > hi = 1"):
        declare_index_range(torch.zeros(3, dtype=torch.long), 2, 1)


def _plan(group, seqlens, n_groups):
    n = len(seqlens)
    return TextPlan(prefix_src=torch.tensor([1, -1]), suffix_src=torch.arange(sum(seqlens)),
                    seqlens=torch.tensor(seqlens), group=torch.tensor(group), n_groups=n_groups,
                    class_index=torch.arange(n), eot_positions=torch.tensor(seqlens) + 1)


def test_a_text_plan_is_checked_once_when_built_and_declares_its_ranges():
    plan = _plan([0, 1, 1], [2, 4, 1], n_groups=2)
    assert declared_index_range(plan.group) == (0, 1)
    assert declared_index_range(plan.seqlens) == (1, 4)
    assert plan.max_len == 4 and plan.n_ctx == 1
    moved = plan.to("meta")  # another device: the ranges travel without a read
    assert declared_index_range(moved.group) == (0, 1) and moved.max_len == 4
    with pytest.raises(ValueError, match=r"group values must lie in \[0, n_groups\) = \[0, 2\), got values in \[0, 2\]"):
        _plan([0, 2, 1], [2, 4, 1], n_groups=2)
