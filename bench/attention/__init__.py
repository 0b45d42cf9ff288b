"""The pieces of ``bench/bench_attention.py``, one job each:

- ``shapes``: the benchmark shapes (full-size and ``--small``) and the random inputs of one case;
- ``floors``: the op's useful FLOPs and minimal memory traffic, and the device's measured peaks;
- ``providers``: the implementations compared (eager cat + SDPA, every registered backend, FlexAttention);
- ``agreement``: every provider's output and gradients against eager, before anything is timed;
- ``measure``: the timed runs and the CSV rows.
"""
