"""The recovery theorem's conditions as code (paper Theorem 6.1, ICLR version; digest §4.3).

The exponents below are transcribed from secondary summaries of the paper and could not be
checked against its text (digest §4.3 tags them [S]). Every "≲" is read with constant 1, so the
edges are orders of magnitude, not sharp thresholds. Each formula sits in one small function so
that it is easy to revise when the simulations disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Band:
    """An interval [lower, upper] for the target frequency p (empty when lower > upper)."""

    lower: float
    upper: float

    @property
    def empty(self) -> bool:
        return self.lower > self.upper

    def contains(self, p: float) -> bool:
        return self.lower <= p <= self.upper


def stated_band(n: int, d: int, s: float, epsilon: float = 0.0, varsigma: float = 0.0) -> Band:
    """Theorem 6.1: n^-1 ≲ p ≲ min{n^-(1+1/s)/2, n^-2(1+eps)^2/s, d^(1-varsigma)/n}."""
    upper = min(
        n ** (-(1 + 1 / s) / 2),
        n ** (-2 * (1 + epsilon) ** 2 / s),
        d ** (1 - varsigma) / n,
    )
    return Band(lower=1 / n, upper=upper)


def simplified_band(n: int, d: int, s: float) -> Band:
    """Simplified reading with f = s/n: f ≲ p ≲ min(sqrt(f), f d)."""
    f = s / n
    return Band(lower=f, upper=min(np.sqrt(f), f * d))


def phase_boundary(n: int) -> float:
    """The dimension d = sqrt(n) where the band's upper edge switches from f d to sqrt(f)."""
    return float(np.sqrt(n))


def superposition_regime(n: int, d: int) -> str:
    """'heavy' when d < sqrt(n) (narrow band), 'light' otherwise (wide band)."""
    return "heavy" if d < phase_boundary(n) else "light"


def opening_dimension(n: int, s: float, false_share: float = 1.0) -> float:
    """Ours, not the paper's: the smallest d at which one neuron can single out one feature by its bias.

    With random unit features, a neuron aligned with v_i sees ~ 1/sqrt(s) on a unit-norm sample that
    holds i (equal coefficients) and ~ N(0, 1/d) on one that does not. At the threshold 1/sqrt(s),
    which keeps half of the feature's own samples, the others fire with probability Q(sqrt(d/s)).
    Demanding at most `false_share` false firings per true one, (1 - f) Q(sqrt(d/s)) <= false_share f
    with f = s/n, gives d = s Q^-1(false_share f / (1 - f))^2 ~ 2 s ln(n/s): the opening grows like
    log n, not like sqrt(n). A hypothesis for the grids to test; its constant is not fitted.
    """
    from scipy.stats import norm

    f = s / n
    return float(s * norm.isf(false_share * f / (1 - f)) ** 2)


def required_width(n: int, p: float, s: float, epsilon: float = 0.0) -> float:
    """Width condition M ≳ n p^(-s/(1-eps)^2); the sign of the exponent is itself uncertain (digest §4.3)."""
    return n * p ** (-s / (1 - epsilon) ** 2)


def theory_columns(n: int, d: int, s: float, p: float, width: int, epsilon: float = 0.0, varsigma: float = 0.0) -> dict:
    """Where one setting lies against the theorem, as flat columns for a results table."""
    stated = stated_band(n, d, s, epsilon, varsigma)
    simple = simplified_band(n, d, s)
    return {
        "regime": superposition_regime(n, d),
        "stated_band_lower": stated.lower,
        "stated_band_upper": stated.upper,
        "in_stated_band": stated.contains(p),
        "simplified_band_lower": simple.lower,
        "simplified_band_upper": simple.upper,
        "in_simplified_band": simple.contains(p),
        "required_width": required_width(n, p, s, epsilon),
        "width_condition_holds": width >= required_width(n, p, s, epsilon),
    }
