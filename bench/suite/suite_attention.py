"""The suite's attention rows: every provider that runs natively here, on the op's benchmark shapes.

The pieces of ``bench/attention/bench_attention.py`` (``bench/attention/``): the providers must
agree with eager first (``check_all``), then ``time_all`` times them; each of its rows becomes a
suite row (``kind=attention``, ``case`` = the shape, ``side`` = the provider, ``baseline`` = eager,
``speedup`` over eager).
Providers that only run as references here (Triton's interpreter, uncompiled FlexAttention) are
not timed; the returned notes say so.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import torch

from bench.attention.agreement import check_all
from bench.attention.floors import measure_peaks
from bench.attention.measure import time_all
from bench.attention.providers import default_providers, reference_only
from bench.attention.shapes import DEFAULT_SHAPES, SHAPES, SMALL

MODES = ("fwd", "fwd+bwd")


def attention_rows(opts, base: Dict[str, object]) -> Tuple[List[Dict[str, object]], List[str], List[str]]:
    """``(rows, failures, notes)``: rows of the native providers, disagreements (then nothing is
    timed), and the providers left out with why."""
    device = torch.device(opts.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    shapes = SMALL if opts.quick else SHAPES
    names = default_providers()
    slow = {n: r for n in names if (r := reference_only(n, device, False))}
    native = [n for n in names if n not in slow]
    notes = [f"attention: {n} not timed ({r})" for n, r in slow.items()]
    failures = check_all(shapes, DEFAULT_SHAPES, MODES, device, dtype, native, {}, opts.quick, False)
    if failures:
        return [], [f"attention providers disagree with eager: {'; '.join(failures)}"], notes
    peaks = measure_peaks(device, dtype)
    rows = []
    for r in time_all(shapes, DEFAULT_SHAPES, MODES, device, dtype, native, peaks, opts.repeats, opts.quick, False):
        shape = shapes[r["shape"]]
        rows.append(dict(base, kind="attention", case=r["shape"], description=shape.description, side=r["provider"],
                         baseline="eager", **{k: r[k] for k in ("mode", "dtype", "N", "L", "H", "d", "G", "P",
                                                                "causal", "repeats")},
                         median_s=r["median_ms"] / 1e3, speedup=r["speedup_vs_eager"], x_floor=r["x_floor"],
                         tb_s=r["tb_s"], tflop_s=r["tflop_s"]))
    return rows, [], notes
