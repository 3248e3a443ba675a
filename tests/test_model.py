import numpy as np
import pytest
import scipy.sparse as sp

from theory.conditions import cooccurrence_ratio
from theory.model import FeatureModel, SyntheticData
from theory.validation import ConfigError


def test_features_have_unit_norm_and_samples_match_ground_truth():
    data = SyntheticData(FeatureModel(n=64, d=16, sparsity=3, noise_std=0.0, seed=1))
    np.testing.assert_allclose(np.linalg.norm(data.features, axis=1), 1.0, atol=1e-6)
    batch = data.sample(2000, np.random.default_rng(0))
    assert batch.x.shape == (2000, 16) and batch.x.dtype == np.float32
    assert sp.isspmatrix_csr(batch.codes) and batch.codes.shape == (2000, 64)
    np.testing.assert_allclose(batch.x, batch.codes @ data.features, atol=1e-5)
    assert np.all(np.diff(batch.codes.indptr) == 3)  # exactly s distinct features per sample
    assert batch.codes.data.min() >= 0


@pytest.mark.parametrize("n, s", [(256, 3), (40, 12)])  # sparse and dense support regimes
def test_feature_frequencies_are_s_over_n(n, s):
    data = SyntheticData(FeatureModel(n=n, d=8, sparsity=s))
    samples = 40_000
    codes = data.sample(samples, np.random.default_rng(5)).codes
    counts = np.diff(codes.tocsc().indptr)
    f = s / n
    # Each count is Binomial(samples, f); 5 standard deviations bound all n of them with room to spare.
    bound = 5 * np.sqrt(samples * f * (1 - f))
    assert np.all(np.abs(counts - samples * f) < bound)


def test_uniform_coefficients_lie_in_range_and_noise_is_added():
    model = FeatureModel(n=32, d=8, sparsity=2, coefficients="uniform", coefficient_range=(0.5, 1.5), noise_std=0.1)
    data = SyntheticData(model)
    batch = data.sample(5000, np.random.default_rng(0))
    assert 0.5 <= batch.codes.data.min() and batch.codes.data.max() <= 1.5
    residual = batch.x - batch.codes @ data.features
    assert abs(residual.std() - 0.1) < 0.005


def test_sparsity_mixture_draws_each_value_with_its_weight():
    model = FeatureModel(n=128, d=16, sparsity=(3, 20), sparsity_weights=(0.5, 0.5))
    codes = SyntheticData(model).sample(10_000, np.random.default_rng(0)).codes
    per_row = np.diff(codes.indptr)
    assert set(np.unique(per_row)) == {3, 20}
    assert abs(np.mean(per_row == 3) - 0.5) < 0.03
    assert model.mean_sparsity == 11.5


def test_batches_are_reproducible_and_independent_of_order():
    data = SyntheticData(FeatureModel(n=64, d=16, sparsity=3))
    first = data.batch(7, 128, seed=3)
    again = data.batch(7, 128, seed=3)
    np.testing.assert_array_equal(first.x, again.x)
    assert not np.array_equal(first.x, data.batch(8, 128, seed=3).x)
    streamed = [b.x for _, b in zip(range(3), data.stream(128, seed=3, start=6))]
    np.testing.assert_array_equal(streamed[1], first.x)


def test_zipf_profile_makes_early_features_more_frequent():
    model = FeatureModel(n=100, d=8, sparsity=2, frequency_decay=1.0)
    codes = SyntheticData(model).sample(50_000, np.random.default_rng(0)).codes
    counts = np.diff(codes.tocsc().indptr) / 50_000
    expected = model.expected_frequencies()
    assert counts[0] > 5 * counts[-1]
    np.testing.assert_allclose(counts[:10], expected[:10], rtol=0.15)


@pytest.mark.parametrize("rho", [0.1, 0.3, 0.6])
def test_planted_pairs_reach_the_target_cooccurrence(rho):
    model = FeatureModel(n=200, d=16, sparsity=3, cooccurring_pairs=5, pair_cooccurrence=rho)
    codes = SyntheticData(model).sample(100_000, np.random.default_rng(0)).codes
    support = (codes != 0).tocsc()
    for i in range(0, 10, 2):
        both = support[:, i].multiply(support[:, i + 1]).sum()
        either = min(support[:, i].sum(), support[:, i + 1].sum())
        assert abs(both / either - rho) < 0.05
    assert abs(cooccurrence_ratio(codes) - rho) < 0.06


def test_user_features_are_normalised_and_checked():
    raw = np.arange(1, 13, dtype=float).reshape(4, 3)
    data = SyntheticData(FeatureModel(n=4, d=3, sparsity=1), features=raw)
    np.testing.assert_allclose(np.linalg.norm(data.features, axis=1), 1.0, atol=1e-6)
    with pytest.raises(ConfigError, match="features"):
        SyntheticData(FeatureModel(n=5, d=3, sparsity=1), features=raw)


def test_user_coefficient_law():
    data = SyntheticData(FeatureModel(n=16, d=4, sparsity=2), coefficient_sampler=lambda rng, k: rng.exponential(size=k))
    codes = data.sample(1000, np.random.default_rng(0)).codes
    assert codes.data.min() >= 0 and codes.data.std() > 0.5


@pytest.mark.parametrize(
    "settings, name",
    [
        (dict(n=10, sparsity=11), "sparsity"),
        (dict(sparsity=0), "sparsity"),
        (dict(d=0), "d"),
        (dict(n=0), "n"),
        (dict(noise_std=float("nan")), "noise_std"),
        (dict(pair_cooccurrence=1.0), "pair_cooccurrence"),
        (dict(cooccurring_pairs=2, sparsity=1), "cooccurring_pairs"),
        (dict(coefficient_range=(2.0, 1.0)), "coefficient_range"),
        (dict(sparsity=(3, 20), sparsity_weights=(1.0,)), "sparsity_weights"),
    ],
)
def test_bad_settings_name_the_setting(settings, name):
    with pytest.raises(ConfigError, match=name):
        FeatureModel(**settings)
