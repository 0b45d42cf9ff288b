"""The trainers' per-step draws on the original's stream (issue 23): POMP's negative classes and
SoftCPT's class sampling come from ``learner.step_generator`` when one is set (a run on the
original's streams sets it to the plan's G at each step), draw exactly what the original draws
from its global stream there, consume exactly what the plan's replica
(:mod:`fastprompt.replay.loader_stream`) says, and leave torch's global stream alone."""
import torch

import fastprompt
from fastprompt.reference import ReferenceSoftCPT
from fastprompt.replay import pomp_negative_draws, softcpt_class_sample_draws
from fastprompt.testing import FP32, assert_close_rel, random_images

TASKS = {"pets": ["cat", "dog", "bird", "fish"], "cars": ["sedan", "truck", "bus"]}
LABELS = torch.tensor([0, 5, 1, 0])  # joint ids: tasks 0 and 1


def _at(seed):
    return torch.Generator().manual_seed(seed)


def test_softcpt_class_sampling_draws_from_the_step_generator(tiny_model):
    torch.manual_seed(0)
    reference = ReferenceSoftCPT(tiny_model, list(TASKS), [TASKS[t] for t in TASKS], csc=True,  # class features
                                 cls_sample_rate=0.5)
    learner = fastprompt.SoftCPTLearner.from_model(tiny_model, TASKS, class_features=True, cls_sample_rate=0.5)
    learner.load_original_state_dict(reference.state_dict())
    images = random_images(4)
    learner.step_generator = step = _at(11)
    torch.manual_seed(99)  # the global stream elsewhere: the learner must not read it
    before = torch.get_rng_state()
    loss = learner.loss(images, LABELS)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(11)  # the original draws from its global stream at the step's position
    ref_loss = reference.loss(images, learner.label_matrix(LABELS))
    assert_close_rel(loss, ref_loss, FP32.parity, "loss")
    # the plan's replica consumes what the learner consumed (item i: label LABELS[i])
    replica = _at(11)
    softcpt_class_sample_draws(learner.class_ranges, [{int(c)} for c in LABELS], 0.5)(replica, range(4))
    assert torch.equal(replica.get_state(), step.get_state())


def test_pomp_negatives_draw_from_the_step_generator(tiny_model):
    classes = [f"class {i}" for i in range(10)]
    learner = fastprompt.POMPLearner.from_model(tiny_model, classes, num_sampled_classes=4)
    learner.step_generator = step = _at(5)
    assert learner.objective.generator is step
    torch.manual_seed(99)
    before = torch.get_rng_state()
    drawn = learner.objective.draw_negatives(learner.n_classes)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(5)
    assert torch.equal(drawn, torch.randperm(10)[:3])  # the original: randperm(N) on its global stream
    replica = _at(5)
    pomp_negative_draws(10)(replica, range(4))
    assert torch.equal(replica.get_state(), step.get_state())
