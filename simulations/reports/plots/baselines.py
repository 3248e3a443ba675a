"""Figures of the baseline comparisons (toy_baselines, frontier, gba_sensitivity grids)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import NullFormatter

from simulations.reports.plots import figure, mark_unsettled, plain_log_ticks, save_figure, unsettled_counts
from simulations.reports.tables import SWEPT, frontier_table, load_results, method_label, scale_text, toy_table, world_table

def log_x(ax) -> None:
    """Log x axis with labelled major ticks only (minor labels overlap on short ranges)."""
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())


@figure("toy_baselines")
def toy_baselines(results: Path, out: Path) -> Path:
    summary = toy_table(results)
    table = load_results(results, "toy_baselines")
    labelled = table.assign(label=table.apply(method_label, axis=1))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    x = np.arange(len(summary))
    for ax, tau, column in ((axes[0], "0.8", "08"), (axes[1], "0.9", "09")):
        ax.bar(x - 0.2, summary[f"frr_{column}_mean"], width=0.4, yerr=summary[f"frr_{column}_sd"].fillna(0),
               capsize=3, label=f"ours (mean ± sd, {int(summary['seeds'].min())}+ seeds)")
        ax.bar(x + 0.2, summary[f"paper_frr_{column}"], width=0.4, color="0.7", label="paper (digest §5.2)")
        ax.set_xticks(x, summary.index, rotation=20, fontsize=8)
        for position, text in enumerate(unsettled_counts(labelled, "label").reindex(summary.index, fill_value="")):
            ax.text(position - 0.2, 0.02, text, ha="center", va="bottom", rotation=90, fontsize=7)
        ax.set_title(f"FRR(τ = {tau})")
        ax.set_ylim(0, 1.05)
    axes[0].set_ylabel("feature recovery rate")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Imbalanced toy: {scale_text(table)}")
    return save_figure(fig, out, "toy_baselines")


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
        for column, metric in enumerate(("frr_0.9", "fvu")):
            mark_unsettled(axes[row][column], part, "l0", metric)
        profile = "uniform" if decay == 0 else f"Zipf exponent {decay:g}"
        axes[row][0].set_ylabel(f"FRR(0.9), {profile}")
        axes[row][1].set_ylabel(f"FVU, {profile}")
        for ax in axes[row]:
            log_x(ax)
            ax.set_xlabel("L0 (active latents per sample; true s = 2)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"Frontier: {scale_text(table)}; mean of {table['seed'].nunique()} seeds per sweep point")
    return save_figure(fig, out, "frontier")


@figure("sensitivity")
def sensitivity(results: Path, out: Path) -> Path:
    baselines = frontier_table(results)
    baselines = baselines[baselines["frequency_decay"] == 0]
    gba = load_results(results, "gba_sensitivity").copy()  # a wide CSV reads fragmented
    f = gba["feature_frequency"]
    gba = gba.assign(htf=gba["highest_target"] / f, ltf=gba["lowest_target"] / f)
    fig, axes = plt.subplots(2, 4, figsize=(15, 7), sharey=True)
    for ax, (method, parameter) in zip(axes[0], SWEPT.items()):
        summary = baselines[baselines["method"] == method].groupby(parameter)["frr_0.9"].agg(["mean", "min", "max"])
        ax.errorbar(summary.index, summary["mean"], yerr=[summary["mean"] - summary["min"], summary["max"] - summary["mean"]],
                    marker="o", capsize=3)
        plain_log_ticks(ax, summary.index)
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
        mark_unsettled(ax, part, column, "frr_0.9")
        ax.legend(fontsize=7)
        plain_log_ticks(ax, summary.index)
        ax.set_xlabel(f"GBA: {label}")
    axes[1][3].axis("off")
    axes[1][3].text(0, 0.5, f"GBA default point: FRR(0.9) = {gba.loc[default, 'frr_0.9'].mean():.2f}\n"
                    "(mean over seeds; bars: range)", fontsize=9)
    for row in axes:
        row[0].set_ylabel(f"FRR(0.9) (mean, range over {gba['seed'].nunique()} seeds)")
    fig.suptitle(f"Sensitivity: {scale_text(gba)}")
    return save_figure(fig, out, "sensitivity")


def draw_world(table, out: Path, name: str, title: str) -> Path:
    """SAELens's explained variance, MCC and F1 against L0 on a world: each baseline's sweep (means over
    seeds), BA/GBA configurations one marker per seed, unsettled runs ringed, the world's true L0 dotted."""
    true_l0 = table["saelens_true_l0"].mean()
    metrics = (("saelens_explained_variance", "explained variance (SAELens)"), ("saelens_mcc", "MCC (SAELens)"),
               ("saelens_f1_score", "F1 of latents as feature detectors (SAELens)"))
    fig, axes = plt.subplots(1, len(metrics), figsize=(16, 4.8))
    for method, sweep in table[table["method"].isin(list(SWEPT))].groupby("method"):
        means = sweep.groupby(SWEPT[method])[["l0"] + [metric for metric, _ in metrics]].mean().sort_values("l0")
        for ax, (metric, _) in zip(axes, metrics):
            ax.plot(means["l0"], means[metric], marker="o", label=f"{method} (sweep of {SWEPT[method]})")
    adaptive = table[table["method"].isin(["ba", "gba"])]
    for (label, runs), marker in zip(adaptive.groupby("label"), "*sDP^v<>XdHph8x+|_"):
        for ax, (metric, _) in zip(axes, metrics):
            ax.scatter(runs["l0"], runs[metric], marker=marker, s=110, zorder=3, label=f"{label}, each seed")
    for ax, (metric, label) in zip(axes, metrics):
        mark_unsettled(ax, table, "l0", metric)
        ax.axvline(true_l0, color="grey", linestyle=":", label=f"true L0 {true_l0:.1f}")
        log_x(ax)
        ax.set_xlabel("L0 (active latents per sample)")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=6)
    fig.suptitle(f"{title} ({table['data'].iloc[0]}): {scale_text(table)}; baselines: mean of "
                 f"{table['seed'].nunique()} seeds per sweep point", fontsize=10)
    return save_figure(fig, out, name)


@figure("synthsaebench")
def synthsaebench(results: Path, out: Path) -> Path:
    table = pd.concat([world_table(results), world_table(results, "synthsaebench_gba")], ignore_index=True)
    return draw_world(table, out, "synthsaebench", "Six methods on a SynthSAEBench-style world")


@figure("synthsaebench_long")
def synthsaebench_long(results: Path, out: Path) -> Path:
    return draw_world(world_table(results, "synthsaebench_long"), out, "synthsaebench_long",
                      "GBA against TopK/BatchTopK, trained 4x longer")


@figure("synthsaebench_targets")
def synthsaebench_targets(results: Path, out: Path) -> Path:
    table = pd.concat([world_table(results, "synthsaebench_long"), world_table(results, "synthsaebench_targets")],
                      ignore_index=True)
    return draw_world(table, out, "synthsaebench_targets",
                      "GBA/BA at oracle targets beside the 8000-step comparison")


@figure("synthsaebench_start")
def synthsaebench_start(results: Path, out: Path) -> Path:
    table = pd.concat([world_table(results, "synthsaebench_long"), world_table(results, "synthsaebench_start")],
                      ignore_index=True)
    return draw_world(table, out, "synthsaebench_start", "GBA from a calibrated start beside the 8000-step comparison")
