"""Wilson intervals against published values; Newcombe's paired interval by its defining properties."""

from __future__ import annotations

import pytest

from past.stats import paired_difference, wilson, z_value


def test_wilson_published_values() -> None:
    # Newcombe (1998a), Table I: 81/263 -> 0.2553-0.3662; 15/148 -> 0.0624-0.1605; 0/20 -> 0-0.1611
    for k, n, lo, hi in ((81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611)):
        ci = wilson(k, n)
        assert ci.lower == pytest.approx(lo, abs=5e-4) and ci.upper == pytest.approx(hi, abs=5e-4)
    assert wilson(0, 0).lower == 0.0 and wilson(0, 0).upper == 1.0
    assert z_value(0.95) == pytest.approx(1.959964, abs=1e-6)
    with pytest.raises(ValueError):
        wilson(5, 4)


def test_paired_difference_properties() -> None:
    same = [True, False] * 10
    d = paired_difference(same, same)
    assert d.estimate == 0 and -0.2 < d.lower < 0 < d.upper < 0.2, d  # agreement narrows, never to a point
    # pairing helps: the same margins, discordant only where they must be, give a narrower interval
    a, b = [True] * 12 + [False] * 8, [True] * 6 + [False] * 14
    shuffled = [False] * 6 + [True] * 12 + [False] * 2  # 12 vs 6 right again, but disagreeing
    tight, loose = paired_difference(a, b), paired_difference(shuffled, b)
    assert tight.estimate == loose.estimate == pytest.approx(0.3)
    assert tight.upper - tight.lower < loose.upper - loose.lower and tight.lower > 0
    d = paired_difference([True] * 20, [False] * 20)
    assert d.estimate == 1 and 0.7 < d.lower < 1 and d.upper == 1
    with pytest.raises(ValueError):
        paired_difference([True], [True, False])
