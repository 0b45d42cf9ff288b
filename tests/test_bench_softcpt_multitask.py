"""``bench/steps/bench_softcpt_multitask.py``'s smoke mode (``--small``): SoftCPT's multi-task step and
epoch at General-10's task layout against the reference, side by side, with the feature cache and
the parts of a step; and its agreement gate, which refuses to time two sides whose losses differ."""
import csv
import os
import subprocess
import sys

import torch

REPO = os.path.dirname(os.path.abspath(os.path.dirname(__file__)))
SCRIPT = os.path.join(REPO, "bench", "steps", "bench_softcpt_multitask.py")
sys.path.insert(0, REPO)


def test_the_smoke_run_times_both_sides_and_says_where_the_time_goes(tmp_path):
    out_csv = tmp_path / "rows.csv"
    done = subprocess.run([sys.executable, SCRIPT, "--small", "--repeats", "1", "--csv", str(out_csv)],
                          capture_output=True, text=True, timeout=600, cwd=REPO,
                          env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    # General-10's ten tasks, class counts / 20 (rounded up, at least 2): 5+3+2+5+6+6+2+10+20+6 = 65
    assert "10 tasks, 65 classes, batch 8" in out and "losses agree to" in out
    assert "fastprompt encodes their" in out and "the reference all 65" in out
    assert "where fastprompt's step goes: image tower" in out and "where reference's step goes: image tower" in out
    assert "epoch (1 shot(s), 8 steps)" in out  # floor(65 / 8): the last partial batch dropped, as Dassl
    with open(out_csv) as f:
        rows = {r["unit"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"step", "step_cached", "image_tower", "prompt_generator", "text_side", "epoch",
                         "epoch_cached"}
    assert rows["step"]["classes"] == "65" and rows["step"]["tasks"] == "10" and float(rows["step"]["flop_ratio"]) > 1
    assert float(rows["epoch_cached"]["cache_fill_s"]) > 0 and rows["epoch"]["shots"] == "1"


def test_losses_that_disagree_are_not_timed():
    from bench.steps import bench_softcpt_multitask as b
    from fastprompt.testing import FP32

    bench = b.build("tiny", True, 8, torch.device("cpu"))
    assert bench.loss_disagreement() <= FP32.parity  # the same prompts: the same loss up to summation order
    with torch.no_grad():  # the reference's prompt generator no longer the learner's
        bench.reference.prompt_gen.proj.add_(torch.randn(bench.reference.prompt_gen.proj.shape,
                                                         generator=torch.Generator().manual_seed(0)))
    assert bench.loss_disagreement() > 1e-3
