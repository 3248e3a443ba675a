import numpy as np
import pytest
import scipy.sparse as sp

from theory.bounds import opening_dimension, phase_boundary, required_width, simplified_band, stated_band, superposition_regime, theory_columns
from theory.conditions import check_conditions, check_data, incoherence
from theory.model import FeatureModel, SyntheticData


def test_orthogonal_features_have_zero_incoherence():
    assert incoherence(np.eye(8)) == 0.0
    duplicated = np.vstack([np.eye(3), [[1.0, 0.0, 0.0]]])
    assert np.isclose(incoherence(duplicated), 1.0)


@pytest.mark.parametrize("n, d", [(256, 48), (1024, 64), (4096, 128)])
def test_uniform_sparse_instances_satisfy_all_conditions(n, d):
    data = SyntheticData(FeatureModel(n=n, d=d, sparsity=3))
    report = check_data(data, num_samples=50_000)
    assert report.all_hold, str(report)
    assert report["H1"].value == 3


def test_planted_cooccurrence_breaks_h3():
    data = SyntheticData(FeatureModel(n=256, d=64, sparsity=3, cooccurring_pairs=4, pair_cooccurrence=0.5))
    report = check_data(data, num_samples=50_000)
    assert not report["H3"].holds
    assert 0.4 < report["H3"].value <= 0.5  # a lower confidence bound of the planted 0.5


def test_h1_h2_fail_on_dense_or_degenerate_codes():
    features = np.eye(16)
    dense = sp.csr_matrix(np.ones((10, 16)))
    assert not check_conditions(features, dense)["H1"].holds  # 16 features per sample > sqrt(16)
    tiny = sp.csr_matrix(np.eye(16) * 1e-3)
    assert not check_conditions(features, tiny)["H2"].holds
    unobserved = sp.csr_matrix(np.eye(16)[:8], shape=(8, 16))
    assert not check_conditions(features, unobserved)["H2"].holds


def test_report_table_and_columns():
    report = check_data(SyntheticData(FeatureModel(n=64, d=16, sparsity=2)), num_samples=5000)
    assert list(report.table()["name"]) == ["H1", "H2", "H3", "V1"]
    assert {"H3_value", "V1_holds"} <= set(report.as_columns())


def test_simplified_band_switches_edge_at_sqrt_n():
    n, s = 4096, 3
    f = s / n
    assert phase_boundary(n) == 64
    heavy = simplified_band(n, d=16, s=s)
    light = simplified_band(n, d=256, s=s)
    assert np.isclose(heavy.upper, f * 16) and np.isclose(light.upper, np.sqrt(f))
    assert superposition_regime(n, 16) == "heavy" and superposition_regime(n, 256) == "light"
    assert heavy.contains(2 * f) and not heavy.contains(0.5 * f)


def test_stated_band_and_width():
    band = stated_band(65536, 128, 3)
    assert np.isclose(band.lower, 1 / 65536)
    assert np.isclose(band.upper, min(65536 ** (-2 / 3), 128 / 65536))
    assert required_width(100, 0.1, 2) == 100 * 0.1**-2
    columns = theory_columns(n=1024, d=64, s=3, p=2 * 3 / 1024, width=4096)
    assert columns["in_simplified_band"] and columns["regime"] == "light"


def test_the_opening_dimension_grows_like_log_n_not_root_n():
    small, large = opening_dimension(1024, 3), opening_dimension(65536, 3)
    assert 1.5 < large / small < 2.5  # sqrt(n) grows 8-fold over the same range
    assert large / np.log(65536 / 3) == pytest.approx(2 * 3, rel=0.35)  # ~ 2 s ln(n/s)


def test_at_the_opening_dimension_a_features_neuron_fires_as_derived():
    # Aligned neurons w = v_i at the threshold 1/sqrt(s): about half of the feature's own samples fire,
    # and the others fire at most as often as f (the derivation's Gaussian tail overstates the
    # bounded projection of a random unit vector, so measured false firings fall below f).
    n, s = 4096, 3
    d = round(opening_dimension(n, s))
    data = SyntheticData(FeatureModel(n=n, d=d, sparsity=s, seed=0))
    batch = data.sample(4000, np.random.default_rng(1))
    x = batch.x / np.linalg.norm(batch.x, axis=1, keepdims=True)
    fires = x @ data.features.T > 1 / np.sqrt(s)
    holds = batch.codes.toarray() > 0 if sp.issparse(batch.codes) else batch.codes > 0
    assert 0.4 < (fires & holds).sum() / holds.sum() < 0.6
    assert 0.2 < (fires & ~holds).sum() / (~holds).sum() / (s / n) < 1.2
