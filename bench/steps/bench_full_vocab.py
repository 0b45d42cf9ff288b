"""Full-vocabulary POMP text step (fastprompt) vs the original's sampled step (K classes).

POMP (Ren et al., NeurIPS 2023; amazon-science/prompt-pretraining ``trainers/pomp.py``) samples
``K = 1,000`` of the ImageNet-21K classes per step because the full softmax over 10K-21K classes
did not fit: every step encodes ``B + K - 1`` prompts at 77 tokens, assembled with ``torch.cat``
(:class:`fastprompt.reference.pomp.ReferencePOMP`, the literal path). fastprompt's
:class:`~fastprompt.learners.POMPLearner` with ``mode="full"`` encodes *every* class through the
prefix-shared, EOT-truncated, packed text tower and takes the exact softmax.

One step here is the text side of a training step, forward and backward into the prompt: class
features, logits against ``B = 32`` fixed normalised image features, cross-entropy. Random-weight
``ViT-B-16``, ``n_ctx = 4`` (POMP's), class names = WordNet lemmas of a seeded random sample of
the winter-21 ImageNet-21K classes (timm's tables; the original's universe). The reference's
negatives are drawn from the same class list.

Both paths cost time and activation memory in proportion to the tokens they run (attention over
<= 77 tokens is a small part), so on a slow CPU the step is measured at ``--classes`` /
``--sampled`` below the full sizes and the per-token rates project the full sizes: full vocabulary
over 5,000, 10,450 (winter-21) and 21,841 (fall-11 full) classes, and the original at K = 1,000.
Token counts of the full sizes are exact (their plans are built). Target: the full-vocabulary
step over 5,000 classes costs less time than the original sampled step over 1,000.

    python bench/steps/bench_full_vocab.py                             # measured at full size
    python bench/steps/bench_full_vocab.py --classes 500 --sampled 100 # this project's 2-core CPU
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)  # run as a script: ``bench`` imports from the repository root
from bench.harness.timing import median, setup_threads, synchronize  # noqa: E402  (first: sets OMP_WAIT_POLICY)
from bench.harness.memory import PeakRSS  # noqa: E402
from bench.harness.report import add_report_arguments, common_fields, report_rows  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

DEFAULT_CSV = os.path.join(REPO, "bench", "results", "bench_full_vocab.csv")
BATCH = 32
N_CTX = 4
FULL_SIZES = (5000, 10450, 21841)
SAMPLED_K = 1000


def class_names(n: int, seed: int = 0):
    """``n`` winter-21 class names (all of them, or a seeded sample); beyond 10,450 the full universe."""
    from fastprompt.data.imagenet21k_classes import build_class_table

    universe = "winter21" if n <= 10450 else "full"
    names = build_class_table(universe=universe).names
    return names if n == len(names) else random.Random(seed).sample(names, n)


def packed_tokens(tokenizer, names):
    """``(tokens, padded)`` of one full-vocabulary step: the packed suffixes plus the shared prefix
    once, and the same with the suffixes' rows in the padded attention layout (its length buckets)."""
    from fastprompt.learners.prompts import context_template, coop_plan

    plan = coop_plan(tokenizer, names, context_template(tokenizer, N_CTX))
    prefix = plan.prefix_len * plan.n_groups
    return plan.n_tokens + prefix, plan.padded_tokens + prefix


def measure(fn, device, repeats: int):
    """(median seconds, peak bytes) of ``fn`` (one warm-up call)."""
    fn()
    times, peak = [], 0
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        with PeakRSS() as mem:
            synchronize(device)
            t0 = time.perf_counter()
            fn()
            synchronize(device)
            times.append(time.perf_counter() - t0)
        used = torch.cuda.max_memory_allocated(device) - base if device.type == "cuda" else mem.peak_bytes
        peak = max(peak, used)
    return median(times), peak


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=FULL_SIZES[0], help="classes of the measured full-vocab step")
    parser.add_argument("--sampled", type=int, default=SAMPLED_K, help="K of the measured original step")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backend", default="auto", help="prompt_attention backend of fastprompt's tower")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_report_arguments(parser, DEFAULT_CSV)
    args = parser.parse_args(argv)
    setup_threads(args.threads)
    if not 1 < args.sampled <= args.classes:
        parser.error("need 1 < --sampled <= --classes (the original samples its negatives from the class list)")

    from fastprompt.learners import POMPLearner
    from fastprompt.learners.base import default_tokenizer
    from fastprompt.reference.pomp import ReferencePOMP, pomp_local_logits, pomp_negative_sampling
    from fastprompt.testing import random_clip

    device = torch.device(args.device)
    model = random_clip("ViT-B-16").to(device)
    tokenizer = default_tokenizer(model)
    names = class_names(args.classes)
    gen = torch.Generator().manual_seed(0)
    image = F.normalize(torch.randn(BATCH, model.text_projection.shape[1], generator=gen), dim=-1).to(device)
    labels = torch.randint(0, args.classes, (BATCH,), generator=gen).to(device)

    torch.manual_seed(0)
    fast = POMPLearner.from_model(model, names, n_ctx=N_CTX, mode="full", backend=args.backend).to(device)
    torch.manual_seed(0)
    ref = ReferencePOMP(model, names, n_ctx=N_CTX, num_sampled_classes=args.sampled).to(device)
    negatives = pomp_negative_sampling(args.classes, args.sampled - 1, gen).to(device)

    def fast_step():
        fast.ctx.grad = None
        text = F.normalize(fast.text_features(), dim=-1)
        F.cross_entropy(100.0 * image @ text.t(), labels).backward()

    def ref_step():
        pl = ref.prompt_learner
        pl.ctx.grad = None
        label_upd = torch.cat([labels, negatives])
        text = ref.text_encoder(pl(label_upd), pl.train_tokenized_prompts[label_upd])
        text = text / text.norm(dim=-1, keepdim=True)
        logits = pomp_local_logits(image, text, labels, negatives, args.classes, args.sampled, torch.tensor(100.0))
        F.cross_entropy(logits, torch.zeros_like(labels)).backward()

    t_fast, m_fast = measure(fast_step, device, args.repeats)
    t_ref, m_ref = measure(ref_step, device, args.repeats)
    tok_fast, pad_fast = packed_tokens(tokenizer, names)
    tok_ref = (BATCH + args.sampled - 1) * 77
    rate_t_fast, rate_m_fast = t_fast / tok_fast, m_fast / tok_fast
    rate_t_ref, rate_m_ref = t_ref / tok_ref, m_ref / tok_ref

    common = {**common_fields(device), "benchmark": "full_vocab_text_step", "model": "ViT-B-16 (random)",
              "n_ctx": N_CTX, "batch": BATCH, "backend": args.backend}
    rows = [{**common, "path": "fastprompt full vocabulary", "classes": args.classes, "tokens_per_step": tok_fast,
             "seconds": round(t_fast, 3), "peak_mib": round(m_fast / 2**20, 1), "projected": False,
             "padded_tokens": pad_fast},
            {**common, "path": f"original sampled K={args.sampled}", "classes": args.sampled,
             "tokens_per_step": tok_ref, "seconds": round(t_ref, 3), "peak_mib": round(m_ref / 2**20, 1),
             "projected": False, "padded_tokens": tok_ref}]
    print(f"measured on {common['device']}:")
    print(f"  fastprompt full vocabulary, {args.classes} classes: {tok_fast} tokens ({pad_fast} in the padded "
          f"attention layout), {t_fast:.2f} s, peak {m_fast / 2**20:.0f} MiB")
    print(f"  original sampled, K={args.sampled} (B+K-1={BATCH + args.sampled - 1} prompts x 77): {tok_ref} tokens, "
          f"{t_ref:.2f} s, peak {m_ref / 2**20:.0f} MiB")

    tok_ref_k = (BATCH + SAMPLED_K - 1) * 77
    t_ref_k = t_ref if args.sampled == SAMPLED_K else rate_t_ref * tok_ref_k
    m_ref_k = m_ref if args.sampled == SAMPLED_K else rate_m_ref * tok_ref_k
    if args.sampled != SAMPLED_K:
        rows.append({**common, "path": f"original sampled K={SAMPLED_K}", "classes": SAMPLED_K,
                     "tokens_per_step": tok_ref_k, "seconds": round(t_ref_k, 2), "peak_mib": round(m_ref_k / 2**20),
                     "projected": True, "padded_tokens": tok_ref_k})
    print(f"original sampled K={SAMPLED_K}: {tok_ref_k} tokens, {t_ref_k:.1f} s, peak {m_ref_k / 2**20:.0f} MiB"
          + (" (projected per token)" if args.sampled != SAMPLED_K else ""))
    t_5000 = None
    for size in FULL_SIZES:
        tok, pad = (tok_fast, pad_fast) if size == args.classes else packed_tokens(tokenizer, class_names(size))
        t = t_fast if size == args.classes else rate_t_fast * tok
        m = m_fast if size == args.classes else rate_m_fast * tok
        t_5000 = t if size == FULL_SIZES[0] else t_5000
        if size != args.classes:
            rows.append({**common, "path": "fastprompt full vocabulary", "classes": size, "tokens_per_step": tok,
                         "seconds": round(t, 2), "peak_mib": round(m / 2**20), "projected": True,
                         "padded_tokens": pad})
        print(f"full vocabulary {size} classes: {tok} tokens ({tok / tok_ref_k:.2f}x the original's K={SAMPLED_K}; "
              f"{pad} padded), "
              f"{t:.1f} s ({t / t_ref_k:.2f}x), peak {m / 2**20:.0f} MiB"
              + (" (projected per token)" if size != args.classes else ""))
    below = []
    if not t_5000 < t_ref_k:
        below.append(f"full vocabulary over {FULL_SIZES[0]} classes {t_5000:.1f} s >= original K={SAMPLED_K} "
                     f"{t_ref_k:.1f} s")
    return report_rows(args.csv, rows, below, args.no_fail)


if __name__ == "__main__":
    sys.exit(main())
