"""The prompt-attention op alone.

The pieces of ``bench_attention.py``, one job each:

- ``shapes``: the benchmark shapes (full-size and ``--small``) and the random inputs of one case;
- ``floors``: the op's useful FLOPs and minimal memory traffic, and the device's measured peaks;
- ``providers``: the implementations compared (eager cat + SDPA, every registered backend, FlexAttention);
- ``agreement``: every provider's output and gradients against eager, before anything is timed;
- ``measure``: the timed runs and the CSV rows.

Scripts: ``bench_attention`` (every provider on those shapes), ``bench_cpu_backend`` (the C++ ``cpu``
backend against ``eager``), ``finite_check_cost`` (what the NaN/inf check costs a finite call),
``large_batch_probe`` (ImageNet-21K-scale text-suffix attention in one call); ``test_micro_ops``: the
providers as pytest-benchmark micro-benchmarks.
"""
