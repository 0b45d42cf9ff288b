"""The ranks of the class-sharding test, in their own processes (not a test module).

    python -m torch.distributed.run --standalone --nproc_per_node 2 class_sharding_job.py OUT_DIR

Every rank takes its equal share of one batch and runs one full-vocabulary step with
``learner.shard_classes = True`` for each learner of :data:`CASES` (built by :func:`build`, which
the test also calls for the one-process reference), then averages the prompt gradients over the
ranks as the trainer does. Rank ``r`` writes ``OUT_DIR/rank{r}.pt``: per case the mean loss over
the ranks, the averaged gradients and the class count of every text encoding it ran; plus
``"n_below_world"``, a raw :func:`all_gather_rows` of one row over two ranks (one rank empty).
"""
import os
import sys

import torch
import torch.distributed as dist

import fastprompt
from fastprompt.learners.class_sharding import all_gather_rows
from fastprompt.testing import perturb_trainable, random_images, tiny_clip
from fastprompt.distributed import average_gradients

N_CLASSES = 37  # odd: the two slices have 19 and 18 classes, the second padded by one row
BATCH = 6
WORDS = ["red", "blue", "green", "small", "striped", "old", "wild"]
THINGS = ["circle", "sea lion", "jack-o'-lantern", "dog", "Granny Smith apple", "star"]

CASES = {
    "pomp_full": lambda model, names: fastprompt.POMPLearner.from_model(model, names, mode="full", n_ctx=4),
    "rpp_ce_kl": lambda model, names: fastprompt.RPPLearner.from_model(model, names, depth=2, pomp=False,
                                                                      branches="both", kl_weight=0.7),
}


def classnames():
    """``N_CLASSES`` distinct names of 2 to 5 tokens (suffixes of unequal lengths)."""
    return [f"{WORDS[i % len(WORDS)]} {THINGS[i // len(WORDS)]}" for i in range(N_CLASSES)]


def model():
    return tiny_clip(seed=0)


def build(case, clip):
    """The learner of ``case`` with seeded prompts moved off their init (same on every process)."""
    torch.manual_seed(0)
    learner = CASES[case](clip, classnames())
    perturb_trainable(learner, seed=1)
    return learner


def batch():
    """``(images [BATCH, 3, 32, 32], labels [BATCH])`` of the whole global batch."""
    labels = torch.tensor([0, 36, 18, 19, 7, 25])
    return random_images(BATCH, seed=2), labels


def _step(case, clip, rank, size):
    learner = build(case, clip)
    learner.shard_classes = True
    encoded = []
    encode = learner.text_tower.encode

    def counting_encode(plan, *args, **kwargs):
        encoded.append(plan.n_sequences)
        return encode(plan, *args, **kwargs)

    learner.text_tower.encode = counting_encode
    images, labels = batch()
    share = BATCH // size
    loss = learner.loss(images[rank * share:(rank + 1) * share], labels[rank * share:(rank + 1) * share])
    loss.backward()
    named = learner.trainable_named_parameters()
    assert average_gradients([p for _, p in named])
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    return {"loss": mean_loss / size, "grads": {n: p.grad for n, p in named}, "encoded": encoded}


def _n_below_world(rank):
    """One row over two ranks: rank 1 holds none. Upstream gradient ``rank + 1`` on each rank."""
    row = torch.tensor([[1.0, 2.0, 3.0]], requires_grad=True)
    local = row if rank == 0 else row[:0]
    gathered = all_gather_rows(local, 1)
    (gathered * (rank + 1)).sum().backward()
    return {"gathered": gathered.detach(), "grad": row.grad}


def main():
    out = sys.argv[1]
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, size = dist.get_rank(), dist.get_world_size()
    clip = model()
    result = {case: _step(case, clip, rank, size) for case in CASES}
    result["n_below_world"] = _n_below_world(rank)
    torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
