"""Figures of the LLM track (paper Figs. 3, 5, 6), drawn from simulations/results/llm/ (`gba llm frontier`),
and the training-length curve and consistency drawn from simulations/results/llm_length/."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import NullFormatter

from simulations.reports.plots import figure, save_figure
from simulations.reports.tables import at_full_length, load_llm_meta, load_llm_table, token_count

COLOURS = {"gba": "C3", "ba": "C2", "topk": "C0", "batchtopk": "C4", "relu-l1": "C1", "jumprelu": "C5"}


@figure("llm_frontier")
def llm_frontier(results: Path, out: Path) -> Path:
    """Normalised MSE against the fraction of active neurons (Fig. 3), and CE recovered against it."""
    table = at_full_length(load_llm_table(results, "frontier.csv"))
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
    fig.suptitle(f"{_scale(results)}; eval split; seeds averaged")
    return save_figure(fig, out, "llm_frontier")


def _scale(results: Path, experiment: str = "llm") -> str:
    """'SAEs (M = 4096) on smollm2-135m layer 2 mlp output, 6.55M tokens seen (1008k cached)', from meta.json."""
    meta = load_llm_meta(results, experiment)
    where, train = meta["activations"], meta["train"]
    return (f"SAEs (M = {meta['width']}) on {where['model']} layer {where['layer']} {where['site']} output, "
            f"{token_count(train['steps'] * train['batch_size'])} tokens seen ({meta['train_tokens'] / 1000:.0f}k cached)")


@figure("llm_consistency")
def llm_consistency(results: Path, out: Path) -> Path:
    """Share of the top-alpha neurons with cross-seed MCS above each threshold (Fig. 5)."""
    return _consistency_figure(results, out, "llm", "llm_consistency")


@figure("llm_length_consistency")
def llm_length_consistency(results: Path, out: Path) -> Path:
    """Fig. 5 from the longest-trained runs (GBA and TopK)."""
    return _consistency_figure(results, out, "llm_length", "llm_length_consistency")


def _consistency_figure(results: Path, out: Path, experiment: str, name: str) -> Path:
    table = load_llm_table(results, "consistency.csv", experiment)
    if "by" not in table:
        table = table.assign(by="share")
    panels = table.groupby(["by", "selection", "alpha"], sort=False)
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), sharey=True)
    methods = sorted(table["method"].unique())
    thresholds = sorted(table["threshold"].unique())
    width = 0.8 / len(methods)
    for ax, ((by, selection, alpha), rows) in zip(np.atleast_1d(axes), panels):
        for i, method in enumerate(methods):
            shares = rows[rows["method"] == method].set_index("threshold").reindex(thresholds)["share"]
            ax.bar(np.arange(len(thresholds)) + i * width, 100 * shares, width, color=COLOURS.get(method), label=method)
        selected = int(rows["selected"].iloc[0])
        top = f"top {100 * alpha:g} %" if by == "share" else f"top {selected}"
        ax.set_title(f"{top} by {selection.replace('_', ' ')}\n({selected} neurons per seed, {int(rows['seeds'].max())} seeds)")
        ax.set_ylim(0, 100)
        ax.set_xticks(np.arange(len(thresholds)) + 0.4 - width / 2, [f"≥ {t:g}" for t in thresholds])
        ax.set_xlabel("MCS threshold")
    np.atleast_1d(axes)[0].set_ylabel("% of selected neurons")
    np.atleast_1d(axes)[0].legend()
    fig.suptitle(_scale(results, experiment))
    fig.tight_layout()
    return save_figure(fig, out, name)


@figure("llm_length_curve")
def llm_length_curve(results: Path, out: Path) -> Path:
    """Normalised MSE against training tokens (seed mean, bars the seeds' range) with each point's L0,
    and the frontier of normalised MSE against fraction active at each length."""
    table = load_llm_table(results, "frontier.csv", "llm_length")
    table = table.assign(k=table["setting"].map(lambda text: json.loads(text).get("k")))
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    for (method, k), rows in table.groupby(["method", "k"], dropna=False, sort=False):
        stats = rows.groupby("train_tokens").agg(mean=("normalised_mse", "mean"), low=("normalised_mse", "min"),
                                                 high=("normalised_mse", "max"), l0=("l0", "mean"), seeds=("seed", "nunique"))
        seeds = int(stats["seeds"].max())
        label = f"{method}{'' if np.isnan(k) else f' k={k:g}'} ({seeds} seed{'s' if seeds > 1 else ''})"
        line = axes[0].errorbar(stats.index, stats["mean"], yerr=[stats["mean"] - stats["low"], stats["high"] - stats["mean"]],
                                fmt="*-" if method == "gba" else "o-", ms=9 if method == "gba" else 5, capsize=3,
                                color=COLOURS.get(method), alpha=1.0 if method == "gba" or seeds > 1 else 0.45, label=label)
        for tokens, row in stats.iterrows():
            axes[0].annotate(f"L0 {row['l0']:.0f}", (tokens, row["mean"]), textcoords="offset points", xytext=(4, 4), fontsize=7,
                             color=line[0].get_color())
    lengths = sorted(table["train_tokens"].unique())
    shades = dict(zip(lengths, np.linspace(0.35, 1.0, len(lengths))))
    for tokens, rows in table.groupby("train_tokens"):
        means = rows.groupby(["method", "k"], dropna=False, as_index=False)[["fraction_active", "normalised_mse"]].mean()
        topk, gba = means[means["method"] == "topk"].sort_values("fraction_active"), means[means["method"] == "gba"]
        axes[1].plot(topk["fraction_active"], topk["normalised_mse"], "o-", color=COLOURS["topk"], alpha=shades[tokens],
                     label=f"TopK, {token_count(tokens)} tokens")
        axes[1].plot(gba["fraction_active"], gba["normalised_mse"], "*", ms=13, color=COLOURS["gba"], alpha=shades[tokens],
                     label=f"GBA, {token_count(tokens)} tokens")
    axes[0].set_xscale("log")
    axes[0].xaxis.set_minor_formatter(NullFormatter())  # the lengths are read from the points' positions, not minor ticks
    axes[0].set_xlabel("training tokens seen")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("fraction of neurons active (L0 / M)")
    for ax in axes:
        ax.set_ylabel("normalised MSE (eval split)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(_scale(results, "llm_length"))
    return save_figure(fig, out, "llm_length_curve")


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
