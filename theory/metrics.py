"""Recovery, consistency, reconstruction and sparsity metrics (paper §5-6; digest §9.5-9.6).

Pure numpy/scipy. Cosine computations run in blocks of at most `BLOCK_ENTRIES` similarities,
so n and M of 65,536 need ~64 MB at a time, never an n x M matrix.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import min_weight_full_bipartite_matching

BLOCK_ENTRIES = 1 << 24
"""Largest number of cosine similarities held at once."""
DENSE_MATCHING_ENTRIES = 1 << 24
"""Above this n*M the Hungarian matching keeps only each feature's best `MATCHING_CANDIDATES` neurons."""
MATCHING_CANDIDATES = 64


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero)."""
    matrix = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms > 0, norms, 1.0)


def _blocks(num_rows: int, num_columns: int):
    step = max(1, BLOCK_ENTRIES // max(num_columns, 1))
    for start in range(0, num_rows, step):
        yield slice(start, min(start + step, num_rows))


def max_cosine(targets: np.ndarray, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row of `targets`, the largest cosine with a row of `candidates`, and which row attains it."""
    targets, candidates = unit_rows(targets), unit_rows(candidates)
    best = np.empty(targets.shape[0], dtype=np.float32)
    where = np.empty(targets.shape[0], dtype=np.int64)
    for rows in _blocks(targets.shape[0], candidates.shape[0]):
        cosines = targets[rows] @ candidates.T
        where[rows] = cosines.argmax(axis=1)
        best[rows] = cosines[np.arange(cosines.shape[0]), where[rows]]
    return best, where


def feature_recovery_rate(features: np.ndarray, neurons: np.ndarray, threshold: float = 0.9) -> float:
    """FRR(tau): the fraction of true features whose best neuron has cosine >= tau (paper §5)."""
    best, _ = max_cosine(features, neurons)
    return float(np.mean(best >= threshold))


def recovery_curve(features: np.ndarray, neurons: np.ndarray, thresholds=(0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)) -> dict:
    """FRR at several thresholds from one pass over the cosines: {tau: FRR(tau)}."""
    best, _ = max_cosine(features, neurons)
    return {float(t): float(np.mean(best >= t)) for t in thresholds}


def mean_max_cosine(features: np.ndarray, neurons: np.ndarray) -> float:
    """Representedness: the mean over features of the best neuron's cosine."""
    return float(np.mean(max_cosine(features, neurons)[0]))


def max_cosine_similarity(run_a: np.ndarray, run_b: np.ndarray) -> np.ndarray:
    """MCS of each neuron of run A: its largest cosine with any neuron of run B (paper §6, consistency)."""
    return max_cosine(run_a, run_b)[0]


def matched_cosines(features: np.ndarray, neurons: np.ndarray) -> np.ndarray:
    """Cosines of a one-to-one matching (Hungarian, maximising the total cosine) of the smaller set into the larger.

    Exact when n*M <= DENSE_MATCHING_ENTRIES. Above that, each item of the smaller set may only
    be matched to its `MATCHING_CANDIDATES` best partners (doubled until a full matching exists),
    which is exact whenever the optimal matching uses only such candidates.
    """
    small, large = unit_rows(features), unit_rows(neurons)
    if small.shape[0] > large.shape[0]:
        small, large = large, small
    if small.shape[0] * large.shape[0] <= DENSE_MATCHING_ENTRIES:
        cosines = small @ large.T
        rows, cols = linear_sum_assignment(cosines, maximize=True)
        return cosines[rows, cols]
    return _sparse_matching(small, large, MATCHING_CANDIDATES)


def _sparse_matching(small: np.ndarray, large: np.ndarray, candidates: int) -> np.ndarray:
    k = min(candidates, large.shape[0])
    columns, values = [], []
    for block in _blocks(small.shape[0], large.shape[0]):
        cosines = small[block] @ large.T
        top = np.argpartition(-cosines, k - 1, axis=1)[:, :k]
        columns.append(top)
        values.append(np.take_along_axis(cosines, top, axis=1))
    matching = match_candidates(np.concatenate(values), np.concatenate(columns), large.shape[0])
    if matching is None:  # no full matching among the candidates: widen the candidate lists
        return _sparse_matching(small, large, 2 * k)
    matched_rows, matched_cols = matching
    return np.einsum("ij,ij->i", small[matched_rows], large[matched_cols])


def match_candidates(values: np.ndarray, columns: np.ndarray, num_columns: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The one-to-one matching of every row to a column that maximises the total cosine, each row
    restricted to its candidates (`values[i, j]`: cosine of row i with column `columns[i, j]`);
    (rows, columns) of the matching, or None when the candidates admit no full matching.

    A row whose best candidate no other row lists takes it: moving that row there from any other
    column cannot lower the total, so some optimal matching does. Only the other rows go to
    scipy's sparse Hungarian solver (for a trained SAE, few of them).
    """
    count = columns.shape[0]
    listed = np.bincount(columns.ravel(), minlength=num_columns)
    best = columns[np.arange(count), values.argmax(axis=1)]
    matched = best.copy()
    contested = np.flatnonzero(listed[best] > 1)
    if contested.size:
        used, local = np.unique(columns[contested], return_inverse=True)
        if used.size < contested.size:
            return None
        rows = np.repeat(np.arange(contested.size), columns.shape[1])
        # Costs must be positive for scipy's sparse matcher: cost = 2 - cos lies in [1, 3].
        graph = sp.csr_matrix((2.0 - values[contested].ravel(), (rows, local.ravel())), shape=(contested.size, used.size))
        try:
            _, chosen = min_weight_full_bipartite_matching(graph)
        except ValueError:
            return None
        matched[contested] = used[chosen]
    return np.arange(count), matched


def mcc(features: np.ndarray, neurons: np.ndarray) -> float:
    """Mean correlation coefficient: mean cosine of the Hungarian one-to-one matching (O'Neill et al.)."""
    return float(np.mean(matched_cosines(features, neurons)))


def explained_variance(x: np.ndarray, reconstruction: np.ndarray) -> float:
    """EV = 1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over the whole sample."""
    stats = ReconstructionStats()
    stats.update(x, reconstruction)
    return stats.explained_variance


@dataclass
class ReconstructionStats:
    """Streaming sums for EV, FVU and normalised MSE over many batches (float64 accumulators)."""

    count: int = 0
    squared_error: float = 0.0
    squared_norm: float = 0.0
    normalised_error: float = 0.0
    total: np.ndarray | None = field(default=None)

    def update(self, x: np.ndarray, reconstruction: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64)
        error = ((x - np.asarray(reconstruction, dtype=np.float64)) ** 2).sum(axis=1)
        norm = (x**2).sum(axis=1)
        self.count += x.shape[0]
        self.squared_error += float(error.sum())
        self.squared_norm += float(norm.sum())
        self.normalised_error += float((error / np.where(norm > 0, norm, 1.0)).sum())
        column_sum = x.sum(axis=0)
        self.total = column_sum if self.total is None else self.total + column_sum

    @property
    def mse(self) -> float:
        """E ||x - x_hat||^2 (summed over dimensions, averaged over samples)."""
        return self.squared_error / self.count

    @property
    def normalised_mse(self) -> float:
        """E [||x - x_hat||^2 / ||x||^2]; the paper's L2 loss when inputs have unit norm."""
        return self.normalised_error / self.count

    @property
    def fraction_of_variance_unexplained(self) -> float:
        """FVU: squared error over the total variance about the mean."""
        mean = self.total / self.count
        variance = self.squared_norm / self.count - float(mean @ mean)
        return (self.squared_error / self.count) / variance if variance > 0 else float("nan")

    @property
    def explained_variance(self) -> float:
        return 1.0 - self.fraction_of_variance_unexplained


def l0(codes) -> float:
    """Mean number of non-zero codes per sample."""
    if sp.issparse(codes):
        return float(codes.getnnz() / codes.shape[0])
    return float(np.count_nonzero(codes) / codes.shape[0])


def dead_fraction(activation_counts: np.ndarray) -> float:
    """Fraction of neurons that never fired on the evaluation sample."""
    return float(np.mean(np.asarray(activation_counts) == 0))
