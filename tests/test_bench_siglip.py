"""``bench/steps/bench_siglip.py``'s smoke mode (``--small``): SigLIP's exact text path against the
reference, side by side, with the causal contrast; and its agreement gate, which refuses to time
two sides whose losses differ."""
import os
import subprocess
import sys

import torch

REPO = os.path.dirname(os.path.abspath(os.path.dirname(__file__)))
SCRIPT = os.path.join(REPO, "bench", "steps", "bench_siglip.py")
sys.path.insert(0, REPO)


def test_the_smoke_run_reports_both_towers_and_what_bounds_them():
    done = subprocess.run([sys.executable, SCRIPT, "--small", "--repeats", "1"], capture_output=True, text=True,
                          timeout=600, cwd=REPO, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    siglip, causal = out.split("(causal text, contrast)", 1)
    # SigLIP: bidirectional, no padding mask: every prompt at the full context length (100 classes x 64
    # tokens, CoCoOp once per image of 2) on both sides, and the plan says nothing may be cut.
    assert "text rows per step: fastprompt 6400, reference 6400" in siglip
    assert "text rows per step: fastprompt 12800, reference 12800" in siglip
    assert siglip.count("none: full length") == 2 and siglip.count("bound: nothing may be cut or shared") == 2
    # CLIP's causal tower: the savings cut the rows, so no "nothing may be cut" bound is printed there.
    assert causal.count("prefix sharing, truncation after the pooled token, packing") == 2
    assert "bound:" not in causal
    assert out.count("losses agree to") == 4 and out.count("\n  step: fastprompt") == 4


def test_losses_that_disagree_are_not_timed():
    from bench.steps import bench_siglip

    pair = bench_siglip.siglip_pair("coop", small=True, device=torch.device("cpu"))
    ctx = pair.reference.prompt_learner.ctx
    with torch.no_grad():  # the reference's prompts no longer the learner's (a shift along every
        # dimension alike would be removed by ln_1: a random one is not)
        ctx.add_(torch.randn(ctx.shape, generator=torch.Generator().manual_seed(0)))
    assert bench_siglip.loss_disagreement(pair) > 1e-3
    assert bench_siglip.run_case("perturbed", "coop", pair, repeats=1, device=torch.device("cpu")) is False
