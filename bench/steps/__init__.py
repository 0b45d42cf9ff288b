"""Whole training steps and evaluation passes, fastprompt against the literal original code paths of
``fastprompt.reference``:

- ``step_cases`` / ``eval_cases``: one builder each, the table of cases and their targets;
- ``side_child``: one side of one unit in a fresh process (set-up, peak memory, call times);
- ``flop_count``: the FLOPs of a step, attention kernels included;
- scripts: ``bench_step`` (the cases, side by side), ``bench_breakdown`` (where a step's time goes),
  ``bench_trainer`` (the Trainer's overhead), ``bench_full_vocab`` (POMP's full-vocabulary step),
  ``bench_siglip`` (SigLIP's exact text path against the reference, and what bounds it),
  ``step_checks`` (device syncs and ``torch.compile`` of a step, for the GPU check);
- ``test_micro_steps``: the same units as pytest-benchmark micro-benchmarks.
"""
