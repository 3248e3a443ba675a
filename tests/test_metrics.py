import numpy as np
import pytest

import theory.metrics as metrics
from theory.model import gaussian_features


def test_permuted_features_are_fully_recovered():
    features = gaussian_features(50, 20, seed=0)
    neurons = features[np.random.default_rng(0).permutation(50)] * 3.0  # scale does not matter
    assert metrics.feature_recovery_rate(features, neurons, 0.99) == 1.0
    assert np.isclose(metrics.mcc(features, neurons), 1.0, atol=1e-6)
    assert np.isclose(metrics.mean_max_cosine(features, neurons), 1.0, atol=1e-6)
    np.testing.assert_allclose(metrics.max_cosine_similarity(neurons, features), 1.0, atol=1e-6)


def test_random_neurons_recover_little_in_high_dimension():
    features = gaussian_features(100, 64, seed=0)
    neurons = gaussian_features(400, 64, seed=1)
    assert metrics.feature_recovery_rate(features, neurons, 0.8) == 0.0
    curve = metrics.recovery_curve(features, neurons, thresholds=(0.0, 0.5, 0.9))
    assert curve[0.0] == 1.0 and curve[0.9] == 0.0


def test_recovery_counts_only_matched_features():
    features = np.eye(4, dtype=np.float32)
    neurons = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [1, 1, 0, 0]], dtype=np.float32)
    assert metrics.feature_recovery_rate(features, neurons, 0.9) == 0.5
    # One-to-one: the 3 neurons take features 0, 1 and one orthogonal feature; mean over min(n, M) = 3.
    assert np.isclose(metrics.mcc(features, neurons), 2 / 3)
    assert np.isclose(metrics.mcc(features[:2], neurons[[0, 0, 2]]), (1 + 2**-0.5) / 2)


def test_blocked_computation_equals_direct(monkeypatch):
    features = gaussian_features(300, 16, seed=0)
    neurons = gaussian_features(700, 16, seed=1)
    direct = (features @ neurons.T).max(axis=1)
    monkeypatch.setattr(metrics, "BLOCK_ENTRIES", 5000)
    best, where = metrics.max_cosine(features, neurons)
    np.testing.assert_allclose(best, direct, atol=1e-6)
    np.testing.assert_allclose((features * neurons[where]).sum(1), direct, atol=1e-6)


def test_sparse_matching_equals_hungarian_when_neighbours_suffice(monkeypatch):
    features = gaussian_features(120, 24, seed=0)
    neurons = np.vstack([features + 0.05 * gaussian_features(120, 24, seed=1), gaussian_features(200, 24, seed=2)])
    exact = metrics.mcc(features, neurons)
    monkeypatch.setattr(metrics, "DENSE_MATCHING_ENTRIES", 10)
    monkeypatch.setattr(metrics, "MATCHING_CANDIDATES", 8)
    assert np.isclose(metrics.mcc(features, neurons), exact, atol=1e-6)


def test_explained_variance_edges():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1000, 8)) + 3.0
    assert np.isclose(metrics.explained_variance(x, x), 1.0)
    assert np.isclose(metrics.explained_variance(x, np.broadcast_to(x.mean(0), x.shape)), 0.0, atol=1e-12)
    stats = metrics.ReconstructionStats()
    for chunk in np.array_split(np.arange(1000), 7):
        stats.update(x[chunk], 0.5 * x[chunk])
    assert np.isclose(stats.explained_variance, metrics.explained_variance(x, 0.5 * x))
    assert np.isclose(stats.normalised_mse, 0.25)


def test_sparsity_metrics():
    codes = np.array([[0, 1, 2], [0, 0, 3]])
    assert metrics.l0(codes) == 1.5
    assert metrics.dead_fraction((codes != 0).sum(0)) == pytest.approx(1 / 3)


@pytest.mark.parametrize("width", [90, 320])  # fewer neurons than features, and more
def test_recovery_by_tiles_equals_the_definitions(width, monkeypatch):
    """Above DENSE_MATCHING_ENTRIES the engine computes FRR, best neurons and MCC by torch tiles with
    candidate lists; they equal theory.metrics' exact definitions when the candidates suffice."""
    import simulations.engine.recovery as recovery

    features = gaussian_features(120, 24, seed=0)
    noisy = features[np.random.default_rng(3).permutation(120)] + 0.45 * gaussian_features(120, 24, seed=1)
    neurons = np.vstack([noisy, gaussian_features(200, 24, seed=2)])[:width]
    # Two copies of the bisector of two features in place of their own copies: one candidate each
    # cannot be matched one to one, so the candidate lists must widen.
    neurons[0] = neurons[1] = noisy[0] + noisy[1]
    best, where = metrics.max_cosine(features, neurons)
    exact_mcc = metrics.mcc(features, neurons)
    monkeypatch.setattr(recovery, "DENSE_MATCHING_ENTRIES", 10)
    monkeypatch.setattr(recovery, "TILE", 32)  # tiles that cut both sets, with ragged ends
    monkeypatch.setattr(recovery, "MATCHING_CANDIDATES", 1)
    attempts = []
    monkeypatch.setattr(recovery, "match_candidates", lambda *args: attempts.append(metrics.match_candidates(*args)) or attempts[-1])
    found = recovery.recovery(features, neurons)
    assert attempts[0] is None and attempts[-1] is not None  # widened until a full matching exists
    np.testing.assert_allclose(found.best_cosine, best, atol=1e-6)
    unit = neurons / np.linalg.norm(neurons, axis=1, keepdims=True)
    np.testing.assert_allclose((features * unit[found.best_neuron]).sum(1), best, atol=1e-6)  # ties: either copy
    assert np.mean(found.best_neuron == where) > 0.95
    assert found.mcc == pytest.approx(exact_mcc, abs=1e-6)
    assert 0.1 < found.frr(0.9) < 1.0 and found.frr(0.9) == np.mean(best >= 0.9)
    np.testing.assert_allclose(recovery.best_cosines(features, neurons), best, atol=1e-6)


@pytest.mark.parametrize("k", [1, 8, 40])
def test_top_cosines_by_tiles_equal_the_whole_matrix_top_k(k, monkeypatch):
    """Merged tile by tile (also when k exceeds a tile), the lists equal the whole matrix's top k."""
    import torch

    import simulations.engine.recovery as recovery

    monkeypatch.setattr(recovery, "TILE", 32)
    targets = torch.from_numpy(gaussian_features(70, 16, seed=4))
    candidates = torch.from_numpy(gaussian_features(300, 16, seed=5))
    kinds, rows_that_change = [], recovery._rows_that_change

    def recorded(*args):
        changed = rows_that_change(*args)
        kinds.append("none" if changed is None else "all" if changed is recovery.ALL_ROWS else "some")
        return changed

    monkeypatch.setattr(recovery, "_rows_that_change", recorded)
    values, indices = recovery.top_cosines(targets, candidates, k)
    whole = (targets @ candidates.T).topk(k, dim=1)
    torch.testing.assert_close(values, whole.values)
    torch.testing.assert_close(indices, whole.indices)
    if k == 1:  # later tiles change only some rows' lists: the gated merge ran
        assert "some" in kinds
