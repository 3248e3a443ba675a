"""Figures of the baseline comparisons (toy_baselines, frontier, gba_sensitivity grids)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import NullFormatter

from simulations.figures import figure
from simulations.grid import load_results

PAPER_TOY = {
    "TopK k=20": (1.000, 0.984),
    "TopK k=30": (0.984, 0.242),
    "TopK k=50": (0.945, 0.234),
    "GBA full coverage": (1.000, 1.000),
    "GBA wrong coverage": (0.383, 0.039),
}
"""The paper's imbalanced-toy FRR at tau = 0.8 and 0.9 (digest §5.2)."""

SWEPT = {"topk": "k", "batchtopk": "k", "relu-l1": "l1_coefficient", "jumprelu": "l0_coefficient"}
"""Each baseline's key hyper-parameter, swept in the frontier grid."""


def log_x(ax) -> None:
    """Log x axis with labelled major ticks only (minor labels overlap on short ranges)."""
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())


def save(fig, out: Path, name: str) -> Path:
    path = Path(out) / f"{name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def method_label(row) -> str:
    """'TopK k=20', 'GBA full coverage' (targets bracket f), 'GBA wrong coverage', 'BA p=2f', ..."""
    if row["method"] in ("topk", "batchtopk"):
        return f"{'TopK' if row['method'] == 'topk' else 'BatchTopK'} k={int(row['k'])}"
    if row["method"] == "gba":
        f = row["feature_frequency"]
        covers = row["lowest_target"] <= f <= row["highest_target"]
        return f"GBA {'full' if covers else 'wrong'} coverage"
    if row["method"] == "ba":
        return f"BA p={row['highest_target'] / row['feature_frequency']:.3g}f"
    return f"{row['method']} {SWEPT[row['method']]}={row[SWEPT[row['method']]]:g}"


def toy_table(results: Path) -> pd.DataFrame:
    """FRR(0.8), FRR(0.9) mean and sd over seeds per method of the toy grid, beside the paper's."""
    table = load_results(results, "toy_baselines")
    table = table.assign(label=table.apply(method_label, axis=1))
    summary = table.groupby("label").agg(
        seeds=("seed", "nunique"),
        frr_08_mean=("frr_0.8", "mean"),
        frr_08_sd=("frr_0.8", "std"),
        frr_09_mean=("frr_0.9", "mean"),
        frr_09_sd=("frr_0.9", "std"),
        l0=("l0", "mean"),
    )
    summary["paper_frr_08"] = [PAPER_TOY.get(label, (np.nan, np.nan))[0] for label in summary.index]
    summary["paper_frr_09"] = [PAPER_TOY.get(label, (np.nan, np.nan))[1] for label in summary.index]
    return summary.reindex([label for label in PAPER_TOY if label in summary.index])


@figure("toy_baselines")
def toy_baselines(results: Path, out: Path) -> Path:
    summary = toy_table(results)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    x = np.arange(len(summary))
    for ax, tau, column in ((axes[0], "0.8", "08"), (axes[1], "0.9", "09")):
        ax.bar(x - 0.2, summary[f"frr_{column}_mean"], width=0.4, yerr=summary[f"frr_{column}_sd"].fillna(0),
               capsize=3, label=f"ours (mean ± sd, {int(summary['seeds'].min())}+ seeds)")
        ax.bar(x + 0.2, summary[f"paper_frr_{column}"], width=0.4, color="0.7", label="paper (digest §5.2)")
        ax.set_xticks(x, summary.index, rotation=20, fontsize=8)
        ax.set_title(f"FRR(τ = {tau})")
        ax.set_ylim(0, 1.05)
    axes[0].set_ylabel("feature recovery rate")
    axes[0].legend(fontsize=8)
    fig.suptitle("Imbalanced toy: n = 128, d = 42, s ∈ {3, 20}; tied SAE width 4n, 400 steps of 512")
    return save(fig, out, "toy_baselines")


def frontier_table(results: Path) -> pd.DataFrame:
    """Frontier grid rows with a label, the swept value and FVU = 1 - explained variance."""
    table = load_results(results, "frontier").copy()  # a wide CSV reads fragmented
    return table.assign(label=table.apply(method_label, axis=1), fvu=1 - table["explained_variance"])


@figure("frontier")
def frontier(results: Path, out: Path) -> Path:
    table = frontier_table(results)
    profiles = sorted(table["frequency_decay"].unique())
    fig, axes = plt.subplots(len(profiles), 2, figsize=(12, 4.2 * len(profiles)), squeeze=False)
    for row, decay in enumerate(profiles):
        part = table[table["frequency_decay"] == decay]
        for method, sweep in part[part["method"].isin(list(SWEPT))].groupby("method"):
            means = sweep.groupby(SWEPT[method])[["l0", "frr_0.9", "fvu"]].mean().sort_values("l0")
            for column, metric in enumerate(("frr_0.9", "fvu")):
                axes[row][column].plot(means["l0"], means[metric], marker="o", label=f"{method} (sweep of {SWEPT[method]})")
        for method, marker in (("gba", "*"), ("ba", "s")):
            single = part[part["method"] == method]
            for column, metric in enumerate(("frr_0.9", "fvu")):
                axes[row][column].scatter(single["l0"], single[metric], marker=marker, s=120, zorder=3,
                                          label=f"{method} untuned (each seed)")
        profile = "uniform" if decay == 0 else f"Zipf exponent {decay:g}"
        axes[row][0].set_ylabel(f"FRR(0.9), {profile}")
        axes[row][1].set_ylabel(f"FVU, {profile}")
        for ax in axes[row]:
            log_x(ax)
            ax.set_xlabel("L0 (active latents per sample; true s = 2)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Frontier: n = 64, d = 24, s = 2, width 4n, 300 steps of 512; mean of 2 seeds per sweep point")
    return save(fig, out, "frontier")


@figure("sensitivity")
def sensitivity(results: Path, out: Path) -> Path:
    baselines = frontier_table(results)
    baselines = baselines[baselines["frequency_decay"] == 0]
    gba = load_results(results, "gba_sensitivity")
    f = gba["feature_frequency"]
    gba = gba.assign(htf=gba["highest_target"] / f, ltf=gba["lowest_target"] / f)
    fig, axes = plt.subplots(2, 4, figsize=(15, 7), sharey=True)
    for ax, (method, parameter) in zip(axes[0], SWEPT.items()):
        summary = baselines[baselines["method"] == method].groupby(parameter)["frr_0.9"].agg(["mean", "min", "max"])
        ax.errorbar(summary.index, summary["mean"], yerr=[summary["mean"] - summary["min"], summary["max"] - summary["mean"]],
                    marker="o", capsize=3)
        log_x(ax)
        ax.set_xlabel(f"{method}: {parameter}")
    default = (gba["method"] == "gba") & np.isclose(gba["htf"], 4) & np.isclose(gba["ltf"], 0.25)
    groups = gba["groups"].where(gba["method"] == "gba", 1)
    panels = (
        ("HTF / f (K = 10, LTF = f/4)", "htf", np.isclose(gba["ltf"], 0.25) & (groups == 10)),
        ("LTF / f (K = 10, HTF = 4f)", "ltf", np.isclose(gba["htf"], 4) & (groups == 10)),
        ("K (HTF = 4f, LTF = f/4; K = 1 is BA at 4f)", "groups", (np.isclose(gba["htf"], 4) & np.isclose(gba["ltf"], 0.25)) | (gba["method"] == "ba")),
    )
    for ax, (label, column, mask) in zip(axes[1], panels):
        part = gba[mask].assign(groups=groups[mask])
        summary = part.groupby(column)["frr_0.9"].agg(["mean", "min", "max"])
        ax.errorbar(summary.index, summary["mean"], yerr=[summary["mean"] - summary["min"], summary["max"] - summary["mean"]],
                    marker="o", capsize=3, color="C3")
        log_x(ax)
        ax.set_xlabel(f"GBA: {label}")
    axes[1][3].axis("off")
    axes[1][3].text(0, 0.5, f"GBA default point: FRR(0.9) = {gba.loc[default, 'frr_0.9'].mean():.2f}\n"
                    "(mean over seeds; bars: range)", fontsize=9)
    for row in axes:
        row[0].set_ylabel("FRR(0.9) (mean, range over 2 seeds)")
    fig.suptitle("Sensitivity: n = 64, d = 24, s = 2, uniform frequencies, width 4n, 300 steps of 512")
    return save(fig, out, "sensitivity")
