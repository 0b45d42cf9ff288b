"""SoftCPT's loss checks its labels like every learner's (int64 [B] in range, one ValueError naming the
fix), in each of its three label forms: joint class ids in [0, C_tot), ids within each sample's task with
``tasks``, and the original's [B, C_tot] label matrix."""
import pytest
import torch

import fastprompt
from fastprompt.reference import ReferenceSoftCPT
from fastprompt.testing import FP32, assert_close_rel, random_images

TASKS = {"animals": ["cat", "dog", "bird"], "sea": ["whale", "seal", "sea otter", "shark"], "plants": ["oak", "fern"]}
C_TOT = 9


@pytest.fixture(scope="module")
def learner(tiny_model):
    return fastprompt.SoftCPTLearner.from_model(tiny_model, TASKS)


@pytest.mark.parametrize("labels", [
    torch.tensor([0, C_TOT]), torch.tensor([-1, 2]), torch.tensor([0, -100]), torch.tensor([0.0, 1.0]),
    torch.tensor([True, False]), torch.tensor([0, 1], dtype=torch.int32), torch.tensor([0, 1, 2]),
    torch.tensor([0]), [0, 1],
], ids=["past_c_tot", "negative", "ignore_index", "float", "bool", "int32", "too_long", "too_short", "list"])
def test_bad_joint_labels_are_one_value_error_naming_the_forms(learner, labels):
    with pytest.raises(ValueError, match=rf"labels must .*SoftCPT's loss takes joint class ids \[B\] in \[0, {C_TOT}\)"):
        learner.loss(random_images(2), labels)


@pytest.mark.parametrize("labels,tasks,match", [
    (torch.tensor([True, False]), torch.tensor([0, 1]), "int64"),
    (torch.tensor([0.0, 1.0]), torch.tensor([0, 1]), "int64"),
    (torch.tensor([0, 1, 1]), torch.tensor([0, 1, 1]), r"labels within tasks: .*shape \[2\]"),
    (torch.tensor([0, 3]), torch.tensor([0, 2]), "not a class of task 2"),
    (torch.tensor([-1, 0]), torch.tensor([0, 2]), r"labels within tasks: .*got \[-1\]"),
])
def test_bad_labels_within_tasks_are_one_value_error(learner, labels, tasks, match):
    with pytest.raises(ValueError, match=match):
        learner.loss(random_images(2), labels, tasks=tasks)


def _matrix(rows):
    return torch.tensor(rows, dtype=torch.long)


@pytest.mark.parametrize("matrix,match", [
    (_matrix([[0, 1, 0] + [-1] * 6, [-1] * 3 + [0, 0, 0, 0] + [-1, -1]]), "row 1 .* task 'sea'"),  # no class
    (_matrix([[1, 1, 0] + [-1] * 6, [-1] * 3 + [0, 0, 1, 0] + [-1, -1]]), "row 0 .* task 'animals'"),  # two
    (_matrix([[0, 1, -1] + [-1] * 6, [-1] * 3 + [0, 0, 1, 0] + [-1, -1]]), "row 0 .* task 'animals'"),  # mixed
    (torch.zeros(2, C_TOT, dtype=torch.bool), "integer tensor"),
    (torch.full((2, C_TOT), 0.5), "integer tensor"),
    (torch.full((3, C_TOT), -1), "3 samples"),
])
def test_bad_label_matrices_are_one_value_error(learner, matrix, match):
    with pytest.raises(ValueError, match=match):
        learner.loss(random_images(2), matrix)


def test_valid_labels_in_every_form_still_match_the_reference(tiny_model):
    torch.manual_seed(0)
    reference = ReferenceSoftCPT(tiny_model, list(TASKS), [TASKS[t] for t in TASKS])
    learner = fastprompt.SoftCPTLearner.from_model(tiny_model, TASKS)
    learner.load_original_state_dict(reference.state_dict())
    images, joint = random_images(4), torch.tensor([0, 4, 8, 3])
    expected = reference.loss(images, learner.label_matrix(joint))
    assert_close_rel(learner.loss(images, joint), expected, FP32.parity, "joint labels")
    within, tasks = torch.tensor([0, 1, 1, 0]), torch.tensor([0, 1, 2, 1])
    assert_close_rel(learner.loss(images, within, tasks=tasks), expected, FP32.parity, "labels within tasks")
    assert_close_rel(learner.loss(images, learner.label_matrix(joint)), expected, FP32.parity, "label matrix")
