"""SynthSAEBench worlds as a data source: parsing, sampling, configs, runs and SAELens's evaluation."""

import dataclasses

import numpy as np
import pytest

pytest.importorskip("sae_lens")

from simulations.commands.gba import main  # noqa: E402
from simulations.experiments.grid.spec import config_key  # noqa: E402
from simulations.experiments.recover import RecoverConfig, run  # noqa: E402
from simulations.experiments.worlds import WorldData, load_world, parse_data, width_l0, world_summary  # noqa: E402
from theory.validation import ConfigError  # noqa: E402

TINY = "synthsaebench:tiny"
SHORT = {"data": TINY, "width": 64, "steps": 120, "batch_size": 256, "eval_samples": 4096, "device": "cpu"}


def test_data_sources_are_parsed_to_one_canonical_form():
    assert parse_data("planted") == "planted"
    assert parse_data("synthsaebench") == "synthsaebench:small"
    assert parse_data(TINY) == TINY
    for bad in ("synth", "synthsaebench:nope", "", 3):
        with pytest.raises(ConfigError, match="^data: "):
            parse_data(bad)


def test_a_batch_depends_only_on_its_seed_and_index_and_is_codes_times_features_plus_offset():
    data = WorldData(TINY, seed=0)
    first, again, other = data.batch(5, 300, seed=1), data.batch(5, 300, seed=1), data.batch(6, 300, seed=1)
    assert np.array_equal(first.x, again.x) and (first.codes != again.codes).nnz == 0
    assert not np.array_equal(first.x, other.x)
    offset = load_world(TINY, 0).feature_dict.bias.detach().numpy()
    assert np.allclose(first.x, first.codes @ data.features + offset, atol=1e-5)
    assert first.codes.shape == (300, 256) and first.codes.min() >= 0
    # Sampling leaves torch's global generator where it was.
    import torch

    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    data.batch(0, 10, seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_a_world_config_takes_the_worlds_sizes_and_refuses_planted_settings():
    config = RecoverConfig.from_settings({"data": TINY, "method": "gba"})
    summary = world_summary(TINY, 0)
    assert (config.model.n, config.model.d) == (256, 32)
    assert config.model.sparsity == round(summary["true_l0"])
    assert RecoverConfig.from_dict(config.to_dict()) == config
    assert config.to_dict()["data"] == TINY
    planted = RecoverConfig.from_settings({"method": "gba"})
    assert "data" not in planted.to_dict()  # planted configs keep their keys
    assert config_key(planted) != config_key(config)
    with pytest.raises(ConfigError, match="^noise_std: a setting of the planted model"):
        RecoverConfig.from_settings({"data": TINY, "noise_std": 0.1})
    with pytest.raises(ConfigError, match="^n: the world 'synthsaebench:tiny' has n = 256"):
        RecoverConfig.from_settings({"data": TINY, "n": 100})
    with pytest.raises(ConfigError, match="^data: the world"):
        dataclasses.replace(config, model=config.model.replace(n=100))


@pytest.fixture(scope="module")
def tiny_runs():
    return {method: run(RecoverConfig.from_settings({**SHORT, **settings}))
            for method, settings in {"gba": {"method": "gba"}, "topk": {"method": "topk", "k": 3}}.items()}


def test_runs_on_a_world_report_saelens_ground_truth_metrics(tiny_runs):
    for result in tiny_runs.values():
        metrics = result.metrics
        for name in ("mcc", "precision", "recall", "f1_score", "explained_variance"):
            assert 0.0 <= metrics[f"saelens_{name}"] <= 1.0, (name, metrics)
        assert metrics["saelens_true_l0"] == pytest.approx(world_summary(TINY, 0)["true_l0"], rel=0.1)
        # SAELens's L0 comes from its own forward pass of the exported SAE, on its own samples.
        assert metrics["saelens_sae_l0"] == pytest.approx(metrics["l0"], rel=0.1)
        # The world is drawn from a seed of its own: the SAE does not start on the features.
        assert metrics["frr_init_0.9"] == 0.0
    assert tiny_runs["topk"].metrics["saelens_sae_l0"] == pytest.approx(3.0)


def test_the_width_l0_sums_the_most_frequent_features_and_reaches_the_true_l0_at_width_n(tiny_runs):
    summary = world_summary(TINY, 0)
    frequencies = summary["frequencies"]
    assert np.all(np.diff(frequencies) <= 0) and frequencies.sum() == pytest.approx(summary["true_l0"])
    width = tiny_runs["gba"].config.sae.width
    assert tiny_runs["gba"].metrics["world_width_l0"] == pytest.approx(frequencies[:width].sum())
    assert width_l0(TINY, 0, 8) < width_l0(TINY, 0, 64) < width_l0(TINY, 0, summary["n"]) == pytest.approx(summary["true_l0"])


def test_the_same_seed_gives_the_same_run_on_a_world(tiny_runs):
    again = run(RecoverConfig.from_settings({**SHORT, "method": "topk", "k": 3}))
    first = tiny_runs["topk"].metrics
    for name in ("mcc", "l0", "explained_variance", "saelens_mcc", "saelens_f1_score"):
        assert again.metrics[name] == first[name], name


def test_gba_recover_trains_on_a_world(capsys):
    assert main(["recover", "--data", TINY, "--method", "topk", "--k", "3", "--width", "64", "--steps", "40",
                 "--batch-size", "128", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "data=synthsaebench:tiny n=256 d=32" in out and "SAELens   MCC" in out
    assert main(["recover", "--data", TINY, "--noise-std", "0.1", "--quiet"]) != 0
    assert "noise_std: a setting of the planted model" in capsys.readouterr().err
