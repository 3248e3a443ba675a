"""LLM-track pieces that need no language model: batch stream, checkpoint/resume, metrics, SAELens export algebra."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.numpy import load_file
from safetensors.torch import save_file

from simulations.experiments.export import export_saelens
from simulations.experiments.llm import runs as llm_runs
from simulations.experiments.llm.data import shuffled_batches
from simulations.experiments.llm.evaluate import consistency, encode_in_model_units, frequency_histograms, reconstruction_metrics
from simulations.experiments.llm.runs import LLMRunConfig, load_run, train_run
from simulations.engine.methods import METHODS
from simulations.engine.sae import SAEConfig, SparseAutoencoder
from simulations.engine.train import Checkpoint, TrainConfig, train
from theory.validation import ConfigError

D = 24


def fake_cache(folder, tokens=3000, seed=0):
    """A cache folder in the extractor's layout, filled with sparse non-negative mixtures plus a mean (like LM activations)."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(64, D))
    codes = (rng.random((tokens, 64)) < 0.05) * rng.uniform(0.5, 2.0, (tokens, 64))
    activations = torch.tensor(codes @ features + 3.0 * rng.normal(size=D), dtype=torch.float32)
    manifest = {"identity": {"model": "fake", "layer": 0, "site": "mlp", "context": 11, "drop_first": 1}, "d": D, "splits": {}}
    for split, rows in (("train", activations[: tokens * 4 // 5]), ("eval", activations[tokens * 4 // 5 :])):
        (folder / split).mkdir(parents=True)
        save_file({"activations": rows.contiguous(), "token_ids": torch.zeros((len(rows) // 10, 11), dtype=torch.int64)}, str(folder / split / "shard_00000.safetensors"))
        manifest["splits"][split] = {"shards": [{"file": f"{split}/shard_00000.safetensors", "tokens": len(rows)}], "tokens": len(rows)}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_shuffled_batches_depend_only_on_seed_and_index():
    data = torch.arange(100, dtype=torch.float32)[:, None]
    stream = shuffled_batches(data, 8, seed=3)
    first = [next(stream) for _ in range(30)]  # crosses epochs (12 batches each)
    resumed = shuffled_batches(data, 8, seed=3, start=17)
    assert all(torch.equal(first[i], next(resumed)) for i in range(17, 30))
    epoch = torch.cat(first[:12]).flatten()
    assert len(set(epoch.tolist())) == 96  # an epoch visits distinct rows
    assert not torch.equal(first[0], next(shuffled_batches(data, 8, seed=4)))
    with pytest.raises(ConfigError, match="batch_size"):
        next(shuffled_batches(data, 101, seed=0))


def _method_settings(name):
    """A setting of each registered method that trains at width 96 (BA/GBA targets; the baselines' defaults)."""
    if name == "gba":
        return {"groups": 3, "highest_target": 0.2, "lowest_target": 0.02}
    if name == "ba":
        return {"target_frequency": 0.05}
    return {}


@pytest.mark.parametrize("method_name", sorted(METHODS))
def test_interrupted_training_resumes_to_the_same_weights(method_name):
    """A KeyboardInterrupt after a checkpoint, then a resume, ends bit-identical to an uninterrupted run."""
    config = LLMRunConfig(cache="", method=method_name, method_settings=_method_settings(method_name), sae=SAEConfig(width=96),
                          train=TrainConfig(steps=60, batch_size=64, log_every=10, device="cpu"), checkpoint_every=20)
    data = torch.randn(2000, D) + 2.0

    def run(interrupt_at=None, state=None):
        """(sae, method, history or None when interrupted, saved states)."""
        sae, method = llm_runs.build(config, D, "cpu")
        saved = []
        start = 0 if state is None else state["step"]

        def batches():
            for index, batch in enumerate(shuffled_batches(data, 64, 0, start), start=start):
                if index == interrupt_at:
                    raise KeyboardInterrupt
                yield batch

        try:
            history = train(sae, method, batches(), config.train, checkpoint=Checkpoint(20, saved.append, state))
        except KeyboardInterrupt:
            history = None
        return sae, method, history, saved

    sae, method, history, _ = run()
    _, _, interrupted_history, partial_saves = run(interrupt_at=47)
    assert interrupted_history is None and [state["step"] for state in partial_saves] == [20, 40]
    resumed_sae, resumed_method, resumed_history, _ = run(state=partial_saves[-1])
    for ours, theirs in zip(list(sae.state_dict().values()) + list(method.state_dict().values()),
                            list(resumed_sae.state_dict().values()) + list(resumed_method.state_dict().values())):
        if torch.is_tensor(ours):
            assert torch.equal(ours, theirs)
    pd.testing.assert_frame_equal(history.drop(columns="seconds"), resumed_history.drop(columns="seconds"))


def test_train_run_resumes_after_a_crash_and_skips_when_done(tmp_path, monkeypatch):
    cache = fake_cache(tmp_path / "cache")
    config = LLMRunConfig(cache=str(cache), method="gba", method_settings={"groups": 3, "highest_target": 0.2, "lowest_target": 0.02},
                          sae=SAEConfig(width=64), train=TrainConfig(steps=50, batch_size=32, log_every=10, device="cpu"), checkpoint_every=20)
    train_run(config, tmp_path / "whole", progress=False)

    real_save = llm_runs.save_atomically
    calls = []

    def crash_after_second(state, path):
        real_save(state, path)
        calls.append(state["step"])
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(llm_runs, "save_atomically", crash_after_second)
    with pytest.raises(KeyboardInterrupt):
        train_run(config, tmp_path / "crashed", progress=False)
    assert (tmp_path / "crashed" / "checkpoint.pt").is_file() and not (tmp_path / "crashed" / "done.json").exists()
    monkeypatch.setattr(llm_runs, "save_atomically", real_save)
    train_run(config, tmp_path / "crashed", progress=False)
    whole, resumed = load_file(str(tmp_path / "whole" / "sae.safetensors")), load_file(str(tmp_path / "crashed" / "sae.safetensors"))
    assert all(np.array_equal(whole[name], resumed[name]) for name in whole)
    assert not (tmp_path / "crashed" / "checkpoint.pt").exists()
    mtime = (tmp_path / "crashed" / "sae.safetensors").stat().st_mtime_ns
    train_run(config, tmp_path / "crashed", progress=False)  # done: nothing retrained
    assert (tmp_path / "crashed" / "sae.safetensors").stat().st_mtime_ns == mtime
    with pytest.raises(ConfigError, match="run_dir"):
        train_run(LLMRunConfig.from_dict({**config.to_dict(), "seed": 1}), tmp_path / "crashed", progress=False)


def _same_state(a, b) -> bool:
    """Nested state dicts equal bit for bit."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_state(a[key], b[key]) for key in a)
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def test_a_snapshot_is_the_run_it_would_have_been_at_that_length(tmp_path):
    """GBA has no setting that scales with the run, so its snapshot at step 20 of 60 is a 20-step run, bit for bit."""
    cache = fake_cache(tmp_path / "cache")
    settings = {"groups": 3, "highest_target": 0.2, "lowest_target": 0.02}
    long = LLMRunConfig(cache=str(cache), method="gba", method_settings=settings, sae=SAEConfig(width=64),
                        train=TrainConfig(steps=60, batch_size=32, log_every=10, device="cpu"), checkpoint_every=20, snapshot_steps=(40, 20))
    short = LLMRunConfig.from_dict({**long.to_dict(), "train": {**long.to_dict()["train"], "steps": 20}, "snapshot_steps": []})
    train_run(long, tmp_path / "long", progress=False)
    train_run(short, tmp_path / "short", progress=False)
    assert long.snapshot_steps == (20, 40) and LLMRunConfig.from_dict(long.to_dict()) == long
    _, snapshot_sae, snapshot_method = load_run(tmp_path / "long", step=20)
    _, short_sae, short_method = load_run(tmp_path / "short")
    assert _same_state(snapshot_sae.state_dict(), short_sae.state_dict())
    assert _same_state(snapshot_method.state_dict(), short_method.state_dict())
    _, final_sae, _ = load_run(tmp_path / "long", step=60)
    assert not torch.equal(final_sae.weight, snapshot_sae.weight)
    with pytest.raises(ConfigError, match=r"step: .* keeps the steps \[20, 40, 60\], got 30"):
        load_run(tmp_path / "long", step=30)
    for bad, message in (((30,), "multiple of checkpoint_every"), ((60,), "snapshot_steps"), ((0,), "snapshot_steps")):
        with pytest.raises(ConfigError, match=message):
            LLMRunConfig.from_dict({**long.to_dict(), "snapshot_steps": list(bad)})


def test_each_method_trains_with_its_own_parametrisation_and_learning_rate():
    """The baselines untied at their recommended rate, as the field trains them; BA/GBA tied (the paper's SAE)."""
    from simulations.engine.methods.topk import TopKConfig
    from simulations.experiments.llm.pipeline import PlannedRun, default_plan
    from simulations.experiments.llm.runs import DEFAULT_WIDTH, LLM_LEARNING_RATE

    topk, gba = LLMRunConfig(cache="", method="topk"), LLMRunConfig(cache="", method="gba")
    assert not topk.sae.tied and topk.train.learning_rate == TopKConfig.recommended_learning_rate(DEFAULT_WIDTH)
    assert gba.sae.tied and gba.train.learning_rate == LLM_LEARNING_RATE
    assert LLMRunConfig(cache="", method="relu-l1").train.learning_rate == LLM_LEARNING_RATE
    assert LLMRunConfig(cache="", method="topk", train=TrainConfig(learning_rate=3e-3)).train.learning_rate == 3e-3
    assert PlannedRun("topk", (("k", 24),), 1).name == "topk-k24-s1"
    assert PlannedRun("topk", (("k", 24),), 1, tied=True).name == "topk-k24-tied-s1"
    assert PlannedRun("gba", (), 0, tied=True).name == "gba-s0" and PlannedRun("gba", (), 0, tied=False).name == "gba-untied-s0"
    plan = [(run.method, dict(run.settings).get("k", dict(run.settings).get("l1_coefficient")), run.seed) for run in
            default_plan(seeds=2, topk=(16, 24, 32), l1=(0.1,), ba=())]
    assert plan == [("gba", None, 0), ("gba", None, 1), ("topk", 24, 0), ("topk", 24, 1), ("relu-l1", 0.1, 0), ("relu-l1", 0.1, 1),
                    ("topk", 16, 0), ("topk", 32, 0)]


def test_a_truncated_checkpoint_is_moved_aside_and_the_run_restarts(tmp_path, capsys):
    cache = fake_cache(tmp_path / "cache")
    config = LLMRunConfig(cache=str(cache), method="topk", method_settings={"k": 4},
                          sae=SAEConfig(width=32), train=TrainConfig(steps=40, batch_size=32, log_every=10, device="cpu"), checkpoint_every=20)
    train_run(config, tmp_path / "whole", progress=False)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "checkpoint.pt").write_bytes(b"PK\x03\x04 cut off")
    train_run(config, broken, progress=False)
    assert "checkpoint.pt: does not load" in capsys.readouterr().err
    assert (broken / "checkpoint.unreadable.pt").is_file()
    whole, rerun = load_file(str(tmp_path / "whole" / "sae.safetensors")), load_file(str(broken / "sae.safetensors"))
    assert all(np.array_equal(whole[name], rerun[name]) for name in whole)


def test_reconstruction_metrics_and_z_score_by_hand():
    sae = SparseAutoencoder(SAEConfig(width=3, initial_scale=1.0), 2, torch.Generator().manual_seed(0))
    with torch.no_grad():
        sae.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    method = METHODS["ba"].single(0.5).build(3)
    x = torch.tensor([[3.0, 0.0], [0.0, 2.0], [0.0, 5.0], [4.0, 0.0]])
    metrics, neurons = reconstruction_metrics(sae, method, x)
    assert metrics["normalised_mse"] == pytest.approx(0.0, abs=1e-12)  # each x is on a neuron, a = 1
    assert metrics["l0"] == 1.0 and metrics["fraction_active"] == pytest.approx(1 / 3) and metrics["alive_fraction"] == pytest.approx(2 / 3)
    codes = np.array([1.0, 0.0, 0.0, 1.0])  # neuron 0 on unit-norm inputs
    assert neurons["frequency"].tolist() == [0.5, 0.5, 0.0]
    assert neurons["z_score"][0] == pytest.approx((codes.max() - codes.mean()) / codes.std())
    assert neurons["z_score"][2] == 0.0
    histogram = frequency_histograms(neurons)
    assert histogram["neurons"].sum() == 3


def test_consistency_of_identical_and_of_random_runs():
    rng = np.random.default_rng(0)
    decoder = rng.normal(size=(2000, 64))
    table = pd.DataFrame({"max_activation": rng.random(2000), "z_score": rng.random(2000)})
    same, mcs = consistency([decoder, decoder * 2.0, decoder], [table] * 3)
    assert (same["share"] == 1.0).all() and np.allclose(mcs[0], 1.0, atol=1e-5)
    assert set(same["selected"]) == {6, 1, 8}  # ceil(0.3 % of 2000), ceil(0.05 % of 2000), and 8 by count
    assert same.groupby("by")["selected"].agg(set).to_dict() == {"share": {6, 1}, "count": {8}}
    assert np.allclose(same[same["by"] == "count"]["alpha"], 8 / 2000)
    random, _ = consistency([rng.normal(size=(2000, 64)) for _ in range(3)], [table] * 3)
    assert (random["share"] == 0.0).all()  # random directions in 64 dims stay far below cosine 0.6


def test_export_algebra_matches_our_forward_pass_in_model_units(tmp_path):
    """W_enc = W^T, b_enc = 0, threshold = -b, W_dec = diag(a) W, b_dec = b_pre (times sqrt(d) for SAELens's norm rescale)."""
    cache = fake_cache(tmp_path / "cache")
    config = LLMRunConfig(cache=str(cache), method="gba", method_settings={"groups": 2, "highest_target": 0.3, "lowest_target": 0.05, "update_interval": 256},
                          sae=SAEConfig(width=48), train=TrainConfig(steps=40, batch_size=64, log_every=10, device="cpu"), checkpoint_every=20)
    run_dir = train_run(config, tmp_path / "run", progress=False)
    _, sae, method = load_run(run_dir)
    exported = export_saelens(run_dir, tmp_path / "saelens")
    weights, cfg = load_file(str(exported / "sae_weights.safetensors")), json.loads((exported / "cfg.json").read_text())
    root_d = math.sqrt(D)
    assert cfg["architecture"] == "jumprelu" and cfg["normalize_activations"] == "constant_norm_rescale"
    np.testing.assert_array_equal(weights["W_enc"], sae.weight.detach().numpy().T)
    np.testing.assert_allclose(weights["W_dec"], (sae.scale[:, None] * sae.weight).detach().numpy(), rtol=1e-6)
    np.testing.assert_array_equal(weights["b_enc"], np.zeros(48, dtype=np.float32))
    np.testing.assert_allclose(weights["threshold"], -method.bias.numpy() * root_d, rtol=1e-6)
    np.testing.assert_allclose(weights["b_dec"], sae.pre_bias.detach().numpy() * root_d, rtol=1e-6)
    assert (method.bias < 0).any() and sae.pre_bias.abs().max() > 0  # the check is not vacuous

    # SAELens's JumpReLU forward with constant_norm_rescale, written out in numpy, on raw activations.
    x = load_file(str(cache / "eval" / "shard_00000.safetensors"))["activations"].astype(np.float64)
    coefficient = root_d / np.linalg.norm(x, axis=1, keepdims=True)
    hidden = (x * coefficient - weights["b_dec"]) @ weights["W_enc"] + weights["b_enc"]
    codes = hidden * (hidden > weights["threshold"])
    theirs = (codes @ weights["W_dec"] + weights["b_dec"]) / coefficient
    ours = encode_in_model_units(sae, method, torch.tensor(x, dtype=torch.float32))[1].numpy()
    assert (codes != 0).mean() < 0.5
    np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-4 * np.abs(ours).max())


def test_export_rejects_a_folder_without_a_run(tmp_path):
    with pytest.raises(ConfigError, match="run_dir"):
        export_saelens(tmp_path, tmp_path / "out")
