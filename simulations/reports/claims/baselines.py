"""Claims of the imbalanced toy (TopK rows) and of the robustness ablation, checked on the baseline grids."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from simulations.reports.claims import Measurement, claim
from simulations.reports.paper import LLM_TARGETS, TOY_FRR
from simulations.reports.tables import (
    MissingTable,
    frontier_table,
    grid_command,
    load_results,
    scale_text,
    toy_table,
    world_table,
)

ONE_THREAD = "--jobs 1 --threads 1"

TOY_CLOSE = 0.05
"""Claims 11-13: how far our mean FRR may lie from the paper's at each tau."""
ON_FRONTIER = 0.02
"""Claim 18: the largest FVU above the TopK sweep (interpolated at GBA's L0) that counts as on the frontier."""
GROUPS_SATURATE = 0.01
"""Claim 19: the paper's bound on the loss change from K = 10 to K = 20."""
WORLD_L0_FACTOR = 1.5
"""Claims 18b-c: untuned GBA's L0 must lie within this factor of the world's true L0."""
WORLD_EV_GAP = 0.05
"""Claims 18b-c: how far GBA's explained variance may lie below the best baseline's."""
WORLD_COLUMNS = ["l0", "saelens_explained_variance", "saelens_mcc", "saelens_f1_score", "saelens_precision",
                 "saelens_recall", "saelens_true_l0"]
WORLD_GRID = "synthsaebench_long"
"""Claims 18b-c: the world grid they judge (8000 steps: at 2000 every method was still moving)."""
TARGETS_GRID = "synthsaebench_targets"
"""Claim 18d: BA/GBA with oracle targets on the world of `WORLD_GRID` (same world, samples and steps)."""
START_GRID = "synthsaebench_start"
"""Claim 18e: GBA from a calibrated start on the world of `WORLD_GRID`."""
UNTUNED_HTF_OVER_F = 4.0
"""Claim 18b: GBA's default HTF as a multiple of f (the engine's DEFAULT_TARGETS, which reports do not
import; the grid's GBA rows at other HTFs give their targets explicitly), which picks its untuned rows."""




def toy_row(results: Path, label: str) -> Measurement:
    """Our FRR at both tau for one TopK row of the toy, judged against the paper's within 5 points."""
    summary = toy_table(results, methods=("topk",))
    row = summary.loc[label]
    paper = TOY_FRR[label]
    measured = (f"{scale_text(load_results(results, 'toy_baselines', methods=('topk',)))}, {int(row['seeds'])} seeds: FRR(0.8) = {row['frr_08_mean']:.1%} ± {row['frr_08_sd']:.1%}, "
                f"FRR(0.9) = {row['frr_09_mean']:.1%} ± {row['frr_09_sd']:.1%} (L0 {row['l0']:.1f})")
    close = [abs(ours - theirs) <= TOY_CLOSE for ours, theirs in zip((row["frr_08_mean"], row["frr_09_mean"]), paper)]
    verdict = "reproduced" if all(close) else ("partly" if any(close) else "not reproduced")
    return Measurement(measured, verdict, investigation_note(results) if label == "TopK k=20" else "")


def investigation_note(results: Path) -> str:
    """What the one-change variants of the toy (toy_investigation grid) did to TopK k = 20."""
    try:
        table = load_results(results, "toy_investigation", methods=("topk",))
    except MissingTable:
        return ""
    base = load_results(results, "toy_baselines", methods=("topk",))
    base = base[base["k"] == 20]
    steps, width = base["steps"].iloc[0], base["width"].iloc[0]
    change = np.select(
        [~table["tied"].astype(bool), table["steps"] != steps, table["width"] != width],
        [pd.Series("untied", index=table.index), table["steps"].map(lambda longer: f"{longer / steps:g}x steps ({longer})"),
         table["width"].map(lambda wider: f"{wider / width:g}x width ({wider / table['n'].iloc[0]:g}n)")],
        "uniform coefficients",
    )
    rows = pd.concat([base.assign(change="as in the table"), table.assign(change=change)])
    summary = rows.groupby(["method", "change"]).agg(frr8=("frr_0.8", "mean"), frr9=("frr_0.9", "mean"), seeds=("seed", "nunique"))
    parts = [f"TopK k=20 {change}: {row['frr8']:.0%} / {row['frr9']:.0%} ({int(row['seeds'])} seed(s))"
             for (method, change), row in summary.iterrows()]
    best = summary.loc[summary["frr8"].idxmax()]
    closes = "brings τ = 0.9 to 90 % or more" if summary["frr9"].max() >= 0.9 else "brings τ = 0.9 near the paper's"
    return ("One change at a time (toy_investigation grid), FRR(0.8) / FRR(0.9): " + "; ".join(parts)
            + f". The best τ = 0.8 comes from '{summary['frr8'].idxmax()[1]}' ({best['frr8']:.0%}); "
            + ("one of these changes " if summary["frr9"].max() >= 0.9 else "none of these changes ") + closes + ".")


for number, label in (("11", "TopK k=20"), ("12", "TopK k=30"), ("13", "TopK k=50")):
    paper = TOY_FRR[label]
    claim(
        number,
        f"Imbalanced toy: {label} recovers {paper[0]:.1%} (τ = 0.8) / {paper[1]:.1%} (τ = 0.9) of the features",
        paper=f"FRR {paper[0]:.1%} / {paper[1]:.1%}",
        command=grid_command("toy_baselines", ONE_THREAD),
        rule=f"reproduced if the mean FRR at both τ lies within {TOY_CLOSE} of the paper's; partly if at one τ",
        figure="toy_baselines",
    )(lambda results, label=label: toy_row(results, label))


def sensitivity_scale(table: pd.DataFrame) -> str:
    return f"{scale_text(table)}, frequency decay {'/'.join(f'{decay:g}' for decay in sorted(table['frequency_decay'].unique()))}, {table['seed'].nunique()} seeds"


def relative_targets(table: pd.DataFrame) -> pd.DataFrame:
    """The sensitivity grid's columns htf and ltf (targets / f) and K (1 for BA)."""
    f = table["feature_frequency"]
    groups = table["groups"].where(table["method"] == "gba", 1)
    return pd.DataFrame({"htf": table["highest_target"] / f, "ltf": table["lowest_target"] / f, "K": groups})


def gba_points(results: Path, rows: Callable[[pd.DataFrame], pd.Series]) -> pd.DataFrame:
    """The sensitivity grid's points where `rows` (a function of htf, ltf and K) holds, with those columns and FVU."""
    table = load_results(results, "gba_sensitivity", rows=lambda frame: rows(relative_targets(frame))).copy()
    return pd.concat([table, relative_targets(table)], axis=1).assign(fvu=1 - table["explained_variance"])


def topk_frontier_fvu(results: Path, l0: float) -> float:
    """FVU of the (uniform-frequency) TopK sweep interpolated at `l0` (log L0), mean over seeds."""
    table = frontier_table(results, methods=("topk",))
    sweep = table[table["frequency_decay"] == 0].groupby("k")[["l0", "fvu"]].mean()
    sweep = sweep.sort_values("l0")
    return float(np.interp(np.log(l0), np.log(sweep["l0"]), sweep["fvu"]))


@claim(
    "18",
    "With a high HTF, GBA lies on the TopK frontier for every number of groups",
    paper="HTF = 0.5: all K ∈ {1, 3, 10, 20} on the TopK frontier (Qwen2.5-1.5B)",
    command=grid_command("gba_sensitivity", ONE_THREAD) + "; " + grid_command("frontier", ONE_THREAD),
    rule=f"reproduced if for every K the mean FVU at HTF = 4f is at most {ON_FRONTIER} above the uniform TopK sweep "
    "interpolated (in log L0) at GBA's mean L0; partly if for some K",
    figure="frontier",
)
def on_frontier(results: Path) -> Measurement:
    points = gba_points(results, lambda t: np.isclose(t["htf"], 4) & (np.isclose(t["ltf"], 0.25) | (t["K"] == 1)))
    gaps = {}
    for groups, part in points.groupby("K"):
        l0, fvu = part["l0"].mean(), part["fvu"].mean()
        gaps[int(groups)] = (l0, fvu, fvu - topk_frontier_fvu(results, l0))
    measured = (f"{sensitivity_scale(points)}, HTF = 4f: FVU above the TopK sweep at the same L0: "
                + "; ".join(f"K = {k}: L0 {l0:.1f}, FVU {fvu:.3f} ({gap:+.3f})" for k, (l0, fvu, gap) in gaps.items()))
    within = [gap <= ON_FRONTIER for _, _, gap in gaps.values()]
    verdict = "reproduced" if all(within) else ("partly" if any(within) else "not reproduced")
    note = ("Synthetic analogue at our scale: HTF = 4f plays the role of the paper's 'high' HTF (0.5 on an LLM); "
            "'on the frontier' is read as FVU at most 0.02 above the TopK sweep interpolated at GBA's L0. "
            "The TopK sweep is untied, GBA tied.")
    return Measurement(measured, verdict, note)


def world_checks(gba: pd.Series, best: pd.Series, true_l0: float) -> dict[str, bool]:
    """Claims 18b-c's three criteria for one GBA configuration (means over seeds) against the best baseline."""
    return {
        f"L0 within {WORLD_L0_FACTOR}x of the true L0": 1 / WORLD_L0_FACTOR <= gba["l0"] / true_l0 <= WORLD_L0_FACTOR,
        f"EV at most {WORLD_EV_GAP} below the best baseline's": gba["saelens_explained_variance"] >= best["saelens_explained_variance"] - WORLD_EV_GAP,
        "MCC at least the best baseline's": gba["saelens_mcc"] >= best["saelens_mcc"],
    }


def world_text(label: str, row: pd.Series) -> str:
    return (f"{label}: L0 {row['l0']:.2f}, EV {row['saelens_explained_variance']:.3f}, MCC {row['saelens_mcc']:.3f}, "
            f"F1 {row['saelens_f1_score']:.3f} (precision {row['saelens_precision']:.3f}, recall {row['saelens_recall']:.3f})")


def topk_at_l0(baselines: pd.DataFrame, l0: float) -> str:
    """The TopK sweep's SAELens EV and MCC interpolated (in log L0) at `l0`, as text; says so when `l0`
    lies outside the sweep."""
    sweep = baselines[baselines["method"] == "topk"].groupby("k")[WORLD_COLUMNS].mean().sort_values("l0")
    if not sweep["l0"].min() <= l0 <= sweep["l0"].max():
        return f"TopK at equal L0: outside the sweep (L0 {sweep['l0'].min():.3g}–{sweep['l0'].max():.3g})"
    at = {column: float(np.interp(np.log(l0), np.log(sweep["l0"]), sweep[column]))
          for column in ("saelens_explained_variance", "saelens_mcc")}
    return f"TopK at equal L0: EV {at['saelens_explained_variance']:.3f}, MCC {at['saelens_mcc']:.3f}"


def best_world_baseline(results: Path) -> tuple[str, pd.Series, float, pd.DataFrame]:
    """The TopK/BatchTopK sweep point of highest mean SAELens MCC on the world, the world's true L0, and the rows."""
    baselines = world_table(results, WORLD_GRID, methods=("topk", "batchtopk"))
    means = baselines.groupby("label")[WORLD_COLUMNS].mean()
    label = means["saelens_mcc"].idxmax()
    return label, means.loc[label], float(baselines["saelens_true_l0"].mean()), baselines


@claim(
    "18b",
    "On a SynthSAEBench-style world, untuned GBA matches the best-tuned TopK and BatchTopK",
    paper="GBA without tuning matches TopK (shown on an LLM, where the true features are unknown)",
    command=grid_command(WORLD_GRID),
    rule=f"reproduced if untuned GBA (K = 10, 4f → f/4, Algorithm 2), averaged over seeds, has an L0 within a factor "
    f"{WORLD_L0_FACTOR} of the world's true L0, a SAELens explained variance at most {WORLD_EV_GAP} below and a SAELens MCC "
    "at least those of the best TopK/BatchTopK sweep point (the one of highest mean SAELens MCC); partly if one or two hold",
    figure=WORLD_GRID,
)
def world_untuned(results: Path) -> Measurement:
    label, best, true_l0, baselines = best_world_baseline(results)
    gba = world_table(results, WORLD_GRID, methods=("gba",), where={"controller": "paper", "highest_target_over_f": UNTUNED_HTF_OVER_F})
    means = gba[WORLD_COLUMNS].mean()
    checks = world_checks(means, best, true_l0)
    measured = (f"{baselines['data'].iloc[0]}, {scale_text(gba)}, {gba['seed'].nunique()} seeds, true L0 {true_l0:.1f}: "
                f"{world_text('untuned ' + gba['label'].iloc[0], means)} ({topk_at_l0(baselines, means['l0'])}); "
                f"best baseline {world_text(label, best)}. "
                + "; ".join(f"{name}: {'yes' if held else 'no'}" for name, held in checks.items()) + ".")
    held = sum(checks.values())
    verdict = "reproduced" if held == len(checks) else ("partly" if held else "not reproduced")
    return Measurement(measured, verdict)


@claim(
    "18c",
    "GBA is nearly tuning-free: with the paper's own LLM targets (no feature frequency needed) it matches the best baselines on a SynthSAEBench-style world",
    paper="HTF 0.5 (ICLR) or 0.1 (v1), LTF 0.001, K = 10: 'largely insensitive' to HTF, LTF, K",
    command=grid_command(WORLD_GRID),
    rule="reproduced if GBA with HTF 0.5 or 0.1 → LTF 0.001 under Algorithm 2 meets all three criteria of 18b for some "
    "HTF; partly if only under another controller (excess or proportional); not reproduced otherwise",
    figure=WORLD_GRID,
)
def world_paper_targets(results: Path) -> Measurement:
    label, best, true_l0, baselines = best_world_baseline(results)
    gba = world_table(results, WORLD_GRID, methods=("gba",), where=LLM_TARGETS)
    means = gba.groupby(["controller", "label"])[WORLD_COLUMNS].mean()
    passes = {key: all(world_checks(row, best, true_l0).values()) for key, row in means.iterrows()}
    measured = (f"{scale_text(gba)}, {gba['seed'].nunique()} seeds, true L0 {true_l0:.1f}; best baseline "
                f"{world_text(label, best)}. " + "; ".join(
                    f"{world_text(key[1], row)} ({topk_at_l0(baselines, row['l0'])}; {'meets' if passes[key] else 'fails'} "
                    "18b's criteria)" for key, row in means.iterrows()) + ".")
    paper_rule = any(held for (controller, _), held in passes.items() if controller == "paper")
    verdict = "reproduced" if paper_rule else ("partly" if any(passes.values()) else "not reproduced")
    return Measurement(measured, verdict)


def best_configuration(results: Path, grid: str, methods: tuple[str, ...],
                       context: Callable[[pd.DataFrame], str] = lambda table: "") -> Measurement:
    """Claims 18d-e: each BA/GBA configuration of a world grid (means over seeds) against 18b's criteria and best
    baseline; reproduced if one meets all three, partly if the best meets one or two. `context` adds to the
    scale text what the claim reads from the grid's rows."""
    label, best, true_l0, baselines = best_world_baseline(results)
    table = world_table(results, grid, methods=methods)
    means = table.groupby("label")[WORLD_COLUMNS].mean()
    checks = {key: world_checks(row, best, true_l0) for key, row in means.iterrows()}
    measured = (f"{scale_text(table)}, {table['seed'].nunique()} seeds, true L0 {true_l0:.1f}{context(table)}; best baseline "
                f"{world_text(label, best)}. "
                + "; ".join(f"{world_text(key, row)} ({topk_at_l0(baselines, row['l0'])}; meets "
                            f"{sum(checks[key].values())} of 3)" for key, row in means.iterrows()) + ".")
    held = max(sum(passed.values()) for passed in checks.values())
    return Measurement(measured, "reproduced" if held == 3 else ("partly" if held else "not reproduced"))


@claim(
    "18d",
    "GBA's gap on the SynthSAEBench-style world closes when its targets are set at the code density the width can hold",
    paper="not a claim of the paper: a diagnosis of 18b-c (the targets fix GBA's L0; the paper sets them without f)",
    command=grid_command(TARGETS_GRID),
    rule="reproduced if some oracle-target configuration (BA at p = the width's L0 / M, where the width's L0 is the "
    "summed frequency of the world's M most frequent features; GBA with a ladder whose L0 is the true L0; GBA with "
    "ceilings from 0.5 down to the frequency of the world's M-th most frequent feature), averaged "
    "over seeds, meets all three criteria of 18b against 18b's best baseline; partly if the best of them meets one or "
    "two; not reproduced otherwise",
    figure=TARGETS_GRID,
)
def world_oracle_targets(results: Path) -> Measurement:
    return best_configuration(results, TARGETS_GRID, ("ba", "gba"), lambda table: (
        f", L0 of the width's most frequent features {table['world_width_l0'].mean():.2f}"))


@claim(
    "18e",
    "GBA with the paper's own targets matches the best baselines on the SynthSAEBench-style world when it starts sparse",
    paper="not a claim of the paper: 18c from a calibrated start (each neuron firing at its target on the first batch)",
    command=grid_command(START_GRID),
    rule="reproduced if GBA with HTF 0.5 → LTF 0.001 (K = 10) from a calibrated start, under Algorithm 2 or the excess "
    "controller, averaged over seeds, meets all three criteria of 18b against 18b's best baseline; partly if the better "
    "of them meets one or two; not reproduced otherwise",
    figure=START_GRID,
)
def world_calibrated_start(results: Path) -> Measurement:
    return best_configuration(results, START_GRID, ("gba",))


@claim(
    "19",
    "From K = 10 to K = 20 groups the loss changes by at most 0.01",
    paper="Δ loss ≤ 0.01 for every (HTF, LTF) pair (Fig. 4)",
    command=grid_command("gba_sensitivity", ONE_THREAD),
    rule=f"reproduced if the mean normalised MSE at K = 10 and K = 20 (HTF 4f, LTF f/4) differ by at most {GROUPS_SATURATE}",
    figure="sensitivity",
)
def groups_saturate(results: Path) -> Measurement:
    default = gba_points(results, lambda t: np.isclose(t["htf"], 4) & np.isclose(t["ltf"], 0.25) & t["K"].isin([10, 20]))
    by_k = default.groupby("K")[["normalised_mse", "fvu", "l0", "frr_0.9"]].mean()
    change = abs(by_k.loc[20, "normalised_mse"] - by_k.loc[10, "normalised_mse"])
    measured = (f"{sensitivity_scale(default)}, HTF = 4f, LTF = f/4: normalised MSE K = 10: {by_k.loc[10, 'normalised_mse']:.4f}, "
                f"K = 20: {by_k.loc[20, 'normalised_mse']:.4f} (Δ = {change:.4f}); FRR(0.9) {by_k.loc[10, 'frr_0.9']:.2f} → "
                f"{by_k.loc[20, 'frr_0.9']:.2f}; L0 {by_k.loc[10, 'l0']:.1f} → {by_k.loc[20, 'l0']:.1f}")
    return Measurement(measured, "reproduced" if change <= GROUPS_SATURATE else "not reproduced",
                       "One (HTF, LTF) pair at our scale (the paper: six pairs on an LLM).")


@claim(
    "20",
    "Lowering the LTF makes codes sparser and the loss higher",
    paper="LTF 1e-2 → 1e-4 (HTF 0.1, K = 10): active fraction ≈ 8e-3 → 3e-3, loss ≈ 0.126 → 0.18",
    command=grid_command("gba_sensitivity", ONE_THREAD),
    rule="reproduced if, LTF by LTF downwards (HTF 4f, K = 10), the mean L0 falls and the mean normalised MSE rises at "
    "every step; partly if one of the two does",
    figure="sensitivity",
)
def lower_ltf(results: Path) -> Measurement:
    points = gba_points(results, lambda t: np.isclose(t["htf"], 4) & (t["K"] == 10))
    sweep = points.groupby("ltf")[["l0", "normalised_mse", "frr_0.9"]].mean()
    sweep = sweep.sort_index(ascending=False)
    measured = f"{sensitivity_scale(points)}, HTF = 4f, K = 10: " + "; ".join(
        f"LTF = {ltf:g}f: L0 {row['l0']:.2f}, normalised MSE {row['normalised_mse']:.4f}, FRR(0.9) {row['frr_0.9']:.2f}"
        for ltf, row in sweep.iterrows())
    sparser = bool(np.all(np.diff(sweep["l0"].to_numpy()) < 0))
    lossier = bool(np.all(np.diff(sweep["normalised_mse"].to_numpy()) > 0))
    verdict = "reproduced" if sparser and lossier else ("partly" if sparser or lossier else "not reproduced")
    return Measurement(measured, verdict)
