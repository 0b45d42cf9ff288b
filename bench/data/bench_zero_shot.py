"""``fastprompt.zero_shot_classifier`` vs open_clip's ``build_zero_shot_classifier``.

Random-weight ``ViT-B-16`` (the speed does not depend on the weights), ImageNet-1K class names
(``open_clip.zero_shot_metadata.IMAGENET_CLASSNAMES``) x the 7 ``SIMPLE_IMAGENET_TEMPLATES``.
Both builders run on the same classes, timed round-robin (bench/harness/timing.py); the outputs must
agree within fp32 tolerance (max |diff| <= 1e-5). open_clip's builder encodes every prompt at the
full 77-token context; fastprompt's encodes each template's shared prefix once per chunk and only
the packed, EOT-truncated suffixes. Both costs are linear in the number of classes, so
``--classes`` below 1,000 (needed on a slow CPU: the open_clip side of 1,000 x 7 prompts takes
about a quarter of an hour on 2 busy cores) measures the per-class cost and the 1,000-class times
are projected from it (column ``projected``). Target: speed-up >= 5x.

    python bench/data/bench_zero_shot.py                      # 1,000 classes (GPU / fast CPU)
    python bench/data/bench_zero_shot.py --classes 100        # this project's 2-core CPU
"""
from __future__ import annotations

import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)  # run as a script: ``bench`` imports from the repository root
from bench.harness.timing import median, setup_threads, time_interleaved  # noqa: E402  (first: sets OMP_WAIT_POLICY)
from bench.harness.report import add_report_arguments, common_fields, report_rows  # noqa: E402

import torch  # noqa: E402

DEFAULT_CSV = os.path.join(REPO, "bench", "results", "bench_zero_shot.csv")
TARGET_SPEEDUP = 5.0
TOLERANCE = 1e-5
FULL_CLASSES = 1000


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=FULL_CLASSES, help="ImageNet classes measured (<= 1000)")
    parser.add_argument("--repeats", type=int, default=1, help="timed rounds per builder (median)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_report_arguments(parser, DEFAULT_CSV)
    args = parser.parse_args(argv)
    setup_threads(args.threads)

    import open_clip
    from open_clip import zero_shot_metadata as meta
    from open_clip.zero_shot_classifier import build_zero_shot_classifier

    from fastprompt import zero_shot_classifier
    from fastprompt.testing import random_clip

    device = torch.device(args.device)
    model = random_clip("ViT-B-16").to(device)
    tokenizer = open_clip.get_tokenizer("ViT-B-16")
    names = list(meta.IMAGENET_CLASSNAMES[:args.classes])
    templates = list(meta.SIMPLE_IMAGENET_TEMPLATES)
    out = {}

    def run_open_clip():
        out["open_clip"] = build_zero_shot_classifier(model, tokenizer, names, templates, num_classes_per_batch=10,
                                                      device=device)

    def run_fastprompt():
        out["fastprompt"] = zero_shot_classifier(model, names, templates, tokenizer=tokenizer)

    times = time_interleaved({"open_clip": run_open_clip, "fastprompt": run_fastprompt}, args.repeats, device,
                             warmup=0)
    t_ref, t_fast = median(times["open_clip"]), median(times["fastprompt"])
    diff = (out["open_clip"] - out["fastprompt"]).abs().max().item()
    speedup = t_ref / t_fast
    scale = FULL_CLASSES / len(names)
    row = {**common_fields(device), "benchmark": "zero_shot_classifier", "model": "ViT-B-16 (random)",
           "classes": len(names), "templates": len(templates), "open_clip_s": round(t_ref, 3),
           "fastprompt_s": round(t_fast, 3), "speedup": round(speedup, 2), "max_abs_diff": f"{diff:.2e}",
           "projected": scale != 1, "open_clip_1000_s": round(t_ref * scale, 1),
           "fastprompt_1000_s": round(t_fast * scale, 1)}
    print(f"{len(names)} classes x {len(templates)} templates on {row['device']}: open_clip {t_ref:.2f} s, "
          f"fastprompt {t_fast:.2f} s, speed-up {speedup:.1f}x, max |diff| {diff:.1e}")
    if scale != 1:
        print(f"projected to 1,000 classes (linear in classes): open_clip {t_ref * scale:.0f} s, "
              f"fastprompt {t_fast * scale:.0f} s")
    below = []
    if speedup < TARGET_SPEEDUP:
        below.append(f"speed-up {speedup:.2f}x < {TARGET_SPEEDUP}x")
    if not diff <= TOLERANCE:
        below.append(f"max |diff| {diff:.1e} > {TOLERANCE}")
    return report_rows(args.csv, [row], below, args.no_fail)


if __name__ == "__main__":
    sys.exit(main())
