"""How a cost grows with a size: a least-squares line through measured points, and what it predicts.

``fit_line`` fits ``y = intercept + slope * x`` (e.g. step seconds vs number of classes: the slope
is the cost per added class); ``projection`` evaluates it at a size that was not measured (e.g.
21,841 ImageNet-21K classes); ``predict`` is the cautious estimate the scaling benchmark uses to
decide, before running a point, whether it can fit into its budget.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple


@dataclass(frozen=True)
class Fit:
    slope: float        # cost per added unit (class, image)
    intercept: float    # the fitted cost at size 0 (what does not grow with the size)
    r2: float           # coefficient of determination (1: the points lie on the line; nan with two points)
    points: int         # how many points were fitted

    def at(self, x: float) -> float:
        return self.intercept + self.slope * x


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> Fit:
    """Least-squares line through ``(xs, ys)``; needs at least two distinct ``xs``."""
    if len(xs) != len(ys):
        raise ValueError(f"fit_line needs as many xs as ys, got {len(xs)} and {len(ys)}")
    n = len(xs)
    if n < 2 or len(set(xs)) < 2:
        raise ValueError(f"a line needs at least two distinct sizes, got {sorted(set(xs))}; measure more points")
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys))
    slope = sxy / sxx
    intercept = mean_y - slope * mean_x
    residual = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys))
    total = sum((y - mean_y) ** 2 for y in ys)
    if n == 2:
        r2 = float("nan")  # two points always lie on their line: no evidence of linearity
    else:
        r2 = 1.0 - residual / total if total > 0 else 1.0
    return Fit(slope, intercept, r2, n)


def projection(points: Sequence[Tuple[float, float]], x: float) -> float:
    """The fitted line through ``points`` ``[(size, cost)]`` evaluated at ``x``."""
    xs, ys = zip(*points)
    return fit_line(xs, ys).at(x)


def predict(points: Sequence[Tuple[float, float]], x: float) -> float:
    """A cautious estimate of the cost at size ``x`` from measured ``points`` ``[(size, cost)]``.

    One point: proportional to the size (``y1 * x / x1``), which overestimates a line with a
    positive intercept when ``x > x1``. Two or more: the fitted line, but never less than the cost
    of the largest measured size below ``x`` (costs do not shrink as sizes grow). No points: 0.
    """
    if not points:
        return 0.0
    below = [p for p in points if p[0] <= x] or [min(points)]
    x_last, y_last = max(below)
    if len({p[0] for p in points}) < 2:
        return y_last * x / x_last if x_last > 0 else y_last
    return max(projection(points, x), y_last)
