"""Range checks shared by every config: one clear error naming the setting and its allowed range."""

from __future__ import annotations

import math
from numbers import Integral, Real


class ConfigError(ValueError):
    """A setting is outside its allowed range; the message names the setting and the range."""


MAX_SEED = 2**63 - 1
"""Largest seed: torch generators and numpy take any integer up to here."""


def check_int(name: str, value, low: int | None = None, high: int | None = None) -> None:
    """Require an integer in [low, high] (either bound may be open-ended)."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ConfigError(f"{name}: must be an integer, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ConfigError(f"{name}: must lie in [{'-inf' if low is None else low}, {'inf' if high is None else high}], got {value!r}")


def check_real(
    name: str,
    value,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Require a finite real number within the given bounds (open or closed on each side)."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ConfigError(f"{name}: must be a finite number, got {value!r}")
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    if below or above:
        left = "-inf" if low is None else f"{low:g}"
        right = "inf" if high is None else f"{high:g}"
        interval = f"{'(' if low_open or low is None else '['}{left}, {right}{')' if high_open or high is None else ']'}"
        raise ConfigError(f"{name}: must lie in {interval}, got {value!r}")


def check_choice(name: str, value, choices) -> None:
    """Require one of a fixed set of values."""
    if value not in choices:
        raise ConfigError(f"{name}: must be one of {', '.join(map(str, choices))}; got {value!r}")


def multiple_setting(text, name: str, unit: str, unit_value: float, example: str, plain: str, integer: bool = False):
    """A setting written as a multiple of a unit ('2f', '4n', '2sqrt(n)') or as a plain number.

    `unit` is the suffix, `unit_value` its value; `plain` describes the plain form for the error.
    Integer settings are rounded to the nearest integer, at least 1.
    """
    text = str(text).strip()
    try:
        if text.endswith(unit):
            value = float(text[: -len(unit)]) * unit_value
            return max(1, round(value)) if integer else value
        return int(text) if integer else float(text)
    except ValueError:
        raise ConfigError(f"{name}: must be {plain} or a multiple of {unit} such as '{example}', got {text!r}") from None
