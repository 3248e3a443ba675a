"""Figures of the LLM track (paper Figs. 3, 5, 6), drawn from simulations/results/llm/ (`gba llm frontier`)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from simulations.reports.plots import figure, save_figure
from simulations.reports.tables import load_llm_table

COLOURS = {"gba": "C3", "ba": "C2", "topk": "C0", "batchtopk": "C4", "relu-l1": "C1", "jumprelu": "C5"}


@figure("llm_frontier")
def llm_frontier(results: Path, out: Path) -> Path:
    """Normalised MSE against the fraction of active neurons (Fig. 3), and CE recovered against it."""
    table = load_llm_table(results, "frontier.csv")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for method, rows in table.groupby("method"):
        rows = rows.sort_values("fraction_active")
        style = "o-" if method in ("topk", "relu-l1", "batchtopk", "jumprelu") else "*"
        size = 7 if style == "o-" else 14
        for ax, column in zip(axes, ("normalised_mse", "ce_recovered")):
            seeds = rows.groupby("setting", sort=False)[["fraction_active", column]].mean().sort_values("fraction_active")
            ax.plot(seeds["fraction_active"], seeds[column], style, ms=size, color=COLOURS.get(method), label=method)
    axes[0].set_ylabel("normalised MSE (paper's L2 loss)")
    axes[1].set_ylabel("CE loss recovered")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("fraction of neurons active (L0 / M)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    meta = json.loads((Path(results) / "llm" / "meta.json").read_text())
    where = meta["activations"]
    fig.suptitle(f"SAEs (M = {meta['width']}) on {where['model']} layer {where['layer']} {where['site']} output "
                 f"({meta['train_tokens'] / 1000:.0f}k tokens; eval split; seeds averaged)")
    return save_figure(fig, out, "llm_frontier")


@figure("llm_consistency")
def llm_consistency(results: Path, out: Path) -> Path:
    """Share of the top-alpha neurons with cross-seed MCS above each threshold (Fig. 5)."""
    table = load_llm_table(results, "consistency.csv")
    panels = table.groupby(["selection", "alpha"], sort=False)
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), sharey=True)
    methods = sorted(table["method"].unique())
    thresholds = sorted(table["threshold"].unique())
    width = 0.8 / len(methods)
    for ax, ((selection, alpha), rows) in zip(np.atleast_1d(axes), panels):
        for i, method in enumerate(methods):
            shares = rows[rows["method"] == method].set_index("threshold").reindex(thresholds)["share"]
            ax.bar(np.arange(len(thresholds)) + i * width, 100 * shares, width, color=COLOURS.get(method), label=method)
        selected = int(rows["selected"].iloc[0])
        ax.set_title(f"top {100 * alpha:g} % by {selection.replace('_', ' ')}\n({selected} neurons per seed)")
        ax.set_ylim(0, 100)
        ax.set_xticks(np.arange(len(thresholds)) + 0.4 - width / 2, [f"≥ {t:g}" for t in thresholds])
        ax.set_xlabel("MCS threshold")
    np.atleast_1d(axes)[0].set_ylabel("% of selected neurons")
    np.atleast_1d(axes)[0].legend()
    return save_figure(fig, out, "llm_consistency")


@figure("llm_zscore")
def llm_zscore(results: Path, out: Path) -> Path:
    """Z-score against max activation, activation frequency and cross-seed MCS, per neuron (Fig. 6)."""
    table = load_llm_table(results, "neurons.csv")
    seed0 = table[table["run"].str.endswith("-s0")]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for method, rows in seed0.groupby("method"):
        rows = rows[rows["frequency"] > 0]
        for ax, column in zip(axes, ("max_activation", "frequency", "mcs")):
            ax.scatter(rows[column], rows["z_score"], s=3, alpha=0.4, color=COLOURS.get(method), label=method)
    for ax, label in zip(axes, ("max activation (unit-norm inputs)", "activation frequency", "MCS to the other seeds (mean)")):
        ax.set_xlabel(label)
        ax.set_ylabel("Z-score")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].set_xscale("log")
    axes[1].set_xscale("log")
    axes[0].legend(markerscale=4)
    return save_figure(fig, out, "llm_zscore")


@figure("llm_group_frequencies")
def llm_group_frequencies(results: Path, out: Path) -> Path:
    """GBA's per-group activation-frequency histograms against each group's target."""
    table = load_llm_table(results, "frequency_histograms.csv")
    frontier = load_llm_table(results, "frontier.csv")
    gba = frontier[frontier["method"] == "gba"].iloc[0]
    run, setting = gba["run"], json.loads(gba["setting"])
    rows = table[table["run"] == run]
    groups = sorted(rows["group"].unique())
    targets = np.geomspace(setting["highest_target"], setting["lowest_target"], len(groups))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    colours = plt.cm.viridis(np.linspace(0, 1, len(groups)))
    for group, colour, target in zip(groups, colours, targets):
        members = rows[rows["group"] == group]
        centres = np.sqrt(members["low"] * members["high"])
        ax.plot(centres, members["neurons"], "-", color=colour, label=f"group {group}")
        ax.axvline(target, color=colour, ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("activation frequency on the eval split (dotted: group target)")
    ax.set_ylabel("neurons")
    ax.set_title(f"{run}: per-group activation frequencies")
    ax.legend(fontsize=7, ncol=2)
    return save_figure(fig, out, "llm_group_frequencies")
