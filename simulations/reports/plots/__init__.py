"""Figures drawn from committed result tables, never by training: a registry.

Register a figure with the `figure` decorator in any module of this package (each module is
imported by `load_all`), e.g. in `simulations/reports/plots/mine.py`:

    @figure("my_figure")
    def my_figure(results: Path, out: Path) -> Path:
        table = load_results(results, "my_grid")      # raises MissingTable if absent
        ...; return save_figure(fig, out, "my_figure")
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Callable

import matplotlib.pyplot as plt
import pandas as pd

FigureFunction = Callable[[Path, Path], Path]
"""(results directory, output directory) -> path of the PNG written."""

FIGURES: dict[str, FigureFunction] = {}
"""Figure name -> function; filled by the `figure` decorator."""


def figure(name: str) -> Callable[[FigureFunction], FigureFunction]:
    """Register `function` under `name` (names are unique)."""

    def register(function: FigureFunction) -> FigureFunction:
        if name in FIGURES and FIGURES[name] is not function:
            raise ValueError(f"figure {name!r} is registered twice")
        FIGURES[name] = function
        return function

    return register


def save_figure(fig, out: Path, name: str) -> Path:
    """Write `fig` to OUT/NAME.png and close it."""
    path = Path(out) / f"{name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def unsettled(table: pd.DataFrame) -> pd.Series:
    """True on the BA/GBA runs that have not settled (`simulations.experiments.grid.convergence.RULE`);
    other methods' rows carry no verdict and are never marked."""
    return table["settled"].astype(str).eq("False")


def mark_unsettled(ax, table: pd.DataFrame, x: str, y: str) -> None:
    """A hollow ring around every unsettled run; the legend counts them among the judged runs, so a
    reader also sees when every run has settled."""
    rows = table[unsettled(table)]
    ax.scatter(rows[x], rows[y], s=110, facecolors="none", edgecolors="black", linewidths=1.2, zorder=6,
               label=f"unsettled run (ring): {len(rows)} of {int(table['settled'].notna().sum())}")


def unsettled_counts(table: pd.DataFrame, by: str) -> pd.Series:
    """How many runs of each `by` value are unsettled, as text for a bar ('2/5 unsettled'; '' for none)."""
    counts = table.assign(unsettled=unsettled(table)).groupby(by)["unsettled"].agg(["sum", "size"])
    return counts.apply(lambda row: f"{int(row['sum'])}/{int(row['size'])} unsettled" if row["sum"] else "", axis=1)


def plain_log_ticks(ax, values, axis: str = "x") -> None:
    """Log axis labelled at `values` in plain numbers, without the crowded minor labels."""
    values = sorted({float(v) for v in values})
    getattr(ax, f"set_{axis}scale")("log")
    # Two significant digits below 10 (0.71, 5.7), whole numbers above (45, 128: not 1.3e+02).
    getattr(ax, f"set_{axis}ticks")(values, [f"{v:.0f}" if v >= 10 else f"{v:.2g}" for v in values])
    getattr(ax, f"{axis}axis").set_minor_locator(plt.NullLocator())


def load_all() -> dict[str, FigureFunction]:
    """Import every module of this package so that their figures register; returns the registry."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    return FIGURES
