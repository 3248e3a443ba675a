"""When a BA/GBA grid point has settled: the rule every verdict applies, read from a grid's tables.

A point trained with bias adaptation has settled when its controller has had time to act and its
metric has stopped moving; a verdict uses no other BA/GBA point.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd

MIN_CONTROLLER_UPDATES = 10
"""The controller must have enforced the targets at least this many times."""
MAX_FRACTION_ABOVE_TARGET = 0.01
"""At most this share of unclamped neurons may fire above their target + 4 binomial s.d. at the end."""
MAX_LATE_FRR_CHANGE = 0.02
"""FRR(0.9) of the decoder may move by at most this over the last fifth of training."""
LATE_SHARE = 0.2
"""The last fifth of training, where FRR(0.9) must have stopped moving."""

RULE = (f"A BA/GBA point is settled when the bias controller made at least {MIN_CONTROLLER_UPDATES} updates, "
        f"at most {MAX_FRACTION_ABOVE_TARGET:.0%} of its unclamped neurons fire above target + 4 binomial s.d. "
        f"on fresh samples at the end, and FRR(0.9) moved by at most {MAX_LATE_FRR_CHANGE} over the last "
        f"{LATE_SHARE:.0%} of training steps.")

SCOPE = "every BA/GBA point of every grid table (columns `controller_updates`, `fraction_above_target`, `late_frr_change`, `settled`)"
"""What `RULE` applies to, as paper_checks.md states it."""

CONTROLLED = ("ba", "gba")
"""Methods with a bias controller, to which the rule applies."""


def _setting(field: dataclasses.Field, value):
    """A table cell as the config field's value: empty -> None, a float column's whole number -> int."""
    if pd.isna(value):
        return None
    return int(value) if str(field.type).startswith("int") else value


def derived_updates(row: pd.Series) -> int:
    """The controller updates a point's config makes: a window of ceil(update interval / batch) steps
    (the interval as the controller resolves it), one update per full window."""
    from simulations.engine.methods.bias_adaptation import BiasAdaptationConfig

    fields = [field for field in dataclasses.fields(BiasAdaptationConfig) if field.name in row.index]
    config = BiasAdaptationConfig(**{field.name: _setting(field, row[field.name]) for field in fields})
    window = math.ceil(config.resolved_update_interval() / int(row["batch_size"]))
    return int(row["steps"]) // window


def late_frr_change(history: pd.DataFrame) -> float:
    """|FRR(0.9) at the end − FRR(0.9) at the last log step within the first 80 % of training|; NaN if not logged."""
    if "frr_0.9" not in history or history["frr_0.9"].isna().all():
        return math.nan
    history = history.dropna(subset=["frr_0.9"]).sort_values("step")
    early = history[history["step"] <= (1 - LATE_SHARE) * history["step"].iloc[-1]]
    if early.empty:
        return math.nan
    return float(abs(history["frr_0.9"].iloc[-1] - early["frr_0.9"].iloc[-1]))


def convergence_columns(results: pd.DataFrame, history: pd.DataFrame | None) -> pd.DataFrame:
    """`results` with `controller_updates` (recorded, or derived from the config for older rows),
    `late_frr_change` and `settled` (by `RULE`) for BA/GBA rows; the columns are empty for other methods."""
    results = results.copy()
    controlled = results["method"].isin(CONTROLLED)
    if not controlled.any():
        results["controller_updates"], results["late_frr_change"], results["settled"] = np.nan, np.nan, None
        return results
    recorded = results["controller_updates"] if "controller_updates" in results else pd.Series(np.nan, index=results.index)
    updates = [recorded[i] if not pd.isna(recorded[i]) else derived_updates(row) if controlled[i] else np.nan
               for i, row in results.iterrows()]
    by_key = dict(tuple(history.groupby("key"))) if history is not None and "key" in history else {}
    change = [late_frr_change(by_key[row["key"]]) if controlled[i] and row["key"] in by_key else np.nan
              for i, row in results.iterrows()]
    results["controller_updates"] = updates
    results["late_frr_change"] = change
    settled = ((results["controller_updates"] >= MIN_CONTROLLER_UPDATES)
               & (results["fraction_above_target"] <= MAX_FRACTION_ABOVE_TARGET)
               & (results["late_frr_change"] <= MAX_LATE_FRR_CHANGE))
    results["settled"] = settled.where(controlled, None)
    return results
