"""The statistical model X = H V of monosemantic features in superposition (paper §5, eq. (1)).

`FeatureModel` is the frozen description of a model (sizes, sparsity, coefficient law, frequency
profile, planted co-occurrence, noise); `SyntheticData` holds its feature matrix V and draws
batches on the fly. A batch comes with its ground truth: the sparse code matrix H (rows are
samples, a `scipy.sparse.csr_matrix`) such that x = H V (+ noise). No N x n dense matrix is ever
formed, and batch `i` of a stream depends only on (seed, i), so any batch can be re-drawn alone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import scipy.sparse as sp

from theory.validation import MAX_SEED, ConfigError, check_choice, check_int, check_real

CoefficientSampler = Callable[[np.random.Generator, int], np.ndarray]
"""A user law for the non-zero coefficients: (rng, count) -> `count` non-negative numbers."""


@dataclass(frozen=True)
class FeatureModel:
    """Settings of the data model x = sum_i H_i v_i with s-sparse non-negative H (paper §5)."""

    n: int = 256
    """Number of monosemantic features (rows of V)."""
    d: int = 48
    """Ambient dimension of the representation."""
    sparsity: int | tuple[int, ...] = 3
    """Features per sample, s. A tuple mixes several values across samples (e.g. (3, 20))."""
    sparsity_weights: tuple[float, ...] | None = None
    """Probability of each entry of `sparsity` when it is a tuple; None means equal weights."""
    coefficients: str = "constant"
    """Law of the non-zero coefficients: 'constant' (all 1) or 'uniform' on `coefficient_range`."""
    coefficient_range: tuple[float, float] = (0.5, 1.5)
    """(low, high) of the uniform coefficient law, 0 <= low <= high (H2 wants them Theta(1))."""
    frequency_decay: float = 0.0
    """Zipf exponent of the occurrence profile: feature i is drawn with weight (i+1)^-decay; 0 = uniform."""
    cooccurring_pairs: int = 0
    """Number of planted feature pairs (0,1), (2,3), ... that co-occur more often than chance."""
    pair_cooccurrence: float = 0.0
    """Target co-occurrence ratio rho_2 of each planted pair: #(both) / #(either one), in [0, 1)."""
    noise_std: float = 0.0
    """Standard deviation of isotropic Gaussian noise added to x (per coordinate)."""
    seed: int = 0
    """Seed of the feature matrix V (Gaussian rows, normalised)."""

    def __post_init__(self):
        check_int("n", self.n, 2)
        check_int("d", self.d, 1)
        values = self.sparsity_values
        if len(values) == 0:
            raise ConfigError("sparsity: must name at least one value")
        for s in values:
            check_int("sparsity (s)", s, 1)
            if s >= self.n:
                # At s = n every sample holds every feature: nothing is sparse, and with constant
                # coefficients every sample is the same vector (zero variance).
                raise ConfigError(f"sparsity (s): must lie in [1, n - 1] = [1, {self.n - 1}], got {s} (at s = n every sample holds every feature)")
        if self.sparsity_weights is not None:
            if len(self.sparsity_weights) != len(values):
                raise ConfigError(
                    f"sparsity_weights: must have one weight per sparsity value ({len(values)}), "
                    f"got {len(self.sparsity_weights)}"
                )
            for weight in self.sparsity_weights:
                check_real("sparsity_weights", weight, 0.0, low_open=True)
        check_choice("coefficients", self.coefficients, ("constant", "uniform"))
        low, high = self.coefficient_range
        check_real("coefficient_range low", low, 0.0)
        check_real("coefficient_range high", high, low)
        if high <= 0:
            raise ConfigError(f"coefficient_range: high must be > 0, got {high!r}")
        check_real("frequency_decay", self.frequency_decay, 0.0, 4.0)
        check_int("cooccurring_pairs", self.cooccurring_pairs, 0, self.n // 2)
        check_real("pair_cooccurrence", self.pair_cooccurrence, 0.0, 1.0, high_open=True)
        if self.cooccurring_pairs > 0 and min(values) < 2:
            raise ConfigError("cooccurring_pairs: needs every sparsity value >= 2 (a pair takes two slots)")
        check_real("noise_std", self.noise_std, 0.0)
        check_int("seed", self.seed, 0, MAX_SEED)

    @property
    def sparsity_values(self) -> tuple[int, ...]:
        """The sparsity values as a tuple (one entry when s is a single number)."""
        return tuple(self.sparsity) if isinstance(self.sparsity, (tuple, list)) else (self.sparsity,)

    @property
    def mean_sparsity(self) -> float:
        """E[s] over samples."""
        values = np.asarray(self.sparsity_values, dtype=float)
        return float(values @ self._sparsity_probabilities())

    @property
    def feature_frequency(self) -> float:
        """Mean occurrence frequency of a feature, f = E[s] / n."""
        return self.mean_sparsity / self.n

    def occurrence_weights(self) -> np.ndarray:
        """Relative occurrence weight of each feature, summing to 1 (uniform unless frequency_decay > 0)."""
        weights = np.arange(1, self.n + 1, dtype=float) ** -self.frequency_decay
        return weights / weights.sum()

    def expected_frequencies(self) -> np.ndarray:
        """Per-feature occurrence frequencies: exactly s/n when uniform, ~ E[s] w_i when weighted.

        Weighted supports are drawn without replacement, which flattens the profile slightly
        when E[s] w_i is not small; planted pairs also raise their members' frequencies.
        """
        return np.minimum(self.mean_sparsity * self.occurrence_weights(), 1.0)

    def _sparsity_probabilities(self) -> np.ndarray:
        values = self.sparsity_values
        weights = np.ones(len(values)) if self.sparsity_weights is None else np.asarray(self.sparsity_weights, float)
        return weights / weights.sum()

    def replace(self, **changes) -> "FeatureModel":
        """A copy with some settings changed (validated again)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Batch:
    """Samples with their ground truth: x = codes @ V + noise."""

    x: np.ndarray
    """Samples, shape (batch, d), float32."""
    codes: sp.csr_matrix
    """Ground-truth coefficient matrix H, shape (batch, n), non-negative, float32."""


def gaussian_features(n: int, d: int, seed: int) -> np.ndarray:
    """n rows drawn i.i.d. from N(0, I_d) and normalised to unit length (paper §5: Gaussian V)."""
    rng = np.random.default_rng([seed, 0])
    features = rng.standard_normal((n, d))
    return normalise_rows(features)


def normalise_rows(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to unit Euclidean norm (float32); a zero row is an error."""
    matrix = np.asarray(matrix, dtype=np.float64)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    if np.any(norms == 0) or not np.all(np.isfinite(matrix)):
        raise ConfigError("features: every row must be finite and non-zero")
    return (matrix / norms).astype(np.float32)


def check_distinct_rows(features: np.ndarray) -> None:
    """Two equal unit rows make their features indistinguishable (no SAE can tell them apart): an error."""
    rounded = np.round(features, 6)
    _, first, counts = np.unique(rounded, axis=0, return_index=True, return_counts=True)
    if np.any(counts > 1):
        row = int(first[np.argmax(counts > 1)])
        twin = int(np.flatnonzero((rounded == rounded[row]).all(axis=1))[1])
        raise ConfigError(
            f"features: rows {row} and {twin} are the same direction (after normalising), so these features "
            f"cannot be told apart; {int((counts - 1).sum())} row(s) repeat an earlier one"
        )


class SyntheticData:
    """A `FeatureModel` made concrete: the feature matrix V and a sampler of batches."""

    def __init__(
        self,
        model: FeatureModel,
        features: np.ndarray | None = None,
        coefficient_sampler: CoefficientSampler | None = None,
    ):
        if features is not None:
            features = np.asarray(features)
            if features.ndim != 2 or features.shape != (model.n, model.d):
                raise ConfigError(f"features: must have shape (n, d) = ({model.n}, {model.d}), got {features.shape}")
            self.features = normalise_rows(features)
            check_distinct_rows(self.features)
        else:
            self.features = gaussian_features(model.n, model.d, model.seed)
        self.model = model
        self.coefficient_sampler = coefficient_sampler
        self._weights = None if model.frequency_decay == 0 else model.occurrence_weights()
        self._partner = np.full(model.n, -1, dtype=np.int64)
        paired = np.arange(2 * model.cooccurring_pairs)
        self._partner[paired] = paired ^ 1
        # With this swap probability a pair's ratio #both/#either is 2q/(1+q) = pair_cooccurrence.
        rho = model.pair_cooccurrence
        self._swap_probability = rho / (2.0 - rho)

    def sample(self, num_samples: int, rng: np.random.Generator) -> Batch:
        """Draw `num_samples` samples with their ground-truth codes."""
        check_int("num_samples", num_samples, 1)
        model = self.model
        values = model.sparsity_values
        per_sample_s = rng.choice(len(values), size=num_samples, p=model._sparsity_probabilities())
        rows, cols = [], []
        for which, s in enumerate(values):
            members = np.flatnonzero(per_sample_s == which)
            if members.size == 0:
                continue
            support = self._supports(rng, members.size, s)
            if model.cooccurring_pairs:
                self._plant_pairs(rng, support)
            rows.append(np.repeat(members, s))
            cols.append(support.ravel())
        rows = np.concatenate(rows)
        cols = np.concatenate(cols)
        values_ = self._coefficients(rng, rows.size)
        codes = sp.csr_matrix((values_, (rows, cols)), shape=(num_samples, model.n), dtype=np.float32)
        codes.sort_indices()
        x = np.asarray(codes @ self.features, dtype=np.float32)
        if model.noise_std > 0:
            x += model.noise_std * rng.standard_normal(x.shape, dtype=np.float32)
        return Batch(x=x, codes=codes)

    def batch(self, index: int, batch_size: int, seed: int) -> Batch:
        """Batch number `index` of the stream `seed`: the same (seed, index) always gives the same batch."""
        return self.sample(batch_size, np.random.default_rng([seed, 1, index]))

    def stream(self, batch_size: int, seed: int, start: int = 0) -> Iterator[Batch]:
        """Endless batches `start, start+1, ...` of the stream `seed`."""
        index = start
        while True:
            yield self.batch(index, batch_size, seed)
            index += 1

    def _supports(self, rng: np.random.Generator, count: int, s: int) -> np.ndarray:
        """`count` rows of s distinct feature indices, drawn without replacement (weighted if set)."""
        n = self.model.n
        if s * s <= n:
            # Collisions are rare: draw with replacement and redraw only the rows with a repeat.
            support = self._draw(rng, (count, s))
            while True:
                support.sort(axis=1)
                repeated = np.flatnonzero((support[:, 1:] == support[:, :-1]).any(axis=1))
                if repeated.size == 0:
                    return support
                support[repeated] = self._draw(rng, (repeated.size, s))
        # Dense regime: the s largest of n random keys (Gumbel keys for weighted sampling).
        keys = rng.random((count, n))
        if self._weights is not None:
            keys = np.log(self._weights) - np.log(-np.log(keys))
        return np.sort(np.argpartition(-keys, s - 1, axis=1)[:, :s], axis=1)

    def _draw(self, rng, shape):
        if self._weights is None:
            return rng.integers(0, self.model.n, size=shape)
        return rng.choice(self.model.n, size=shape, p=self._weights)

    def _plant_pairs(self, rng: np.random.Generator, support: np.ndarray) -> None:
        """In place: a row holding one member of a planted pair gains the partner with the swap probability."""
        count, s = support.shape
        partner = self._partner[support]
        partner_present = (partner[:, :, None] == support[:, None, :]).any(axis=2)
        candidate = (partner >= 0) & ~partner_present
        keys = np.where(candidate, rng.random(candidate.shape), -1.0)
        slot = keys.argmax(axis=1)
        chosen = candidate.any(axis=1) & (rng.random(count) < self._swap_probability)
        rows = np.flatnonzero(chosen)
        # The partner replaces one of the other s-1 slots, so every row keeps exactly s features.
        replaced = (slot[rows] + 1 + rng.integers(0, s - 1, size=rows.size)) % s
        support[rows, replaced] = partner[rows, slot[rows]]

    def _coefficients(self, rng: np.random.Generator, count: int) -> np.ndarray:
        model = self.model
        if self.coefficient_sampler is not None:
            values = np.asarray(self.coefficient_sampler(rng, count), dtype=np.float32)
            if values.shape != (count,) or np.any(values < 0) or not np.all(np.isfinite(values)):
                raise ConfigError("coefficient_sampler: must return `count` finite non-negative numbers")
            return values
        if model.coefficients == "constant":
            return np.ones(count, dtype=np.float32)
        low, high = model.coefficient_range
        return rng.uniform(low, high, size=count).astype(np.float32)
