"""Confidence intervals for the gate: accuracy on n items is a binomial proportion, not a point.

- `wilson(k, n)`: Wilson score interval of a proportion (Wilson 1927). Unlike the normal (Wald) interval it
  stays inside [0, 1] and keeps its coverage for small n and for k near 0 or n, which is where a gate lives.
- `paired_difference(a, b)`: interval of p_a − p_b when both models answered the *same* items (Newcombe 1998,
  method 10: the two Wilson intervals combined with the correlation of the paired outcomes). Pairing matters:
  on the same 20 questions the difference is far better determined than two independent 20-item samples.

Written by hand (30 lines) because scipy's `binomtest(...).proportion_ci(method="wilson")` covers only the
first, and statsmodels is not a dependency.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist


def z_value(confidence: float) -> float:
    """Two-sided normal quantile for a confidence level in (0, 1), e.g. 0.95 -> 1.96."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence {confidence} must be in (0, 1)")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


@dataclass(frozen=True)
class Interval:
    estimate: float
    lower: float
    upper: float
    n: int

    def __str__(self) -> str:
        return f"{self.estimate:.3f} [{self.lower:.3f}, {self.upper:.3f}] (n={self.n})"


def wilson(k: int, n: int, confidence: float = 0.95) -> Interval:
    """Wilson score interval for k successes out of n (n = 0 gives the vacuous [0, 1])."""
    if n <= 0:
        return Interval(0.0, 0.0, 1.0, 0)
    if not 0 <= k <= n:
        raise ValueError(f"k={k} outside [0, n={n}]")
    z = z_value(confidence)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half), n)


def paired_difference(a: list[bool], b: list[bool], confidence: float = 0.95) -> Interval:
    """Newcombe's hybrid score interval for p_a − p_b over paired binary outcomes (same items, same order)."""
    if len(a) != len(b):
        raise ValueError(f"paired outcomes of different lengths ({len(a)} vs {len(b)})")
    n = len(a)
    if n == 0:
        return Interval(0.0, -1.0, 1.0, 0)
    both = sum(x and y for x, y in zip(a, b))
    only_a = sum(x and not y for x, y in zip(a, b))
    only_b = sum(y and not x for x, y in zip(a, b))
    neither = n - both - only_a - only_b
    ka, kb = both + only_a, both + only_b
    wa, wb = wilson(ka, n, confidence), wilson(kb, n, confidence)
    d = (ka - kb) / n
    # phi: correlation of the two outcomes, with Newcombe's continuity correction of a positive numerator
    # (AD − BC − n/2, floored at 0); 0 when a margin is degenerate (all right or all wrong)
    prod = (both + only_a) * (neither + only_b) * (both + only_b) * (neither + only_a)
    num = both * neither - only_a * only_b
    num = max(num - n / 2, 0.0) if num > 0 else num
    phi = num / math.sqrt(prod) if prod > 0 else 0.0
    pa, pb = ka / n, kb / n
    dl2 = (pa - wa.lower) ** 2 - 2 * phi * (pa - wa.lower) * (wb.upper - pb) + (wb.upper - pb) ** 2
    du2 = (wa.upper - pa) ** 2 - 2 * phi * (wa.upper - pa) * (pb - wb.lower) + (pb - wb.lower) ** 2
    return Interval(d, max(-1.0, d - math.sqrt(max(dl2, 0.0))), min(1.0, d + math.sqrt(max(du2, 0.0))), n)
