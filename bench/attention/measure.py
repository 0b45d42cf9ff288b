"""The timed runs of ``bench_attention.py``: every native provider on every (shape, mode), and one
CSV row each with time, achieved bandwidth and FLOP/s, the floor and the speed-up over eager."""
from __future__ import annotations

from typing import Dict, List, Sequence

import torch

from bench.harness.report import common_fields
from bench.harness.timing import median, time_device

from .floors import floor_bytes, useful_flops
from .providers import make_step, providers_for
from .shapes import Shape, make_case


def time_all(shapes: Dict[str, Shape], shape_names: Sequence[str], modes: Sequence[str], device: torch.device,
             dtype: torch.dtype, names: List[str], peaks: Dict[str, float], repeats: int, small: bool,
             compile_flex: bool) -> List[Dict[str, object]]:
    rows = []
    for shape_name in shape_names:
        for mode in modes:
            case = make_case(shapes[shape_name], device, dtype)
            providers, _ = providers_for(case, mode, names, compile_flex)
            steps = {name: make_step(p, case, mode) for name, p in providers.items()}
            times = time_device(steps, device, repeats)
            flops, nbytes = useful_flops(case, mode), floor_bytes(case, mode)
            floor_s = nbytes / peaks["bytes_per_s"]
            eager_s = median(times["eager"]) if "eager" in times else float("nan")
            for name, samples in times.items():
                t = median(samples)
                row = {**common_fields(device), "shape": shape_name, "small": small, "mode": mode,
                       "provider": name, "dtype": str(dtype).replace("torch.", ""), "N": case.shape.n,
                       "L": case.shape.seq_len, "H": case.shape.heads, "d": case.shape.head_dim,
                       "G": case.shape.groups, "P": case.shape.n_prompt, "causal": case.shape.causal,
                       "repeats": repeats, "median_ms": round(t * 1e3, 4),
                       "tb_s": round(nbytes / t / 1e12, 4), "tflop_s": round(flops / t / 1e12, 4),
                       "pct_peak_bw": round(100 * nbytes / t / peaks["bytes_per_s"], 1),
                       "pct_peak_flops": round(100 * flops / t / peaks["flops_per_s"], 1),
                       "floor_ms": round(floor_s * 1e3, 4), "x_floor": round(t / floor_s, 2),
                       "speedup_vs_eager": round(eager_s / t, 2),
                       "peak_tb_s": round(peaks["bytes_per_s"] / 1e12, 3),
                       "peak_tflop_s": round(peaks["flops_per_s"] / 1e12, 2)}
                rows.append(row)
                print(f"{shape_name:6s} {mode:7s} {name:7s} {t * 1e3:9.3f} ms  {row['tb_s']:7.3f} TB/s "
                      f"({row['pct_peak_bw']:5.1f}%)  {row['tflop_s']:7.3f} TFLOP/s ({row['pct_peak_flops']:5.1f}%)  "
                      f"{row['x_floor']:6.2f}x floor  {row['speedup_vs_eager']:5.2f}x eager", flush=True)
    return rows
