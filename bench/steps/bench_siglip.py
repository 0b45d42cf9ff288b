"""A training step on SigLIP's exact text path vs the literal reference, side by side, and what bounds it.

SigLIP's text tower (ViT-B-16-SigLIP: 12 layers, width 768, context length 64, ``last`` pooling)
attends bidirectionally and masks no padding, so every token of every prompt, padding included,
reaches the pooled row: nothing may be cut (no truncation after the pooled token, no packing) and
nothing shared (the context sees the class tokens, so no ``[SOT][ctx]`` prefix is shared).
fastprompt's text path (``fastprompt/towers/text_semantics.py``) therefore encodes every prompt at
full length, as the reference (``fastprompt/reference/text_encoder.py``) does, all classes in one
attention call per layer. Every layer computes the reference's rows; only the last layer's
out-projection and MLP run on the pooled rows alone (nothing else reads that layer's output, under
any mask), which on 12 layers is a few percent of the text FLOPs. So the FLOP ratio stays near 1 and
the ratio is bounded by how efficiently the same work runs -- the attention op and the layout --
not by any saving. The plan's ``semantics.savings`` says which savings each tower allows.

For the CoOp and CoCoOp steps of ``step_cases.py`` (loss, backward, SGD over the prompt parameters;
the cases' batches and their 100 ImageNet class names) this times fastprompt and the reference side
by side in one process (round-robin medians) on a random-weight ViT-B-16-SigLIP, and reports each
median, the ratio, the FLOP ratio (``flop_count.py``: the speed-up at equal FLOP/s), both sides'
text rows and the savings the tower allows. The same steps on ViT-B-16 CLIP's causal text tower
(``--no-causal``: skip) show the contrast: there the savings cut the text rows. Nothing here has a
target: the script exits 0 after printing, 1 only when the two sides' losses disagree beyond
``FP32.parity`` (checked before anything is timed).

SigLIP's own tokenizer needs ``transformers`` and a download: ``fastprompt.testing.scaled_models``'s
stand-in (SigLIP's special-token layout over CLIP's BPE ids) takes its place, and the token embedding
table is sized to the stand-in's ids (49,411 rows instead of 32,000: a table the step only gathers
from, so the step's cost does not change). ``--small`` runs that module's scaled-down SigLIP (2 text
layers, width 64, a one-block timm image tower) and the tiny CLIP.

    OMP_WAIT_POLICY=PASSIVE python bench/steps/bench_siglip.py             # full size, CPU, 2 threads
    python bench/steps/bench_siglip.py --small --repeats 1                 # scaled-down smoke run
"""
from __future__ import annotations

import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)  # run as a script: ``bench`` imports from the repository root
from bench.harness.timing import median, setup_threads, time_interleaved  # noqa: E402  (first: sets OMP_WAIT_POLICY)
from bench.steps.flop_count import count_flops  # noqa: E402
from bench.steps.step_cases import CASES, Pair, build_pair, imagenet_classnames, pair_steps, random_batch  # noqa: E402

import torch  # noqa: E402

SIGLIP = "ViT-B-16-SigLIP"
CAUSAL = "ViT-B-16"        # the causal contrast: CLIP's text tower
STEPS = ("coop", "cocoop")


def siglip(small: bool):
    """``(model, tokenizer)``: a random-weight, frozen ViT-B-16-SigLIP with the stand-in tokenizer
    (``small``: ``fastprompt.testing.scaled_models.scaled_clip``'s scaled-down build of it, whose
    random weights are moved off timm's near-identity init)."""
    import open_clip

    from fastprompt.models import frozen
    from fastprompt.testing.scaled_models import HF_TOKENIZER_LAYOUTS, StandInTokenizer, scaled_clip

    if small:
        return scaled_clip(SIGLIP)
    text_cfg = open_clip.get_model_config(SIGLIP)["text_cfg"]
    start, eos, pad, first_text_id = HF_TOKENIZER_LAYOUTS["siglip"]
    tokenizer = StandInTokenizer(text_cfg["context_length"], start, eos, pad, first_text_id,
                                 text_cfg["tokenizer_kwargs"]["clean"])
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:  # the token table sized to the stand-in's ids; every other size is the config's
        model = open_clip.create_model(SIGLIP, pretrained=None,
                                       text_cfg=dict(text_cfg, vocab_size=tokenizer.vocab_size))
    finally:
        torch.random.set_rng_state(gen_state)
    return frozen(model), tokenizer


def siglip_pair(name: str, small: bool, device: torch.device) -> Pair:
    """``CASES[name]``'s learner and reference on :func:`siglip`, the learner loaded with the
    reference's prompts (the reference seeded with 0), and the case's random batch."""
    import fastprompt
    import fastprompt.reference

    spec = CASES[name]
    model, tokenizer = siglip(small)
    model = model.to(device)
    names = imagenet_classnames(spec.classes)
    torch.manual_seed(0)
    reference = getattr(fastprompt.reference, spec.reference)(model, names, tokenizer=tokenizer, **spec.kwargs)
    learner = getattr(fastprompt, spec.learner).from_model(model, names, tokenizer=tokenizer, **spec.kwargs)
    learner.load_original_state_dict(spec.state(reference).state_dict())
    images, labels = random_batch(model, spec.images, spec.classes, device=device)
    info = dict(method=name, images=spec.images, classes=spec.classes, n_ctx=spec.n_ctx)
    return Pair(learner.to(device), reference.to(device), model, images, labels, info)


def text_rows(pair: Pair, passes: int):
    """``(fastprompt's text rows, the reference's)`` per step: the rows the exact layout computes (packed
    tokens plus the shared prefix rows) and the reference's prompts x context length, ``passes`` times
    (CoCoOp: one pass per image on both sides)."""
    plan = pair.learner.text_tower.layout(pair.learner.plan)
    return (passes * (plan.n_tokens + plan.n_groups * plan.prefix_len),
            passes * pair.reference.tokenized_prompts.numel(), plan.semantics.savings)


def loss_disagreement(pair: Pair) -> float:
    """Relative difference of the two sides' losses on the case's batch, before any step."""
    with torch.no_grad():
        fast = pair.learner.loss(pair.images, pair.labels).double()
        ref = pair.reference.loss(pair.images, pair.labels).double()
    return float((fast - ref).abs() / ref.abs().clamp_min(1e-30))


def run_case(label: str, name: str, pair: Pair, repeats: int, device: torch.device) -> bool:
    """Check, time and explain one case; False when the losses disagree (nothing is timed then)."""
    from fastprompt.testing import FP32

    spec = CASES[name]
    err = loss_disagreement(pair)
    if err > FP32.parity:
        print(f"{label} {name}: fastprompt's and the reference's losses differ by {err:.1e} relative "
              f"(> FP32.parity {FP32.parity:.0e}): not timing a wrong answer", flush=True)
        return False
    fast_rows, ref_rows, savings = text_rows(pair, spec.images if spec.image_conditioned else 1)
    fast, ref = pair_steps(spec, pair)
    t = {k: median(v) for k, v in time_interleaved({"fast": fast, "ref": ref}, repeats, device).items()}
    flops = {side: count_flops(fn)[0] for side, fn in (("fast", fast), ("ref", ref))}
    print(f"{label} {name}: {spec.description}\n"
          f"  losses agree to {err:.1e} relative (FP32.parity {FP32.parity:.0e})\n"
          f"  step: fastprompt {t['fast']:.3f} s, reference {t['ref']:.3f} s: ratio {t['ref'] / t['fast']:.2f}x "
          f"(median of {repeats}, round-robin)\n"
          f"  FLOPs: fastprompt {flops['fast'] / 1e9:.1f} GF, reference {flops['ref'] / 1e9:.1f} GF: "
          f"{flops['ref'] / flops['fast']:.2f}x at equal FLOP/s (measured fastprompt "
          f"{flops['fast'] / t['fast'] / 1e9:.0f} GF/s, reference {flops['ref'] / t['ref'] / 1e9:.0f} GF/s)\n"
          f"  text rows per step: fastprompt {fast_rows}, reference {ref_rows} ({ref_rows / fast_rows:.2f}x)\n"
          f"  exact savings on this tower (plan.semantics.savings): {savings}", flush=True)
    if ref_rows == fast_rows:
        print(f"  bound: nothing may be cut or shared: every layer computes the reference's {ref_rows} rows (only "
              f"the last layer's out-projection and MLP run on the pooled rows alone), so fewer FLOPs give at most "
              f"{flops['ref'] / flops['fast']:.2f}x; the rest of the ratio is how fast the same work runs: "
              "fastprompt's attention op and layout against open_clip's own transformer", flush=True)
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(STEPS), choices=STEPS, metavar="CASE")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--small", action="store_true", help="scaled-down towers (a smoke run)")
    parser.add_argument("--no-causal", action="store_true", help="skip the causal ViT-B-16 contrast")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    setup_threads(args.threads)
    size = "scaled down (--small)" if args.small else "full size"
    ok = True
    for name in args.cases:
        ok &= run_case(f"{SIGLIP} ({size}, bidirectional text)", name, siglip_pair(name, args.small, device),
                       args.repeats, device)
    if not args.no_causal:
        causal = "tiny" if args.small else CAUSAL
        for name in args.cases:
            ok &= run_case(f"{causal} (causal text, contrast)", name, build_pair(CASES[name], causal, device),
                           args.repeats, device)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
