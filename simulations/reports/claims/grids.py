"""Claims checked on the committed grid tables (simulations/specs/*.toml -> simulations/results/)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from simulations.reports.claims import Measurement, claim
from simulations.reports.paper import HEAVY_OPENING
from simulations.reports.tables import (OPENS_AT, ON_TARGET, MissingTable, grid_command, group_settling, load_results,
                                       opening_dimensions, scale_text)
from theory.bounds import opening_dimension


def all_tables(results: Path) -> pd.DataFrame:
    """Every committed grid table, stacked."""
    tables = [load_results(results, path.parent.name) for path in sorted(Path(results).glob("*/results.csv"))]
    if not tables:
        raise MissingTable(f"no tables under {results}: run any `gba grid run simulations/specs/NAME.toml`")
    return pd.concat(tables, ignore_index=True)


MEAN_ABOVE_TARGET = 1e-3
"""Claim 1: the largest mean share of unclamped neurons above target + 4 binomial s.d. (4 s.d. one-sided
leaves ~3e-5 false alarms per neuron; 1e-3 allows for that and nothing more)."""


@claim(
    "1",
    "The bias controller alone keeps each neuron's activation frequency at or below its target and the biases in [−1, 0]",
    paper="Algorithm 1–2",
    command="python -m pytest tests/test_bias_adaptation.py tests/test_recover.py -k \"controller or clamped\"; "
    "gba checks (reads every grid table)",
    rule=f"reproduced if every point's biases lie in [−1, 0] and the mean share of neurons above target is ≤ {MEAN_ABOVE_TARGET:g}; "
    "partly otherwise",
)
def controller(results: Path) -> Measurement:
    table = all_tables(results)
    # Algorithm 2's rows only: the proportional rule aims at the targets, not below them.
    table = table[table["method"].isin(["ba", "gba"]) & table["fraction_above_target"].notna() & table["controller"].eq("paper")]
    worst = table["fraction_above_target"].max()
    mean = table["fraction_above_target"].mean()
    in_range = bool(table["biases_in_range"].astype(str).eq("True").all())
    measured = (f"over {len(table)} BA/GBA grid points (grids {', '.join(sorted(table['grid'].unique()))}): "
                f"unclamped neurons above target + 4 binomial s.d. on 16,384 fresh samples: mean fraction "
                f"{mean:.2g}, worst point {worst:.2g}; biases in [−1, 0] at every point: {in_range}. "
                "The tests check the same on 5 seeds.")
    verdict = "reproduced" if in_range and mean <= MEAN_ABOVE_TARGET else "partly"
    return Measurement(measured, verdict)


def settling_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per (controller, gamma, steps, frequency profile): median realised / target over the reachable
    groups (mean over seeds), the share of runs where it lies within a factor ON_TARGET of 1, FRR(0.9) and L0."""
    groups = group_settling(table)
    per_run = groups[groups["reachable"]].groupby("key")["ratio"].median().rename("ratio")
    runs = table.set_index("key").join(per_run)
    return runs.groupby(["controller", "bias_decrease_rate", "steps", "frequency_decay"]).agg(
        ratio=("ratio", "mean"), on_target=("ratio", lambda ratio: float(ratio.between(ON_TARGET, 1 / ON_TARGET).mean())),
        frr=("frr_0.9", "mean"), l0=("l0", "mean"))


@claim(
    "1b",
    "Bias adaptation brings each neuron's activation frequency to its group's target",
    paper="Algorithm 2: a neuron above its target p has its bias lowered; only a dead one (below ε) has it raised",
    command=grid_command("controller", "--jobs 2"),
    rule=f"reproduced if under Algorithm 2 ('paper') every run's median group, among the groups whose target the data "
    f"can reach (at most the most frequent feature's frequency), fires within a factor {ON_TARGET} of its target "
    f"({ON_TARGET}–{1 / ON_TARGET:.2f} × p); partly if some runs' does. The excess and proportional rules are measured beside it, not judged",
    figure="controller",
)
def controller_settling(results: Path) -> Measurement:
    table = load_results(results, "controller")
    summary = settling_summary(table)
    measured = (f"{scale_text(table)}, GBA K = 10, 4f → f/4, {table['seed'].nunique()} seeds. Median realised / target over "
                "the reachable groups (FRR(0.9), L0) by controller, γ, steps, Zipf exponent: "
                + "; ".join(f"{controller} γ = {gamma:g}, {steps} steps, Zipf {decay:g}: {row.ratio:.2f} ({row.frr:.2f}, {row.l0:.1f})"
                            for (controller, gamma, steps, decay), row in summary.iterrows()))
    paper = summary.loc["paper", "on_target"]
    verdict = "reproduced" if (paper == 1).all() else ("partly" if (paper > 0).any() else "not reproduced")
    return Measurement(measured, verdict)


INSIDE_BAND_FULL, INSIDE_BAND_PARTLY = 0.99, 0.9
"""Claim 8: the worst run's FRR(0.9) inside the stated band for 'reproduced' and for 'partly'."""


@claim(
    "8",
    "BA recovers all features (cos ≥ 1 − o(1)) inside the band",
    paper="Theorem 6.1",
    command=grid_command("band_edge") + " --reuse simulations/results/resonance",
    figure="band_edge",
    rule=f"reproduced if every run at a target inside the stated band has FRR(0.9) ≥ {INSIDE_BAND_FULL}; "
    f"partly if ≥ {INSIDE_BAND_PARTLY}",
)
def theorem_point(results: Path) -> Measurement:
    table = load_results(results, "band_edge")
    inside = table[table["in_stated_band"].astype(str).eq("True")]
    if inside.empty:
        raise MissingTable("simulations/results/band_edge has no point inside the stated band")
    by_p = inside.groupby("highest_target_over_f")[["frr_0.9", "frr_0.8", "frr_init_0.9"]].agg(["mean", "min"])
    row = inside.iloc[0]
    measured = (f"{scale_text(inside)}, {inside['seed'].nunique()} seeds, the "
                f"targets inside the stated band [{row['stated_band_lower'] / row['feature_frequency']:.2f}f, "
                f"{row['stated_band_upper'] / row['feature_frequency']:.2f}f]: "
                + "; ".join(f"p = {p:g}f: FRR(0.9) mean {r[('frr_0.9', 'mean')]:.3f} (min {r[('frr_0.9', 'min')]:.3f}), "
                            f"FRR(0.8) min {r[('frr_0.8', 'min')]:.3f}, random init {r[('frr_init_0.9', 'mean')]:.3f}"
                            for p, r in by_p.iterrows())
                + f"; width condition met: {bool(inside['width_condition_holds'].astype(str).eq('True').any())}")
    worst = inside["frr_0.9"].min()
    verdict = "reproduced" if worst >= INSIDE_BAND_FULL else ("partly" if worst >= INSIDE_BAND_PARTLY else "not reproduced")
    note = (f"Inside the stated band most but not all features pass cosine 0.9 after {int(row['steps'])} steps at n = {int(row['n'])}; the lower "
            "targets recover fewer. " + covered_heatmap_cells(results)) if verdict != "reproduced" else ""
    return Measurement(measured, verdict, note)


def covered_heatmap_cells(results: Path) -> str:
    """How the heatmap's cells that the theorem covers (inside the stated band, H1-H3 and V1 hold) recover."""
    try:
        table = load_results(results, "resonance")
    except MissingTable:
        return ""
    holds = table[[f"{name}_holds" for name in ("H1", "H2", "H3", "V1")]].astype(str).eq("True").all(axis=1)
    covered = table[holds & table["in_stated_band"].astype(str).eq("True")]
    if covered.empty:
        return ""
    cells = covered.groupby(["d", "highest_target_over_f"])["frr_0.9"].mean()
    return (f"In the n = {int(table['n'].iloc[0])} heatmap, {int((cells >= 0.9).sum())} of the {len(cells)} cells that the "
            f"theorem covers (inside the stated band, H1–H3 and V1 hold) reach mean FRR(0.9) ≥ 0.9; the lowest is {cells.min():.2f} "
            f"(d = {cells.idxmin()[0]}, p = {cells.idxmin()[1]:g}f).")


def light_and_heavy(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows in light (d > √n) and heavy (d < √n) superposition."""
    light = table["d"] > table["n"] ** 0.5
    heavy = table["d"] < table["n"] ** 0.5
    return table[light], table[heavy]


def frr_by_target(table: pd.DataFrame) -> pd.Series:
    """Mean FRR(0.9) over seeds (and d) at each target p/f."""
    return table.groupby("highest_target_over_f")["frr_0.9"].mean()


def listed(values) -> str:
    return ", ".join(f"{v:g}" for v in values) if len(values) else "none"


def resonance_cells(table: pd.DataFrame) -> pd.DataFrame:
    """Per heatmap cell (d, p/f): mean over seeds of FRR(0.9) and of its random-init level, the share
    of runs whose instance satisfies V1, and the mean largest |cos| between features."""
    table = table.assign(v1=table["V1_holds"].astype(str).eq("True"))
    return table.groupby(["d", "highest_target_over_f"]).agg(
        frr=("frr_0.9", "mean"), init=("frr_init_0.9", "mean"), v1=("v1", "mean"), coherence=("V1_value", "mean")
    ).reset_index()


def resonance_scale(table: pd.DataFrame) -> str:
    """The heatmap's scale, read off its table."""
    n = int(table["n"].iloc[0])
    return (f"n = {n} (√n = {n ** 0.5:g}), s = {table['feature_frequency'].iloc[0] * n:g}, width "
            f"{table['width'].iloc[0] / n:g}n, {int(table['steps'].iloc[0])} steps, {table['seed'].nunique()} seed(s), "
            "cells are means over seeds (paper: n = 65,536)")


def band_by_d(cells: pd.DataFrame) -> dict[int, str]:
    """The targets p/f whose mean FRR(0.9) reaches 0.9, at each d."""
    return {int(d): listed(sorted(part.loc[part["frr"] >= 0.9, "highest_target_over_f"])) for d, part in cells.groupby("d")}


BAND_LOW_RANGE, BAND_HIGH_RANGE = (1.2, 2.5), (3.0, 6.0)
"""Claim 3: where the lowest and the highest p/f of the heavy cells with FRR(0.9) ≥ 0.9 must lie to match
the paper's 1.7f–4.4f (about ±40 %, as the paper's grid steps are a factor 1.37)."""


@claim(
    "3",
    "Resonance: in heavy superposition (d < √n) BA reaches FRR ≥ 0.9 for p ≈ 1.7f–4.4f",
    paper="FRR ≥ 0.9 for p ∈ [1.7f, 4.4f] at d ∈ [102, 178] < √n = 256, n = 65,536",
    command=grid_command("resonance"),
    rule=f"reproduced if the heavy cells (d < √n) with mean FRR(0.9) ≥ 0.9 span p/f from within {BAND_LOW_RANGE} (above 1) "
    f"to within {BAND_HIGH_RANGE}; partly if some heavy cell reaches 0.9 elsewhere; with none, not testable here when most "
    "heavy instances break V1, else not reproduced",
    figure="resonance_heatmap",
)
def resonance_band(results: Path) -> Measurement:
    table = load_results(results, "resonance")
    cells = resonance_cells(table)
    root_n = float(table["n"].iloc[0]) ** 0.5
    heavy, light = cells[cells["d"] < root_n], cells[cells["d"] > root_n]
    working = heavy[heavy["frr"] >= 0.9]
    measured = (f"{resonance_scale(table)}. Heavy (d < √n): p/f with FRR ≥ 0.9 at each d: "
                + "; ".join(f"d = {d}: {v}" for d, v in band_by_d(heavy).items())
                + f"; best cell {heavy['frr'].max():.2f} (random init up to {heavy['init'].max():.2f}); V1 holds in "
                f"{heavy['v1'].mean():.0%} of these runs. Light (d > √n): "
                + "; ".join(f"d = {d}: {v}" for d, v in band_by_d(light).items()))
    if working.empty:
        silent = heavy["v1"].mean() < 0.5
        note = (f"No heavy cell reaches 0.9: at most {(heavy['frr'] - heavy['init']).max():.2f} above the random-init level. "
                + ("Most heavy instances break V1 (features at |cos| > 0.7), so the theorem is silent there; the paper's "
                   "heavy band lives at n = 65,536, where d ∈ [102, 178] keeps V1." if silent else
                   "V1 holds on most of them, so this is a failure to reproduce, not a gap in the theorem's cover."))
        return Measurement(measured, "not testable here" if silent else "not reproduced", note)
    low, high = working["highest_target_over_f"].min(), working["highest_target_over_f"].max()
    like_paper = low > 1.0 and BAND_LOW_RANGE[0] <= low <= BAND_LOW_RANGE[1] and BAND_HIGH_RANGE[0] <= high <= BAND_HIGH_RANGE[1]
    note = "" if like_paper else (
        f"Heavy cells with FRR ≥ 0.9 span p = {low:g}f–{high:g}f against the paper's 1.7f–4.4f: "
        + ("the band reaches down to or below f, " if low <= 1.0 else "")
        + "see claims 4 and 6 for the lower edge, where the controller leaves neurons between ε and p alone.")
    return Measurement(measured, "reproduced" if like_paper else "partly", note)


FAILS_BELOW_F, FAILS_ABOVE, HIGH_TARGET = 0.15, 0.25, 5.5
"""Claim 4: the paper's FRR at p ≤ 0.93f and at p ≥ 6.1f, and the smallest p/f of our grid counted as 'high'."""


@claim(
    "4",
    "Outside the band recovery fails: FRR ≤ 0.15 for p ≤ f and ≤ 0.25 for p ≥ 6f",
    paper="FRR ≤ 0.15 at p ≤ 0.93f; ≤ 0.25 at p ≥ 6.1f (heavy, n = 65,536)",
    command=grid_command("band_edge") + " --reuse simulations/results/resonance; " + grid_command("resonance"),
    rule=f"reproduced if the band-edge grid's mean FRR(0.9) is ≤ {FAILS_BELOW_F} at every p ≤ f and the heatmap's light rows' "
    f"is ≤ {FAILS_ABOVE} at every p ≥ {HIGH_TARGET}f; partly if one of the two holds",
    figure="band_edge",
)
def outside_band(results: Path) -> Measurement:
    edge = load_results(results, "band_edge")
    resonance = load_results(results, "resonance")
    light, _ = light_and_heavy(resonance)
    low = frr_by_target(edge)
    low = low[low.index <= 1.0 + 1e-9]
    high = light[light["highest_target_over_f"] >= HIGH_TARGET].groupby("highest_target_over_f")["frr_0.9"].mean()
    d = int(edge["d"].iloc[0])
    measured = (f"n = {int(edge['n'].iloc[0])}, d = {d}, mean of {edge['seed'].nunique()} seeds: FRR(0.9) at p/f = "
                + ", ".join(f"{p:g}: {v:.2f}" for p, v in low.items())
                + f"; light rows of the heatmap (n = {int(resonance['n'].iloc[0])}, d > √n, mean of "
                f"{resonance['seed'].nunique()} seeds and every light d) at p/f ≥ {HIGH_TARGET:g}: "
                + ", ".join(f"{p:g}: {v:.2f}" for p, v in high.items())
                + "; heatmap at p ≤ f by light d: "
                + ", ".join(f"d = {d}: {v:.2f}" for d, v in light[light["highest_target_over_f"] <= 1.0 + 1e-9].groupby("d")["frr_0.9"].mean().items()))
    fails_low = bool((low <= FAILS_BELOW_F).all())
    fails_high = bool((high <= FAILS_ABOVE).all())
    verdict = "reproduced" if fails_low and fails_high else ("partly" if fails_low or fails_high else "not reproduced")
    notes = []
    if not fails_low:
        notes.append(f"Recovery does not fail at p ≤ f at n = {int(edge['n'].iloc[0])}. The controller only raises a neuron's threshold "
                     "when it fires more often than p and leaves neurons between ε and p alone, so the neurons that "
                     "carry features fire below their target (realised frequency in claim 6 and the right panel of "
                     "the figure), and targets at or below f still recover.")
        at_or_below = light[light["highest_target_over_f"] <= 1.0 + 1e-9].groupby("d")["frr_0.9"].mean()
        dropping = at_or_below[at_or_below < 0.5]
        if len(dropping):
            notes.append(f"In the n = {int(resonance['n'].iloc[0])} heatmap it does drop at the largest d: mean FRR(0.9) "
                         + ", ".join(f"{v:.2f} at d = {d}" for d, v in dropping.items())
                         + " for p ≤ f, where p ≥ 2f recovers fully; a lower edge near f appears once d is large.")
    if not fails_high:
        notes.append(f"At p ≥ {HIGH_TARGET:g}f recovery survives where d is large (light superposition, the theorem's wider band "
                     "min(√f, f d)); the paper's upper cut-off is in heavy superposition (claim 3).")
    if not fails_high:
        notes.append(long_training_summary(results))
    return Measurement(measured, verdict, " ".join(notes))


SMALL_D, OPENS_BY, ABOVE_INIT = 0.25, 0.4, 0.1
"""Claim 5: 'too little dimension' is d ≤ 0.25√n (the paper's d ≤ 58 is 0.23√n); the band must open by
d = 0.4√n (the paper's 84–102 is 0.33–0.4√n); failing means at most 0.1 above the random-init FRR."""


@claim(
    "5",
    "Too little dimension: FRR ≤ 0.1 for d ≲ 58 (≈ 0.23√n) at every p; the band opens only for d ≳ 84 (≈ 0.33√n)",
    paper="FRR ≤ 0.1 at d ≤ 58; band opens at d ≈ 84–102 (n = 65,536)",
    command=grid_command("resonance"),
    rule=f"one point each for: every d ≤ {SMALL_D}√n has its best cell within {ABOVE_INIT} of the random-init FRR(0.9); "
    f"some d ≤ {OPENS_BY}√n has a cell with FRR(0.9) ≥ 0.9. Two points: reproduced, one: partly",
    figure="resonance_heatmap",
)
def small_d(results: Path) -> Measurement:
    table = load_results(results, "resonance")
    cells = resonance_cells(table)
    by_d = cells.groupby("d").agg(best=("frr", "max"), init=("init", "max"), v1=("v1", "mean"), coherence=("coherence", "mean"))
    root_n = float(table["n"].iloc[0]) ** 0.5
    opens = by_d.index[by_d["best"] >= 0.9]
    measured = (f"{resonance_scale(table)}. Best cell FRR(0.9) over p at each d (random init; max |cos| between "
                "features; share of runs where V1 holds): "
                + "; ".join(f"d = {d}: {r.best:.2f} ({r.init:.2f}; {r.coherence:.2f}; {r.v1:.0%})" for d, r in by_d.iterrows())
                + f". FRR ≥ 0.9 first at d = {opens.min() if len(opens) else 'none'}")
    small = by_d[by_d.index <= SMALL_D * root_n]
    fails_small = bool(((small["best"] - small["init"]) <= ABOVE_INIT).all()) if len(small) else False
    opens_like_paper = len(opens) > 0 and opens.min() <= OPENS_BY * root_n
    verdict = {2: "reproduced", 1: "partly", 0: "not reproduced"}[int(fails_small) + int(opens_like_paper)]
    coherent = by_d.index[by_d["v1"] >= 0.5]
    note = "" if opens_like_paper else (
        f"The band opens only at d = {opens.min() / root_n:.2f}√n here (paper: ≈ 0.33–0.4√n). "
        if len(opens) else "No d reaches FRR 0.9. ") + (
        f"Most instances keep V1 (max |cos| ≤ 0.7) only from d = {coherent.min() if len(coherent) else '—'} on "
        f"({coherent.min() / root_n:.2f}√n); at n = 65,536 that happens near d = 90 ≈ 0.35√n." if len(coherent) else "")
    return Measurement(measured, verdict, note)


ROOT_N_SLOPE = 0.5
"""Claim 5b: the slope of log d against log n if the opening grew like √n."""


def grid_d(d: float) -> str:
    return "none" if np.isnan(d) else f"{d:g}"


def log_slope(n, d) -> float:
    """Least-squares slope of log d against log n."""
    return float(np.polyfit(np.log(np.asarray(n, float)), np.log(np.asarray(d, float)), 1)[0])


@claim(
    "5b",
    "Ours, not the paper's: the dimension at which recovery opens grows like log(n/s), not like √n",
    paper=f"not in the paper; its band opens near d ≈ {HEAVY_OPENING['opens_near']} at n = {HEAVY_OPENING['n']:,} and fails "
    f"up to d = {HEAVY_OPENING['fails_up_to']}",
    command=grid_command("opening_law"),
    rule="the opening at each n is the smallest grid d from which on every larger d has mean FRR(0.9) ≥ "
    f"{OPENS_AT} (BA, p = 2f); fit the slope of log(opening) against log n over the n that open and compare it with "
    f"the same fit of theory.bounds.opening_dimension at those n and with {ROOT_N_SLOPE} (√n): reproduced if nearer "
    "the former, not reproduced if nearer √n, partly if equally near; not testable here if fewer than two n open",
    figure="opening_law",
)
def opening_law(results: Path) -> Measurement:
    table = load_results(results, "opening_law")
    s = float(table["feature_frequency"].iloc[0] * table["n"].iloc[0])
    openings = opening_dimensions(table)
    opened = openings.dropna(subset=["opening"])
    predicted = [opening_dimension(n, s) for n in opened["n"]]
    measured = f"{scale_text(table)}, {table['seed'].nunique()} seeds. Opening (grid d below it; ours d* = s Q⁻¹(f)²; √n): " + "; ".join(
        f"n = {row.n}: {grid_d(row.opening)} ({grid_d(row.below)}; {opening_dimension(row.n, s):.1f}; {row.n ** 0.5:.0f})"
        for row in openings.itertuples())
    if len(opened) < 2:
        return Measurement(measured + ". Fewer than two n open.", "not testable here")
    slope, law = log_slope(opened["n"], opened["opening"]), log_slope(opened["n"], predicted)
    ratio = (opened["opening"] / np.array(predicted)).to_numpy()
    measured += (f". Slope of log(opening) against log n: {slope:.2f} (log law {law:.2f}, √n {ROOT_N_SLOPE}); opening / d* "
                 f"= {ratio.min():.2f}–{ratio.max():.2f}; the paper's n = {HEAVY_OPENING['n']:,} opening {HEAVY_OPENING['opens_near']} "
                 f"= {HEAVY_OPENING['opens_near'] / opening_dimension(HEAVY_OPENING['n'], s):.2f} d*")
    to_law, to_root = abs(slope - law), abs(slope - ROOT_N_SLOPE)
    verdict = "reproduced" if to_law < to_root else "not reproduced" if to_root < to_law else "partly"
    return Measurement(measured, verdict)


BEST_WITHIN, POOR_AT_F = 0.02, 0.5
"""Claim 6: targets within 0.02 of the best mean FRR(0.9) count as best; 'poor' at p = f is below 0.5."""


@claim(
    "6",
    "The best target is slightly above f; recovery at p = f is poor",
    paper="best p ≈ 1.7–4.4f; FRR ≈ 0.05–0.15 at p = 0.93f",
    command=grid_command("band_edge") + " --reuse simulations/results/resonance",
    rule=f"one point each for: every target within {BEST_WITHIN} of the best mean FRR(0.9) lies above f; the mean FRR(0.9) "
    f"at p = f is below {POOR_AT_F}. Two points: reproduced, one: partly",
    figure="band_edge",
)
def best_target(results: Path) -> Measurement:
    table = load_results(results, "band_edge")
    by_p = frr_by_target(table)
    realised = table.groupby("highest_target_over_f")["matched_frequency_over_f"].mean()
    best = by_p[by_p >= by_p.max() - BEST_WITHIN].index
    at_f = by_p.loc[np.isclose(by_p.index, 1.0)].iloc[0]
    measured = (f"n = {int(table['n'].iloc[0])}, d = {int(table['d'].iloc[0])}, {table['seed'].nunique()} seeds: FRR(0.9) by p/f: "
                + ", ".join(f"{p:g}: {v:.2f}" for p, v in by_p.items())
                + f". Within 0.02 of the best at p/f = {listed(best)}; at p = f: {at_f:.2f}. Realised frequency of the "
                "features' neurons / f at each target: " + ", ".join(f"{p:g}: {v:.2f}" for p, v in realised.items()))
    above_f, poor_at_f = bool(best.min() > 1.0), bool(at_f < POOR_AT_F)
    verdict = {2: "reproduced", 1: "partly", 0: "not reproduced"}[int(above_f) + int(poor_at_f)]
    working = table.loc[table["frr_0.9"] >= 0.9, "matched_frequency_over_f"]
    note = (f"The best target lies {'above' if above_f else 'at or below'} f, but recovery at p = f is "
            f"{'poor' if poor_at_f else 'not poor'} ({at_f:.2f}), and runs with FRR(0.9) ≥ 0.9 have realised frequencies "
            f"(of the features' neurons) from {working.min():.2f}f up. The controller leaves neurons between ε and p "
            "alone, so the realised frequency is well below the target: measured in realised frequency the best runs "
            f"sit at ≈ {table.loc[table['frr_0.9'] >= by_p.max() - BEST_WITHIN, 'matched_frequency_over_f'].mean():.2f}f. "
            "If the paper's axis is the realised frequency its band would correspond to higher targets than ours; if "
            "it is the target, our lower edge is much softer (n = 256, light superposition, against the paper's "
            "n = 65,536, heavy).") if verdict != "reproduced" else ""
    return Measurement(measured, verdict, note)


@claim(
    "7",
    "Phase boundary: the band is narrow for d < √n and much wider for d > √n",
    paper="stated by the theorem's band min(√f, f d) [S]; no d > √n panel is available",
    command=grid_command("resonance"),
    rule="reproduced if some light d (> √n) has more targets with mean FRR(0.9) ≥ 0.9 than any heavy d (< √n), and some "
    "heavy d has at least one; partly if only the first holds",
    figure="resonance_heatmap",
)
def phase_boundary(results: Path) -> Measurement:
    table = load_results(results, "resonance")
    cells = resonance_cells(table)
    root_n = float(table["n"].iloc[0]) ** 0.5
    width = cells.groupby("d")["frr"].apply(lambda frr: int((frr >= 0.9).sum()))
    total = cells["highest_target_over_f"].nunique()
    measured = (f"{resonance_scale(table)}. Number of the {total} targets "
                f"({cells['highest_target_over_f'].min():g}–{cells['highest_target_over_f'].max():g} f) with FRR ≥ 0.9, by d: "
                + ", ".join(f"d = {d}: {k}" for d, k in width.items()))
    heavy, light = width[width.index < root_n], width[width.index > root_n]
    widens = len(light) > 0 and light.max() > (heavy.max() if len(heavy) else 0)
    narrow_not_empty = len(heavy) > 0 and heavy.max() > 0
    verdict = "reproduced" if widens and narrow_not_empty else ("partly" if widens else "not reproduced")
    note = "" if verdict == "reproduced" else (
        "The band is wide in light superposition but empty, not narrow, below √n at this n: recovery needs d large "
        "enough for the features to stay incoherent (V1), which at small n happens only near or above √n.")
    return Measurement(measured, verdict, note)


STEPS_RATIO = 1.5
"""Claim 8b: the largest ratio between the median samples to FRR(0.9) ≥ 0.9 of two n that still reads 'constant'."""


@claim(
    "8b",
    "Recovery takes a constant number of steps (T = 1/ς), independent of n",
    paper="T = ς⁻¹ [S]",
    command=grid_command("convergence"),
    rule=f"reproduced if every n reaches FRR(0.9) ≥ 0.9 and the median samples it takes vary by at most {STEPS_RATIO}× across n; "
    "partly if at least two n reach it",
    figure="convergence",
)
def constant_steps(results: Path) -> Measurement:
    table = load_results(results, "convergence")
    history = load_results(results, "convergence", "history.csv").merge(table[["key", "n"]], on="key")
    reached = {}
    for n, part in history.groupby("n"):
        samples = [run.loc[run["frr_0.9"] >= 0.9, "samples"].min() for _, run in part.groupby("key")]
        reached[n] = samples
    final = table.groupby("n")["frr_0.9"].mean()
    measured = (f"samples until FRR(0.9) ≥ 0.9, per seed (BA, p = f; {scale_text(table)}): "
                + "; ".join(f"n = {n}: {', '.join('never' if pd.isna(s) else f'{s / 1000:.0f}k' for s in v)} "
                            f"(final FRR {final[n]:.2f})" for n, v in reached.items()))
    medians = pd.Series({n: np.nanmedian(v) if not all(pd.isna(v)) else np.inf for n, v in reached.items()})
    never = list(medians.index[np.isinf(medians)])
    reached_all = medians[~np.isinf(medians)]
    ratio = reached_all.max() / reached_all.min() if len(reached_all) else np.inf
    verdict = "reproduced" if not never and ratio <= STEPS_RATIO else ("partly" if len(reached_all) >= 2 else "not reproduced")
    if never:
        note = f"n = {listed(never)} did not reach FRR(0.9) = 0.9 within {int(table['steps'].max())} steps. "
    else:
        note = ""
    if len(reached_all) >= 2:
        note += (f"Among the n that did, the samples needed change by {ratio:.1f}× between n = {reached_all.idxmin()} "
                 f"and n = {reached_all.idxmax()}. ")
    sparse_from = {n: part.loc[part["l0"] <= 5 * 3, "step"].min() for n, part in history.groupby("n")}
    note += ("Part of the early training goes to the controller raising the thresholds from 0: L0 first falls "
             "below 5s at step " + ", ".join(f"{v} (n = {n})" for n, v in sparse_from.items()) + ".")
    return Measurement(measured, verdict, note if verdict != "reproduced" else "")


@claim(
    "8c",
    "The width condition M ≳ n p^(−s/(1−ε)²) of the theorem",
    paper="sufficient condition [S; the exponent's sign is uncertain]; experiments use M = 4n",
    command=grid_command("width") + " --reuse simulations/results/resonance",
    rule="not testable here: the condition asks for widths beyond any run (it is reported against the widths that recover)",
    figure="width",
)
def width_condition(results: Path) -> Measurement:
    table = load_results(results, "width")
    n = int(table["n"].iloc[0])
    needed = table["required_width"].iloc[0]
    by_width = table.groupby("width")["frr_0.9"].agg(["mean", "min", "max"])
    holds = table["width_condition_holds"].astype(str).eq("True")
    measured = (f"n = {n}, d = {int(table['d'].iloc[0])}, p = 2f, {table['seed'].nunique()} seed(s): FRR(0.9) by M/n, "
                "mean (range): " + ", ".join(f"{w / n:g}: {r['mean']:.2f} ({r['min']:.2f}–{r['max']:.2f})" for w, r in by_width.iterrows())
                + f"; the condition asks M ≥ {needed:.3g} (M/n ≥ {needed / n:.3g}); it holds at "
                + (f"{int(holds.sum())} of {len(table)} runs" if holds.any() else "none of these points"))
    full = by_width.index[by_width["mean"] >= 0.95]
    note = (f"Recovery is complete from M/n = {full.min() / n:g} on, orders of magnitude below the condition's "
            f"M ≥ {needed:.3g}: as a sufficient condition it is very loose at this scale; with the opposite sign of the "
            "exponent (M ≳ n p^s) it would be trivially met.") if len(full) else ""
    return Measurement(measured, "not testable here", note or "No width recovered every feature.")


DEGRADES_BY = 0.1
"""Claim 9: a drop of the paired features' mean FRR(0.9) below the lowest level at or under n^-1/2 that counts."""


@claim(
    "9",
    "Recovery degrades when the co-occurrence ratio ρ₂ exceeds ≈ n^(−1/2)",
    paper="v1 Fig. 11 [S]; no numbers available",
    command=grid_command("cooccurrence"),
    rule=f"reproduced if the first co-occurrence level above n^-1/2 already drops the paired features' mean FRR(0.9) by more "
    f"than {DEGRADES_BY} below the lowest level at or under it; partly if some level above does",
    figure="cooccurrence",
)
def cooccurrence_threshold(results: Path) -> Measurement:
    table = load_results(results, "cooccurrence")
    n = int(table["n"].iloc[0])
    threshold = n**-0.5
    by_level = table.groupby("pair_cooccurrence").agg(frr=("frr_0.9_paired", "mean"), low=("frr_0.9_paired", "min"),
                                                      rho=("H3_value", "mean"))
    below = by_level[by_level.index <= threshold]["frr"]
    above = by_level[by_level.index > threshold]["frr"]
    measured = (f"n = {n}, d = {int(table['d'].iloc[0])}, p = 2f, 32 planted pairs, {table['seed'].nunique()} seed(s): "
                "FRR(0.9) of the paired features by planted co-occurrence, mean (worst seed; measured ρ₂): "
                + ", ".join(f"{level:g}: {r.frr:.2f} ({r.low:.2f}; {r.rho:.2f})" for level, r in by_level.iterrows())
                + f"; n^-1/2 = {threshold:.3f}")
    degrades = len(above) > 0 and above.min() < below.min() - DEGRADES_BY
    sharp = degrades and above.iloc[0] < below.min() - DEGRADES_BY
    verdict = "reproduced" if sharp else ("partly" if degrades else "not reproduced")
    note = "" if sharp else ("Recovery of the paired features degrades only well above n^-1/2, if at all: "
                             "at this scale the threshold is conservative.")
    return Measurement(measured, verdict, note)


def covers_f(table: pd.DataFrame) -> pd.Series:
    """Whether each row's targets cover its feature frequency f (lowest ≤ f ≤ highest)."""
    f = table["feature_frequency"]
    return (table["lowest_target"] <= f) & (table["highest_target"] >= f)


def imbalanced_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The GBA rows of the imbalanced grid, marked by whether their targets cover f."""
    table = table[table["method"] == "gba"]
    return table.assign(covers=covers_f(table))


COVERING_FULL, COVERING_PARTLY = 0.99, 0.8
"""Claim 10: the worst seed's FRR(0.9) of the best covering target range for 'reproduced' and 'partly'."""
WRONG_FAILS = 0.2
"""Claim 14: the mean FRR(0.9) at or below which a wrong-coverage target range counts as failing."""


@claim(
    "10",
    "Imbalanced toy: GBA with targets covering the range recovers every feature",
    paper="FRR 100 % (τ = 0.8) / 100 % (τ = 0.9)",
    command=grid_command("imbalanced"),
    rule=f"reproduced if some target range covering f has FRR(0.9) ≥ {COVERING_FULL} on every seed; partly if ≥ {COVERING_PARTLY}",
    figure="imbalanced",
)
def imbalanced_full(results: Path) -> Measurement:
    # The claim judges the covering target ranges; TopK is shown beside them.
    grid = load_results(results, "imbalanced", rows=lambda t: (t["method"] != "gba") | covers_f(t))
    table = imbalanced_rows(grid)
    full = table[table["covers"]]
    parts = []
    for (high, low), part in full.groupby(["highest_target", "lowest_target"], sort=False):
        f = part["feature_frequency"].iloc[0]
        parts.append(f"{high / f:.3g}f → {low / f:.3g}f: FRR(0.8) = {part['frr_0.8'].mean():.1%}, "
                     f"FRR(0.9) = {part['frr_0.9'].mean():.1%} (min {part['frr_0.9'].min():.1%}), L0 {part['l0'].mean():.0f}")
    topk = grid[grid["method"] == "topk"].groupby("k")[["frr_0.8", "frr_0.9"]].mean()
    measured = (f"{scale_text(grid)} (E[s] = {grid['feature_frequency'].iloc[0] * grid['n'].iloc[0]:.3g}), GBA K = 10, "
                f"{full['seed'].nunique()} seeds, targets covering f: " + "; ".join(parts)
                + ("; TopK on the same SAE and schedule: " + ", ".join(
                    f"k = {k:g}: {r['frr_0.8']:.1%} / {r['frr_0.9']:.1%}" for k, r in topk.iterrows()) if len(topk) else ""))
    best = full.groupby(["highest_target", "lowest_target"])["frr_0.9"].min().max()
    verdict = "reproduced" if best >= COVERING_FULL else ("partly" if best >= COVERING_PARTLY else "not reproduced")
    widest = full.loc[full["highest_target"].idxmax()]
    note = (f"No coverage of f that we tried recovers every feature on every seed within {int(grid['steps'].max())} steps. "
            f"The widest coverage above f ({widest['highest_target'] / widest['feature_frequency']:.3g}f, a top target of "
            f"{widest['highest_target']:.2f} of all samples) fires at L0 "
            f"{full[full['highest_target'] == widest['highest_target']]['l0'].mean():.0f} against E[s] = "
            f"{grid['feature_frequency'].iloc[0] * grid['n'].iloc[0]:.3g}. The paper does not say which range, width or "
            "training length it used.") if verdict != "reproduced" else ""
    return Measurement(measured, verdict, note)


@claim(
    "14",
    "Imbalanced toy: GBA with wrong frequency coverage fails",
    paper="FRR 38.3 % (τ = 0.8) / 3.9 % (τ = 0.9); 'wrong coverage' is not defined",
    command=grid_command("imbalanced"),
    rule=f"reproduced if every target range not covering f has mean FRR(0.9) ≤ {WRONG_FAILS}; partly if one does",
    figure="imbalanced",
)
def imbalanced_wrong(results: Path) -> Measurement:
    table = imbalanced_rows(load_results(results, "imbalanced"))
    wrong = table[~table["covers"]]
    parts = []
    for (high, low), part in wrong.groupby(["highest_target", "lowest_target"]):
        f = part["feature_frequency"].iloc[0]
        parts.append(f"targets {high / f:.3g}f → {low / f:.3g}f: FRR(0.8) = {part['frr_0.8'].mean():.1%}, "
                     f"FRR(0.9) = {part['frr_0.9'].mean():.1%}")
    measured = f"same setting, {wrong['seed'].nunique()} seeds: " + "; ".join(parts)
    worst = wrong.groupby(["highest_target", "lowest_target"])["frr_0.9"].mean()
    verdict = "reproduced" if worst.max() <= WRONG_FAILS else ("partly" if worst.min() <= WRONG_FAILS else "not reproduced")
    f = wrong["feature_frequency"].iloc[0]
    below = wrong[wrong["highest_target"] < f]
    above = wrong[wrong["lowest_target"] > f]
    note = "" if verdict == "reproduced" else (
        f"Targets all above f fail completely (FRR(0.9) {above['frr_0.9'].mean():.0%}, L0 {above['l0'].mean():.0f}: "
        f"dense firing), but targets all below f still recover FRR(0.8) {below['frr_0.8'].mean():.0%}, FRR(0.9) "
        f"{below['frr_0.9'].mean():.0%}, more than the paper's 38 % / 4 % for its (undefined) wrong coverage.")
    return Measurement(measured, verdict, note)


INSENSITIVE_SPREAD = 0.1
"""Claim §7: the largest spread of mean FRR(0.9) over K and HTF that still reads 'insensitive'."""


@claim(
    "§7",
    "GBA is nearly tuning-free: with HTF high enough (0.5) and K ≥ 10 it is largely insensitive to HTF, LTF and K",
    paper="LLM ablation (Fig. 4); the synthetic counterpart is not in the paper",
    command=grid_command("gba_uniform") + "; " + grid_command("gba_width") + " --reuse simulations/results/gba_uniform",
    rule=f"reproduced if mean FRR(0.9) over the (K, HTF) points of the single-frequency grid spans at most {INSENSITIVE_SPREAD}",
    figure="gba_uniform",
)
def tuning_free(results: Path) -> Measurement:
    table = load_results(results, "gba_uniform")
    by = table.groupby(["groups", "highest_target_over_f"]).agg(frr=("frr_0.9", "mean"), l0=("l0", "mean"))
    measured = (f"single-frequency model, {scale_text(table)}, LTF f/4: FRR(0.9) (L0) by K and HTF/f: "
                + "; ".join(f"K = {k}, {h:.3g}f: {r.frr:.2f} ({r.l0:.0f})" for (k, h), r in by.iterrows()))
    try:
        widths = load_results(results, "gba_width")
        measured += "; paper defaults K = 10, HTF 0.5, LTF 1e-3 by width M/n: " + ", ".join(
            f"{w / n:g}: {v:.2f}" for w, n, v in widths.loc[widths["lowest_target"] == 0.001, ["width", "n", "frr_0.9"]]
            .sort_values("width").itertuples(index=False))
    except MissingTable:
        pass
    spread = by["frr"].max() - by["frr"].min()
    verdict = "reproduced" if spread <= INSENSITIVE_SPREAD else "not reproduced"
    near = by[by.index.get_level_values("highest_target_over_f") <= 10.5]
    far = by[by.index.get_level_values("highest_target_over_f") > 10.5]
    note = (f"On a single-frequency model, within {int(table['steps'].max())} steps, GBA is sensitive to the highest target: HTF ≤ 10f recovers "
            f"FRR(0.9) ≥ {near['frr'].min():.2f} with L0 ≤ {near['l0'].max():.0f}, HTF 0.5 recovers "
            f"{far['frr'].min():.2f}–{far['frr'].max():.2f} with L0 {far['l0'].min():.0f}–{far['l0'].max():.0f}. "
            + long_training_summary(results) + " What to set: a highest target "
            "within about 10f of the features' frequency (fast and sparse); the paper's LLM defaults (HTF 0.5, LTF "
            "1e-3) presume a wide spread of feature frequencies, and on a single-frequency model they spend many neurons "
            "on dense codes and need much longer training.") if verdict != "reproduced" else long_training_summary(results)
    return Measurement(measured, verdict, note)


@claim(
    "26–29",
    "SAEBench on Gemma2-2B: GBA has the best explained variance (0.902), absorption (0.0041), alive fraction (0.970)",
    paper="ICLR Table 2 [S]",
    command="none",
    rule="not testable here without the model and the benchmark",
)
def saebench(results: Path) -> Measurement:
    return Measurement("not run: needs Gemma2-2B activations and SAEBench; this project has no model hub access "
                       "and 2 CPU cores", "not testable here")


def long_training_summary(results: Path) -> str:
    """FRR(0.9) at 600 steps and at the end of the long runs, or '' if that table is not there."""
    try:
        table = load_results(results, "long_training")
        history = load_results(results, "long_training", "history.csv")
    except MissingTable:
        return ""
    parts = []
    for _, row in table.iterrows():
        run = history[history["key"] == row["key"]]
        at_600 = run.loc[run["step"] == 600, "frr_0.9"].iloc[0]
        what = (f"BA p = {row['highest_target_over_f']:.3g}f, d = {row['d']}" if row["method"] == "ba"
                else f"GBA K = {row['groups']}, HTF {row['highest_target_over_f']:.3g}f")
        parts.append(f"{what}: {at_600:.2f} at step 600 → {row['frr_0.9']:.2f} at step {int(row['steps'])}")
    return "Trained longer (simulations/specs/long_training.toml, figure long_training): " + "; ".join(parts) + "."
