"""The evaluation unit's agreement check (``bench/steps/eval_cases.py``) on the tiny model: nothing is
timed; the check itself is what a benchmark run relies on before it times anything."""
import os
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench.steps import eval_cases  # noqa: E402
from bench.steps.step_cases import CASES  # noqa: E402

from fastprompt.learners import frozen_precision  # noqa: E402
from fastprompt.testing import BF16  # noqa: E402


def test_fp32_cases_compare_logits_only():
    case = eval_cases.build_eval(CASES["coop"], "tiny", torch.device("cpu"), n_images=2, batch=1)
    assert case.rel_error <= eval_cases.AGREEMENT and case.feature_error is None
    case.fastprompt()
    case.reference()


def test_the_bf16_image_case_checks_its_logits_on_fp32_features_and_its_features_against_fp32(monkeypatch):
    # bf16 rounding whatever this CPU supports (emulated where it has no bf16 instructions: same rounding).
    monkeypatch.setattr(frozen_precision, "bf16_unsupported_reason", lambda device: None)
    case = eval_cases.build_eval(CASES["coop_bf16img"], "tiny", torch.device("cpu"), n_images=2, batch=1)
    assert case.rel_error <= eval_cases.AGREEMENT
    # Above 1e-4: the features really went through bf16 (an fp32 path errs by under 1e-6).
    assert 1e-4 < case.feature_error <= BF16.frozen_image


def test_a_case_without_images_has_no_evaluation_unit():
    with pytest.raises(ValueError, match="no evaluation unit"):
        eval_cases.build_eval(CASES["text"], "tiny", torch.device("cpu"), n_images=2, batch=1)
