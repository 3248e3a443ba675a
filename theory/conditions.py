"""The identifiability conditions H1-H3 and V1 (paper Definition 5.2, Theorem 5.3), measured.

The paper states the conditions asymptotically (s = O(1), coefficients Theta(1), rho_2 << n^-1/2,
max |cos| = o(1)). A finite instance can only be compared with explicit thresholds; each check
below names the threshold it uses, and all of them can be changed by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from theory.model import SyntheticData


@dataclass(frozen=True)
class Check:
    """One condition: what was measured, the threshold it is compared with, and whether it holds."""

    name: str
    description: str
    value: float
    threshold: float
    holds: bool


@dataclass(frozen=True)
class ConditionsReport:
    """Which of H1, H2, H3, V1 hold on one instance."""

    checks: tuple[Check, ...]

    @property
    def all_hold(self) -> bool:
        return all(check.holds for check in self.checks)

    def __getitem__(self, name: str) -> Check:
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(name)

    def table(self) -> pd.DataFrame:
        """One row per condition."""
        return pd.DataFrame([check.__dict__ for check in self.checks])

    def as_columns(self) -> dict:
        """Flat {name_value, name_threshold, name_holds} entries, for a results table."""
        columns = {}
        for check in self.checks:
            columns[f"{check.name}_value"] = check.value
            columns[f"{check.name}_threshold"] = check.threshold
            columns[f"{check.name}_holds"] = check.holds
        return columns

    def __str__(self) -> str:
        lines = [
            f"{c.name:3s} {'holds' if c.holds else 'FAILS':5s}  {c.value:.4g} vs {c.threshold:.4g}  ({c.description})"
            for c in self.checks
        ]
        return "\n".join(lines)


def incoherence(features: np.ndarray, chunk: int = 4096) -> float:
    """V1: the largest |cos| between two distinct features (rows of V)."""
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    largest = 0.0
    for start in range(0, unit.shape[0], chunk):
        block = np.abs(unit[start : start + chunk] @ unit.T)
        rows = np.arange(block.shape[0])
        block[rows, start + rows] = 0.0  # a feature's cosine with itself does not count
        largest = max(largest, float(block.max(initial=0.0)))
    return largest


def cooccurrence_ratio(codes: sp.spmatrix, z: float = 0.0) -> float:
    """H3: rho_2 = max over pairs i != j of #(i and j together) / min(#i, #j), from the support of H.

    With z > 0 each pair's ratio is replaced by its Wilson lower confidence bound at z standard
    errors, so that pairs seen only a few times (whose raw ratio is mostly noise) do not decide.
    """
    support = (sp.csr_matrix(codes) != 0).astype(np.float64)
    counts = np.asarray(support.sum(axis=0)).ravel()
    together = sp.triu(support.T @ support, k=1).tocoo()
    if together.nnz == 0:
        return 0.0
    trials = np.minimum(counts[together.row], counts[together.col])
    ratio = together.data / trials
    if z > 0:
        centre = ratio + z**2 / (2 * trials)
        spread = z * np.sqrt(ratio * (1 - ratio) / trials + z**2 / (4 * trials**2))
        ratio = (centre - spread) / (1 + z**2 / trials)
    return float(np.max(ratio))


def check_conditions(
    features: np.ndarray,
    codes: sp.spmatrix,
    *,
    max_sparsity: float | None = None,
    coefficient_scale: tuple[float, float] = (0.1, 10.0),
    cooccurrence_threshold: float | None = None,
    incoherence_threshold: float = 0.7,
    confidence_z: float | None = None,
) -> ConditionsReport:
    """Measure H1-H3 on a sample of codes H and V1 on the features V.

    Default thresholds: H1 max row support <= sqrt(n) (beyond it uniform supports alone break H3);
    H2 every feature observed, with mean non-zero coefficient in [0.1, 10]; H3 rho_2 <= n^-1/2,
    judged on each pair's lower confidence bound at `confidence_z` standard errors (raw ratios of
    rarely seen pairs are noise; the default sqrt(2 ln #pairs) is the size of the largest of
    that many standard normal errors, a Bonferroni-type correction); V1 max |cos| <= 0.7 (a Gaussian V at n = 65,536 crosses 0.7 near
    d = 90, where the paper's resonance heatmap starts to recover features).
    """
    codes = sp.csr_matrix(codes)
    n = features.shape[0]
    if codes.shape[1] != n:
        raise ValueError(f"codes: must have n = {n} columns, got {codes.shape[1]}")
    max_sparsity = np.sqrt(n) if max_sparsity is None else max_sparsity
    cooccurrence_threshold = n**-0.5 if cooccurrence_threshold is None else cooccurrence_threshold
    if confidence_z is None:
        confidence_z = float(np.sqrt(2 * np.log(max(n * (n - 1) / 2, 2))))

    row_support = np.diff(codes.indptr)
    largest_support = float(row_support.max(initial=0))

    column = codes.tocsc()
    occurrences = np.diff(column.indptr)
    sums = np.asarray(column.sum(axis=0)).ravel()
    observed = occurrences > 0
    mean_coefficient = np.where(observed, sums / np.maximum(occurrences, 1), 0.0)
    low, high = coefficient_scale
    smallest_mean = float(mean_coefficient[observed].min(initial=np.inf)) if observed.any() else 0.0
    largest_mean = float(mean_coefficient.max(initial=0.0))
    non_degenerate = bool(observed.all() and smallest_mean >= low and largest_mean <= high)

    rho_2 = cooccurrence_ratio(codes, z=confidence_z)
    mu = incoherence(features)
    return ConditionsReport(
        (
            Check("H1", "largest number of features in one sample", largest_support, max_sparsity,
                  largest_support <= max_sparsity),
            Check("H2", "smallest mean non-zero coefficient of a feature (all observed, largest <= "
                  f"{high:g})", smallest_mean, low, non_degenerate),
            Check("H3", f"co-occurrence ratio rho_2 = max #(i,j) / min(#i, #j), {confidence_z:.2g}-sigma lower bound",
                  rho_2, cooccurrence_threshold,
                  rho_2 <= cooccurrence_threshold),
            Check("V1", "incoherence: largest |cos| between distinct features", mu, incoherence_threshold,
                  mu <= incoherence_threshold),
        )
    )


def check_data(data: SyntheticData, num_samples: int = 100_000, seed: int = 0, **thresholds) -> ConditionsReport:
    """`check_conditions` on `num_samples` fresh samples of a synthetic instance."""
    batch = data.sample(num_samples, np.random.default_rng([seed, 2]))
    return check_conditions(data.features, batch.codes, **thresholds)
