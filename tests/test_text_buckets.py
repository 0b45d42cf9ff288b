"""Length buckets of the text tower's attention layout (``BucketRule``, ``TextPlan.buckets``).

The tower pads each bucket of sequences only to its own longest member and calls the op once per
bucket; the values must be those of one ``[N, max_len]`` block (the same attention, another
layout), and the plan must choose few buckets within the padding bound."""
import itertools
import random

import pytest
import torch

import fastprompt
import fastprompt.towers.text_plan as text_plan
from fastprompt.ops import jit
from fastprompt.ops.validation import declared_index_range
from fastprompt.testing import FP32, assert_close_rel, random_images
from fastprompt.towers import BucketRule, TextTower, build_text_plan, ctx_source

from host_reads import HostReads

ONE_BUCKET = BucketRule(max_buckets=1)
ANY_SIZE = BucketRule(min_padding=0)  # the default ratio bound, without the small-plan exemption
WORDS = ["dog", "sea", "lion", "red", "circle", "granny", "smith", "lantern", "tiger", "shark", "apple", "stone",
         "river", "mountain", "violin", "coffee", "engine", "feather", "garden", "harbor"]


def _long_tail_names(n: int, seed: int = 0):
    """``n`` distinct class names whose token counts follow a long tail (most 1-3 words, a few up
    to 24); a name drawn again gets its index appended (one token more), as learners refuse
    classes with the same name."""
    rng = random.Random(seed)
    lengths = [1 + min(int(rng.paretovariate(1.3)) - 1, 23) for _ in range(n)]
    lengths[0] = 24  # the tail is always there
    names = [" ".join(rng.choice(WORDS) for _ in range(k)) for k in lengths]
    return [name if name not in names[:i] else f"{name} {i}" for i, name in enumerate(names)]


def _tokenize(texts):
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()(texts)


def _ctx_plan(names, m=3, rule=None):
    ids = _tokenize([" ".join(["X"] * m) + f" {name}." for name in names])
    rows = [[r[0]] + [ctx_source(k) for k in range(m)] + r[1 + m:] for r in ids.tolist()]
    plan = build_text_plan(rows, ids)
    return plan if rule is None else plan.with_bucket_rule(rule)


# ---- the rule ---------------------------------------------------------------------------------

def _optimum(values, counts, k):
    """Fewest padded rows of ``k`` contiguous buckets over the sorted distinct lengths (brute force)."""
    best = None
    for cuts in itertools.combinations(range(1, len(values)), k - 1):
        bounds = (0,) + cuts + (len(values),)
        rows = sum(sum(counts[a:b]) * values[b - 1] for a, b in zip(bounds, bounds[1:]))
        best = rows if best is None else min(best, rows)
    return best


@pytest.mark.parametrize("seed", range(30))
def test_the_rule_takes_the_fewest_buckets_within_the_bound_and_their_optimal_cut(seed):
    rng = random.Random(seed)
    lengths = torch.tensor([rng.choice([1, 2, 3, 4, 5, 6, 8, 11, 15, 23, 40]) for _ in range(rng.randint(1, 60))])
    rule = BucketRule(max_ratio=rng.choice([1.0, 1.1, 1.25, 1.5]), min_padding=0, max_buckets=rng.randint(1, 6))
    ends = rule.split(lengths)
    values, counts = (t.tolist() for t in torch.unique(lengths, return_counts=True))
    real = int(lengths.sum())
    assert ends == sorted(set(ends)) and ends[-1] == values[-1] and set(ends) <= set(values)
    rows = sum(int((lengths <= e).sum() - (lengths <= s).sum()) * e for s, e in zip([0] + ends, ends))
    k = len(ends)
    assert rows == _optimum(values, counts, k)  # the cheapest cut into k buckets
    if k > 1:  # and no fewer buckets would have met the bound
        assert _optimum(values, counts, k - 1) > rule.max_ratio * real
    if rows > rule.max_ratio * real:  # the bound is missed only at the bucket cap (or one per length)
        assert k == min(rule.max_buckets, len(values))


def test_the_rule_rejects_meaningless_settings():
    for kwargs, message in ((dict(max_ratio=0.9), "max_ratio"), (dict(min_padding=-1), "min_padding"),
                            (dict(max_buckets=0), "max_buckets")):
        with pytest.raises(ValueError, match=message):
            BucketRule(**kwargs)


# ---- the plan's layout ------------------------------------------------------------------------

def test_similar_lengths_keep_one_block_in_sequence_order(tiny_model, classnames):
    """CoOp over a few short class names: one bucket, exactly the former ``[N, max_len]`` layout."""
    plan = fastprompt.CoOpLearner.from_model(tiny_model, classnames).plan
    assert len(plan.buckets) == 1 and plan.padded_tokens == plan.n_sequences * plan.max_len
    starts = torch.cumsum(plan.seqlens, 0) - plan.seqlens
    seq = torch.repeat_interleave(torch.arange(plan.n_sequences), plan.seqlens)
    assert torch.equal(plan.pad_index, seq * plan.max_len + torch.arange(plan.n_tokens) - starts[seq])
    bucket = plan.buckets[0]
    assert bucket.group is plan.group and bucket.seqlens is plan.seqlens
    uniform = _ctx_plan(["dog", "cat", "fox"])  # equal lengths: nothing to mask
    assert len(uniform.buckets) == 1 and uniform.buckets[0].seqlens is None


def _check_layout(plan):
    """Every packed token has its own row, inside its sequence's bucket, at its offset; the buckets
    tile the padded layout, hold sequences sorted by length, each padded to its longest member."""
    n, lens = plan.n_sequences, plan.seqlens
    starts = torch.cumsum(lens, 0) - lens
    seq = torch.repeat_interleave(torch.arange(n), lens)
    offset = torch.arange(plan.n_tokens) - starts[seq]
    assert plan.pad_index.unique().numel() == plan.n_tokens
    first_row = plan.pad_index - offset  # the row of each token's sequence start
    member = torch.full((n,), -1)
    row = 0
    for b_i, b in enumerate(plan.buckets):
        assert b.start == row
        row = b.stop
        inside = (first_row >= b.start) & (first_row < b.stop)
        seqs = seq[inside].unique()
        member[seqs] = b_i
        assert seqs.numel() == b.n and int(lens[seqs].max()) == b.length
        assert ((first_row[inside] - b.start) % b.length == 0).all()
        rank = torch.unique((first_row[inside] - b.start) // b.length)
        assert torch.equal(rank, torch.arange(b.n))
        in_order = seq[inside][torch.argsort(first_row[inside], stable=True)].unique_consecutive()
        assert torch.equal(plan.group[in_order], b.group)
        if b.seqlens is None:
            assert (lens[in_order] == b.length).all()
        else:
            assert torch.equal(lens[in_order], b.seqlens)
            assert declared_index_range(b.seqlens) is not None
        assert declared_index_range(b.group) is not None
    assert row == plan.padded_tokens and (member >= 0).all()
    assert torch.equal(plan.derived("eot_pad_index"), plan.pad_index[plan.eot_index])
    lengths = [b.length for b in plan.buckets]
    assert lengths == sorted(lengths)


def test_long_tailed_lengths_are_bucketed_within_the_padding_bound():
    plan = _ctx_plan(_long_tail_names(300))  # the default rule
    one = plan.n_sequences * plan.max_len
    assert one - plan.n_tokens >= plan.bucket_rule.min_padding and one > 1.25 * plan.n_tokens  # worth splitting
    assert 1 < len(plan.buckets) <= plan.bucket_rule.max_buckets
    assert plan.padded_tokens <= plan.bucket_rule.max_ratio * plan.n_tokens
    _check_layout(plan)
    for derived in (plan.repeat(3), plan.select([5, 0, 5, 299, 7]), _ctx_plan(_long_tail_names(300), rule=ANY_SIZE)):
        _check_layout(derived)
    grouped = plan.repeat(3)
    assert grouped.bucket_rule == plan.bucket_rule and len(grouped.buckets) > 1
    assert grouped.padded_tokens <= 1.25 * grouped.n_tokens
    single = plan.with_bucket_rule(ONE_BUCKET)
    assert len(single.buckets) == 1 and single.padded_tokens == one
    assert single.select([3, 1]).bucket_rule == ONE_BUCKET and single.repeat(2).bucket_rule == ONE_BUCKET


def test_a_moved_plan_keeps_its_buckets_and_their_declared_ranges():
    plan = _ctx_plan(_long_tail_names(40), rule=ANY_SIZE).repeat(2)
    moved = plan.to("meta")
    assert [(b.start, b.n, b.length) for b in moved.buckets] == [(b.start, b.n, b.length) for b in plan.buckets]
    for b in moved.buckets:
        assert b.group.device.type == "meta" and declared_index_range(b.group) == (0, 1)
        assert b.seqlens is None or declared_index_range(b.seqlens) is not None
    one = _ctx_plan(_long_tail_names(40), rule=ONE_BUCKET).to("meta")
    assert one.buckets[0].seqlens is one.seqlens and one.buckets[0].group is one.group


# ---- the values: bucketed == one padded block ---------------------------------------------------

@pytest.mark.parametrize("backend", ["eager", "cpu"])
@pytest.mark.parametrize("groups", [1, 3])
def test_bucketed_attention_equals_one_padded_block(tiny_model, backend, groups):
    """Long-tailed lengths, learnable context (per group for G > 1, CoCoOp-style) and deep prefix
    prompts: features and prompt gradients of the bucketed layout equal the single block's."""
    if backend == "cpu" and jit.extension_problem("cpu") is not None:
        pytest.skip(f"the cpu backend cannot be built here: {jit.extension_problem('cpu')}")
    m, width = 3, tiny_model.ln_final.weight.shape[0]
    names = _long_tail_names(40, seed=1)
    gen = torch.Generator().manual_seed(2)
    ctx = torch.randn(*((groups,) if groups > 1 else ()), m, width, generator=gen).requires_grad_()
    deep = [None] + [torch.randn(m, width, generator=gen).requires_grad_()
                     for _ in range(len(tiny_model.transformer.resblocks) - 1)]
    tower = TextTower(tiny_model, backend=backend)
    results = {}
    for name, rule in (("bucketed", ANY_SIZE), ("one block", ONE_BUCKET)):
        plan = _ctx_plan(names, m, rule).repeat(groups)
        feats = tower(plan, *tower.embed(plan, ctx), prefix_overrides=deep)
        results[name] = (len(plan.buckets), feats.detach(),
                         torch.autograd.grad(feats.square().sum(), [ctx] + deep[1:]))
    assert results["bucketed"][0] > 1 and results["one block"][0] == 1
    assert_close_rel(results["bucketed"][1], results["one block"][1], FP32.parity, "features")
    for i, (a, b) in enumerate(zip(results["bucketed"][2], results["one block"][2])):
        assert_close_rel(a, b, FP32.gradient_parity, f"prompt grad {i}")


@pytest.mark.parametrize("method", ["coop", "cocoop", "maple", "rpp"])
def test_a_learner_step_with_buckets_equals_one_block(method, tiny_model, monkeypatch):
    """Loss and prompt gradients of a training step over long-tailed class names, every text plan
    the learner builds bucketed vs one block (CoCoOp: per-image groups; MaPLe: deep prompt
    overrides; RPP: q/k/v prefix prompts and its teacher)."""
    cls = {"coop": fastprompt.CoOpLearner, "cocoop": fastprompt.CoCoOpLearner, "maple": fastprompt.MaPLeLearner,
           "rpp": fastprompt.RPPLearner}[method]
    extra = {"maple": dict(prompt_depth=2), "rpp": dict(depth=1)}.get(method, {})  # RPP: layer 0's prompts survive
    names = _long_tail_names(12, seed=3)
    images, labels = random_images(2), torch.tensor([3, 5])
    results = {}
    for name, rule in (("bucketed", ANY_SIZE), ("one block", ONE_BUCKET)):
        monkeypatch.setattr(text_plan, "DEFAULT_BUCKET_RULE", rule)
        torch.manual_seed(0)
        learner = cls.from_model(tiny_model, names, backend="eager", **extra)
        params = learner.trainable_parameters()
        loss = learner.loss(images, labels)
        results[name] = (len(learner.plan.buckets), loss.detach(), torch.autograd.grad(loss, params))
    assert results["bucketed"][0] > 1 and results["one block"][0] == 1
    assert_close_rel(results["bucketed"][1], results["one block"][1], FP32.parity, "loss")
    for i, (a, b) in enumerate(zip(results["bucketed"][2], results["one block"][2])):
        assert_close_rel(a, b, FP32.gradient_parity, f"prompt grad {i}")


@pytest.mark.parametrize("method", ["coop", "cocoop"])
def test_a_warm_bucketed_step_reads_the_host_not_once(method, tiny_model, monkeypatch):
    monkeypatch.setattr(text_plan, "DEFAULT_BUCKET_RULE", ANY_SIZE)
    cls = {"coop": fastprompt.CoOpLearner, "cocoop": fastprompt.CoCoOpLearner}[method]
    learner = cls.from_model(tiny_model, _long_tail_names(12, seed=3), backend="eager")
    assert len(learner.plan.buckets) > 1
    images, labels = random_images(2), torch.tensor([3, 5])
    for _ in range(2):  # the second step is warm: plans built and cached
        with HostReads() as reads:
            learner.loss(images, labels).backward()
    assert not reads.on_gpu, reads.where  # tests/host_reads.py: the CPU-only finiteness check aside
