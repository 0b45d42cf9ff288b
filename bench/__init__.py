"""fastprompt's benchmarks, one folder per part, bottom to top (a folder imports only the folders
before it here; ``tests/test_bench_layout.py`` checks it). Every script runs from the repository
root as ``python bench/<folder>/<script>.py`` and appends its CSV rows to ``bench/results/``;
``bench/README.md`` has the results and the commands.

- ``harness/``: what every benchmark stands on: thread settings and round-robin timing, peak
  memory, CSV rows that name the commit, versions and device, and the exit status of a missed target;
- ``steps/``: whole training steps and evaluation passes, fastprompt against ``fastprompt.reference``:
  the cases, one side in a fresh process, FLOP counting, and the ``bench_step``, ``bench_breakdown``,
  ``bench_trainer``, ``bench_full_vocab`` and ``step_checks`` scripts;
- ``attention/``: the prompt-attention op alone: its providers, shapes and floors, and the
  ``bench_attention``, ``bench_cpu_backend`` and ``large_batch_probe`` scripts;
- ``data/``: dataset loading and decoding, the frozen image side's feature cache, the zero-shot
  classifier;
- ``suite/``: the whole suite in one command (``suite.py``: train, eval, attention, scaling) and what
  it writes: the scaling curves and their fit, rows read back, comparisons, the Markdown table, plots.

``conftest.py`` and ``*/test_micro_*.py`` are pytest-benchmark micro-benchmarks (``pytest bench/``);
``gpu_check.sh`` is the short GPU session's script.
"""
