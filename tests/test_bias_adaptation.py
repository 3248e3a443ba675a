import numpy as np
import pytest
import torch

from simulations.engine.methods.base import Projections
from simulations.engine.methods.bias_adaptation import BiasAdaptationConfig, BiasController, group_assignment
from theory.validation import ConfigError


def buffered_update(bias, buffer, groups, targets, config):
    """Algorithm 2 exactly as printed: statistics of a full M x B buffer of pre-activations."""
    bias = bias.copy()
    frequency = (buffer > 0).mean(axis=0)
    peak = np.maximum(buffer.max(axis=0), 0.0)
    for m in range(bias.size):
        k = groups[m]
        members = groups == k
        active = peak[members] > 0
        group_peak = peak[members].sum() / active.sum() if active.any() else 1.0
        if frequency[m] > targets[k]:
            bias[m] = max(bias[m] - config.bias_decrease_rate * peak[m], -1.0)
        elif frequency[m] < config.dead_frequency:
            bias[m] = min(bias[m] + config.bias_increase_rate * group_peak, 0.0)
    return bias


def test_running_statistics_give_the_buffered_biases():
    width, batch, interval = 60, 37, 150  # windows end mid-way through a batch's count, as in training
    config = BiasAdaptationConfig(highest_target=0.3, lowest_target=0.01, groups=3, update_interval=interval,
                                  bias_decrease_rate=0.2, bias_increase_rate=0.3, dead_frequency=0.005)
    groups = group_assignment(width, 3)
    controller = BiasController(config, torch.as_tensor(groups))
    rng = np.random.default_rng(0)
    # Pre-activation offsets make some neurons frequent, some rare and some dead.
    offsets = rng.uniform(-3.0, 1.0, size=width)
    bias = torch.zeros(width)
    reference = np.zeros(width, dtype=np.float32)
    buffer = []
    updates = 0
    for _ in range(60):
        projection = rng.standard_normal((batch, width)).astype(np.float32) + offsets
        buffer.append(projection + reference)
        controller.observe(torch.from_numpy(projection) + bias, bias)
        if sum(len(b) for b in buffer) >= interval:
            reference = buffered_update(reference, np.concatenate(buffer), groups, config.targets(), config)
            buffer = []
            updates += 1
        np.testing.assert_allclose(bias.numpy(), reference, atol=1e-6)
    assert updates == controller.updates >= 10
    assert (reference < 0).any() and (reference > -1).any()


def test_biases_stay_clamped():
    config = BiasAdaptationConfig.single(0.01, bias_decrease_rate=1.0, bias_increase_rate=1.0, update_interval=10)
    controller = BiasController(config, torch.zeros(4, dtype=torch.long))
    bias = torch.zeros(4)
    always = torch.full((10, 4), 5.0)
    for _ in range(5):
        controller.observe(always + bias, bias)  # fires every time: pushed down, floored at -1
    assert torch.all(bias == -1.0)
    for _ in range(5):
        controller.observe(torch.full((10, 4), -5.0) + bias, bias)  # dead: pushed up, capped at 0
    assert torch.all(bias == 0.0)


def test_geometric_targets_and_groups():
    config = BiasAdaptationConfig(highest_target=0.5, lowest_target=0.001, groups=10)
    targets = config.targets()
    assert targets[0] == 0.5 and np.isclose(targets[-1], 0.001)
    np.testing.assert_allclose(targets[1:] / targets[:-1], (0.001 / 0.5) ** (1 / 9))
    assert np.bincount(group_assignment(1003, 10)).tolist() == [101, 101, 101] + [100] * 7
    assert config.resolved_update_interval() == 20_000
    assert BiasAdaptationConfig.single(0.1).resolved_update_interval() == 8192


@pytest.mark.parametrize(
    "settings, name",
    [
        (dict(highest_target=0.0), "highest_target"),
        (dict(highest_target=1.0), "highest_target"),
        (dict(highest_target=0.01, lowest_target=0.02, groups=3), "lowest_target"),
        (dict(bias_decrease_rate=0.0), "gamma_minus"),
        (dict(bias_increase_rate=-1.0), "gamma_plus"),
        (dict(groups=0), "groups"),
        (dict(highest_target=0.01, dead_frequency=0.02), "epsilon"),
        (dict(activation="gelu"), "activation"),
        (dict(update_interval=0), "update_interval"),
    ],
)
def test_bad_settings_name_the_setting(settings, name):
    with pytest.raises(ConfigError, match=name):
        BiasAdaptationConfig(**settings)


def settled_frequencies(rule: str) -> tuple[np.ndarray, np.ndarray]:
    """Realised frequency and target of each neuron after 150 windows of a stationary stream y = N(offset, 1) + b."""
    width, interval = 40, 2000
    config = BiasAdaptationConfig(highest_target=0.2, lowest_target=0.05, groups=4, update_interval=interval, controller=rule)
    groups = group_assignment(width, 4)
    controller = BiasController(config, torch.as_tensor(groups))
    generator = torch.Generator().manual_seed(0)
    offsets = -0.8 + 0.15 * torch.rand(width, generator=generator)  # every target reachable with b in [-1, 0]
    bias = torch.zeros(width)
    for _ in range(150):
        controller.observe(torch.randn(interval, width, generator=generator) + offsets + bias, bias)
    fired = (torch.randn(50_000, width, generator=generator) + offsets + bias > 0).float().mean(dim=0)
    return fired.numpy(), config.targets()[groups]


def test_the_proportional_controller_lands_on_the_targets_and_algorithm_2_below_them():
    landed, targets = settled_frequencies("proportional")
    assert np.all(np.abs(landed / targets - 1) <= 0.25), landed / targets
    capped, _ = settled_frequencies("paper")
    assert np.all(capped <= 1.25 * targets)  # a ceiling (window noise allows a little above)
    assert np.median(capped / targets) < np.median(landed / targets) - 0.1


def test_the_excess_controller_keeps_the_targets_as_ceilings_and_stops_just_under_them():
    under, targets = settled_frequencies("excess")
    capped, _ = settled_frequencies("paper")
    assert np.all(under <= 1.25 * targets), under / targets
    assert np.median(under / targets) >= 0.85 > np.median(capped / targets), (np.median(under / targets), np.median(capped / targets))


def test_a_calibrated_start_fires_each_neuron_at_its_target_on_the_first_batch():
    config = BiasAdaptationConfig(highest_target=0.2, lowest_target=0.01, groups=4, initial_bias="calibrated")
    method = config.build(64)
    generator = torch.Generator().manual_seed(0)
    # Neurons whose projections sit mostly below 0 cannot reach their target with b <= 0: they start at 0.
    projection = torch.randn(4096, 64, generator=generator) * 0.2 + torch.linspace(-0.9, 0.3, 64)
    share = method.calibrate(Projections.of(projection))
    bias = method.bias
    assert bool(((bias >= -1.0) & (bias <= 0.0)).all())
    fired = (projection + bias > 0).float().mean(dim=0).numpy()
    assert share == pytest.approx(fired.mean())  # what lets the first step be sparse
    targets = config.targets()[method.groups.numpy()]
    free = (bias > -1.0).numpy() & (bias < 0.0).numpy()
    assert free.sum() >= 16 and np.allclose(fired[free], targets[free], atol=2 / 4096)
    # -b is each neuron's projection at ascending rank (1 - target)(rows - 1) of the batch.
    ranks = np.round((1.0 - targets) * 4095).astype(int)
    quantiles = np.sort(projection.numpy(), axis=0)[ranks, np.arange(64)]
    assert np.array_equal(-bias.numpy()[free], quantiles[free])
    assert np.all(fired[~free & (bias == 0.0).numpy()] <= targets[~free & (bias == 0.0).numpy()])
    zero_start = BiasAdaptationConfig(highest_target=0.2, lowest_target=0.01, groups=4).build(64)
    assert zero_start.calibrate(Projections.of(projection)) is None
    assert torch.equal(zero_start.bias, torch.zeros(64))


def test_a_calibrated_start_reads_projections_in_blocks_of_neurons():
    config = BiasAdaptationConfig(highest_target=0.2, lowest_target=0.01, groups=4, initial_bias="calibrated")
    generator = torch.Generator().manual_seed(1)
    centred, weight = torch.randn(1000, 16, generator=generator), torch.randn(64, 16, generator=generator) / 4
    whole, blocked = config.build(64), config.build(64)
    share = whole.calibrate(Projections.of(centred @ weight.T))
    lazy = Projections(centred, weight, block_rows=50)  # 50 x 64 elements a block: 3 neurons of 1000 rows
    assert [start for start, _ in lazy.neuron_blocks()] == list(range(0, 64, 3))
    assert blocked.calibrate(lazy) == pytest.approx(share)
    torch.testing.assert_close(blocked.bias, whole.bias)


@pytest.mark.parametrize("value", ["calibrate", 0.5, -2.0])
def test_a_bad_initial_bias_names_the_setting(value):
    with pytest.raises(ConfigError, match="^initial_bias"):
        BiasAdaptationConfig(initial_bias=value)
