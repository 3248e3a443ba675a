import dataclasses

import numpy as np
import pytest

from simulations.experiments.recover import run_stack
from simulations.engine.methods import TopKConfig
from simulations.engine.methods.bias_adaptation import BiasAdaptationConfig
from simulations.experiments.recover import RecoverConfig, run
from simulations.engine.sae import SAEConfig
from simulations.engine.train import TrainConfig
from theory.model import FeatureModel
from theory.validation import ConfigError


def point(seed, s=2, groups=1, activation="jumprelu", sparse_step=True):
    model = FeatureModel(n=64, d=24, sparsity=s, seed=seed)
    f = model.feature_frequency
    if groups == 1:
        method, method_config = "ba", BiasAdaptationConfig.single(2 * f, activation=activation)
    else:
        method_config = BiasAdaptationConfig(highest_target=2 * f, lowest_target=f / 4, groups=groups, activation=activation)
        method = "gba"
    return RecoverConfig(
        model=model,
        sae=SAEConfig(width=128),
        method=method,
        method_config=method_config,
        train=TrainConfig(steps=60, batch_size=256, device="cpu", log_every=20, sparse_step=sparse_step),
        seed=seed,
        eval_samples=2048,
    )


@pytest.mark.parametrize("sparse_step", [True, False])
def test_batched_points_equal_separate_runs(sparse_step):
    first = point(0, sparse_step=sparse_step)
    # The second point differs from the first in its target alone: the two share one data stream.
    same_instance = dataclasses.replace(first, method_config=BiasAdaptationConfig.single(4 * first.model.feature_frequency))
    # Stacking is generic over methods: a TopK point trains in the same stack.
    topk = dataclasses.replace(point(3, sparse_step=sparse_step), method="topk", method_config=TopKConfig(k=2, dead_window=2048))
    grouped = point(1, s=3, groups=4, sparse_step=sparse_step)
    calibrated = dataclasses.replace(point(4, groups=4, sparse_step=sparse_step),
                                     method_config=dataclasses.replace(grouped.method_config, initial_bias="calibrated"))
    configs = [first, same_instance, grouped, point(2, activation="relu", sparse_step=sparse_step), topk, calibrated]
    together = run_stack(configs)
    for config, batched in zip(configs, together):
        alone = run(config)
        # Adam turns rounding differences (bmm vs mm, summation order) into up to ~lr = 3e-3.
        np.testing.assert_allclose(batched.sae.decoder_weight.detach(), alone.sae.decoder_weight.detach(), atol=5e-3)
        np.testing.assert_allclose(batched.method.bias.detach(), alone.method.bias.detach(), atol=1e-3)
        assert list(batched.history.columns) == list(alone.history.columns)
        np.testing.assert_allclose(batched.history["loss"], alone.history["loss"], rtol=5e-3)
        for key in ("frr_0.8", "mean_max_cosine", "l0", "dead_fraction", "explained_variance"):
            assert batched.metrics[key] == pytest.approx(alone.metrics[key], rel=2e-3, abs=2e-3), key
        assert batched.config == config


def test_points_with_different_shapes_are_refused():
    with pytest.raises(ConfigError, match="configs"):
        run_stack([point(0), dataclasses.replace(point(1), sae=SAEConfig(width=64))])
    assert run_stack([]) == []
